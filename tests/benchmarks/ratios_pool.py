"""Ratios of ObjectPool against reference pools, measured in one run.

    python tests/benchmarks/ratios_pool.py [--impl c|py] [--quick]

Prints goal / our figure / reference figure (same run) / ratio / met.  Nothing is
asserted; figures depend on the machine.  Timings are the best of several repeats
with process CPU time (time other processes take on a shared machine does not count).
"""

from __future__ import annotations

import argparse
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from ollamamax.structures import pool as _pool  # noqa: E402

SIZE = 4096


class ListPool:
    """The reference: the simplest pool, a Python class around list pop/append."""

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


def per_op_ns(stmt: str, env: dict, number: int, repeat: int) -> float:
    t = timeit.repeat(stmt, globals=env, number=number, repeat=repeat, timer=time.process_time)
    return min(t) / number * 1e9


def figures(ns, number: int, repeat: int) -> dict[str, float]:
    def factory() -> bytearray:
        return bytearray(SIZE)

    ours = ns.ObjectPool(factory, maxsize=16)
    with_reset = ns.ObjectPool(factory, maxsize=16, reset=len)
    ref = ListPool(factory, 16)
    bare: list = [factory()]
    cases = {
        "ours acquire+release": ("r(a())", {"a": ours.acquire, "r": ours.release}),
        "ours take()": ("with t() as b: pass", {"t": ours.take}),
        "ours acquire+release, reset=len": ("r(a())", {"a": with_reset.acquire, "r": with_reset.release}),
        "list pool (Python class)": ("r(a())", {"a": ref.acquire, "r": ref.release}),
        "bare list pop/append": ("ap(po())", {"ap": bare.append, "po": bare.pop}),
        "fresh bytearray(4096)": ("f()", {"f": factory}),
    }
    out: dict[str, float] = {}
    for _ in range(repeat):  # interleaved so machine noise hits all cases alike
        for name, (stmt, env) in cases.items():
            out[name] = min(out.get(name, float("inf")), per_op_ns(stmt, env, number, 1))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impl", choices=["c", "py"], default="c")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    ns = _pool.IMPLEMENTATIONS[args.impl]
    if ns is None:
        print("native _pool_c is not built (tools/dev_build.sh pool)", file=sys.stderr)
        return 2
    number, repeat = (100_000, 3) if args.quick else (500_000, 7)
    f = figures(ns, number, repeat)
    print(f"ObjectPool ({args.impl}), Python {sys.version.split()[0]}, best of {repeat} x {number}, CPU time")
    for name, v in f.items():
        print(f"  {name:<36} {v:8.1f} ns/op")
    ours = f["ours acquire+release"]
    rows = [
        ("acquire+release <= 1.5x list pool", ours, f["list pool (Python class)"],
         ours / f["list pool (Python class)"], ours <= 1.5 * f["list pool (Python class)"]),
        ("acquire+release >= 4x faster than bytearray(4096)", ours, f["fresh bytearray(4096)"],
         f["fresh bytearray(4096)"] / ours, f["fresh bytearray(4096)"] >= 4 * ours),
    ]
    print(f"\n{'goal':<52} {'ours ns':>8} {'ref ns':>8} {'ratio':>6}  met")
    for goal, o, r, ratio, met in rows:
        print(f"{goal:<52} {o:8.1f} {r:8.1f} {ratio:6.2f}  {'yes' if met else 'NO'}")
    print(f"(for scale: ours / bare list pop+append = {ours / f['bare list pop/append']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
