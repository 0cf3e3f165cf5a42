"""asv benchmarks for ObjectPool (native vs pure, and reference pools).

Conventions follow numpy's asv suite: ``params``/``param_names``, ``setup`` builds the
fixture, ``time_*`` times one unit of work, ``track_*`` a non-time figure.  The
implementation is chosen through ``ollamamax.structures.pool.IMPLEMENTATIONS`` so both are
measured in the same run.
"""

from __future__ import annotations

try:
    from ollamamax.structures import pool as _pool
except ImportError:
    try:  # commits before the structures/ package
        from ollamamax import _pool  # type: ignore[no-redef]
    except ImportError:  # a commit from before this structure: asv shows n/a, not failed
        _pool = None  # type: ignore[assignment]

# Fixed, not filtered by what is built: asv discovers the parameters once and indexes
# into them on every commit, so the list must not change with the commit or the build.
# A missing implementation is skipped in setup (_ns raises NotImplementedError).
IMPLS = ["c", "py"]
N = 1000


def _ns(impl: str):
    if _pool is None:
        raise NotImplementedError("ollamamax.structures.pool is not in this commit")  # asv skips
    ns = getattr(_pool, "IMPLEMENTATIONS", {}).get(impl)
    if ns is None:
        raise NotImplementedError(f"implementation {impl!r} not available")  # asv skips
    return ns


def _buffer() -> bytearray:
    return bytearray(4096)


class PoolAcquireRelease:
    """``N`` acquire+release pairs on a pool of 4 KiB buffers."""

    params = [IMPLS, [False, True]]
    param_names = ["impl", "reset"]

    def setup(self, impl: str, reset: bool) -> None:
        self.pool = _ns(impl).ObjectPool(_buffer, maxsize=16, reset=len if reset else None)

    def time_acquire_release(self, impl: str, reset: bool) -> None:
        a, r = self.pool.acquire, self.pool.release
        for _ in range(N):
            r(a())

    def time_take(self, impl: str, reset: bool) -> None:
        take = self.pool.take
        for _ in range(N):
            with take():
                pass

    def track_reused(self, impl: str, reset: bool) -> int:
        a, r = self.pool.acquire, self.pool.release
        for _ in range(N):
            r(a())
        return self.pool.stats().reused


class PoolBurst:
    """Acquire ``burst`` objects, then release them all (the pool keeps 64)."""

    params = [IMPLS, [16, 256]]
    param_names = ["impl", "burst"]

    def setup(self, impl: str, burst: int) -> None:
        self.pool = _ns(impl).ObjectPool(_buffer, maxsize=64)
        self.burst = burst

    def time_burst(self, impl: str, burst: int) -> None:
        a, r = self.pool.acquire, self.pool.release
        objs = [a() for _ in range(burst)]
        for o in objs:
            r(o)


class PoolReferences:
    """The references the goals are stated against."""

    def setup(self) -> None:
        self.idle = [_buffer()]

    def time_bare_list_pop_append(self) -> None:
        pop, app = self.idle.pop, self.idle.append
        for _ in range(N):
            app(pop())

    def time_fresh_bytearray(self) -> None:
        for _ in range(N):
            _buffer()
