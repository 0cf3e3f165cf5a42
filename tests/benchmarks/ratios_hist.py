"""Ratios of LatencyHistogram against reference histograms, measured in one run.

    python tests/benchmarks/ratios_hist.py [--impl c|py] [--quick]

Prints one table: goal, our figure, the reference measured in the same run, and
met/missed.  Nothing is asserted; figures depend on the machine.  Single-call costs
are the best of several timeit repeats of ``for v in vals: f(v)`` over 4096 varied
values, minus the same loop calling nothing (``for v in vals: pass``), so what is
compared is the call itself.  All reference calls are interleaved with ours so
machine noise hits them alike.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import timeit
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from ollamamax.structures import hist as _hist  # noqa: E402

N_VALS = 4096


def loop_ns(f, vals, number: int) -> float:
    env = {"f": f, "vals": vals}
    t = timeit.timeit("for v in vals: f(v)", globals=env, number=number)
    return t / (number * len(vals)) * 1e9


def empty_loop_ns(vals, number: int) -> float:
    t = timeit.timeit("for v in vals: pass", globals={"vals": vals}, number=number)
    return t / (number * len(vals)) * 1e9


def call_costs(ns, vals, number: int, repeat: int) -> dict[str, float]:
    """Net ns per call (loop overhead subtracted) for ours and every reference."""
    cands: dict[str, object] = {"record": ns.LatencyHistogram().record}
    native = _hist.IMPLEMENTATIONS["c"]
    if native is not None:
        cands["trivial cdef method"] = native._Trivial().call
    cands["float.__abs__ (builtin)"] = float.__abs__
    try:
        from fastdigest import TDigest

        cands["fastdigest.update"] = TDigest().update
    except ImportError:
        pass
    try:
        from ddsketch import DDSketch

        cands["ddsketch.add"] = DDSketch(relative_accuracy=0.01).add
    except ImportError:
        pass
    try:
        from hdrh.histogram import HdrHistogram

        cands["hdrhistogram.record_value"] = HdrHistogram(1, 3_600_000_000, 2).record_value
    except ImportError:
        pass
    try:
        from prometheus_client import CollectorRegistry, Histogram

        cands["prometheus Histogram.observe"] = Histogram(
            "lat", "latency", registry=CollectorRegistry()
        ).observe
    except ImportError:
        pass
    best = {k: float("inf") for k in cands}
    best_empty = float("inf")
    for _ in range(repeat):
        best_empty = min(best_empty, empty_loop_ns(vals, number))
        for name, f in cands.items():
            n = number if name in ("record", "trivial cdef method", "float.__abs__ (builtin)") else max(
                number // 10, 1
            )
            best[name] = min(best[name], loop_ns(f, vals, n))
    return {k: max(v - best_empty, 0.01) for k, v in best.items()} | {"(empty loop)": best_empty}


def best_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def batch_rates(ns, a: np.ndarray, repeat: int) -> dict[str, float]:
    h = ns.LatencyHistogram()
    ai = a.astype(np.int64)
    out = {}

    def numpy_ref() -> None:  # the cheapest numpy log-bucket histogram we know
        idx = (np.log(a) * 91.0).astype(np.intp)
        np.bincount(np.maximum(idx, 0))

    for name, fn in (
        ("record_many float64", lambda: h.record_many(a)),
        ("record_many int64", lambda: h.record_many(ai)),
        ("numpy log+bincount", numpy_ref),
    ):
        out[name] = a.size / best_time(fn, repeat)
    return out


def max_rel_error(ns, n: int) -> tuple[float, float]:
    rng = np.random.default_rng(42)
    a = rng.lognormal(8.0, 2.0, n).clip(1, 3.6e9)
    h = ns.LatencyHistogram()
    h.record_many(a)
    qs = np.concatenate([np.linspace(0, 1, 1001), [0.999, 0.9999, 0.99999]])
    got = np.array(h.quantiles(qs.tolist()))
    exact = np.percentile(a, qs * 100, method="inverted_cdf")
    linear = np.percentile(a, qs * 100)
    return float(np.max(np.abs(got - exact) / exact)), float(np.max(np.abs(got - linear) / linear))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impl", choices=("c", "py"), default="c")
    ap.add_argument("--quick", action="store_true", help="fewer repeats (noisier)")
    args = ap.parse_args(argv)
    ns = _hist.IMPLEMENTATIONS[args.impl]
    if ns is None:
        print("native _hist_c is not built (tools/dev_build.sh hist); use --impl py")
        return 1
    repeat = 3 if args.quick else 7
    number = 30 if args.quick else 100
    n_batch = 2_000_000 if args.quick else 10_000_000

    rng = np.random.default_rng(1)
    vals = rng.lognormal(8.0, 2.0, N_VALS).tolist()  # microsecond-like floats
    calls = call_costs(ns, vals, number, repeat)
    a = rng.lognormal(8.0, 2.0, n_batch)
    rates = batch_rates(ns, a, repeat)
    err_nr, err_lin = max_rel_error(ns, 1_000_000)
    h = ns.LatencyHistogram()
    mem = h.bucket_count * 8

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    print(f"LatencyHistogram ratios  impl={args.impl}  Python {platform.python_version()}  "
          f"numpy {np.__version__}  {cpu}")
    print(f"per-call figures: net ns/call, loop overhead ({calls['(empty loop)']:.1f} ns) subtracted")
    print()
    rows = []
    rec = calls["record"]
    triv = calls.get("trivial cdef method")
    if triv is not None:
        rows.append(("record <= 2x trivial C method call", f"{rec:.1f} ns",
                     f"{triv:.1f} ns (_Trivial.call)", f"{rec / triv:.2f}x", rec <= 2 * triv))
    rows.append(("(info) builtin float.__abs__ call", f"{rec:.1f} ns",
                 f"{calls['float.__abs__ (builtin)']:.1f} ns", f"{rec / calls['float.__abs__ (builtin)']:.2f}x", None))
    for name, goal in (("fastdigest.update", 1.5), ("ddsketch.add", 10), ("hdrhistogram.record_value", 10),
                       ("prometheus Histogram.observe", 10)):
        if name in calls:
            ratio = calls[name] / rec
            rows.append((f"record >= {goal}x faster than {name}", f"{rec:.1f} ns", f"{calls[name]:.1f} ns",
                         f"{ratio:.1f}x faster", ratio >= goal))
    rf, ri, rn = rates["record_many float64"], rates["record_many int64"], rates["numpy log+bincount"]
    rows.append(("record_many float64 >= 100M values/s", f"{rf / 1e6:.0f} M/s", "100 M/s", f"{rf / 1e8:.2f}x", rf >= 1e8))
    rows.append(("record_many float64 ~2x numpy log+bincount", f"{rf / 1e6:.0f} M/s", f"{rn / 1e6:.0f} M/s",
                 f"{rf / rn:.2f}x", rf >= 2 * rn))
    rows.append(("(info) record_many int64", f"{ri / 1e6:.0f} M/s", f"{rn / 1e6:.0f} M/s", f"{ri / rn:.2f}x", None))
    rows.append(("quantile rel. error <= 1% (nearest rank)", f"{err_nr * 100:.3f} %", "numpy inverted_cdf",
                 "bound 0.781 %", err_nr <= 0.01))
    rows.append(("(info) rel. error vs numpy linear interp.", f"{err_lin * 100:.3f} %", "numpy linear", "", None))
    rows.append(("default range <= 64 KiB", f"{mem} B", "65536 B",
                 f"{h.bucket_count} buckets x 8 B", mem <= 65536))
    widths = [max(len(str(r[i])) for r in rows) for i in range(4)]
    hdr = ("goal", "figure", "reference", "ratio")
    print("  ".join(h_.ljust(w) for h_, w in zip(hdr, widths)) + "  met")
    for r in rows:
        met = "-" if r[4] is None else ("yes" if r[4] else "NO")
        print("  ".join(str(c).ljust(w) for c, w in zip(r[:4], widths)) + f"  {met}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
