"""ObjectPool: every method and error case, against both implementations."""

from __future__ import annotations

import gc
import weakref

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ollamamax.structures import _pool_py
from ollamamax.structures import pool as _pool


class Obj:
    """A weak-referenceable object with a state that reset() clears."""

    def __init__(self, n: int = 0) -> None:
        self.n = n
        self.dirty = False


def counter_factory():
    count = [0]

    def make() -> Obj:
        count[0] += 1
        return Obj(count[0])

    return make


# -- construction -----------------------------------------------------------------

def test_constructor_validation(impl):
    P = impl.ObjectPool
    with pytest.raises(TypeError):
        P(Obj)  # maxsize is required and keyword-only
    with pytest.raises(TypeError):
        P(Obj, 4)  # type: ignore[misc]
    with pytest.raises(TypeError, match="factory"):
        P(42, maxsize=4)
    with pytest.raises(TypeError, match="reset"):
        P(Obj, maxsize=4, reset=42)
    with pytest.raises(TypeError, match="maxsize"):
        P(Obj, maxsize=4.0)
    with pytest.raises(TypeError, match="maxsize"):
        P(Obj, maxsize=True)
    with pytest.raises(TypeError, match="maxsize"):
        P(Obj, maxsize="4")
    with pytest.raises(ValueError, match="maxsize"):
        P(Obj, maxsize=-1)
    with pytest.raises(ValueError, match="maxsize"):
        P(Obj, maxsize=1 << 41)
    p = P(Obj, maxsize=3)
    assert p.maxsize == 3
    assert p.stats() == (0, 0, 0, 0, 3)
    assert "maxsize=3" in repr(p)


def test_stats_is_a_namedtuple(impl):
    p = impl.ObjectPool(Obj, maxsize=2)
    s = p.stats()
    assert isinstance(s, _pool_py.PoolInfo)
    assert s._fields == ("created", "reused", "idle", "in_use", "maxsize")
    assert _pool.PoolInfo is _pool_py.PoolInfo


# -- acquire / release ------------------------------------------------------------

def test_acquire_creates_then_reuses_lifo(impl):
    p = impl.ObjectPool(counter_factory(), maxsize=4)
    a, b = p.acquire(), p.acquire()
    assert (a.n, b.n) == (1, 2)
    assert p.stats() == (2, 0, 0, 2, 4)
    p.release(a)
    p.release(b)
    assert p.stats() == (2, 0, 2, 0, 4)
    assert len(p) == 2
    assert p.acquire() is b  # most recently released first
    assert p.acquire() is a
    assert p.stats() == (2, 2, 0, 2, 4)
    c = p.acquire()
    assert c.n == 3
    assert p.stats() == (3, 2, 0, 3, 4)


def test_release_keeps_at_most_maxsize(impl):
    p = impl.ObjectPool(Obj, maxsize=2)
    objs = [p.acquire() for _ in range(5)]
    refs = [weakref.ref(o) for o in objs]
    for o in objs:
        p.release(o)
    assert p.stats() == (5, 0, 2, 0, 2)
    del objs, o
    gc.collect()
    alive = [r() is not None for r in refs]
    assert alive == [True, True, False, False, False]


def test_maxsize_zero_never_keeps(impl):
    p = impl.ObjectPool(Obj, maxsize=0)
    a = p.acquire()
    p.release(a)
    assert p.stats() == (1, 0, 0, 0, 0)
    assert p.acquire() is not a


def test_double_release_and_foreign_object(impl):
    p = impl.ObjectPool(Obj, maxsize=2)
    a = p.acquire()
    p.release(a)
    with pytest.raises(ValueError, match="not acquired"):
        p.release(a)
    with pytest.raises(ValueError, match="not acquired"):
        p.release(Obj())
    with pytest.raises(ValueError, match="not acquired"):
        p.release(None)
    other = impl.ObjectPool(Obj, maxsize=2)
    b = other.acquire()
    with pytest.raises(ValueError):
        p.release(b)
    other.release(b)
    assert p.stats() == (1, 0, 1, 0, 2)


def test_unhashable_objects_are_fine(impl):
    p = impl.ObjectPool(list, maxsize=2)
    a = p.acquire()
    a.append(1)
    p.release(a)
    assert p.acquire() is a


def test_reset_runs_on_release(impl):
    seen = []

    def reset(o: Obj) -> None:
        seen.append(o)
        o.dirty = False

    p = impl.ObjectPool(Obj, maxsize=2, reset=reset)
    a = p.acquire()
    a.dirty = True
    p.release(a)
    assert seen == [a] and not a.dirty
    assert p.acquire() is a


def test_reset_that_raises_drops_the_object(impl):
    def reset(o: Obj) -> None:
        if o.dirty:
            raise RuntimeError("cannot reset")

    p = impl.ObjectPool(Obj, maxsize=2, reset=reset)
    a, b = p.acquire(), p.acquire()
    ref = weakref.ref(a)
    a.dirty = True
    with pytest.raises(RuntimeError, match="cannot reset"):
        p.release(a)
    assert p.stats() == (2, 0, 0, 1, 2)  # dropped: neither idle nor in use
    with pytest.raises(ValueError):
        p.release(a)  # no longer outstanding
    p.release(b)
    assert p.stats() == (2, 0, 1, 0, 2)
    del a
    gc.collect()
    assert ref() is None


def test_factory_that_raises(impl):
    def boom():
        raise OSError("no buffer")

    p = impl.ObjectPool(boom, maxsize=2)
    with pytest.raises(OSError):
        p.acquire()
    assert p.stats() == (0, 0, 0, 0, 2)


def test_factory_returning_an_object_in_use(impl):
    p = impl.ObjectPool(lambda: None, maxsize=2)
    assert p.acquire() is None
    with pytest.raises(ValueError, match="already in use"):
        p.acquire()
    assert p.stats() == (1, 0, 0, 1, 2)
    p.release(None)
    assert p.acquire() is None  # reused from idle
    assert p.stats() == (1, 1, 0, 1, 2)


def test_discard(impl):
    p = impl.ObjectPool(Obj, maxsize=2)
    a = p.acquire()
    ref = weakref.ref(a)
    p.discard(a)
    assert p.stats() == (1, 0, 0, 0, 2)
    with pytest.raises(ValueError):
        p.discard(a)
    with pytest.raises(ValueError):
        p.release(a)
    with pytest.raises(ValueError):
        p.discard(Obj())
    del a
    gc.collect()
    assert ref() is None


def test_clear_drops_idle_only(impl):
    p = impl.ObjectPool(Obj, maxsize=4)
    a, b = p.acquire(), p.acquire()
    p.release(a)
    ref = weakref.ref(a)
    del a
    p.clear()
    gc.collect()
    assert ref() is None
    assert p.stats() == (2, 0, 0, 1, 4)
    p.release(b)
    assert p.stats().idle == 1


def test_pool_drop_frees_idle_and_outstanding(impl):
    p = impl.ObjectPool(Obj, maxsize=4)
    a, b = p.acquire(), p.acquire()
    p.release(a)
    refs = [weakref.ref(a), weakref.ref(b)]
    del a, b, p
    gc.collect()
    assert [r() for r in refs] == [None, None]


def test_outstanding_objects_stay_referenced(impl):
    """The pool keeps the objects it handed out alive (so id() stays unique)."""
    p = impl.ObjectPool(Obj, maxsize=4)
    ref = weakref.ref(p.acquire())
    gc.collect()
    assert ref() is not None
    assert p.stats().in_use == 1


# -- take() -----------------------------------------------------------------------

def test_take_context_manager(impl):
    p = impl.ObjectPool(Obj, maxsize=2)
    with p.take() as a:
        assert isinstance(a, Obj)
        assert p.stats().in_use == 1
    assert p.stats() == (1, 0, 1, 0, 2)
    with p.take() as b:
        assert b is a
    assert p.stats() == (1, 1, 1, 0, 2)


def test_take_releases_on_exception(impl):
    p = impl.ObjectPool(Obj, maxsize=2)
    with pytest.raises(KeyError):
        with p.take():
            raise KeyError("x")
    assert p.stats() == (1, 0, 1, 0, 2)


def test_take_with_failing_reset(impl):
    def reset(o: Obj) -> None:
        raise RuntimeError("reset failed")

    p = impl.ObjectPool(Obj, maxsize=2, reset=reset)
    with pytest.raises(RuntimeError, match="reset failed"):
        with p.take():
            pass
    assert p.stats() == (1, 0, 0, 0, 2)


def test_take_object_is_not_reentrant(impl):
    p = impl.ObjectPool(Obj, maxsize=2)
    lease = p.take()
    with lease:
        with pytest.raises(RuntimeError, match="already in use"):
            lease.__enter__()
    with lease:  # reusable after exit
        pass
    assert p.stats() == (1, 1, 1, 0, 2)


def test_double_release_inside_take(impl):
    p = impl.ObjectPool(Obj, maxsize=2)
    with pytest.raises(ValueError):
        with p.take() as a:
            p.release(a)
    assert p.stats() == (1, 0, 1, 0, 2)


def test_reentrant_reset(impl):
    """A reset hook may use the pool itself."""
    holder = {}

    def reset(o: Obj) -> None:
        pool = holder["pool"]
        with pytest.raises(ValueError):
            pool.release(o)  # already taken out of the in-use set
        x = pool.acquire()
        pool.discard(x)

    p = impl.ObjectPool(Obj, maxsize=4, reset=reset)
    holder["pool"] = p
    a = p.acquire()
    p.release(a)
    assert p.stats() == (2, 0, 1, 0, 4)


def test_many_objects(impl):
    p = impl.ObjectPool(Obj, maxsize=64)
    objs = [p.acquire() for _ in range(1000)]
    assert p.stats() == (1000, 0, 0, 1000, 64)
    for o in objs[::2]:
        p.release(o)
    for o in objs[1::2]:
        p.release(o)
    with pytest.raises(ValueError):
        p.release(objs[0])
    assert p.stats() == (1000, 0, 64, 0, 64)


def test_uninitialised_native_pool_is_safe(impl):
    P = impl.ObjectPool
    if not impl.native:
        pytest.skip("native-only")
    p = P.__new__(P)
    with pytest.raises(RuntimeError):
        p.acquire()
    with pytest.raises(RuntimeError):
        p.release(1)


# -- model-based ----------------------------------------------------------------

class PoolMachine(RuleBasedStateMachine):
    """Compare a pool against a model: a list of idle objects and a dict in use."""

    kind = "py"

    def __init__(self) -> None:
        super().__init__()
        ns = _pool.IMPLEMENTATIONS[self.kind]
        self.maxsize = 3
        self.pool = ns.ObjectPool(counter_factory(), maxsize=self.maxsize, reset=self._reset)
        self.idle: list[Obj] = []
        self.out: dict[int, Obj] = {}
        self.created = self.reused = 0
        self.fail_next_reset = False

    def _reset(self, o: Obj) -> None:
        if self.fail_next_reset:
            self.fail_next_reset = False
            raise RuntimeError("reset")

    @rule()
    def acquire(self) -> None:
        o = self.pool.acquire()
        if self.idle:
            assert o is self.idle.pop()
            self.reused += 1
        else:
            self.created += 1
            assert o.n == self.created
        self.out[id(o)] = o

    @precondition(lambda self: self.out)
    @rule(i=st.integers(0, 100), fail=st.booleans())
    def release(self, i: int, fail: bool) -> None:
        o = list(self.out.values())[i % len(self.out)]
        del self.out[id(o)]
        self.fail_next_reset = fail
        if fail:
            with pytest.raises(RuntimeError):
                self.pool.release(o)
        else:
            self.pool.release(o)
            if len(self.idle) < self.maxsize:
                self.idle.append(o)

    @precondition(lambda self: self.out)
    @rule(i=st.integers(0, 100))
    def discard(self, i: int) -> None:
        o = list(self.out.values())[i % len(self.out)]
        del self.out[id(o)]
        self.pool.discard(o)

    @precondition(lambda self: self.idle)
    @rule()
    def release_idle_object(self) -> None:
        with pytest.raises(ValueError):
            self.pool.release(self.idle[-1])

    @rule()
    def clear(self) -> None:
        self.pool.clear()
        self.idle.clear()

    @invariant()
    def counts(self) -> None:
        assert self.pool.stats() == (self.created, self.reused, len(self.idle), len(self.out), self.maxsize)


class NativePoolMachine(PoolMachine):
    kind = "c"


TestPoolModelPure = PoolMachine.TestCase
TestPoolModelPure.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


@pytest.mark.skipif(_pool.IMPLEMENTATIONS["c"] is None, reason="native _pool_c not built")
class TestPoolModelNative(NativePoolMachine.TestCase):
    settings = settings(max_examples=60, stateful_step_count=40, deadline=None)



def test_factory_handing_out_an_idle_object(impl):
    """A re-entrant factory that releases an object and returns it makes that object
    idle and in use at once; it is then handed out once more, never duplicated."""
    state: list = []
    holder: dict = {}

    def factory() -> Obj:
        if state:
            y = state.pop()
            holder["pool"].release(y)
            return y
        return Obj()

    p = impl.ObjectPool(factory, maxsize=2)
    holder["pool"] = p
    a = p.acquire()
    state.append(a)
    assert p.acquire() is a            # via the factory, while a sits idle
    assert p.stats() == (2, 0, 1, 1, 2)
    assert p.acquire() is a            # from the idle stack: still one in use
    assert p.stats() == (2, 1, 0, 1, 2)
    p.release(a)
    assert p.stats() == (2, 1, 1, 0, 2)
    with pytest.raises(ValueError):
        p.release(a)
    ref = weakref.ref(a)
    del a, p, holder["pool"]
    gc.collect()
    assert ref() is None


# -- garbage collection: cycles through pooled objects ---------------------------------

class Back:
    """An object that refers back to its pool."""

    pool: object = None


def test_cycle_through_idle_object_is_collected(impl):
    p = impl.ObjectPool(Back, maxsize=4)
    a = p.acquire()
    a.pool = p
    p.release(a)                       # idle now, and a -> p -> a
    ref_p, ref_a = weakref.ref(p), weakref.ref(a)
    del a, p
    gc.collect()
    assert ref_p() is None and ref_a() is None


def test_cycle_through_outstanding_object_is_collected(impl):
    p = impl.ObjectPool(Back, maxsize=4)
    a = p.acquire()
    a.pool = p                         # in use, and a -> p -> a
    b = p.acquire()
    b.pool = p
    p.release(b)                       # and an idle one in the same cycle
    refs = [weakref.ref(p), weakref.ref(a), weakref.ref(b)]
    del a, b, p
    gc.collect()
    assert all(r() is None for r in refs)


def test_cycle_through_factory_and_reset_is_collected(impl):
    class Factory(Back):
        def __call__(self) -> Back:
            return Back()

        def reset(self, obj: object) -> None:
            pass

    f = Factory()
    p = impl.ObjectPool(f, maxsize=1, reset=f.reset)
    f.pool = p                         # p -> factory -> p
    ref = weakref.ref(p)
    del p, f
    gc.collect()
    assert ref() is None


def test_gc_sees_pooled_objects(impl):
    p = impl.ObjectPool(Back, maxsize=4)
    a = p.acquire()
    b = p.acquire()
    p.release(b)
    referents = gc.get_referents(p)
    if impl.ObjectPool.__module__.endswith("_pool_py"):
        referents = [x for r in referents if isinstance(r, (list, dict))
                     for x in (r if isinstance(r, list) else r.values())]
    assert any(x is a for x in referents) and any(x is b for x in referents)


def test_pool_alive_while_referenced_survives_collection(impl):
    p = impl.ObjectPool(Back, maxsize=4)
    a = p.acquire()
    a.pool = p
    p.release(a)
    gc.collect()                       # p is referenced from here: nothing is cleared
    assert p.acquire() is a and a.pool is p
    assert p.stats() == (1, 1, 0, 1, 4)
    p.release(a)
