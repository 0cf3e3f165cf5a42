"""pytest-benchmark suite for LFUCache vs dict, cachetools and theine.

Run: ``python -m pytest tests/benchmarks/test_lfu_bench.py -m bench``.
Each round replays a 100k-op Zipf(0.9) trace on 100k keys (capacity 10k) as a
get-or-set loop; nothing is asserted about speed (ratios and hit ratios on the full
1M-op traces: ``python tests/benchmarks/ratios_lfu.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ollamamax.structures import lfu as _lfu

sys.path.insert(0, str(Path(__file__).resolve().parent))
from traces import zipf_trace  # noqa: E402

pytestmark = pytest.mark.bench

IMPLS = [pytest.param(k, id=("native" if k == "c" else "pure")) for k in ("c", "py")]
CAPACITY = 10_000


@pytest.fixture(scope="module")
def keys() -> list:
    return zipf_trace(100_000).tolist()


def _ns(kind: str):
    ns = _lfu.IMPLEMENTATIONS[kind]
    if ns is None:
        pytest.skip("native _lfu_c not built")
    return ns


def _get_or_set(cache, keys: list) -> None:
    get = cache.get
    for k in keys:
        if get(k) is None:
            cache[k] = k


@pytest.mark.benchmark(group="lfu-get-or-set")
@pytest.mark.parametrize("kind", IMPLS)
def test_lfu_get_or_set(benchmark, kind: str, keys: list) -> None:
    cls = _ns(kind).LFUCache
    benchmark.pedantic(_get_or_set, setup=lambda: ((cls(CAPACITY), keys), {}), rounds=5)


@pytest.mark.benchmark(group="lfu-get-or-set")
def test_reference_dict(benchmark, keys: list) -> None:
    benchmark.pedantic(_get_or_set, setup=lambda: (({}, keys), {}), rounds=5)


@pytest.mark.benchmark(group="lfu-get-or-set")
def test_reference_cachetools_lfu(benchmark, keys: list) -> None:
    cachetools = pytest.importorskip("cachetools")
    benchmark.pedantic(_get_or_set, setup=lambda: ((cachetools.LFUCache(CAPACITY), keys), {}), rounds=3)


@pytest.mark.benchmark(group="lfu-get-or-set")
def test_reference_theine(benchmark, keys: list) -> None:
    theine = pytest.importorskip("theine")

    def run(cache, keys: list) -> None:
        get, put = cache.get, cache.set
        for k in keys:
            if not get(k)[1]:
                put(k, k)

    benchmark.pedantic(run, setup=lambda: ((theine.Cache(CAPACITY), keys), {}), rounds=3)


@pytest.mark.benchmark(group="lfu-hit")
@pytest.mark.parametrize("kind", IMPLS)
def test_lfu_get_hit(benchmark, kind: str) -> None:
    c = _ns(kind).LFUCache(CAPACITY)
    for i in range(1000):
        c[i] = b"value"
    get = c.get

    def run() -> None:
        for i in range(1000):
            get(i)

    benchmark(run)


@pytest.mark.benchmark(group="lfu-hit")
def test_reference_dict_get_hit(benchmark) -> None:
    d = {i: b"value" for i in range(1000)}
    get = d.get

    def run() -> None:
        for i in range(1000):
            get(i)

    benchmark(run)
