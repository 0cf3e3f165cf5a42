"""Garbage-collector pauses and tuning for a long-running dispatcher process.

* :class:`GcPauseRecorder` times every collection of CPython's cyclic GC through
  ``gc.callbacks`` and records the pause, per generation, into a
  :class:`~ollamamax.LatencyHistogram` (microseconds).  Cost: about 1 µs of Python per
  collection on top of the ~0.7 µs CPython spends calling any gc callback (measured
  with ``gc.collect(0)`` in a loop, Python 3.11); a young collection itself takes
  50-100 µs under load, so the recorder adds ~1-2 % to GC time.  ``install()`` /
  ``uninstall()`` are reference counted, so several owners (two apps in one process,
  a test) can share :func:`default_recorder`, the process-wide one the ``/metrics``
  exporter reads.
* :func:`tune_gc` is the Python counterpart of the original OllamaMax report's GC
  tuning (there: ``GOGC`` / memory limit): ``gc.freeze()`` after start-up moves every
  object alive at that moment (imported modules, configuration, the dispatcher itself)
  into a permanent generation that later collections never scan, and larger
  ``gc.set_threshold`` values make young collections rarer.  ``tools/gc_pauses.py``
  measures the effect.

What a pause is here: the time between the ``"start"`` and ``"stop"`` callbacks of one
collection, i.e. the traversal and freeing done by the collector with the GIL held.  On
CPython 3.14 the collector is incremental and the thresholds mean something slightly
different (``threshold0`` still triggers young collections; the old generation is
scanned in increments), so tuned values should be measured again there.
"""

from __future__ import annotations

import gc
import threading
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any

__all__ = [
    "GcPauseRecorder",
    "GcTuning",
    "default_recorder",
    "parse_gc_threshold",
    "tune_gc",
    "untune_gc",
]

GENERATIONS = (0, 1, 2)
# A pause longer than this (microseconds) counts as this much, in the histogram's overflow.
_HIGHEST_US = 600_000_000.0


def _new_hist() -> Any:
    from ..structures.hist import LatencyHistogram

    return LatencyHistogram(lowest=1, highest=_HIGHEST_US, significant_figures=2)


class GcPauseRecorder:
    """Records every GC pause, per generation, into LatencyHistograms (microseconds).

    :meth:`histograms` gives generation -> histogram (0, 1, 2); ``collected[g]`` and
    ``uncollectable[g]`` sum what the collector reported.  Use as a context manager or
    call :meth:`install` / :meth:`uninstall` (reference counted: the callback is removed
    when every ``install`` has been matched by an ``uninstall``).

    How the callback stays safe and cheap: a collection can start at any allocation, in
    any thread, including inside a reader that holds a histogram's lock (the pure-Python
    histogram has one).  So the callback never waits on a lock: it writes the pause into
    a preallocated ring of doubles (one per generation; single producer, because the
    collector runs one collection at a time) and, when a ring is half full, moves it into
    the histogram only if it can take the recorder's lock without blocking.  Readers take
    that lock and move what is pending first.  If nobody reads and the lock is always
    busy, pauses beyond the ring's size are counted in ``dropped`` instead.
    """

    RING = 1024

    def __init__(self) -> None:
        self._hists: dict[int, Any] = {g: _new_hist() for g in GENERATIONS}
        self._rings = [array("d", bytes(8 * self.RING)) for _ in GENERATIONS]
        self._written = [0, 0, 0]  # per generation, monotonic (producer: the callback)
        self._read = [0, 0, 0]  # per generation, monotonic (consumer: _drain under _lock)
        self.collected = [0, 0, 0]
        self.uncollectable = [0, 0, 0]
        self.dropped = 0
        self._t0 = 0  # perf_counter_ns() at the last "start"; 0 = no collection running
        self._installs = 0
        self._lock = threading.Lock()  # consumer side; the callback only try-acquires it
        self._install_lock = threading.Lock()

    # -- the callback ------------------------------------------------------------------
    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        # Must never raise: an exception here is reported as "unraisable" on every GC.
        if phase == "start":
            self._t0 = perf_counter_ns()
            return
        t0 = self._t0
        if not t0:  # installed while a collection was running: skip that one
            return
        self._t0 = 0
        elapsed_us = (perf_counter_ns() - t0) / 1000.0
        g = info.get("generation", 2)
        if g not in (0, 1, 2):
            g = 2
        self.collected[g] += info.get("collected", 0) or 0
        self.uncollectable[g] += info.get("uncollectable", 0) or 0
        w = self._written[g]
        pending = w - self._read[g]
        if pending >= self.RING:
            self.dropped += 1
            return
        self._rings[g][w % self.RING] = elapsed_us
        self._written[g] = w + 1
        if pending + 1 >= self.RING // 2 and self._lock.acquire(blocking=False):
            try:
                self._drain(g)
            finally:
                self._lock.release()

    def _drain(self, g: int) -> None:
        """Move generation g's pending pauses into its histogram (caller holds _lock)."""
        r, w = self._read[g], self._written[g]
        if w == r:
            return
        ring, n = self._rings[g], self.RING
        a, b = r % n, w % n
        mv = memoryview(ring)
        hist = self._hists[g]
        if a < b:
            hist.record_many(mv[a:b])
        else:
            hist.record_many(mv[a:])
            if b:
                hist.record_many(mv[:b])
        self._read[g] = w

    def _drain_all(self) -> None:
        for g in GENERATIONS:
            self._drain(g)

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def installed(self) -> bool:
        return self._installs > 0

    def install(self) -> GcPauseRecorder:
        """Start recording (returns self).  Each call needs one :meth:`uninstall`."""
        with self._install_lock:
            if self._installs == 0 and self._callback not in gc.callbacks:
                self._t0 = 0
                gc.callbacks.append(self._callback)
            self._installs += 1
        return self

    def uninstall(self) -> None:
        """Undo one :meth:`install`; the callback goes when the last one is undone.
        Raises RuntimeError if the recorder is not installed."""
        with self._install_lock:
            if self._installs == 0:
                raise RuntimeError("GcPauseRecorder is not installed")
            self._installs -= 1
            if self._installs == 0:
                try:
                    gc.callbacks.remove(self._callback)
                except ValueError:  # someone else removed it
                    pass

    def __enter__(self) -> GcPauseRecorder:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def reset(self) -> None:
        """Forget every recorded pause (the callback stays installed)."""
        with self._lock:
            self._drain_all()
            for h in self._hists.values():
                h.reset()
            self.collected = [0, 0, 0]
            self.uncollectable = [0, 0, 0]
            self.dropped = 0

    # -- reading -----------------------------------------------------------------------
    def histograms(self) -> dict[int, Any]:
        """Generation -> LatencyHistogram of its pauses (microseconds), up to date now.
        The histograms are live: read them, do not record into them."""
        with self._lock:
            self._drain_all()
        return dict(self._hists)

    def merged(self, hists: dict[int, Any] | None = None) -> Any:
        """All generations in one new histogram."""
        out = _new_hist()
        for h in (hists if hists is not None else self.histograms()).values():
            out.merge(h)
        return out

    def summary(self) -> dict[str, Any]:
        """Per generation and ``"all"``: count, p50, p99, max and total pause (microseconds)."""

        def one(h: Any) -> dict[str, float]:
            n = h.count
            if n == 0:
                return {"count": 0, "p50_us": 0.0, "p99_us": 0.0, "max_us": 0.0, "total_us": 0.0}
            p50, p99 = h.quantiles([0.5, 0.99])
            return {"count": n, "p50_us": p50, "p99_us": p99, "max_us": h.max, "total_us": h.sum}

        # One copy of each first, so the parts add up to "all" even while collections run.
        hists = {g: h.__copy__() for g, h in self.histograms().items()}
        out: dict[str, Any] = {f"gen{g}": one(h) for g, h in hists.items()}
        out["all"] = one(self.merged(hists))
        return out


_default: GcPauseRecorder | None = None
_default_lock = threading.Lock()


def default_recorder() -> GcPauseRecorder:
    """The process-wide recorder (created on first use, not installed)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = GcPauseRecorder()
        return _default


# -- tuning ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GcTuning:
    """What :func:`tune_gc` did: the thresholds before and after, objects frozen."""

    previous_thresholds: tuple[int, ...]
    thresholds: tuple[int, ...]
    frozen: int  # gc.get_freeze_count() after the call


def _check_thresholds(thresholds: Sequence[int]) -> tuple[int, ...]:
    if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Sequence):
        raise TypeError("thresholds must be a tuple of 1 to 3 ints")
    t = tuple(thresholds)
    if not 1 <= len(t) <= 3:
        raise ValueError(f"thresholds must have 1 to 3 values, got {len(t)}")
    for v in t:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"GC thresholds must be ints, got {type(v).__name__}")
        if v < 0:
            raise ValueError(f"GC thresholds must be >= 0, got {v}")
    return t


def parse_gc_threshold(text: str) -> tuple[int, ...]:
    """``"50000,20,20"`` -> ``(50000, 20, 20)`` (for ``--gc-threshold``); ValueError if invalid."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"invalid GC threshold {text!r}: expected 1 to 3 comma-separated ints") from None
    return _check_thresholds(values)


def tune_gc(freeze: bool = True, thresholds: Sequence[int] | None = None) -> GcTuning:
    """Tune the cyclic GC of this process for a long-running server; call after start-up.

    ``thresholds`` (1 to 3 ints, e.g. ``(50_000, 20, 20)``) go to ``gc.set_threshold``;
    ``threshold0 = 0`` disables automatic collection altogether (not recommended).
    ``freeze`` runs one full collection and then ``gc.freeze()``, so every object alive
    now is never scanned again (``gc.unfreeze()`` / :func:`untune_gc` undo it).
    """
    previous = gc.get_threshold()
    if thresholds is not None:
        t = _check_thresholds(thresholds)
        gc.set_threshold(*t)
    if freeze:
        gc.collect()
        gc.freeze()
    return GcTuning(tuple(previous), tuple(gc.get_threshold()), gc.get_freeze_count())


def untune_gc(tuning: GcTuning) -> None:
    """Undo :func:`tune_gc`: previous thresholds back, frozen objects back into generation 2."""
    gc.set_threshold(*tuning.previous_thresholds)
    gc.unfreeze()
