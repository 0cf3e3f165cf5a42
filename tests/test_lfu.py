"""LFUCache: every method and error case, eviction policy, TTL, and model-based
tests, against both implementations (and native vs pure, op by op)."""

from __future__ import annotations

import gc
import weakref

import cachetools
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ollamamax.structures import _lfu_py
from ollamamax.structures import lfu as _lfu

HAVE_NATIVE = _lfu.IMPLEMENTATIONS["c"] is not None


class FakeTimer:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Val:
    """A weak-referenceable value."""


class Collide:
    """Keys that all hash alike but compare by ``n``."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __hash__(self) -> int:
        return 42

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Collide) and other.n == self.n


# -- construction ------------------------------------------------------------------

def test_constructor_validation(impl):
    L = impl.LFUCache
    for bad in (0, -1, 1 << 31):
        with pytest.raises(ValueError, match="maxsize"):
            L(bad)
    for bad in (1.5, "10", None, True):
        with pytest.raises(TypeError, match="maxsize"):
            L(bad)
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="ttl"):
            L(10, ttl=bad)
    for bad in ("1", True, [1]):
        with pytest.raises(TypeError, match="ttl"):
            L(10, ttl=bad)
    with pytest.raises(TypeError):
        L(10, 5)  # ttl is keyword-only
    with pytest.raises(TypeError, match="timer"):
        L(10, ttl=1, timer=3)
    c = L(10, ttl=2)
    assert c.maxsize == 10 and c.ttl == 2.0
    assert L(10).ttl is None
    assert c.stats() == (0, 0, 0, 10, 0)
    assert "maxsize=10" in repr(c)


def test_stats_is_a_namedtuple(impl):
    s = impl.LFUCache(3).stats()
    assert isinstance(s, _lfu_py.CacheInfo)
    assert s._fields == ("hits", "misses", "evictions", "maxsize", "currsize")
    assert _lfu.CacheInfo is _lfu_py.CacheInfo


# -- mapping API -------------------------------------------------------------------

def test_get_set_and_counters(impl):
    c = impl.LFUCache(10)
    assert c.get("a") is None
    assert c.get("a", 7) == 7
    c.set("a", 1)
    c["b"] = 2
    assert c.get("a") == 1
    assert c["b"] == 2
    with pytest.raises(KeyError):
        c["zz"]
    assert c.stats() == (2, 3, 0, 10, 2)
    c["a"] = 10  # replace
    assert c["a"] == 10
    assert len(c) == 2


def test_contains_is_not_a_use(impl):
    c = impl.LFUCache(10)
    c["a"] = 1
    f = c.frequency("a")
    assert "a" in c and "b" not in c
    assert c.stats() == (0, 0, 0, 10, 1)
    assert c.frequency("a") == f


def test_pop_and_del(impl):
    c = impl.LFUCache(10)
    c["a"] = 1
    c["b"] = 2
    assert c.pop("a") == 1
    assert "a" not in c
    assert c.pop("a", "dflt") == "dflt"
    assert c.pop("a", None) is None
    with pytest.raises(KeyError):
        c.pop("a")
    del c["b"]
    with pytest.raises(KeyError):
        del c["b"]
    assert len(c) == 0
    assert c.stats() == (0, 0, 0, 10, 0)  # pop/del are not lookups


def test_clear_resets_everything(impl):
    c = impl.LFUCache(4)
    for i in range(10):
        c[i] = i
        c.get(i)
    c.get(-1)
    v = Val()
    c["v"] = v
    ref = weakref.ref(v)
    del v
    c.clear()
    gc.collect()
    assert ref() is None
    assert len(c) == 0
    assert c.stats() == (0, 0, 0, 4, 0)
    assert c.frequency(3) == 0
    c[1] = "x"
    assert c[1] == "x"


def test_unhashable_keys_raise_typeerror(impl):
    c = impl.LFUCache(4)
    key = ["not", "hashable"]
    for op in (lambda: c.get(key), lambda: c[key], lambda: c.set(key, 1),
               lambda: c.__setitem__(key, 1), lambda: key in c, lambda: c.pop(key, None),
               lambda: c.__delitem__(key), lambda: c.frequency(key)):
        with pytest.raises(TypeError):
            op()
    assert c.stats() == (0, 0, 0, 4, 0)


def test_key_equality_is_python_equality(impl):
    c = impl.LFUCache(10)
    c[1] = "int"
    assert c[1.0] == "int" and c[True] == "int"
    c[(1, "a")] = "tuple"
    assert c[(1, "a")] == "tuple"
    c[b"k"] = 1
    c["k"] = 2
    assert c[b"k"] == 1 and c["k"] == 2


def test_none_and_odd_keys(impl):
    c = impl.LFUCache(10)
    c[None] = 1
    c[None] = 2
    assert len(c) == 1 and c[None] == 2
    nan = float("nan")
    assert c.get(nan) is None
    c[nan] = "nan"  # found by identity, like a dict
    assert c[nan] == "nan" and len(c) == 2
    assert c.get(None) == 2
    c[None] = 3
    assert len(c) == 2


def test_get_miss_then_set_other_paths(impl):
    """get-miss then set of the same key after other changes (the native fast path
    must not skip the lookup when the key was inserted in between)."""
    c = impl.LFUCache(10)
    assert c.get("k") is None
    c["k"] = 1
    c["k"] = 2
    assert len(c) == 1 and c["k"] == 2
    assert c.get("j") is None
    c["x"] = 0
    c["j"] = 1
    c["j"] = 5
    assert len(c) == 3 and c["j"] == 5
    assert c.get("m") is None
    c.pop("x")
    c["m"] = 1
    assert len(c) == 3


class EqRaises:
    """Collides with every other instance; equality raises while ``armed``."""

    armed = False

    def __hash__(self) -> int:
        return 42

    def __eq__(self, other: object) -> bool:
        if EqRaises.armed:
            raise ArithmeticError("no equality")
        return self is other


def test_key_whose_eq_raises(impl):
    c = impl.LFUCache(3)
    first, second = EqRaises(), EqRaises()
    c[first] = 1
    try:
        assert c.get(second) is None  # a miss; the native cache remembers it
        EqRaises.armed = True
        with pytest.raises(ArithmeticError):
            c[second] = 2  # the dict insertion compares with ``first``
        with pytest.raises(ArithmeticError):
            c.get(second)
    finally:
        EqRaises.armed = False
    assert len(c) == 1 and c[first] == 1 and second not in c
    for i in range(10):
        c[i] = i
    assert len(c) == 3


def test_hash_collisions(impl):
    c = impl.LFUCache(50)
    keys = [Collide(i) for i in range(20)]
    for k in keys:
        c[k] = k.n
    assert all(c[Collide(i)] == i for i in range(20))
    assert Collide(99) not in c
    assert c.pop(Collide(5)) == 5
    assert Collide(5) not in c and Collide(6) in c


def test_maxsize_bound_and_evictions(impl):
    c = impl.LFUCache(5)
    for i in range(100):
        c[i] = i
        assert len(c) <= 5
    s = c.stats()
    assert s.currsize == 5 and s.evictions == 95
    assert c[99] == 99  # the newest key is always resident after set


def test_maxsize_one(impl):
    c = impl.LFUCache(1)
    c["a"] = 1
    c["b"] = 2
    assert "a" not in c and c["b"] == 2
    assert c.stats().evictions == 1


def test_evicted_and_replaced_values_are_freed(impl):
    c = impl.LFUCache(3)
    v = Val()
    ref = weakref.ref(v)
    c["v"] = v
    del v
    c["v"] = 0  # replaced
    gc.collect()
    assert ref() is None
    v = Val()
    ref = weakref.ref(v)
    c["w"] = v
    del v
    for _ in range(5):  # more frequent keys push the one-off "w" out
        for i in range(10):
            if c.get(i) is None:
                c[i] = i
    assert "w" not in c
    gc.collect()
    assert ref() is None


def test_cache_drop_frees_values(impl):
    c = impl.LFUCache(10)
    v = Val()
    ref = weakref.ref(v)
    c["v"] = v
    v.cache = c  # a cycle through the cache
    del v, c
    gc.collect()
    assert ref() is None


def test_frequency_counts_uses_and_ages(impl):
    c = impl.LFUCache(4)
    assert c.frequency("k") == 0
    for n in range(1, 5):
        c.get("k")
        assert c.frequency("k") == n
    c["k"] = 1  # a set is a use
    assert c.frequency("k") == 5
    for _ in range(40):
        c.get("k")
    assert c.frequency("k") == 31  # saturates (5-bit counters)
    # 60 * maxsize counted increments halve every counter; the saturated key's
    # gets no longer count, so 240 - 31 other increments are needed
    for i in range(300):
        c.get(("other", i))
    assert c.frequency("k") < 31


def test_uninitialised_native_cache_is_safe(impl):
    if not impl.native:
        pytest.skip("native-only")
    L = impl.LFUCache
    c = L.__new__(L)
    with pytest.raises((RuntimeError, SystemError, TypeError)):
        c.get(1)
    with pytest.raises((RuntimeError, SystemError, TypeError)):
        c[1] = 1
    with pytest.raises(RuntimeError):
        c.stats()


# -- eviction policy ---------------------------------------------------------------

def test_frequent_keys_survive_a_scan(impl):
    c = impl.LFUCache(100)
    hot = [("hot", i) for i in range(50)]
    for _ in range(5):
        for k in hot:
            if c.get(k) is None:
                c[k] = 1
    for burst in range(4):  # bursts of one-off keys (4x the capacity) between uses
        for i in range(400):
            if c.get(("scan", burst, i)) is None:
                c[("scan", burst, i)] = 1
        assert sum(k in c for k in hot) >= 45  # an LRU cache would keep none
        for k in hot:
            c.get(k)


def test_new_hot_set_replaces_old(impl):
    """Aging: after a shift, the new hot set takes over (plain LFU would not)."""
    c = impl.LFUCache(100)
    for rnd in range(30):
        for i in range(80):
            if c.get(("old", i)) is None:
                c[("old", i)] = 1
    for rnd in range(30):
        for i in range(80):
            if c.get(("new", i)) is None:
                c[("new", i)] = 1
    assert sum(("new", i) in c for i in range(80)) >= 75


def test_shift_detector_fires_on_a_new_hot_set(impl):
    """A new hot set (keys that miss again and again) trips the detector: the sketch
    is zeroed, so the old hot keys' counts are gone at once."""
    c = impl.LFUCache(100)
    for _ in range(30):
        for i in range(80):
            if c.get(("old", i)) is None:
                c[("old", i)] = 1
    assert c._shifts == 0 and c.frequency(("old", 0)) > 10
    for rnd in range(30):
        for i in range(80):
            if c.get(("new", i)) is None:
                c[("new", i)] = 1
        if rnd == 4:
            assert c._shifts >= 1
            assert c.frequency(("old", 0)) == 0
    assert sum(("new", i) in c for i in range(80)) == 80


def test_shift_detector_ignores_scans_and_a_stationary_load(impl, small_traces):
    for name in ("scan", "static"):
        c = impl.LFUCache(200)
        _hit_ratio(c, small_traces[name][0])
        assert c._shifts == 0, name
    c = impl.LFUCache(100)
    hot = [("hot", i) for i in range(50)]
    for burst in range(20):     # long bursts of one-off keys: many periods of misses
        for _ in range(3):
            for k in hot:
                if c.get(k) is None:
                    c[k] = 1
        for i in range(1000):
            if c.get(("scan", burst, i)) is None:
                c[("scan", burst, i)] = 1
    assert c._shifts == 0
    assert sum(k in c for k in hot) >= 45


def test_shift_detector_state_is_reset_by_clear(impl):
    c = impl.LFUCache(100)
    for keyset in ("a", "b"):
        for _ in range(30):
            for i in range(80):
                if c.get((keyset, i)) is None:
                    c[(keyset, i)] = 1
    assert c._shifts >= 1
    c.clear()
    assert c._shifts == 0 and c.stats() == (0, 0, 0, 100, 0)


@pytest.mark.parametrize("base", [0, 1000, 69811, 159568])
def test_cyclic_shift_is_followed(impl, base):
    """A stale protected set is demoted even when nothing gets promoted: 80 keys
    cycling through a 100-entry cache after a shift all end up resident.  (With
    bases 69811 and 159568 the hash layout left 39 of them out before the stale
    demotion existed.)"""

    def key(n: int) -> int:
        return n * 2654435761 % (1 << 61)

    c = impl.LFUCache(100)
    for phase in (0, 1):
        for _ in range(30):
            for i in range(80):
                k = key(base + phase * 100 + i)
                if c.get(k) is None:
                    c[k] = 1
    assert sum(key(base + 100 + i) in c for i in range(80)) == 80


def _zipf(rng, n_ops, n_keys, s=0.9):
    w = np.arange(1, n_keys + 1, dtype=np.float64) ** -s
    cdf = np.cumsum(w)
    cdf /= cdf[-1]
    perm = rng.permutation(n_keys)
    return perm[np.minimum(np.searchsorted(cdf, rng.random(n_ops), side="right"), n_keys - 1)]


def _hit_ratio(cache, keys, start=0):
    hits = 0
    for i, k in enumerate(keys):
        if cache.get(k) is None:
            cache[k] = k
        elif i >= start:
            hits += 1
    return hits / (len(keys) - start)


@pytest.fixture(scope="module")
def small_traces():
    rng = np.random.default_rng(7)
    n = 20000
    shift = np.concatenate([_zipf(rng, n, 4000), _zipf(rng, n, 4000) + 4000]).tolist()
    z = _zipf(rng, 24000, 4000).tolist()
    scan: list[int] = []
    nxt = 10**6
    for i in range(0, 24000, 1200):
        scan += z[i:i + 1200] + list(range(nxt, nxt + 400))
        nxt += 400
    static = _zipf(rng, 30000, 4000).tolist()
    return {"shift": (shift, n), "scan": (scan, 0), "static": (static, 0)}


def test_hit_ratio_popularity_shift(impl, small_traces):
    keys, start = small_traces["shift"]
    ours = _hit_ratio(impl.LFUCache(200), keys, start)
    lfu = _hit_ratio(cachetools.LFUCache(200), keys, start)
    lru = _hit_ratio(cachetools.LRUCache(200), keys, start)
    assert ours > lfu + 0.2  # plain LFU clings to the old hot set
    assert ours > lru


def test_hit_ratio_scan_resistance(impl, small_traces):
    keys, start = small_traces["scan"]
    ours = _hit_ratio(impl.LFUCache(200), keys, start)
    lru = _hit_ratio(cachetools.LRUCache(200), keys, start)
    assert ours > lru + 0.05  # scans flush an LRU cache


def test_hit_ratio_static_zipf(impl, small_traces):
    keys, start = small_traces["static"]
    ours = _hit_ratio(impl.LFUCache(200), keys, start)
    lru = _hit_ratio(cachetools.LRUCache(200), keys, start)
    assert ours > lru + 0.05


# -- TTL -----------------------------------------------------------------------------

def test_ttl_expiry_counts_as_miss(impl):
    t = FakeTimer()
    c = impl.LFUCache(10, ttl=5, timer=t)
    v = Val()
    ref = weakref.ref(v)
    c["a"] = v
    del v
    t.now += 4.9
    assert c.get("a") is ref()
    t.now += 0.2
    assert c.get("a", "gone") == "gone"
    gc.collect()
    assert ref() is None
    assert c.stats() == (1, 1, 0, 10, 0)
    c["a"] = 1
    t.now += 6
    with pytest.raises(KeyError):
        c["a"]
    assert c.stats().misses == 2


def test_ttl_contains_pop_del_len(impl):
    t = FakeTimer()
    c = impl.LFUCache(10, ttl=1.5, timer=t)
    for k in "abc":
        c[k] = k
    t.now += 1.0
    c["d"] = "d"
    assert len(c) == 4
    t.now += 1.0  # a, b, c expired; d has 0.5 s left
    assert "a" not in c
    assert c.pop("b", None) is None
    with pytest.raises(KeyError):
        c.pop("b")
    with pytest.raises(KeyError):
        del c["c"]
    assert len(c) == 1 and "d" in c
    assert c.stats() == (0, 0, 0, 10, 1)  # expiries are not evictions
    t.now += 1.0
    assert len(c) == 0


def test_ttl_set_refreshes_expiry(impl):
    t = FakeTimer()
    c = impl.LFUCache(10, ttl=2, timer=t)
    c["a"] = 1
    c["b"] = 1
    t.now += 1.5
    c["a"] = 2  # refreshed
    t.now += 1.0
    assert c.get("a") == 2
    assert c.get("b") is None
    t.now += 1.1
    assert c.get("a") is None


def test_ttl_expired_entries_make_room_before_eviction(impl):
    t = FakeTimer()
    c = impl.LFUCache(3, ttl=1, timer=t)
    for k in "abc":
        c[k] = k
    t.now += 2
    c["x"] = 1
    c["y"] = 1
    assert c.stats().evictions == 0
    assert len(c) == 2


def test_ttl_set_on_expired_key(impl):
    t = FakeTimer()
    c = impl.LFUCache(3, ttl=1, timer=t)
    c["a"] = 1
    t.now += 2
    c["a"] = 2
    assert c["a"] == 2 and len(c) == 1


def test_default_timer_is_monotonic(impl):
    c = impl.LFUCache(3, ttl=1000)
    c["a"] = 1
    assert c["a"] == 1


# -- model-based ------------------------------------------------------------------

KEYS = st.integers(0, 14)


class CacheMachine(RuleBasedStateMachine):
    """The cache's contents always equal a dict model; every eviction is accounted."""

    kind = "py"

    def __init__(self) -> None:
        super().__init__()
        self.cache = _lfu.IMPLEMENTATIONS[self.kind].LFUCache(6)
        self.model: dict[int, int] = {}
        self.hits = self.misses = self.evictions = 0
        self.serial = 0

    @rule(k=KEYS)
    def get(self, k: int) -> None:
        v = self.cache.get(k, "missing")
        if k in self.model:
            assert v == self.model[k]
            self.hits += 1
        else:
            assert v == "missing"
            self.misses += 1

    @rule(k=KEYS)
    def set(self, k: int) -> None:
        self.serial += 1
        before = self.cache.stats().evictions
        self.cache[k] = self.serial
        self.model[k] = self.serial
        if self.cache.stats().evictions != before:
            self.evictions += 1
            gone = [key for key in self.model if key not in self.cache]
            assert len(gone) == 1 and gone[0] != k
            del self.model[gone[0]]

    @rule(k=KEYS)
    def pop(self, k: int) -> None:
        assert self.cache.pop(k, None) == self.model.pop(k, None)

    @rule(k=KEYS)
    def contains(self, k: int) -> None:
        assert (k in self.cache) == (k in self.model)

    @rule()
    def clear(self) -> None:
        self.cache.clear()
        self.model.clear()
        self.hits = self.misses = self.evictions = 0

    @invariant()
    def same(self) -> None:
        assert len(self.cache) == len(self.model) <= 6
        assert self.cache.stats() == (self.hits, self.misses, self.evictions, 6, len(self.model))


class NativeCacheMachine(CacheMachine):
    kind = "c"


TestCacheModelPure = CacheMachine.TestCase
TestCacheModelPure.settings = settings(max_examples=80, stateful_step_count=50, deadline=None)


@pytest.mark.skipif(not HAVE_NATIVE, reason="native _lfu_c not built")
class TestCacheModelNative(NativeCacheMachine.TestCase):
    settings = settings(max_examples=80, stateful_step_count=50, deadline=None)


OPS = st.lists(
    st.tuples(st.sampled_from(["get", "set", "pop", "in", "tick"]), st.integers(0, 40)),
    max_size=400,
)


@pytest.mark.skipif(not HAVE_NATIVE, reason="native _lfu_c not built")
@settings(max_examples=100, deadline=None)
@given(ops=OPS, maxsize=st.integers(1, 12), ttl=st.sampled_from([None, 3.0]))
def test_native_and_pure_make_the_same_decisions(ops, maxsize, ttl):
    tc, tp = FakeTimer(), FakeTimer()
    c = _lfu.IMPLEMENTATIONS["c"].LFUCache(maxsize, ttl=ttl, timer=tc)
    p = _lfu_py.LFUCache(maxsize, ttl=ttl, timer=tp)
    for op, k in ops:
        if op == "get":
            assert c.get(k) == p.get(k)
        elif op == "set":
            c[k] = k * 2
            p[k] = k * 2
        elif op == "pop":
            assert c.pop(k, None) == p.pop(k, None)
        elif op == "in":
            assert (k in c) == (k in p)
        else:
            tc.now += 1
            tp.now += 1
        assert c.stats() == p.stats()
    assert [k for k in range(41) if k in c] == [k for k in range(41) if k in p]
    assert [c.frequency(k) for k in range(41)] == [p.frequency(k) for k in range(41)]


@pytest.mark.skipif(not HAVE_NATIVE, reason="native _lfu_c not built")
def test_native_and_pure_agree_on_a_long_trace():
    rng = np.random.default_rng(11)
    keys = _zipf(rng, 30000, 3000).tolist()
    c = _lfu.IMPLEMENTATIONS["c"].LFUCache(150)
    p = _lfu_py.LFUCache(150)
    assert _hit_ratio(c, keys) == _hit_ratio(p, keys)
    assert c.stats() == p.stats()
    assert all((k in c) == (k in p) for k in range(3000))


@pytest.mark.skipif(not HAVE_NATIVE, reason="native _lfu_c not built")
@pytest.mark.parametrize("name", ["shift", "scan"])
def test_native_and_pure_agree_across_shifts_and_scans(small_traces, name):
    keys, start = small_traces[name]
    c = _lfu.IMPLEMENTATIONS["c"].LFUCache(200)
    p = _lfu_py.LFUCache(200)
    assert _hit_ratio(c, keys, start) == _hit_ratio(p, keys, start)
    assert c.stats() == p.stats()
    assert c._shifts == p._shifts
    assert (c._shifts >= 1) == (name == "shift")
    assert all((k in c) == (k in p) for k in set(keys))
    assert [c.frequency(k) for k in keys[-300:]] == [p.frequency(k) for k in keys[-300:]]


# -- admission (TinyLFU filter), on each implementation alone ----------------------
#
# test_frequent_keys_survive_a_scan keeps its hot set in the protected segment, where a
# scan never competes, so it passes even when the admission filter admits everything.
# Here part of the hot set sits in probation, where each one-off key must lose the
# frequency comparison against the entry it would evict.


def _scrambled(n: int) -> int:
    """Integer keys spread over the hash space (deterministic: int hashes are not salted)."""
    return n * 2654435761 % (1 << 61)


@pytest.mark.parametrize("base", [0, 5000, 77777])
def test_admission_keeps_a_hot_set_that_fills_the_cache(impl, base):
    """A hot set as large as the cache (so ~10% of it is in probation), then a scan of
    4x the capacity of one-off keys: the scan keys are refused admission; the hot set
    stays.  (Always admitting lets the scan evict every probation entry: 89 of 100 left.)"""
    c = impl.LFUCache(100)
    hot = [_scrambled(base + i) for i in range(100)]
    for _ in range(10):
        for k in hot:
            if c.get(k) is None:
                c[k] = 1
    assert all(k in c for k in hot)
    scan = [_scrambled(base + 10_000 + i) for i in range(400)]
    for k in scan:
        if c.get(k) is None:
            c[k] = 1
    assert sum(k in c for k in hot) >= 95
    assert sum(k in c for k in scan) <= 5  # the scan keys were the ones to go


@pytest.mark.parametrize("base", [0, 5000, 77777])
def test_admission_prefers_keys_the_sketch_has_seen_often(impl, base):
    """Keys looked up often before they were stored (so they wait in probation, never
    promoted) win every admission contest against one-off keys: a scan of 400 new keys
    leaves (nearly) all 90 of them.  Always admitting would evict them all."""
    c = impl.LFUCache(100)
    hot = [_scrambled(base + i) for i in range(90)]
    for _ in range(8):
        for k in hot:
            assert c.get(k) is None  # misses count in the frequency sketch too
    for k in hot:
        c[k] = 1
    for i in range(400):
        k = _scrambled(base + 10_000 + i)
        if c.get(k) is None:
            c[k] = 1
    assert sum(k in c for k in hot) >= 85
