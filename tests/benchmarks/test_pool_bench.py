"""pytest-benchmark suite for ObjectPool vs reference pools.

Run: ``python -m pytest tests/benchmarks/test_pool_bench.py -m bench``.
Compare groups with ``--benchmark-group-by=group``; nothing is asserted about speed
(ratios: ``python tests/benchmarks/ratios_pool.py``).
"""

from __future__ import annotations

import pytest

from ollamamax.structures import pool as _pool

pytestmark = pytest.mark.bench

IMPLS = [pytest.param(k, id=("native" if k == "c" else "pure")) for k in ("c", "py")]
N = 1000


def _ns(kind: str):
    ns = _pool.IMPLEMENTATIONS[kind]
    if ns is None:
        pytest.skip("native _pool_c not built")
    return ns


def _buffer() -> bytearray:
    return bytearray(4096)


class ListPool:
    def __init__(self, factory, maxsize: int) -> None:
        self.idle: list = []
        self.factory = factory
        self.maxsize = maxsize

    def acquire(self):
        idle = self.idle
        return idle.pop() if idle else self.factory()

    def release(self, obj) -> None:
        if len(self.idle) < self.maxsize:
            self.idle.append(obj)


def _pairs(acquire, release) -> None:
    for _ in range(N):
        release(acquire())


@pytest.mark.benchmark(group="pool-acquire-release")
@pytest.mark.parametrize("kind", IMPLS)
def test_pool_acquire_release(benchmark, kind: str) -> None:
    p = _ns(kind).ObjectPool(_buffer, maxsize=16)
    benchmark(_pairs, p.acquire, p.release)
    assert p.stats().in_use == 0


@pytest.mark.benchmark(group="pool-acquire-release")
@pytest.mark.parametrize("kind", IMPLS)
def test_pool_take(benchmark, kind: str) -> None:
    p = _ns(kind).ObjectPool(_buffer, maxsize=16)
    take = p.take

    def run() -> None:
        for _ in range(N):
            with take():
                pass

    benchmark(run)


@pytest.mark.benchmark(group="pool-acquire-release")
def test_reference_list_pool(benchmark) -> None:
    p = ListPool(_buffer, 16)
    benchmark(_pairs, p.acquire, p.release)


@pytest.mark.benchmark(group="pool-acquire-release")
def test_reference_bare_list(benchmark) -> None:
    idle = [_buffer()]
    benchmark(_pairs, idle.pop, idle.append)


@pytest.mark.benchmark(group="pool-acquire-release")
def test_reference_fresh_bytearray(benchmark) -> None:
    def run() -> None:
        for _ in range(N):
            _buffer()

    benchmark(run)
