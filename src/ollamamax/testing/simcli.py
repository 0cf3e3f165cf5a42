"""``ollamamax simulate``: the fleet simulator from the shell, a capacity-planning tool.

Replays one seeded scenario (the flags of :func:`~.workload.add_scenario_arguments`)
through the gateway's scheduler and the simple routers, in virtual time, and prints one
table row per router (and per host count with ``--sweep-hosts``): TTFT p50/p90/p99, first
and continued turns, model loads, errors.  ``--sweep-hosts 2,3,4,6 --target-p99 3`` answers
"how many hosts does this traffic need".  Several ``--seeds`` are averaged (p99 is the
mean of each run's p99; ``worst p99`` the largest).  Progress goes to stderr.

Only the argument definitions load when the ``ollamamax`` command starts; the simulator
is imported when this subcommand runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from typing import Any

from .workload import Scenario, add_scenario_arguments

__all__ = ["add_arguments", "main"]

DEFAULT_ROUTERS = "ollamamax,hash,round-robin"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_scenario_arguments(p)
    p.add_argument("--routers", default=DEFAULT_ROUTERS,
                   help="comma-separated: ollamamax, hash (nginx consistent hash on the model), "
                        "round-robin, floor (no load cost, every model resident), clairvoyant "
                        f"(knows every arrival). Default {DEFAULT_ROUTERS}")
    p.add_argument("--seeds", default="0", help="comma-separated seeds to average over (default 0)")
    p.add_argument("--sweep-hosts", default=None, metavar="N,N,...",
                   help="run each router for each of these host counts")
    p.add_argument("--target-p99", type=float, default=None, metavar="SECONDS",
                   help="with --sweep-hosts: name the fewest hosts whose TTFT p99 meets this")
    p.add_argument("--learn", action="store_true",
                   help="the gateway learns each host's slots and room instead of being told "
                        "(as ollamamax serve does without num_parallel / max_loaded_models)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def _ints(text: str, what: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"ollamamax simulate: {what}: comma-separated integers, got {text!r}") from None
    if not out:
        raise SystemExit(f"ollamamax simulate: {what}: at least one value")
    return out


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def main(args: argparse.Namespace) -> int:
    from .simulator import ROUTERS, simulate
    from .workload import make_trace

    try:
        base = Scenario.from_args(args)
    except ValueError as exc:
        print(f"ollamamax simulate: {exc}", file=sys.stderr)
        return 2
    routers = [r.strip() for r in args.routers.split(",") if r.strip()]
    unknown = [r for r in routers if r not in ROUTERS]
    if unknown:
        print(f"ollamamax simulate: unknown router(s) {', '.join(unknown)}; choose from {', '.join(ROUTERS)}",
              file=sys.stderr)
        return 2
    seeds = _ints(args.seeds, "--seeds")
    host_counts = _ints(args.sweep_hosts, "--sweep-hosts") if args.sweep_hosts else [base.hosts]
    if min(host_counts) < 1:
        print("ollamamax simulate: --sweep-hosts: counts must be >= 1", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    total = len(host_counts) * len(routers) * len(seeds)
    done = 0
    for n in host_counts:
        for router in routers:
            runs = []
            for seed in seeds:
                scen = replace(base, hosts=n, seed=seed)
                res = simulate(scen, router, configure_hosts=not args.learn, trace=make_trace(scen))
                runs.append(res.summary())
                done += 1
                s = runs[-1]
                print(f"[{done}/{total}] hosts={n} {router} seed={seed}: p99 {_fmt(s['ttft_p99'])} s, "
                      f"{s['loads']} loads, {s['errors']} errors ({s['wall_s']:.1f} s)", file=sys.stderr)

            def mean(key: str, runs: list[dict[str, Any]] = runs) -> float | None:
                vals = [r[key] for r in runs if r[key] is not None]
                return statistics.mean(vals) if vals else None

            rows.append({
                "hosts": n, "router": router, "seeds": seeds,
                "ttft_p50": mean("ttft_p50"), "ttft_p90": mean("ttft_p90"), "ttft_p99": mean("ttft_p99"),
                "worst_p99": max((r["ttft_p99"] for r in runs if r["ttft_p99"] is not None), default=None),
                "first_p50": mean("first_p50"), "continued_p50": mean("continued_p50"),
                "loads": mean("loads"), "errors": sum(r["errors"] for r in runs),
                "requests": mean("requests"),
            })
    answer = None
    if args.target_p99 is not None and "ollamamax" in routers:
        ok = [r["hosts"] for r in rows if r["router"] == "ollamamax" and r["errors"] == 0
              and r["worst_p99"] is not None and r["worst_p99"] <= args.target_p99]
        answer = min(ok) if ok else None
    if args.json:
        print(json.dumps({"scenario": base.to_dict(), "rows": rows, "fewest_hosts": answer}, indent=2))
        return 0
    print(f"scenario: {base.spec(only_changed=True) or '(the default)'}; seeds {','.join(map(str, seeds))}")
    print("| hosts | router | TTFT p50 | p90 | p99 | worst p99 | first-turn p50 | continued p50 | loads | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['hosts']} | {r['router']} | {_fmt(r['ttft_p50'])} | {_fmt(r['ttft_p90'])} | "
              f"{_fmt(r['ttft_p99'])} | {_fmt(r['worst_p99'])} | {_fmt(r['first_p50'])} | "
              f"{_fmt(r['continued_p50'])} | {r['loads']:.0f} | {r['errors']} |")
    if args.target_p99 is not None:
        if answer is None:
            print(f"no host count tried meets TTFT p99 <= {args.target_p99:g} s with ollamamax")
        else:
            print(f"fewest hosts meeting TTFT p99 <= {args.target_p99:g} s with ollamamax: {answer}")
    return 0
