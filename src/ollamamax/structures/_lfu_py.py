"""Pure-Python ``LFUCache``: the executable specification of ``_lfu_c``.

Policy (W-TinyLFU, the same decisions as native/src/lfu.c, op for op):

- A *frequency sketch* estimates how often every key (resident or not) was used
  recently: a count-min sketch of 4 saturating 5-bit counters per key (0..31), all
  four in one 64-counter block chosen by the key's hash (``next_pow2(maxsize) / 2``
  blocks), updated conservatively (only the counters at the minimum grow).  After
  ``60 * maxsize`` increments that changed a counter, every counter is halved
  (*aging*), so old popularity fades.  The long memory separates keys near the
  admission boundary of a skewed load; abrupt changes are left to the detector.
  Lookups (``get``/``[]``, hit or miss) and ``set`` count; ``in``, ``pop`` and
  ``del`` do not.
- Entries live in three LRU queues: a *window* (1% of ``maxsize``, at least one
  entry) that every new key enters, and a main area split into *probation* and
  *protected* (90% of main).  A hit in probation promotes to protected; protected
  overflow demotes its least recent entry back to probation.
- When the window overflows, its least recent entry (the *candidate*) moves to
  probation; if main then overflows, the candidate competes with the *victim* (the
  least recent probation entry, else the least recent protected one): the victim is
  evicted only if the sketch says the candidate is strictly more frequent, otherwise
  the candidate is evicted.  One-off keys (scans) therefore pass through the window
  without displacing the frequent keys in main.
- At each halving, protected entries not used during the last ``STALE_EPOCHS``
  halvings move to the LRU end of probation, so a stale hot set is challenged even
  when nothing gets promoted (cyclic patterns after a shift).
- *Shift detector*: ``get``/``[]`` lookups are counted in periods of
  ``max(maxsize, 128)`` requests.  A miss is *recurring* when the same key missed
  in this or the previous period (two Bloom bit sets, 16 bits per request of a
  period, 2 probes).  Moving averages (fixed point x256, weight 1/8) follow the hits
  and the recurring misses per period.  A period with fewer than 70% of the average
  hits (the average being at least 10% of a period) *and* at least period/8
  recurring misses, twice their average, means the hot set changed: the sketch is
  zeroed and every protected entry moves, in order, to the LRU end of probation, so
  the new hot keys are admitted at once; the averages restart there.  A scan (keys
  that never come back) does not trip it.
- *Weights* (``maxweight``; Caffeine's ``maximumWeight``): ``set(key, value, weight=w)``
  gives an entry a weight in ``1..maxweight``.  Besides the entry bounds, the window
  holds at most ``wmax = max(1, maxweight // 100)`` weight, protected at most ``pmax =
  (maxweight - wmax) * 90 // 100``, and the cache at most ``maxweight``.  After an insert
  or a weight change: while the window is over its bounds its LRU entries move to
  probation (this round's *candidates*, oldest first); then, while main has more than
  its entries or the total weight exceeds ``maxweight``, the oldest pending candidate
  (or, when none is pending, the window's LRU entry, moved over) meets the *victim*
  (main's LRU entry that is not a pending candidate: probation's, else protected's) and
  the one the sketch rates lower leaves (the candidate on a tie; the candidate with no
  victim; the victim with no candidate).  So a heavy newcomer must beat main's LRU
  entries one by one, and may itself be the one evicted.  A ``set`` heavier than the
  whole budget stores nothing (and removes the key's old value); it is not a use and
  not an eviction.  Without ``maxweight`` every entry weighs 1, ``weight`` must be 1,
  and nothing above applies; with ``maxweight == maxsize`` and weights of 1 the
  decisions are exactly those of the unweighted cache.
- With ``ttl``, every entry expires ``ttl`` seconds (``timer()``, monotonic) after its
  last ``set``.  Expired entries count as misses and are dropped when met, and
  ``set``/``len``/``stats`` purge them (oldest first, amortised O(1)).  Expiries are not
  counted as evictions.

Every operation is O(1) (amortised over the periodic halving of the sketch, and for
weighted caches over the entries a set moves or evicts: each was put there by one use).
Not thread-safe: guard a cache shared between threads with a lock.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

__all__ = ["CacheInfo", "LFUCache", "spread_hash", "validate_args", "validate_weight"]

_M64 = (1 << 64) - 1
_HALF = bytes(i >> 1 for i in range(256))
_MAXSIZE_LIMIT = 1 << 30
MAXWEIGHT_LIMIT = 1 << 62  # twice it still fits the C code's uint64 sums

WINDOW, PROBATION, PROTECTED = 1, 2, 3
STALE_EPOCHS = 6  # protected entries unused for this many halvings are demoted
SKETCH_CAP = 31  # counters saturate here (5 bits)
SAMPLE_FACTOR = 60  # halve the sketch after SAMPLE_FACTOR * maxsize increments
PROTECTED_PCT = 90  # protected share of the main area
MIN_PERIOD = 128  # the shift detector's period is max(maxsize, MIN_PERIOD) requests
SHIFT_DROP_PCT = 70  # a period below this % of the average hits is a shift ...
SHIFT_MIN_AVG_PCT = 10  # ... if the average hit rate is at least this


class _Counts(NamedTuple):
    hits: int
    misses: int
    evictions: int
    maxsize: int
    currsize: int


class CacheInfo(_Counts):
    """Counters of an :class:`LFUCache` (the ``functools`` CacheInfo idiom).

    The tuple is ``(hits, misses, evictions, maxsize, currsize)``, as before weights
    existed, so unpacking and comparing it keep working; ``maxweight`` (None without a
    weight budget) and ``currweight`` (the total weight; ``currsize`` when every entry
    weighs 1) are attributes beside it."""

    maxweight: int | None
    currweight: int

    def __new__(cls, hits: int, misses: int, evictions: int, maxsize: int, currsize: int,
                maxweight: int | None = None, currweight: int | None = None) -> CacheInfo:
        self = super().__new__(cls, hits, misses, evictions, maxsize, currsize)
        self.maxweight = maxweight
        self.currweight = currsize if currweight is None else currweight
        return self

    def __getnewargs__(self) -> tuple[Any, ...]:  # copy and pickle keep the weights
        return (*self, self.maxweight, self.currweight)

    def __repr__(self) -> str:
        base = super().__repr__()
        if self.maxweight is None:
            return base
        return f"{base[:-1]}, maxweight={self.maxweight}, currweight={self.currweight})"


def spread_hash(h: int) -> int:
    """The 64-bit finaliser (murmur3 fmix64) applied to ``hash(key)``; the C code
    uses the same function so both implementations index the sketch alike."""
    h &= _M64
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _M64
    return h ^ (h >> 33)


def _ema8(avg: int, cur: int) -> int:
    """Moving average with weight 1/8, rounding toward zero like C."""
    d = cur - avg
    return avg + (d // 8 if d >= 0 else -((-d) // 8))


def validate_args(maxsize: Any, ttl: Any, maxweight: Any = None) -> float | None:
    """Checks the constructor's arguments; returns ``ttl`` as a float (or None)."""
    if isinstance(maxsize, bool) or not isinstance(maxsize, int):
        raise TypeError(f"maxsize must be an int, not {type(maxsize).__name__}")
    if not 1 <= maxsize <= _MAXSIZE_LIMIT:
        raise ValueError(f"maxsize must be between 1 and {_MAXSIZE_LIMIT}, got {maxsize}")
    if maxweight is not None:
        if isinstance(maxweight, bool) or not isinstance(maxweight, int):
            raise TypeError(f"maxweight must be an int or None, not {type(maxweight).__name__}")
        if not 1 <= maxweight <= MAXWEIGHT_LIMIT:
            raise ValueError(f"maxweight must be between 1 and {MAXWEIGHT_LIMIT}, got {maxweight}")
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"ttl must be a number of seconds or None, not {type(ttl).__name__}")
    ttl = float(ttl)
    if not ttl > 0.0 or ttl == float("inf"):
        raise ValueError(f"ttl must be a finite number of seconds > 0, got {ttl}")
    return ttl


def validate_weight(weight: Any, maxweight: int | None) -> int:
    """Checks a ``set``'s weight: a positive int, and 1 without a weight budget."""
    if isinstance(weight, bool) or not isinstance(weight, int):
        raise TypeError(f"weight must be an int, not {type(weight).__name__}")
    if weight < 1:
        raise ValueError(f"weight must be >= 1, got {weight}")
    if maxweight is None and weight != 1:
        raise ValueError("weight needs a cache with a weight budget: LFUCache(maxsize, maxweight=...)")
    return int(weight)


class _Sketch:
    """Count-min sketch, 4 rows of 5-bit counters (0..31, one per byte) kept in one 64-counter block."""

    __slots__ = ("mask", "sample", "size", "table")

    def __init__(self, maxsize: int) -> None:
        width = 1
        while width < maxsize:
            width <<= 1
        nblocks = max(1, width >> 1)
        self.mask = nblocks - 1
        self.table = bytearray(nblocks << 6)
        self.size = 0
        self.sample = SAMPLE_FACTOR * maxsize

    def _slots(self, h: int) -> tuple[int, int, int, int]:
        base = (h & self.mask) << 6
        return (
            base + ((h >> 32) & 15),
            base + 16 + ((h >> 36) & 15),
            base + 32 + ((h >> 40) & 15),
            base + 48 + ((h >> 44) & 15),
        )

    def increment(self, h: int) -> bool:
        """Count one use of ``h``; True when this increment triggered the halving."""
        t = self.table
        a, b, c, d = self._slots(h)
        m = min(t[a], t[b], t[c], t[d])
        if m >= SKETCH_CAP:
            return False
        # conservative update: only the counters at the minimum grow
        if t[a] == m:
            t[a] = m + 1
        if t[b] == m:
            t[b] = m + 1
        if t[c] == m:
            t[c] = m + 1
        if t[d] == m:
            t[d] = m + 1
        self.size += 1
        if self.size >= self.sample:
            self.table = bytearray(t.translate(_HALF))
            self.size >>= 1
            return True
        return False

    def frequency(self, h: int) -> int:
        t = self.table
        a, b, c, d = self._slots(h)
        return min(t[a], t[b], t[c], t[d])

    def clear(self) -> None:
        self.table = bytearray(len(self.table))
        self.size = 0


class LFUCache:
    """A bounded mapping with W-TinyLFU eviction, an optional TTL and an optional weight budget.

    ``LFUCache(maxsize, *, ttl=None, maxweight=None, timer=time.monotonic)``.  See the
    module docstring for the policy.  Keys must be hashable; equality is Python equality.
    """

    __slots__ = (
        "_avg_fp",
        "_avg_recur_fp",
        "_data",
        "_epoch",
        "_evictions",
        "_expiry",
        "_hits",
        "_maxsize",
        "_maxweight",
        "_mcap",
        "_misses",
        "_p_hits",
        "_p_recur",
        "_p_req",
        "_pcap",
        "_period",
        "_pmax",
        "_probation",
        "_protected",
        "_seen",
        "_seen_mask",
        "_shifts",
        "_sketch",
        "_timer",
        "_ttl",
        "_wcap",
        "_window",
        "_wmax",
        "_wt",
    )

    def __init__(self, maxsize: int, *, ttl: float | None = None, maxweight: int | None = None,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self._ttl = validate_args(maxsize, ttl, maxweight)
        if not callable(timer):
            raise TypeError("timer must be callable")
        self._timer = timer
        self._maxsize = maxsize
        self._wcap = max(1, maxsize // 100)
        self._mcap = maxsize - self._wcap
        self._pcap = self._mcap * PROTECTED_PCT // 100
        self._maxweight = maxweight
        self._wmax = max(1, maxweight // 100) if maxweight is not None else 0
        self._pmax = (maxweight - self._wmax) * PROTECTED_PCT // 100 if maxweight is not None else 0
        self._wt = [0, 0, 0, 0]  # weight per queue (index 0 unused); kept with maxweight only
        self._period = max(maxsize, MIN_PERIOD)
        seen_bytes = 1
        while seen_bytes < self._period:
            seen_bytes <<= 1
        seen_bytes *= 2  # 16 bits per request of a period
        self._seen_mask = seen_bytes * 8 - 1
        self._p_req: int
        self._p_hits: int
        self._p_recur: int
        self._avg_fp: int
        self._avg_recur_fp: int
        self._shifts: int
        self._seen: tuple[bytearray, bytearray]
        self._reset_detector()
        # key -> [value, queue, spread hash, expiry time, epoch of the last use, weight]
        self._data: dict[Hashable, list[Any]] = {}
        self._window: OrderedDict[Hashable, None] = OrderedDict()
        self._probation: OrderedDict[Hashable, None] = OrderedDict()
        self._protected: OrderedDict[Hashable, None] = OrderedDict()
        self._expiry: OrderedDict[Hashable, None] = OrderedDict()
        self._sketch = _Sketch(maxsize)
        self._epoch = 0  # number of halvings of the sketch so far
        self._hits = self._misses = self._evictions = 0

    # -- properties -----------------------------------------------------------------
    @property
    def maxsize(self) -> int:
        return self._maxsize

    @property
    def ttl(self) -> float | None:
        return self._ttl

    @property
    def maxweight(self) -> int | None:
        return self._maxweight

    # -- internals ----------------------------------------------------------------
    def _queue(self, q: int) -> OrderedDict[Hashable, None]:
        return self._window if q == WINDOW else self._probation if q == PROBATION else self._protected

    def _unlink(self, key: Hashable, entry: list[Any]) -> None:
        del self._queue(entry[1])[key]
        if self._maxweight is not None:
            self._wt[entry[1]] -= entry[5]
        if self._ttl is not None:
            del self._expiry[key]
        del self._data[key]

    def _record(self, h: int) -> None:
        if self._sketch.increment(h):
            self._age()

    def _age(self) -> None:
        """After a halving: protected entries unused for STALE_EPOCHS halvings (a
        prefix of the protected queue, which is in order of last use) move to the LRU
        end of probation, where they meet the next candidates.  Without this, a
        stale protected set is never challenged when nothing gets promoted (e.g. a
        cyclic access pattern after a popularity shift)."""
        self._epoch += 1
        limit = self._epoch - STALE_EPOCHS
        data = self._data
        stale = []
        for k in self._protected:
            entry = data[k]
            if entry[4] > limit:
                break
            stale.append(k)
        if not stale:
            return
        prot, prob, wt = self._protected, self._probation, self._wt
        weighted = self._maxweight is not None
        for k in reversed(stale):
            del prot[k]
            entry = data[k]
            entry[1] = PROBATION
            if weighted:
                wt[PROTECTED] -= entry[5]
                wt[PROBATION] += entry[5]
            prob[k] = None
            prob.move_to_end(k, last=False)

    def _lookup_hit(self) -> None:
        """Feed the shift detector with a get-style hit (before the touch)."""
        self._p_hits += 1
        self._p_req += 1
        if self._p_req >= self._period:
            self._period_end()

    def _lookup_miss(self, h: int) -> None:
        """Feed the shift detector with a get-style miss, then record ``h``."""
        m = (h * 0x9E3779B97F4A7C15) & _M64
        mask = self._seen_mask
        a = ((m >> 40) | (m << 24)) & mask
        b = (m >> 8) & mask
        ia, ba, ib, bb = a >> 3, 1 << (a & 7), b >> 3, 1 << (b & 7)
        s0, s1 = self._seen
        if (s0[ia] & ba and s0[ib] & bb) or (s1[ia] & ba and s1[ib] & bb):
            self._p_recur += 1
        s0[ia] |= ba
        s0[ib] |= bb
        self._p_req += 1
        if self._p_req >= self._period:
            self._period_end()
        self._record(h)

    def _period_end(self) -> None:
        cur = self._p_hits << 8
        recur = self._p_recur << 8
        self._p_req = self._p_hits = self._p_recur = 0
        self._seen = (bytearray(len(self._seen[1])), self._seen[0])
        avg = self._avg_fp
        if avg < 0:
            self._avg_fp = cur
            self._avg_recur_fp = recur
        elif (avg * 100 >= self._period * 256 * SHIFT_MIN_AVG_PCT and cur * 100 < avg * SHIFT_DROP_PCT
              and recur * 8 >= self._period * 256 and recur >= self._avg_recur_fp * 2):
            self._on_shift()
            self._avg_fp = cur
            self._avg_recur_fp = recur
        else:
            self._avg_fp = _ema8(avg, cur)
            self._avg_recur_fp = _ema8(self._avg_recur_fp, recur)

    def _on_shift(self) -> None:
        """The hot set changed: forget the counts, send protected back to probation."""
        self._sketch.clear()
        self._shifts += 1
        prot, prob, data = self._protected, self._probation, self._data
        for k in reversed(prot):
            prob[k] = None
            prob.move_to_end(k, last=False)
            data[k][1] = PROBATION
        prot.clear()
        self._wt[PROBATION] += self._wt[PROTECTED]
        self._wt[PROTECTED] = 0

    def _touch(self, key: Hashable, entry: list[Any]) -> None:
        """Record a use of a resident entry and reposition it in its queue."""
        self._record(entry[2])
        entry[4] = self._epoch
        q = entry[1]
        if q == WINDOW:
            self._window.move_to_end(key)
        elif q == PROTECTED:
            self._protected.move_to_end(key)
        else:
            del self._probation[key]
            self._protected[key] = None
            entry[1] = PROTECTED
            if self._maxweight is not None:
                self._wt[PROBATION] -= entry[5]
                self._wt[PROTECTED] += entry[5]
                self._balance_protected()
            elif len(self._protected) > self._pcap:
                k2, _ = self._protected.popitem(last=False)
                self._probation[k2] = None
                self._data[k2][1] = PROBATION

    def _balance_protected(self) -> None:
        """Weighted: protected overflow (entries or weight) demotes its LRU entries."""
        prot, wt = self._protected, self._wt
        while prot and (len(prot) > self._pcap or wt[PROTECTED] > self._pmax):
            k, _ = prot.popitem(last=False)
            self._probation[k] = None
            entry = self._data[k]
            entry[1] = PROBATION
            wt[PROTECTED] -= entry[5]
            wt[PROBATION] += entry[5]

    def _window_to_probation(self) -> Hashable:
        k, _ = self._window.popitem(last=False)
        self._probation[k] = None
        entry = self._data[k]
        entry[1] = PROBATION
        self._wt[WINDOW] -= entry[5]
        self._wt[PROBATION] += entry[5]
        return k

    def _restore_bounds(self) -> None:
        """Weighted: evict until every bound holds again (see the module docstring)."""
        window, prob, prot, data, wt = self._window, self._probation, self._protected, self._data, self._wt
        freq = self._sketch.frequency
        budget = self._maxweight
        assert budget is not None
        cands: list[Hashable] = []  # this round's candidates, oldest first
        while window and (len(window) > self._wcap or wt[WINDOW] > self._wmax):
            cands.append(self._window_to_probation())
        i = 0  # cands[i:] are pending
        while len(prob) + len(prot) > self._mcap or wt[WINDOW] + wt[PROBATION] + wt[PROTECTED] > budget:
            if i == len(cands) and window:
                cands.append(self._window_to_probation())
            pending = len(cands) - i
            if len(prob) > pending:
                victim = next(iter(prob))
            else:
                victim = next(iter(prot)) if prot else None
            if not pending:
                leaving = victim
            else:
                cand = cands[i]
                i += 1
                if victim is None or freq(data[cand][2]) <= freq(data[victim][2]):
                    leaving = cand
                else:
                    leaving = victim
            self._evictions += 1
            self._unlink(leaving, data[leaving])

    def _expired(self, entry: list[Any]) -> bool:
        return self._ttl is not None and entry[3] <= self._timer()

    def _purge(self) -> None:
        if self._ttl is None or not self._expiry:
            return
        now = self._timer()
        data = self._data
        while self._expiry:
            key = next(iter(self._expiry))
            entry = data[key]
            if entry[3] > now:
                break
            self._unlink(key, entry)

    def _insert(self, key: Hashable, value: Any, h: int, weight: int = 1) -> None:
        self._purge()
        expire = self._timer() + self._ttl if self._ttl is not None else 0.0
        self._record(h)
        data = self._data
        data[key] = [value, WINDOW, h, expire, self._epoch, weight]
        self._window[key] = None
        if self._ttl is not None:
            self._expiry[key] = None
        if self._maxweight is not None:
            self._wt[WINDOW] += weight
            self._restore_bounds()
            return
        if len(self._window) <= self._wcap:
            return
        cand, _ = self._window.popitem(last=False)
        self._probation[cand] = None
        data[cand][1] = PROBATION
        if len(self._probation) + len(self._protected) <= self._mcap:
            return
        victim = next(iter(self._probation))
        if victim is cand:
            victim = next(iter(self._protected)) if self._protected else cand
        if victim is not cand:
            f_cand = self._sketch.frequency(data[cand][2])
            f_victim = self._sketch.frequency(data[victim][2])
            if f_cand > f_victim:
                cand = victim
        # ``cand`` now names the entry that leaves
        self._evictions += 1
        self._unlink(cand, data[cand])

    # -- lookups --------------------------------------------------------------------
    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value for ``key`` (a use: counted as hit or miss), or ``default``."""
        h = spread_hash(hash(key))
        entry = self._data.get(key)
        if entry is not None:
            if not self._expired(entry):
                self._hits += 1
                self._lookup_hit()
                self._touch(key, entry)
                return entry[0]
            self._unlink(key, entry)
        self._misses += 1
        self._lookup_miss(h)
        return default

    def __getitem__(self, key: Hashable) -> Any:
        value = self.get(key, self._MISSING)
        if value is self._MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: Hashable) -> bool:
        """Membership test; not a use (no counters, no reordering)."""
        hash(key)
        entry = self._data.get(key)
        if entry is None:
            return False
        if self._expired(entry):
            self._unlink(key, entry)
            return False
        return True

    # -- updates --------------------------------------------------------------------
    def set(self, key: Hashable, value: Any, weight: int = 1) -> None:
        """Insert or replace ``key`` (counts as a use of ``key``); may evict entries.

        ``weight`` (1..``maxweight``; only 1 without a weight budget) is the entry's share
        of ``maxweight``.  A weight above ``maxweight`` stores nothing and removes ``key``."""
        if weight != 1 or type(weight) is not int:
            weight = validate_weight(weight, self._maxweight)
            if weight > self._maxweight:  # type: ignore[operator]
                hash(key)
                entry = self._data.get(key)
                if entry is not None:
                    self._unlink(key, entry)
                return
        h = spread_hash(hash(key))
        entry = self._data.get(key)
        if entry is not None:
            if not self._expired(entry):
                entry[0] = value
                if self._maxweight is not None:
                    self._update_weighted(key, entry, weight)
                    return
                self._touch(key, entry)
                if self._ttl is not None:
                    entry[3] = self._timer() + self._ttl
                    self._expiry.move_to_end(key)
                return
            self._unlink(key, entry)
        self._insert(key, value, h, weight)

    __setitem__ = set

    def _update_weighted(self, key: Hashable, entry: list[Any], weight: int) -> None:
        wt = self._wt
        wt[entry[1]] += weight - entry[5]
        entry[5] = weight
        self._touch(key, entry)
        self._balance_protected()  # a protected entry may have grown
        self._restore_bounds()
        if self._ttl is not None and key in self._data:
            entry[3] = self._timer() + self._ttl
            self._expiry.move_to_end(key)

    _MISSING: Any = object()

    def pop(self, key: Hashable, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value; ``default`` (or KeyError) if absent."""
        hash(key)
        entry = self._data.get(key)
        if entry is not None:
            self._unlink(key, entry)
            if not self._expired(entry):
                return entry[0]
        if default is LFUCache._MISSING:
            raise KeyError(key)
        return default

    def __delitem__(self, key: Hashable) -> None:
        self.pop(key)

    def clear(self) -> None:
        """Drop every entry and reset the frequency sketch and the counters."""
        self._data.clear()
        self._window.clear()
        self._probation.clear()
        self._protected.clear()
        self._expiry.clear()
        self._sketch.clear()
        self._epoch = 0
        self._hits = self._misses = self._evictions = 0
        self._wt = [0, 0, 0, 0]
        self._reset_detector()

    def _reset_detector(self) -> None:
        self._p_req = self._p_hits = self._p_recur = 0
        self._avg_fp = -1  # moving average of hits per period x256; -1: none yet
        self._avg_recur_fp = 0  # moving average of recurring misses per period x256
        self._shifts = 0
        n = (self._seen_mask >> 3) + 1
        # bit sets of keys that missed in this / the previous period
        self._seen = (bytearray(n), bytearray(n))

    # -- introspection --------------------------------------------------------------
    def __len__(self) -> int:
        self._purge()
        return len(self._data)

    def stats(self) -> CacheInfo:
        """``CacheInfo(hits, misses, evictions, maxsize, currsize)``, with ``maxweight`` and
        ``currweight`` as attributes."""
        self._purge()
        n = len(self._data)
        if self._maxweight is None:
            return CacheInfo(self._hits, self._misses, self._evictions, self._maxsize, n)
        return CacheInfo(self._hits, self._misses, self._evictions, self._maxsize, n,
                         self._maxweight, sum(self._wt))

    def frequency(self, key: Hashable) -> int:
        """The sketch's estimate (0..31) of how often ``key`` was used recently."""
        return self._sketch.frequency(spread_hash(hash(key)))

    def __repr__(self) -> str:
        weights = "" if self._maxweight is None else f" maxweight={self._maxweight} currweight={sum(self._wt)}"
        return (f"<{type(self).__module__}.LFUCache maxsize={self._maxsize} "
                f"currsize={len(self._data)}{weights} ttl={self._ttl}>")
