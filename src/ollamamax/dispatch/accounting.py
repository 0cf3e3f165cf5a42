"""What the dispatcher counts and learns from each answer.

Counters (requests by route/model/host/status, retries, retries the budget denied, 5xx
that were the request's fault), one set of native ``LatencyHistogram`` s per (host, model) (queue wait, new
connection, time to first byte, total, tokens/s), and the learning that rides on a
successful answer: each host's EWMA time to first byte and service time, and its load
cost per model from the ``load_duration`` Ollama reports in the final object.

This module records; it never decides where a request goes, and it does no I/O.  When an
answer suggests the host's resident models changed (a cold load, an unusually slow first
byte), it calls ``on_residency_change(host)`` so the owner can refresh that host.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from ..fleet.hosts import HostState
from ..fleet.learning import Ewma
from ..structures.hist import LatencyHistogram

__all__ = ["COLD_LOAD_S", "METRICS_BYTES", "Accounting", "Timings", "final_metrics"]

METRICS_BYTES = 512  # the metrics are the last fields of the final object
COLD_LOAD_S = 0.02  # a load_duration above this means the host had to load the model
SLOW_TTFB_S = 1.0  # a first byte slower than this and 4x the usual triggers a refresh of the host
_RE_METRICS = re.compile(rb'"(load_duration|eval_count|eval_duration)":(\d+)')


def final_metrics(tail: bytes) -> tuple[int | None, int | None, int | None]:
    """(load_duration, eval_count, eval_duration) of the last bytes of an answer: the
    last ``"name":<digits>`` of each in ``tail``, None where absent."""
    # The final object lists them in this order; scanning from the last load_duration
    # finds all three at once.  Matches cannot overlap, so what a scan from there finds
    # is exactly the tail's last match of each name; if one is missing there, scan all.
    pos = tail.rfind(b'"load_duration":')
    ld = ec = ed = None
    for k, v in _RE_METRICS.findall(tail, pos) if pos > 0 else _RE_METRICS.findall(tail):
        if k == b"eval_count":
            ec = v
        elif k == b"eval_duration":
            ed = v
        else:
            ld = v
    if pos > 0 and (ld is None or ec is None or ed is None):
        return _scan_metrics(tail)
    return (
        int(ld) if ld is not None else None,
        int(ec) if ec is not None else None,
        int(ed) if ed is not None else None,
    )


def _scan_metrics(tail: bytes) -> tuple[int | None, int | None, int | None]:
    m = {k: int(v) for k, v in _RE_METRICS.findall(tail)}
    return m.get(b"load_duration"), m.get(b"eval_count"), m.get(b"eval_duration")


class Timings:
    """The histograms of one (host, model): microseconds, tokens_per_s in tokens/s."""

    __slots__ = ("queue_wait", "connect", "ttfb", "total", "tokens_per_s")

    def __init__(self) -> None:
        self.queue_wait = LatencyHistogram()
        self.connect = LatencyHistogram()
        self.ttfb = LatencyHistogram()
        self.total = LatencyHistogram()
        self.tokens_per_s = LatencyHistogram()


class Accounting:
    def __init__(self, on_residency_change: Callable[[HostState], None]) -> None:
        self.on_residency_change = on_residency_change
        self.requests: Counter[tuple[str, str, str, int]] = Counter()
        self.retries = 0
        self.retries_denied = 0  # retries the retry budget refused
        self.request_faults = 0  # 5xx two hosts gave alike: the request's fault, nobody charged
        self.host_faults = 0  # 5xx another host did better on: the first host's fault
        self.timings: dict[tuple[str, str], Timings] = {}

    def count(self, path: str, model: str, host: str, status: int) -> None:
        self.requests[(path, model, host, status)] += 1

    def answered(
        self,
        h: HostState,
        path: str,
        model: str,
        status: int,
        *,
        t_arrival: float,
        t_sent: float,
        t_first: float,
        t_end: float,
        queue_s: float,
        connect_s: float | None,
        tail: bytes,
        cold: bool,
    ) -> None:
        """A host answered (``status``): count it and, for a 200, record its timings and
        learn from its final object (``tail``: its last bytes)."""
        name = h.name
        self.requests[(path, model, name, status)] += 1
        if status != 200:
            return
        tm = self.timings.get((name, model))
        if tm is None:
            tm = self.timings[(name, model)] = Timings()
        tm.queue_wait.record(int(queue_s * 1e6) or 1)  # microseconds, at least 1
        if connect_s is not None:
            tm.connect.record(int(connect_s * 1e6) or 1)
        ttfb = t_first - t_sent
        tm.ttfb.record(int(ttfb * 1e6) or 1)
        tm.total.record(int((t_end - t_arrival) * 1e6) or 1)  # arrival to last byte
        # an unusually slow first byte often means the host (re)loaded a model
        slow = h.ttfb.value is not None and ttfb > max(SLOW_TTFB_S, 4.0 * h.ttfb.value)
        h.ttfb.add(ttfb)
        h.service.add(t_end - t_sent)
        ld_ns, ec, ed = final_metrics(tail)
        loaded_now = False
        if ld_ns is not None and ld_ns / 1e9 > COLD_LOAD_S:
            e = h.load_cost.get(model)
            if e is None:
                e = h.load_cost[model] = Ewma()
            e.add(ld_ns / 1e9)
            loaded_now = True
        if ec is not None and ed:
            tm.tokens_per_s.record(max(1, int(round(ec / (ed / 1e9)))))
        if cold or loaded_now or slow:
            self.on_residency_change(h)  # learn what is resident now (it may have evicted another)

    def snapshot(
        self,
        hosts: Sequence[HostState],
        queue_depth: int,
        cache_hits: int,
        cache_misses: int,
        *,
        ejections: dict[tuple[str, str], int] | None = None,
        ejections_prevented: dict[str, int] | None = None,
        retry_budget: int = 0,
        retries_in_progress: int = 0,
    ) -> dict[str, Any]:
        """Histograms (LatencyHistogram objects, microseconds; tokens_per_s in tokens/s)
        keyed by (host, model), and counters.  For the metrics exporter."""
        hists: dict[str, dict[tuple[str, str], Any]] = {kind: {} for kind in Timings.__slots__}
        for key, tm in self.timings.items():
            for kind in Timings.__slots__:
                hist = getattr(tm, kind)
                if hist.count:
                    hists[kind][key] = hist
        return {
            "histograms": hists,
            "counters": {
                "requests": dict(self.requests),
                "retries": self.retries,
                "retries_denied": self.retries_denied,
                "request_faults": self.request_faults,
                "host_faults": self.host_faults,
                # host -> ejections (all causes); by_cause: (host, cause) -> ejections
                "ejections": _by_host(ejections or {}),
                "ejections_by_cause": dict(ejections or {}),
                "ejections_prevented": dict(ejections_prevented or {}),
                "cache_hits": cache_hits,
                "cache_misses": cache_misses,
            },
            "hosts": {
                h.name: {"in_flight": h.in_flight, "capacity": h.capacity, "healthy": not h.down} for h in hosts
            },
            "queue_depth": queue_depth,
            "retry_budget": retry_budget,
            "retries_in_progress": retries_in_progress,
        }


def _by_host(by_cause: dict[tuple[str, str], int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for (host, _cause), n in by_cause.items():
        out[host] = out.get(host, 0) + n
    return out
