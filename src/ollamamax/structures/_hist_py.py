"""Pure-Python LatencyHistogram: the executable specification of ``_hist_c``.

Log-linear buckets with bounded relative error (HdrHistogram / DDSketch family).

Layout (identical in C, see native/src/hist.c):
  a value ``v`` is clamped to ``highest`` (counted in :attr:`overflow` when above it),
  scaled ``u = v * (1 / lowest)`` and raised to 1 when below (so **values below
  ``lowest`` share the lowest bucket**; their exact value still feeds ``min``, ``sum``
  and ``mean``).  With ``S = 2**k`` linear sub-buckets per power of two
  (``k = 3, 6, 9, 13, 16`` for 1..5 significant figures, the smallest ``S`` with
  ``S >= 10**sf / 2``), bucket ``(e << k) | j`` holds ``u`` in
  ``[2**e * (1 + j/S), 2**e * (1 + (j+1)/S))``.

Quantiles use nearest rank (rank ``ceil(q * count)``, like
``numpy.percentile(..., method="inverted_cdf")``); the answer is the midpoint of the
bucket holding that rank, clamped to ``[min, max]``, so for values >= ``lowest`` the
relative error is at most ``1 / (2 S)`` (0.78 % at the default two figures).
``q == 0`` gives ``min`` and ``q == 1`` gives ``max`` exactly.  **An empty histogram
answers NaN** (for quantiles, ``min``, ``max`` and ``mean``), which is what
metrics exporters expect, rather than raising.

Units: whatever you record (the dispatcher records microseconds and tokens/s); all
bounds and results are in that unit.  ``buckets()`` gives Prometheus-style
``(upper_bound, cumulative_count)`` pairs for non-empty buckets, ending with
``(inf, count)``; the upper bound is exclusive (a value equal to it falls in the next
bucket).

Thread safety: every method takes one lock here; the C version is lock-free (relaxed
atomics).  ``record_many`` is all-or-nothing: the batch is validated first, and a
negative or NaN element raises ValueError with nothing from the batch recorded.  Its
sum is accumulated left to right from 0.0 and then added to the total sum (so it can
differ in the last bits from recording the values one by one).
"""

from __future__ import annotations

import math
import operator
import struct
import threading
import zlib
from collections.abc import Iterable
from typing import Any

__all__ = ["FORMAT_VERSION", "MAX_BUCKETS", "LatencyHistogram"]

FORMAT_VERSION = 1
MAX_BUCKETS = 1 << 24
_SUB_BITS = (3, 6, 9, 13, 16)
_MAGIC = b"OMXH"
_HEAD = struct.Struct("<4sBBddddd")  # magic, version, sig. figures, lowest, highest, sum, min, max
_CRC = struct.Struct("<I")
_ENCODED_MIN = _HEAD.size + 1 + _CRC.size  # 51
_INF = math.inf
_NAN = math.nan
_INT64_MAX = (1 << 63) - 1
_U64 = (1 << 64) - 1

_np: Any = None


def _numpy() -> Any:
    global _np
    if _np is None:
        import numpy

        _np = numpy
    return _np


def _as_double(value: Any) -> float:
    """float(value) for real numbers (``__float__``/``__index__``); TypeError otherwise."""
    if value.__class__ is float:
        return value
    try:
        return math.ldexp(value, 0)  # PyFloat_AsDouble semantics: str -> TypeError
    except OverflowError:  # an int beyond the double range
        if value > 0:
            return _INF
        raise ValueError(f"value must be >= 0, got {value!r}") from None


def _check_value(v: float) -> None:
    if v != v:
        raise ValueError("value must not be NaN")
    raise ValueError(f"value must be >= 0, got {v!r}")


def _bucket_index(u: float, k: int) -> int:
    m, e = math.frexp(u)  # u = m * 2**e, 0.5 <= m < 1, u >= 1
    return ((e - 1) << k) + int(m * (2 << k) - (1 << k))


def _check_layout(lowest: float, highest: float, sf: int) -> int:
    """Validate a layout and return its number of buckets (messages as in C)."""
    if sf < 1 or sf > 5:
        raise ValueError(f"significant_figures must be in 1..5, got {sf}")
    if not (0.0 < lowest < _INF):
        raise ValueError(f"lowest must be a finite number > 0, got {lowest!r}")
    if not (lowest < highest < _INF):
        raise ValueError(f"highest must be finite and > lowest, got {highest!r}")
    inv = 1.0 / lowest
    hu = highest * inv
    if math.isinf(inv) or math.isinf(hu) or _bucket_index(max(hu, 1.0), _SUB_BITS[sf - 1]) + 1 > MAX_BUCKETS:
        raise ValueError(
            f"range lowest={lowest!r}..highest={highest!r} at significant_figures={sf} "
            f"needs more than {MAX_BUCKETS} buckets"
        )
    return _bucket_index(max(hu, 1.0), _SUB_BITS[sf - 1]) + 1


def _check_q(q: Any) -> float:
    qd = _as_double(q)
    if not (0.0 <= qd <= 1.0):
        raise ValueError(f"quantile must be in [0, 1], got {q!r}")
    return qd


def _as_array(values: Any) -> Any:
    """Contiguous 1-D float64 or int64 array for arrays and buffers, None for plain
    iterables (same rules as _hist_c._as_array)."""
    if isinstance(values, (str, bytes, bytearray)):
        raise TypeError(f"record_many needs numbers, not {type(values).__name__}")
    np = _numpy()
    if isinstance(values, np.ndarray):
        arr = values
    else:
        try:
            mv = memoryview(values)
        except TypeError:
            return None
        arr = np.asarray(mv)
    kind = arr.dtype.kind
    if kind == "O":
        return None
    if kind not in "fiub":
        raise TypeError(f"record_many needs real numbers, not dtype {arr.dtype}")
    arr = arr.reshape(-1)
    if kind == "i" and arr.dtype.itemsize == 8:
        return np.ascontiguousarray(arr, dtype=np.int64)
    return np.ascontiguousarray(arr, dtype=np.float64)


def _put_varint(out: bytearray, x: int) -> None:
    while True:
        b = x & 0x7F
        x >>= 7
        if x:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


def _get_varint(buf: bytes, pos: int, end: int) -> tuple[int, int] | None:
    """(value, new position) or None when truncated or longer than 64 bits."""
    x = 0
    shift = 0
    while pos < end:
        b = buf[pos]
        pos += 1
        if shift == 63 and b & 0x7E:
            return None
        x |= (b & 0x7F) << shift
        if not b & 0x80:
            return x, pos
        shift += 7
        if shift > 63:
            return None
    return None


def _bits(d: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", d))[0]


def _from_bytes(data: Any) -> LatencyHistogram:
    """Module-level constructor used by pickle."""
    return LatencyHistogram.from_bytes(data)


class LatencyHistogram:
    """Log-linear histogram with bounded relative error on every quantile.

    ``LatencyHistogram(*, lowest=1, highest=3_600_000_000, significant_figures=2)``:
    values in any unit; values above ``highest`` count as ``highest`` and in
    ``overflow``; values below ``lowest`` go to the lowest bucket.  Negative or NaN
    values raise ValueError, non-numbers TypeError.  The default layout has 2028
    buckets of 8 bytes (15.8 KiB in C).
    """

    __slots__ = (
        "_counts",
        "_hi",
        "_inv",
        "_k",
        "_lock",
        "_lowest",
        "_max",
        "_min",
        "_n",
        "_overflow",
        "_sf",
        "_sum",
        "_total",
        "__weakref__",
    )

    def __init__(
        self,
        *,
        lowest: float = 1,
        highest: float = 3_600_000_000,
        significant_figures: int = 2,
    ) -> None:
        if hasattr(self, "_n"):
            raise RuntimeError("LatencyHistogram is already initialised")
        lo = _as_double(lowest)
        hi = _as_double(highest)
        sf = operator.index(significant_figures)
        if not 1 <= sf <= 5:
            raise ValueError(f"significant_figures must be in 1..5, got {sf}")
        n = _check_layout(lo, hi, sf)
        self._lowest = lo
        self._hi = hi
        self._inv = 1.0 / lo
        self._sf = sf
        self._k = _SUB_BITS[sf - 1]
        self._n = n
        self._lock = threading.Lock()
        self._counts = [0] * n
        self._clear()

    def _clear(self) -> None:
        self._total = 0
        self._overflow = 0
        self._sum = 0.0
        self._min = _INF
        self._max = 0.0

    # -- recording ---------------------------------------------------------------

    def record(self, value: float, count: int = 1) -> None:
        """Record ``count`` occurrences of ``value`` (a number >= 0)."""
        if count.__class__ is not int:
            count = operator.index(count)
        v = value if value.__class__ is float else _as_double(value)
        if not v >= 0.0:
            _check_value(v)
        if count != 1:
            if count < 0:
                raise ValueError(f"count must be >= 0, got {count}")
            if count > _INT64_MAX:
                raise OverflowError("count too large")
            if count == 0:
                return
        with self._lock:
            if v > self._hi:
                v = self._hi
                self._overflow += count
            v += 0.0
            u = v * self._inv
            if u < 1.0:
                u = 1.0
            self._counts[_bucket_index(u, self._k)] += count
            self._total += count
            self._sum += v * count
            if v < self._min:
                self._min = v
            if v > self._max:
                self._max = v

    def record_many(self, values: Iterable[float] | Any) -> None:
        """Record every value of a numpy array, buffer or iterable (all or nothing)."""
        np = _numpy()
        arr = _as_array(values)
        if arr is None:
            arr = np.array([_as_double(x) for x in values], dtype=np.float64)
        if arr.size == 0:
            return
        if arr.dtype.kind == "i":
            neg = arr < 0
            if neg.any():
                i = int(np.argmax(neg))
                raise ValueError(
                    f"record_many: element {i} is negative ({int(arr[i])}); nothing recorded"
                )
            x = arr.astype(np.float64)
        else:
            bad = ~(arr >= 0.0)
            if bad.any():
                i = int(np.argmax(bad))
                v = float(arr[i])
                if v != v:
                    raise ValueError(f"record_many: element {i} is NaN; nothing recorded")
                raise ValueError(
                    f"record_many: element {i} is negative ({v!r}); nothing recorded"
                )
            x = arr + 0.0
        ovf = int(np.count_nonzero(x > self._hi))
        x = np.minimum(x, self._hi)
        u = np.maximum(x * self._inv, 1.0)
        idx = (u.view(np.uint64) >> np.uint64(52 - self._k)) - np.uint64(1023 << self._k)
        bc = np.bincount(idx.astype(np.intp), minlength=self._n)
        s = float(np.add.accumulate(x)[-1])  # left to right, like the C loop
        mn = float(x.min())
        mx = float(x.max())
        nz = np.flatnonzero(bc)
        with self._lock:
            counts = self._counts
            for i, c in zip(nz.tolist(), bc[nz].tolist()):
                counts[i] += c
            self._overflow += ovf
            self._total += int(x.size)
            self._sum += s
            if mn < self._min:
                self._min = mn
            if mx > self._max:
                self._max = mx

    # -- reading -----------------------------------------------------------------

    def _snapshot(self) -> tuple[list[int], int, float, float, float, int]:
        with self._lock:
            return (
                self._counts[:],
                self._total,
                self._sum,
                self._min,
                self._max,
                self._overflow,
            )

    def _mid(self, i: int) -> float:
        k = self._k
        return math.ldexp((2 << k) + 2 * (i & ((1 << k) - 1)) + 1, (i >> k) - k - 1) * self._lowest

    def _upper(self, i: int) -> float:
        k = self._k
        return math.ldexp((1 << k) + (i & ((1 << k) - 1)) + 1, (i >> k) - k) * self._lowest

    def _quantiles_sorted(self, qs: list[float]) -> list[float]:
        counts, _, _, mn, mx, _ = self._snapshot()
        total = sum(counts)
        m = len(qs)
        if total == 0:
            return [_NAN] * m
        out = [_NAN] * m
        j = 0
        while j < m and qs[j] <= 0.0:
            out[j] = mn
            j += 1
        jend = m
        while jend > j and qs[jend - 1] >= 1.0:
            jend -= 1
            out[jend] = mx
        cum = 0
        ftotal = float(total)
        for i, c in enumerate(counts):
            if j >= jend:
                break
            if not c:
                continue
            cum += c
            while j < jend:
                r = max(math.ceil(qs[j] * ftotal), 1)
                if r > cum:
                    break
                x = self._mid(i)
                if x < mn:
                    x = mn
                if x > mx:
                    x = mx
                out[j] = x
                j += 1
        while j < jend:
            out[j] = mx
            j += 1
        return out

    def quantile(self, q: float) -> float:
        """Value at quantile ``q`` in [0, 1] (nearest rank); NaN when empty."""
        return self._quantiles_sorted([_check_q(q)])[0]

    def quantiles(self, qs: Iterable[float]) -> list[float]:
        """``[quantile(q) for q in qs]`` from one consistent pass over the buckets."""
        ql = [_check_q(q) for q in qs]
        order = sorted(range(len(ql)), key=ql.__getitem__)
        got = self._quantiles_sorted([ql[i] for i in order])
        res = [_NAN] * len(ql)
        for pos, i in enumerate(order):
            res[i] = got[pos]
        return res

    @property
    def count(self) -> int:
        """Number of recorded values."""
        return self._total

    @property
    def overflow(self) -> int:
        """How many recorded values were above ``highest`` (and counted as ``highest``)."""
        return self._overflow

    @property
    def min(self) -> float:
        """Smallest recorded value (NaN when empty)."""
        with self._lock:
            return self._min if self._total else _NAN

    @property
    def max(self) -> float:
        """Largest recorded value, at most ``highest`` (NaN when empty)."""
        with self._lock:
            return self._max if self._total else _NAN

    @property
    def mean(self) -> float:
        """Arithmetic mean of the recorded (clamped) values (NaN when empty)."""
        with self._lock:
            return self._sum / self._total if self._total else _NAN

    @property
    def sum(self) -> float:
        """Sum of the recorded (clamped) values."""
        return self._sum

    @property
    def lowest(self) -> float:
        return self._lowest

    @property
    def highest(self) -> float:
        return self._hi

    @property
    def significant_figures(self) -> int:
        return self._sf

    @property
    def bucket_count(self) -> int:
        """Number of buckets (each an 8-byte counter in C)."""
        return self._n

    def buckets(self) -> list[tuple[float, int]]:
        """List of (exclusive upper bound, cumulative count) for the non-empty buckets,
        in value units, then ``(inf, count)``."""
        counts = self._snapshot()[0]
        out = []
        cum = 0
        for i, c in enumerate(counts):
            if c:
                cum += c
                out.append((self._upper(i), cum))
        out.append((_INF, cum))
        return out

    # -- combining and serialization ---------------------------------------------

    def _same_layout(self, other: Any) -> None:
        if (
            self.lowest != other.lowest
            or self.highest != other.highest
            or self.significant_figures != other.significant_figures
        ):
            raise ValueError(
                "cannot merge histograms with different layouts "
                f"({self.lowest!r}, {self.highest!r}, {self.significant_figures}) vs "
                f"({other.lowest!r}, {other.highest!r}, {other.significant_figures})"
            )

    def merge(self, other: Any) -> None:
        """Add ``other``'s counts into this histogram (same layout required).

        ``other`` may be the native implementation (merged through ``to_bytes``)."""
        if not isinstance(other, LatencyHistogram):
            if hasattr(other, "to_bytes") and hasattr(other, "significant_figures"):
                self._same_layout(other)
                other = LatencyHistogram.from_bytes(other.to_bytes())
            else:
                raise TypeError(f"can only merge a LatencyHistogram, not {type(other).__name__}")
        self._same_layout(other)
        counts, _, s, mn, mx, ovf = other._snapshot()
        total = sum(counts)
        if not total:
            return
        with self._lock:
            mine = self._counts
            for i, c in enumerate(counts):
                if c:
                    mine[i] += c
            self._overflow += ovf
            self._total += total
            self._sum += s
            if mn < self._min:
                self._min = mn
            if mx > self._max:
                self._max = mx

    def reset(self) -> None:
        """Forget every recorded value (the layout stays)."""
        with self._lock:
            self._counts = [0] * self._n
            self._clear()

    def to_bytes(self) -> bytes:
        """Compact, versioned, CRC-checked serialization (identical to the native one)."""
        counts, _, s, mn, mx, ovf = self._snapshot()
        body = bytearray()
        total = 0
        nxt = 0
        for i, c in enumerate(counts):
            if c:
                _put_varint(body, i - nxt)
                _put_varint(body, c)
                nxt = i + 1
                total += c
        if total == 0:
            s, mn, mx, ovf = 0.0, _INF, 0.0, 0
        else:
            ovf = min(ovf, total)
            mn = min(mn, mx)
        out = bytearray(_HEAD.pack(_MAGIC, FORMAT_VERSION, self._sf, self._lowest, self._hi, s, mn, mx))
        _put_varint(out, ovf)
        out += body
        out += _CRC.pack(zlib.crc32(out))
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: Any) -> LatencyHistogram:
        """Rebuild a histogram from ``to_bytes`` output; ValueError if corrupt/truncated."""
        if isinstance(data, str):
            raise TypeError("from_bytes needs a bytes-like object, not str")
        try:
            buf = memoryview(data).cast("B").tobytes()
        except TypeError:
            raise TypeError(
                f"from_bytes needs a bytes-like object, not {type(data).__name__}"
            ) from None
        n = len(buf)
        if n < 6:
            raise ValueError("LatencyHistogram data is truncated")
        if buf[:4] != _MAGIC:
            raise ValueError("not LatencyHistogram data (bad magic)")
        if buf[4] != FORMAT_VERSION:
            raise ValueError("unsupported LatencyHistogram format version")
        if n < _ENCODED_MIN:
            raise ValueError("LatencyHistogram data is truncated")
        end = n - _CRC.size
        if zlib.crc32(buf[:end]) != _CRC.unpack_from(buf, end)[0]:
            raise ValueError("LatencyHistogram data checksum mismatch")
        corrupt = ValueError("LatencyHistogram data is corrupt")
        _, _, sf, lowest, highest, s, mn, mx = _HEAD.unpack_from(buf, 0)
        try:
            h = cls(lowest=lowest, highest=highest, significant_figures=sf)
        except ValueError:
            raise corrupt from None
        got = _get_varint(buf, _HEAD.size, end)
        if got is None:
            raise corrupt
        ovf, pos = got
        counts = h._counts
        nb = h._n
        total = 0
        nxt = 0
        while pos < end:
            g = _get_varint(buf, pos, end)
            if g is None:
                raise corrupt
            gap, pos = g
            c = _get_varint(buf, pos, end)
            if c is None:
                raise corrupt
            cnt, pos = c
            if gap >= nb or nxt + gap >= nb or cnt == 0 or total + cnt > _U64:
                raise corrupt
            i = nxt + gap
            counts[i] = cnt
            total += cnt
            nxt = i + 1
        if total == 0:
            if ovf != 0 or _bits(s) != 0 or mn != _INF or _bits(mx) != 0:
                raise corrupt
        elif (
            ovf > total
            or not mn >= 0.0
            or not mx >= mn
            or not mx <= highest
            or not s >= 0.0
            or math.copysign(1.0, mn) < 0
            or math.copysign(1.0, mx) < 0
        ):
            raise corrupt
        h._total = total
        h._overflow = ovf
        h._sum = s
        h._min = mn
        h._max = mx
        return h

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return (_from_bytes, (self.to_bytes(),))

    def __copy__(self) -> LatencyHistogram:
        return LatencyHistogram.from_bytes(self.to_bytes())

    def __deepcopy__(self, memo: Any) -> LatencyHistogram:
        return self.__copy__()

    def __repr__(self) -> str:
        return (
            f"LatencyHistogram(lowest={self._lowest!r}, highest={self._hi!r}, "
            f"significant_figures={self._sf}) <count={self._total}>"
        )
