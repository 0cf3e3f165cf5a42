"""LFUCache: speed and hit ratios against reference caches, measured in one run.

    python tests/benchmarks/ratios_lfu.py [--impl c|py] [--ops N] [--skip-peers]

Speed: a get-or-set loop (``get``; on a miss ``cache[k] = k``) over a Zipf(0.9) trace
of ``--ops`` operations (default 1M) on 100k keys, capacity 10k, in ns/op of process
CPU time (best of 3).  References from the same run: a plain dict (unbounded),
cachetools.LFUCache, theine.Cache (W-TinyLFU, Rust core).
Hit ratios on three traces (tests/benchmarks/traces.py): Zipf(0.9); Zipf(0.9) whose
hot set changes halfway (measured on the second half); Zipf(0.9) with one-off
sequential scans mixed in (20% of ops).  Prints goal / figure / reference / met.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))
sys.path.insert(0, str(HERE))

from traces import scan_zipf_trace, shifted_zipf_trace, zipf_trace  # noqa: E402

from ollamamax.structures import lfu as _lfu  # noqa: E402

CAPACITY = 10_000


def _peers() -> dict:
    peers = {}
    try:
        import cachetools

        peers["cachetools.LFUCache"] = lambda: cachetools.LFUCache(CAPACITY)
        peers["cachetools.LRUCache"] = lambda: cachetools.LRUCache(CAPACITY)
    except ImportError:
        pass
    try:
        import theine

        peers["theine.Cache"] = lambda: theine.Cache(CAPACITY)
    except ImportError:
        pass
    return peers


def loop_for(name: str, cache, keys: list, start: int = 0) -> int:
    """Replay keys as get-or-set; return hits counted from ``start``."""
    hits = 0
    if name.startswith("theine"):
        get, put = cache.get, cache.set
        for i, k in enumerate(keys):
            if get(k)[1]:
                if i >= start:
                    hits += 1
            else:
                put(k, k)
        return hits
    get = cache.get
    for i, k in enumerate(keys):
        if get(k) is None:
            cache[k] = k
        elif i >= start:
            hits += 1
    return hits


def speed_loop(cache, keys: list) -> None:
    get = cache.get
    for k in keys:
        if get(k) is None:
            cache[k] = k


def speed_loop_theine(cache, keys: list) -> None:
    get, put = cache.get, cache.set
    for k in keys:
        if not get(k)[1]:
            put(k, k)


def time_ns(make, keys: list, loop, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        cache = make()
        gc.collect()
        t0 = time.process_time()
        loop(cache, keys)
        best = min(best, time.process_time() - t0)
        del cache
    return best / len(keys) * 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impl", choices=["c", "py"], default="c")
    ap.add_argument("--ops", type=int, default=1_000_000)
    ap.add_argument("--skip-peers", action="store_true", help="only ours and dict")
    args = ap.parse_args(argv)
    ns = _lfu.IMPLEMENTATIONS[args.impl]
    if ns is None:
        print("native _lfu_c is not built (tools/dev_build.sh lfu)", file=sys.stderr)
        return 2
    peers = {} if args.skip_peers else _peers()
    n = args.ops
    print(f"LFUCache ({args.impl}), Python {sys.version.split()[0]}, {n} ops, 100k keys, capacity {CAPACITY}")

    keys = zipf_trace(n).tolist()
    speed = {
        "ours": time_ns(lambda: ns.LFUCache(CAPACITY), keys, speed_loop),
        "dict": time_ns(dict, keys, speed_loop),
    }
    for name, make in peers.items():
        if name == "cachetools.LRUCache":
            continue
        loop = speed_loop_theine if name.startswith("theine") else speed_loop
        speed[name] = time_ns(make, keys, loop, repeat=1)
    print("\nget-or-set loop, ns/op (CPU time):")
    for name, v in speed.items():
        print(f"  {name:<22} {v:8.1f}")

    traces = {
        "zipf": (keys, 0),
        "shift": (shifted_zipf_trace(n).tolist(), n // 2),
        "scan": (scan_zipf_trace(n).tolist(), 0),
    }
    ratios: dict[str, dict[str, float]] = {}
    makers = {"ours": lambda: ns.LFUCache(CAPACITY), **peers}
    for tname, (tkeys, start) in traces.items():
        ratios[tname] = {}
        for cname, make in makers.items():
            ratios[tname][cname] = loop_for(cname, make(), tkeys, start) / (len(tkeys) - start)
    print("\nhit ratios:")
    cols = list(makers)
    print("  " + f"{'trace':<8}" + "".join(f"{c:>22}" for c in cols))
    for tname, row in ratios.items():
        print("  " + f"{tname:<8}" + "".join(f"{row[c]:>22.4f}" for c in cols))

    rows = [("get-or-set <= 2.5x dict", speed["ours"], speed["dict"],
             speed["ours"] / speed["dict"], speed["ours"] <= 2.5 * speed["dict"])]
    if "cachetools.LFUCache" in speed:
        r = speed["cachetools.LFUCache"]
        rows.append(("get-or-set >= 8x faster than cachetools.LFUCache", speed["ours"], r, r / speed["ours"],
                     r >= 8 * speed["ours"]))
    if "theine.Cache" in speed:
        r = speed["theine.Cache"]
        rows.append(("get-or-set >= 10x faster than theine", speed["ours"], r, r / speed["ours"],
                     r >= 10 * speed["ours"]))
    for tname, goal in (("zipf", 0.68), ("shift", 0.62), ("scan", 0.53)):
        ref = ratios[tname].get("theine.Cache", float("nan"))
        ours = ratios[tname]["ours"]
        rows.append((f"hit ratio {tname} >= {goal}", ours, ref, ours / ref if ref == ref else float("nan"),
                     ours >= goal))
    print(f"\n{'goal':<52} {'ours':>9} {'ref':>9} {'ratio':>6}  met   (ref: dict/peer ns, theine hit ratio)")
    for goal, o, r, ratio, met in rows:
        print(f"{goal:<52} {o:9.4g} {r:9.4g} {ratio:6.2f}  {'yes' if met else 'NO'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
