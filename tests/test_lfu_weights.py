"""LFUCache with a weight budget (``maxweight``, ``set(key, value, weight)``): validation,
the bounds, admission of heavy entries, weight changes, stats, freed values, and
model-based and differential tests (native against pure, op by op; weighted with every
weight 1 against unweighted).  Each test runs on both implementations (``impl``)."""

from __future__ import annotations

import copy
import gc
import pickle
import weakref

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

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


# -- construction and validation ----------------------------------------------------

def test_maxweight_validation(impl):
    L = impl.LFUCache
    for bad in (0, -1, (1 << 62) + 1):
        with pytest.raises(ValueError, match="maxweight"):
            L(10, maxweight=bad)
    for bad in (1.5, "10", True):
        with pytest.raises(TypeError, match="maxweight"):
            L(10, maxweight=bad)
    c = L(10, maxweight=1 << 62)
    assert c.maxweight == 1 << 62
    assert L(10).maxweight is None
    assert "maxweight=100" in repr(L(10, maxweight=100))
    assert "maxweight" not in repr(L(10))


def test_weight_validation(impl):
    c = impl.LFUCache(10, maxweight=100)
    for bad in (0, -5):
        with pytest.raises(ValueError, match="weight"):
            c.set("k", 1, weight=bad)
    for bad in (1.0, "3", True, None):
        with pytest.raises(TypeError, match="weight"):
            c.set("k", 1, weight=bad)
    assert len(c) == 0 and c.stats() == (0, 0, 0, 10, 0)
    u = impl.LFUCache(10)  # no budget: every entry weighs 1
    u.set("a", 1, weight=1)
    with pytest.raises(ValueError, match="weight budget"):
        u.set("b", 1, weight=2)
    with pytest.raises(TypeError):
        u.set("b", 1, weight=1.0)
    assert [k for k in ("a", "b") if k in u] == ["a"]


def test_stats_keep_the_five_tuple_and_add_weights(impl):
    c = impl.LFUCache(10, maxweight=100)
    c.set("a", 1, weight=30)
    c.set("b", 2, weight=5)
    c["c"] = 3  # weight 1
    s = c.stats()
    assert s == (0, 0, 0, 10, 3) and len(s) == 5
    assert s._fields == ("hits", "misses", "evictions", "maxsize", "currsize")
    _hits, _misses, _evictions, _maxsize, currsize = s  # still unpacks as five
    assert currsize == 3
    assert (s.maxweight, s.currweight) == (100, 36)
    assert "currweight=36" in repr(s)
    for clone in (copy.copy(s), pickle.loads(pickle.dumps(s))):
        assert clone == s and (clone.maxweight, clone.currweight) == (100, 36)
    u = impl.LFUCache(10)
    u["a"] = 1
    u["b"] = 2
    su = u.stats()
    assert su == (0, 0, 0, 10, 2) and (su.maxweight, su.currweight) == (None, 2)
    assert "weight" not in repr(su)


# -- the bounds -----------------------------------------------------------------------

def test_total_weight_never_exceeds_the_budget(impl):
    c = impl.LFUCache(1000, maxweight=1000)
    for i in range(2000):
        c.set(i, i, weight=1 + (i * 37) % 90)
        s = c.stats()
        assert s.currweight <= 1000
        assert s.currsize + s.evictions == i + 1  # nothing was lost uncounted
    assert c.stats().currsize < 100  # the weight bound, not the entry bound, binds


def test_entry_count_still_bounds_light_entries(impl):
    c = impl.LFUCache(5, maxweight=10**9)
    for i in range(50):
        c.set(i, i, weight=3)
    s = c.stats()
    assert s.currsize == 5 and s.currweight == 15 and s.evictions == 45


def test_an_entry_heavier_than_the_budget_is_not_admitted(impl):
    c = impl.LFUCache(10, maxweight=100)
    c.set("small", 1, weight=10)
    c.set("huge", 2, weight=101)
    assert "huge" not in c and c.get("small") == 1
    assert c.stats().evictions == 0 and c.stats().currweight == 10
    # a set that makes a resident key too heavy removes its old (now stale) value
    c.set("small", 3, weight=1000)
    assert "small" not in c and len(c) == 0 and c.stats().currweight == 0


def test_an_entry_of_exactly_the_budget_fits_alone(impl):
    c = impl.LFUCache(10, maxweight=100)
    c.set("all", 1, weight=100)
    assert c["all"] == 1 and c.stats().currweight == 100
    c.set("one", 1, weight=1)  # something must go: a weight contest decides which
    s = c.stats()
    assert s.currweight <= 100 and s.currsize == 1 and s.evictions == 1


def test_a_heavy_one_off_does_not_displace_a_frequent_set(impl):
    """A hot set filling the budget, then heavy one-off keys (a fifth of the budget
    each, looked up once then stored): they lose their admission contests."""
    c = impl.LFUCache(100, maxweight=1000)
    hot = list(range(50))
    for _ in range(10):
        for k in hot:
            if c.get(k) is None:
                c.set(k, k, weight=20)
    assert all(k in c for k in hot)
    # int keys: their hashes (and so the sketch's counters) do not depend on PYTHONHASHSEED,
    # so the outcome is the same in every process (string keys made it vary by one)
    scan = [1000 + i for i in range(200)]
    for k in scan:
        if c.get(k) is None:
            c.set(k, k, weight=200)
    assert sum(k in c for k in hot) >= 45
    assert sum(k in c for k in scan) <= 1


def test_a_heavy_entry_used_often_gets_in(impl):
    c = impl.LFUCache(100, maxweight=1000)
    for k in range(100):  # light entries, used once, fill the budget
        c.set(k, k, weight=10)
    assert c.stats().currweight == 1000
    for _ in range(6):
        assert c.get("heavy") is None  # misses count in the sketch too
    c.set("heavy", "H", weight=300)
    assert c.get("heavy") == "H"
    assert c.stats().currweight <= 1000


def test_weight_changes(impl):
    c = impl.LFUCache(10, maxweight=100)
    for k in "abcd":
        c.set(k, k, weight=20)
    assert c.stats().currweight == 80
    c.set("a", "A", weight=5)  # shrinks: frees budget
    assert c["a"] == "A" and c.stats().currweight == 65
    c.set("b", "B", weight=35)  # grows to the budget: nobody needs to leave
    assert c["b"] == "B" and c.stats().currweight == 80 + 0 and len(c) == 4
    c.set("c", "C", weight=60)  # grows past it: someone (maybe "c" itself) leaves
    s = c.stats()
    assert s.currweight <= 100 and s.evictions >= 1
    assert s.currsize + s.evictions == 4
    if "c" in c:
        assert c["c"] == "C"


def test_weighted_ttl(impl):
    t = FakeTimer()
    c = impl.LFUCache(10, maxweight=100, ttl=5, timer=t)
    c.set("a", 1, weight=60)
    t.now += 3
    c.set("b", 2, weight=30)
    t.now += 3  # "a" expired: its weight is gone, not evicted
    s = c.stats()
    assert s.currsize == 1 and s.currweight == 30 and s.evictions == 0
    c.set("c", 3, weight=70)  # fits because the expired entry made room
    assert c.stats().currweight == 100 and c.stats().evictions == 0
    t.now += 1
    c.set("b", 4, weight=30)  # at 1007: b now expires at 1012, c at 1011
    t.now += 3
    assert c.get("b") == 4 and c.get("c") == 3
    t.now += 1.5
    assert c.stats().currweight == 30 and c.get("b") == 4  # c expired, b not yet


def test_weighted_pop_clear_and_freed_values(impl):
    c = impl.LFUCache(10, maxweight=100)
    v = Val()
    ref = weakref.ref(v)
    c.set("v", v, weight=50)
    del v
    assert c.pop("v") is not None and c.stats().currweight == 0
    gc.collect()
    assert ref() is None
    v = Val()
    ref = weakref.ref(v)
    c.set("w", v, weight=50)
    del v
    c.set("w", 0, weight=200)  # too heavy: removes the old value
    gc.collect()
    assert ref() is None
    vals = [Val() for _ in range(10)]
    refs = [weakref.ref(x) for x in vals]
    for i, x in enumerate(vals):
        c.set(i, x, weight=30)
    del vals, x
    gc.collect()
    assert sum(r() is not None for r in refs) == len(c) <= 3  # the evicted ones died
    c.clear()
    gc.collect()
    assert all(r() is None for r in refs)
    assert c.stats() == (0, 0, 0, 10, 0) and c.stats().currweight == 0


class EqRaises:
    armed = False

    def __hash__(self) -> int:
        return 42

    def __eq__(self, other: object) -> bool:
        if EqRaises.armed:
            raise ArithmeticError("no equality")
        return self is other


def test_weighted_key_whose_eq_raises(impl):
    c = impl.LFUCache(3, maxweight=10)
    first, second = EqRaises(), EqRaises()
    c.set(first, 1, weight=4)
    try:
        EqRaises.armed = True
        with pytest.raises(ArithmeticError):
            c.set(second, 2, weight=4)
    finally:
        EqRaises.armed = False
    assert c[first] == 1 and second not in c
    assert c.stats().currweight == 4
    for i in range(20):
        c.set(i, i, weight=3)
    assert c.stats().currweight <= 10


# -- model-based and differential tests ---------------------------------------------

KEYS = st.integers(0, 14)
WEIGHTS = st.integers(1, 40)
BUDGET = 60


class WeightedMachine(RuleBasedStateMachine):
    """Contents always equal a dict model; every entry that leaves is accounted; the
    total weight is the model's and never exceeds the budget."""

    kind = "py"

    def __init__(self) -> None:
        super().__init__()
        self.cache = _lfu.IMPLEMENTATIONS[self.kind].LFUCache(6, maxweight=BUDGET)
        self.model: dict[int, tuple[int, int]] = {}  # key -> (value, weight)
        self.hits = self.misses = self.evictions = 0
        self.serial = 0

    def _sync_evictions(self, before: int) -> None:
        gone = [k for k in self.model if k not in self.cache]
        assert self.cache.stats().evictions - before >= len(gone)
        self.evictions = self.cache.stats().evictions
        for k in gone:
            del self.model[k]

    @rule(k=KEYS)
    def get(self, k: int) -> None:
        v = self.cache.get(k, "missing")
        if k in self.model:
            assert v == self.model[k][0]
            self.hits += 1
        else:
            assert v == "missing"
            self.misses += 1

    @rule(k=KEYS, w=WEIGHTS)
    def set(self, k: int, w: int) -> None:
        self.serial += 1
        before = self.cache.stats().evictions
        self.cache.set(k, self.serial, weight=w)
        self.model[k] = (self.serial, w)
        self._sync_evictions(before)
        if k not in self.cache:  # it lost its contest: counted as an eviction
            assert self.cache.stats().evictions > before

    @rule(k=KEYS)
    def too_heavy(self, k: int) -> None:
        before = self.cache.stats().evictions
        self.cache.set(k, "x", weight=BUDGET + 1)
        assert k not in self.cache and self.cache.stats().evictions == before
        self.model.pop(k, None)

    @rule(k=KEYS)
    def pop(self, k: int) -> None:
        entry = self.model.pop(k, None)
        assert self.cache.pop(k, None) == (entry[0] if entry else None)

    @precondition(lambda self: self.serial % 7 == 3)
    @rule()
    def clear(self) -> None:
        self.cache.clear()
        self.model.clear()
        self.hits = self.misses = self.evictions = 0

    @invariant()
    def same(self) -> None:
        s = self.cache.stats()
        assert len(self.cache) == len(self.model) <= 6
        assert s == (self.hits, self.misses, self.evictions, 6, len(self.model))
        assert s.currweight == sum(w for _, w in self.model.values()) <= BUDGET


class NativeWeightedMachine(WeightedMachine):
    kind = "c"


TestWeightedModelPure = WeightedMachine.TestCase
TestWeightedModelPure.settings = settings(max_examples=80, stateful_step_count=60, deadline=None)


@pytest.mark.skipif(not HAVE_NATIVE, reason="native _lfu_c not built")
class TestWeightedModelNative(NativeWeightedMachine.TestCase):
    settings = settings(max_examples=80, stateful_step_count=60, deadline=None)


OPS = st.lists(
    st.tuples(st.sampled_from(["get", "set", "setw", "pop", "in", "tick"]), st.integers(0, 40),
              st.integers(1, 130)),
    max_size=400,
)


@pytest.mark.skipif(not HAVE_NATIVE, reason="native _lfu_c not built")
@settings(max_examples=150, deadline=None)
@given(ops=OPS, maxsize=st.integers(1, 12), maxweight=st.integers(1, 120), ttl=st.sampled_from([None, 3.0]))
def test_native_and_pure_make_the_same_weighted_decisions(ops, maxsize, maxweight, ttl):
    tc, tp = FakeTimer(), FakeTimer()
    c = _lfu.IMPLEMENTATIONS["c"].LFUCache(maxsize, ttl=ttl, maxweight=maxweight, timer=tc)
    p = _lfu_py.LFUCache(maxsize, ttl=ttl, maxweight=maxweight, timer=tp)
    for op, k, w in ops:
        if op == "get":
            assert c.get(k) == p.get(k)
        elif op == "set":
            c[k] = k * 2
            p[k] = k * 2
        elif op == "setw":  # weights up to 130: some above the budget
            c.set(k, (k, w), weight=w)
            p.set(k, (k, w), weight=w)
        elif op == "pop":
            assert c.pop(k, None) == p.pop(k, None)
        elif op == "in":
            assert (k in c) == (k in p)
        else:
            tc.now += 1
            tp.now += 1
        sc, sp = c.stats(), p.stats()
        assert sc == sp and sc.currweight == sp.currweight <= maxweight
    assert [k for k in range(41) if k in c] == [k for k in range(41) if k in p]
    assert [c.frequency(k) for k in range(41)] == [p.frequency(k) for k in range(41)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.lists(st.integers(0, 60), max_size=500), maxsize=st.integers(1, 40))
def test_weights_of_one_with_maxweight_equal_to_maxsize_change_nothing(impl, keys, maxsize):
    """With every weight 1 and ``maxweight == maxsize`` the weight bounds equal the entry
    bounds: the weighted cache makes exactly the unweighted cache's decisions."""
    a = impl.LFUCache(maxsize)
    b = impl.LFUCache(maxsize, maxweight=maxsize)
    for i, k in enumerate(keys):
        if i % 9 == 8:
            assert a.pop(k, None) == b.pop(k, None)
        elif a.get(k) is None:
            assert b.get(k) is None
            a[k] = k
            b.set(k, k, weight=1)
        else:
            assert b.get(k) == k
        assert a.stats() == b.stats()
    assert [k for k in range(61) if k in a] == [k for k in range(61) if k in b]


@pytest.mark.skipif(not HAVE_NATIVE, reason="native _lfu_c not built")
def test_native_and_pure_agree_on_a_long_weighted_trace():
    import numpy as np

    rng = np.random.default_rng(5)
    keys = (rng.zipf(1.3, 30000) % 3000).tolist()
    sizes = rng.integers(1, 400, 3000).tolist()
    c = _lfu.IMPLEMENTATIONS["c"].LFUCache(300, maxweight=20000)
    p = _lfu_py.LFUCache(300, maxweight=20000)
    for k in keys:
        a, b = c.get(k), p.get(k)
        assert a == b
        if a is None:
            c.set(k, k, weight=sizes[k])
            p.set(k, k, weight=sizes[k])
    assert c.stats() == p.stats() and c.stats().currweight == p.stats().currweight <= 20000
    assert c.stats().hits > 5000
    assert all((k in c) == (k in p) for k in range(3000))


@pytest.mark.skipif(not HAVE_NATIVE, reason="native _lfu_c not built")
@pytest.mark.parametrize("seed", range(8))
def test_native_and_pure_agree_when_resident_entries_change_weight(seed):
    """Long random traces where resident (often protected) entries are set again with a
    different weight, sometimes past the protected or window bound or the budget."""
    import random

    rng = random.Random(seed)
    maxsize, maxweight = rng.choice([(8, 50), (20, 400), (64, 1000), (3, 7)])
    c = _lfu.IMPLEMENTATIONS["c"].LFUCache(maxsize, maxweight=maxweight)
    p = _lfu_py.LFUCache(maxsize, maxweight=maxweight)
    for step in range(4000):
        k = rng.randrange(maxsize * 2)
        r = rng.random()
        if r < 0.45:
            assert c.get(k) == p.get(k)
        elif r < 0.75:
            w = rng.randint(1, max(1, maxweight // maxsize))
            c.set(k, step, weight=w)
            p.set(k, step, weight=w)
        elif r < 0.95:  # a resident key grows (or shrinks) a lot
            w = rng.randint(1, maxweight)
            c.set(k, step, weight=w)
            p.set(k, step, weight=w)
        else:
            assert c.pop(k, None) == p.pop(k, None)
        sc, sp = c.stats(), p.stats()
        assert sc == sp and sc.currweight == sp.currweight, (seed, step)
    assert [k for k in range(maxsize * 2) if k in c] == [k for k in range(maxsize * 2) if k in p]
