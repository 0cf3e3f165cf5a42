"""asv benchmarks for LatencyHistogram (native vs pure, and third-party peers).

Conventions follow numpy's asv suite: ``params``/``param_names``, ``setup`` builds the
fixture, ``time_*`` times one unit of work, ``peakmem_*`` the peak memory and
``track_*`` a non-time figure.  The implementation is chosen through
``ollamamax.structures.hist.IMPLEMENTATIONS`` so both are measured in the same run.
"""

from __future__ import annotations

import numpy as np

try:
    from ollamamax.structures import hist as _hist
except ImportError:
    try:  # commits before the structures/ package
        from ollamamax import _hist  # type: ignore[no-redef]
    except ImportError:  # a commit from before this structure: asv shows n/a, not failed
        _hist = None  # type: ignore[assignment]

# Fixed, not filtered by what is built: asv discovers the parameters once and indexes
# into them on every commit, so the list must not change with the commit or the build.
# A missing implementation is skipped in setup (_ns raises NotImplementedError).
IMPLS = ["c", "py"]


def _ns(impl: str):
    if _hist is None:
        raise NotImplementedError("ollamamax.structures.hist is not in this commit")  # asv skips
    ns = getattr(_hist, "IMPLEMENTATIONS", {}).get(impl)
    if ns is None:
        raise NotImplementedError(f"implementation {impl!r} not available")  # asv skips
    return ns


def _values(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(8.0, 2.0, n)  # microsecond-like


class HistRecord:
    """1000 single ``record`` calls with varied values."""

    params = [IMPLS]
    param_names = ["impl"]

    def setup(self, impl: str) -> None:
        self.h = _ns(impl).LatencyHistogram()
        self.vals = _values(1000).tolist()

    def time_record(self, impl: str) -> None:
        rec = self.h.record
        for v in self.vals:
            rec(v)

    def time_record_int(self, impl: str) -> None:
        rec = self.h.record
        for v in self.vals:
            rec(int(v))


class HistRecordPeers:
    """The same 1000 values into third-party histograms (reference figures)."""

    params = [["fastdigest", "ddsketch", "hdrhistogram", "prometheus_client"]]
    param_names = ["peer"]

    def setup(self, peer: str) -> None:
        self.vals = _values(1000).tolist()
        try:
            if peer == "fastdigest":
                from fastdigest import TDigest

                self.f = TDigest().update
            elif peer == "ddsketch":
                from ddsketch import DDSketch

                self.f = DDSketch(relative_accuracy=0.01).add
            elif peer == "hdrhistogram":
                from hdrh.histogram import HdrHistogram

                self.f = HdrHistogram(1, 3_600_000_000, 2).record_value
            else:
                from prometheus_client import CollectorRegistry, Histogram

                self.f = Histogram("lat", "latency", registry=CollectorRegistry()).observe
        except ImportError as exc:
            raise NotImplementedError(str(exc)) from None

    def time_record(self, peer: str) -> None:
        f = self.f
        for v in self.vals:
            f(v)


class HistRecordMany:
    """``record_many`` of a numpy array of `size` values of `dtype`."""

    params = [IMPLS, [1_000, 1_000_000], ["float64", "int64", "float32"]]
    param_names = ["impl", "size", "dtype"]

    def setup(self, impl: str, size: int, dtype: str) -> None:
        self.h = _ns(impl).LatencyHistogram()
        self.a = _values(size).astype(dtype)

    def time_record_many(self, impl: str, size: int, dtype: str) -> None:
        self.h.record_many(self.a)


class HistNumpyReference:
    """numpy's own log-bucket histogram of 1M float64 (reference for record_many)."""

    def setup(self) -> None:
        self.a = _values(1_000_000)

    def time_log_bincount(self) -> None:
        np.bincount(np.maximum((np.log(self.a) * 91.0).astype(np.intp), 0))


class HistRead:
    """Readers on a histogram holding 1M values."""

    params = [IMPLS]
    param_names = ["impl"]

    def setup(self, impl: str) -> None:
        self.H = _ns(impl).LatencyHistogram
        self.h = self.H()
        self.h.record_many(_values(1_000_000))
        self.data = self.h.to_bytes()
        self.other = self.H.from_bytes(self.data)

    def time_quantiles(self, impl: str) -> None:
        self.h.quantiles([0.5, 0.9, 0.99, 0.999])

    def time_buckets(self, impl: str) -> None:
        self.h.buckets()

    def time_to_bytes(self, impl: str) -> None:
        self.h.to_bytes()

    def time_from_bytes(self, impl: str) -> None:
        self.H.from_bytes(self.data)

    def time_merge(self, impl: str) -> None:
        self.h.merge(self.other)

    def track_serialized_bytes(self, impl: str) -> int:
        return len(self.data)

    track_serialized_bytes.unit = "bytes"


class HistAccuracy:
    """Largest relative quantile error vs numpy nearest rank (lognormal, 1M values)."""

    params = [IMPLS, [1, 2, 3]]
    param_names = ["impl", "significant_figures"]

    def setup(self, impl: str, sf: int) -> None:
        self.a = _values(1_000_000, seed=42).clip(1, 3.6e9)
        self.h = _ns(impl).LatencyHistogram(significant_figures=sf)
        self.h.record_many(self.a)

    def track_max_relative_error(self, impl: str, sf: int) -> float:
        qs = np.linspace(0, 1, 1001)
        got = np.array(self.h.quantiles(qs.tolist()))
        exact = np.percentile(self.a, qs * 100, method="inverted_cdf")
        return float(np.max(np.abs(got - exact) / exact))

    track_max_relative_error.unit = "ratio"


class HistMemory:
    """Memory of a histogram with the default layout and of many of them."""

    params = [IMPLS]
    param_names = ["impl"]

    def setup(self, impl: str) -> None:
        _ns(impl)  # asv skips (n/a) when the implementation is missing

    def peakmem_thousand_histograms(self, impl: str) -> None:
        H = _ns(impl).LatencyHistogram
        hs = [H() for _ in range(1000)]
        for h in hs:
            h.record(1000)

    def track_counter_bytes(self, impl: str) -> int:
        return _ns(impl).LatencyHistogram().bucket_count * 8

    track_counter_bytes.unit = "bytes"
