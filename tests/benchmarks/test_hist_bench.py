"""pytest-benchmark suite for LatencyHistogram vs third-party histograms/sketches.

Run: ``python -m pytest tests/benchmarks/test_hist_bench.py -m bench --benchmark-group-by=group``.
Nothing is asserted about speed; the ratios script (ratios_hist.py) prints the goals.
"""

from __future__ import annotations

import numpy as np
import pytest

from ollamamax.structures import hist as _hist

pytestmark = pytest.mark.bench

IMPLS = [pytest.param(k, id=("native" if k == "c" else "pure")) for k in ("c", "py")]
VALS = np.random.default_rng(1).lognormal(8.0, 2.0, 1000).tolist()


def _ns(kind: str):
    ns = _hist.IMPLEMENTATIONS[kind]
    if ns is None:
        pytest.skip("native _hist_c not built")
    return ns


def _loop(f) -> None:
    for v in VALS:
        f(v)


@pytest.mark.benchmark(group="record x1000")
@pytest.mark.parametrize("kind", IMPLS)
def test_hist_record(benchmark, kind: str) -> None:
    benchmark(_loop, _ns(kind).LatencyHistogram().record)


@pytest.mark.benchmark(group="record x1000")
def test_trivial_cdef_call(benchmark) -> None:
    benchmark(_loop, _ns("c")._Trivial().call)


@pytest.mark.benchmark(group="record x1000")
def test_fastdigest_update(benchmark) -> None:
    fd = pytest.importorskip("fastdigest")
    benchmark(_loop, fd.TDigest().update)


@pytest.mark.benchmark(group="record x1000")
def test_ddsketch_add(benchmark) -> None:
    dd = pytest.importorskip("ddsketch")
    benchmark(_loop, dd.DDSketch(relative_accuracy=0.01).add)


@pytest.mark.benchmark(group="record x1000")
def test_hdrhistogram_record(benchmark) -> None:
    pytest.importorskip("hdrh")
    from hdrh.histogram import HdrHistogram

    benchmark(_loop, HdrHistogram(1, 3_600_000_000, 2).record_value)


@pytest.mark.benchmark(group="record x1000")
def test_prometheus_observe(benchmark) -> None:
    pc = pytest.importorskip("prometheus_client")
    h = pc.Histogram("lat", "latency", registry=pc.CollectorRegistry())
    benchmark(_loop, h.observe)


BATCH = np.random.default_rng(2).lognormal(8.0, 2.0, 1_000_000)


@pytest.mark.benchmark(group="batch 1M float64")
@pytest.mark.parametrize("kind", IMPLS)
def test_hist_record_many_float64(benchmark, kind: str) -> None:
    benchmark(_ns(kind).LatencyHistogram().record_many, BATCH)


@pytest.mark.benchmark(group="batch 1M float64")
@pytest.mark.parametrize("kind", IMPLS)
def test_hist_record_many_int64(benchmark, kind: str) -> None:
    benchmark(_ns(kind).LatencyHistogram().record_many, BATCH.astype(np.int64))


@pytest.mark.benchmark(group="batch 1M float64")
def test_numpy_log_bincount(benchmark) -> None:
    def ref() -> None:
        np.bincount(np.maximum((np.log(BATCH) * 91.0).astype(np.intp), 0))

    benchmark(ref)


@pytest.mark.benchmark(group="batch 1M float64")
def test_fastdigest_batch_update(benchmark) -> None:
    fd = pytest.importorskip("fastdigest")
    benchmark(fd.TDigest().batch_update, BATCH)


@pytest.mark.benchmark(group="read")
@pytest.mark.parametrize("kind", IMPLS)
def test_hist_quantiles(benchmark, kind: str) -> None:
    h = _ns(kind).LatencyHistogram()
    h.record_many(BATCH)
    benchmark(h.quantiles, [0.5, 0.9, 0.99, 0.999])


@pytest.mark.benchmark(group="read")
@pytest.mark.parametrize("kind", IMPLS)
def test_hist_buckets(benchmark, kind: str) -> None:
    h = _ns(kind).LatencyHistogram()
    h.record_many(BATCH)
    benchmark(h.buckets)


@pytest.mark.benchmark(group="serialize")
@pytest.mark.parametrize("kind", IMPLS)
def test_hist_round_trip(benchmark, kind: str) -> None:
    H = _ns(kind).LatencyHistogram
    h = H()
    h.record_many(BATCH)
    benchmark(lambda: H.from_bytes(h.to_bytes()))


@pytest.mark.benchmark(group="serialize")
@pytest.mark.parametrize("kind", IMPLS)
def test_hist_merge(benchmark, kind: str) -> None:
    H = _ns(kind).LatencyHistogram
    a, b = H(), H()
    b.record_many(BATCH)
    benchmark(a.merge, b)
