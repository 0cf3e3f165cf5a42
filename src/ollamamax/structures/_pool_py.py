"""Pure-Python ``ObjectPool``: the executable specification of ``_pool_c``.

``ObjectPool(factory, *, maxsize, reset=None)`` keeps up to ``maxsize`` idle objects
for reuse.  ``acquire()`` never blocks: it hands out the most recently released idle
object (LIFO, cache-warm), or a new one from ``factory()``.  ``release(obj)`` runs
``reset(obj)`` and keeps the object if fewer than ``maxsize`` are idle; otherwise it is
dropped.

Bookkeeping: the pool remembers every object it handed out (keyed by ``id()``, with a
strong reference, so an id cannot be reused while the object is out), which makes
the double-release / foreign-object check exact and O(1).  Consequently an acquired
object that is never released stays referenced by the pool and counted in
``in_use``; hand it back with ``release`` or give it up with ``discard``.

``reset`` that raises: the object is dropped (not kept, no longer in use), the
counters stay consistent, and the exception propagates to the caller of
``release``.  ``factory`` that raises: nothing is counted and the exception
propagates from ``acquire``.

Not thread-safe beyond the GIL: ``factory`` and ``reset`` run without any lock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

__all__ = ["ObjectPool", "PoolInfo"]

T = TypeVar("T")
_MISSING: Any = object()


class PoolInfo(NamedTuple):
    """Counters of an :class:`ObjectPool` (the ``functools`` CacheInfo idiom)."""

    created: int
    reused: int
    idle: int
    in_use: int
    maxsize: int


def _validate(factory: Any, maxsize: Any, reset: Any) -> None:
    if not callable(factory):
        raise TypeError("factory must be callable")
    if reset is not None and not callable(reset):
        raise TypeError("reset must be callable or None")
    if isinstance(maxsize, bool) or not isinstance(maxsize, int):
        raise TypeError(f"maxsize must be an int, not {type(maxsize).__name__}")
    if not 0 <= maxsize <= 1 << 40:
        raise ValueError(f"maxsize must be between 0 and 2**40, got {maxsize}")


class _Lease(Generic[T]):
    """``with pool.take() as obj:`` -- acquires on enter, releases on exit."""

    __slots__ = ("_obj", "_pool")

    def __init__(self, pool: ObjectPool[T]) -> None:
        self._pool = pool
        self._obj: Any = None

    def __enter__(self) -> T:
        if self._obj is not None:
            raise RuntimeError("this take() context is already in use")
        obj = self._pool.acquire()
        self._obj = obj
        return obj

    def __exit__(self, *exc_info: object) -> None:
        obj, self._obj = self._obj, None
        self._pool.release(obj)


class ObjectPool(Generic[T]):
    """A bounded pool of reusable objects; see the module docstring."""

    __slots__ = ("__weakref__", "_created", "_factory", "_idle", "_maxsize", "_out", "_reset", "_reused")

    def __init__(self, factory: Callable[[], T], *, maxsize: int,
                 reset: Callable[[T], object] | None = None) -> None:
        _validate(factory, maxsize, reset)
        self._factory = factory
        self._reset = reset
        self._maxsize = maxsize
        self._idle: list[T] = []
        self._out: dict[int, T] = {}
        self._created = 0
        self._reused = 0

    @property
    def maxsize(self) -> int:
        return self._maxsize

    def acquire(self) -> T:
        """An idle object, or a new one from ``factory()``.  Never blocks."""
        idle = self._idle
        if idle:
            obj = idle.pop()
            self._reused += 1
        else:
            obj = self._factory()
            if id(obj) in self._out:
                raise ValueError("factory returned an object that is already in use")
            self._created += 1
        self._out[id(obj)] = obj
        return obj

    def release(self, obj: T) -> None:
        """Give ``obj`` back: ``reset(obj)``, then keep it if there is room.

        ValueError if ``obj`` is not currently acquired from this pool (released
        twice, or foreign)."""
        if self._out.pop(id(obj), _MISSING) is _MISSING:
            raise ValueError("object was not acquired from this pool or was already released")
        if self._reset is not None:
            self._reset(obj)  # raises: obj is dropped, the exception propagates
        if len(self._idle) < self._maxsize:
            self._idle.append(obj)

    def discard(self, obj: T) -> None:
        """Forget an acquired object without keeping it (e.g. a broken connection).

        ValueError if ``obj`` is not currently acquired from this pool."""
        if id(obj) not in self._out:
            raise ValueError("object was not acquired from this pool or was already released")
        del self._out[id(obj)]

    def take(self) -> _Lease[T]:
        """Context manager: ``with pool.take() as obj:`` acquires, then releases."""
        return _Lease(self)

    def clear(self) -> None:
        """Drop every idle object (objects in use are not affected)."""
        idle = self._idle
        while idle:
            idle.pop()

    def stats(self) -> PoolInfo:
        """``PoolInfo(created, reused, idle, in_use, maxsize)``."""
        return PoolInfo(self._created, self._reused, len(self._idle), len(self._out), self._maxsize)

    def __len__(self) -> int:
        """Number of idle objects."""
        return len(self._idle)

    def __repr__(self) -> str:
        return (f"<ollamamax.ObjectPool maxsize={self._maxsize} idle={len(self._idle)} "
                f"in_use={len(self._out)}>")
