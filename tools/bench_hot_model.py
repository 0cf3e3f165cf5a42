"""One hot model on every host: does the gateway spread it, or pile it on one host?

    python tools/bench_hot_model.py [--targets direct,ollamamax,nginx-rr] [--concurrency 1,8,32]
        [--duration 10s] [--baseline-src DIR] [--gateway-arg ARG] [--json out.json] [--base-port 11700]

The fleet-scheduler issue's second bench, all targets in one run: 3 ``ollamamax mock``
hosts, each able to hold 2 models with 2 slots per model (``--max-loaded-models 2
--num-parallel 2 --tokens-per-sec 200``), all with ``llama3.2``, fresh and cold for each
target, behind the target; ``ollamamax bench URL --model llama3.2 --concurrency C
--stream`` at each level (one ``ollamamax bench`` per level, so each host's ``GET
/_mock/stats`` can be read between levels).

Targets: ``direct`` (one host alone: the 1-host reference), ``ollamamax[:STRATEGY]``
(``ollamamax serve`` from this tree), ``baseline[:STRATEGY]`` (``--baseline-src DIR``),
``nginx-rr`` (nginx round-robin: an even spread, for reference). Prints per target and
level req/s, its ratio to the 1-host figure of the same level, TTFT p50/p99, errors and
the requests each host served (warm-up included); then the issue's goal at the highest
level (>= 2.5x one host's req/s, every host used, TTFT p50 within 2x of one idle host's,
i.e. ``direct`` at concurrency 1). Hosts and proxies on one CPU, ``ollamamax bench`` on the
other (``taskset``). Loopback only; each level is bounded by its duration plus the
bench's timeout; only the processes started here are stopped, by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TREE = HERE.parent
sys.path.insert(0, str(TREE / "src"))
sys.path.insert(0, str(HERE))

from bench_fleet import git_rev, machine  # noqa: E402
from fleetbench import procs as P  # noqa: E402

from ollamamax.bench.options import UsageError, parse_concurrency, parse_duration  # noqa: E402

KINDS = ("direct", "ollamamax", "baseline", "nginx-rr")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    a = ap.add_argument
    a("--targets", default="direct,ollamamax,nginx-rr",
      help="comma-separated: direct, ollamamax[:STRATEGY], baseline[:STRATEGY], nginx-rr "
           "(default direct,ollamamax,nginx-rr, plus baseline with --baseline-src)")
    a("--hosts", type=int, default=3)
    a("--model", default="llama3.2")
    a("--concurrency", default="1,8,32")
    a("--duration", default="10s", help="measured time per level (default 10s)")
    a("--warmup", default="1s", help="warm-up per level (default 1s)")
    a("--max-loaded-models", type=int, default=2)
    a("--num-parallel", type=int, default=2)
    a("--tokens-per-sec", type=float, default=200.0)
    a("--load-delay", type=float, default=2.0, help="the emulator's default, 2 s")
    a("--response-tokens", default="8,24", help="the emulator's default, 8,24")
    a("--preload", action="store_true", help="hosts start with the model loaded (default: cold)")
    a("--seed", type=int, default=0)
    a("--baseline-src", default=None, metavar="DIR")
    a("--gateway-arg", action="append", default=[], metavar="ARG")
    a("--json", default=None, metavar="PATH")
    a("--base-port", type=int, default=11700, help="proxy on P, hosts on P+1.. (default 11700)")
    a("--no-pin", action="store_true")
    a("--server-cpu", type=int, default=0)
    a("--driver-cpu", type=int, default=1)
    return ap


def parse_targets(text: str, baseline: Path | None) -> list[str]:
    out = [t.strip() for t in text.split(",") if t.strip()]
    if baseline is not None and not any(t.startswith("baseline") for t in out):
        out.append("baseline")
    for t in out:
        kind = t.split(":", 1)[0]
        if kind not in KINDS or (":" in t and kind not in ("ollamamax", "baseline")):
            raise SystemExit(f"bench_hot_model: unknown target {t!r}")
        if kind == "baseline" and baseline is None:
            raise SystemExit("bench_hot_model: target baseline needs --baseline-src DIR")
    if not out or len(set(out)) != len(out):
        raise SystemExit(f"bench_hot_model: --targets: each once, at least one: {text!r}")
    return out


def served(stats: list[Any]) -> list[int]:
    return [int(((s or {}).get("totals") or {}).get("served", 0)) for s in stats]


async def run_bench(url: str, args: argparse.Namespace, c: int, driver_cpu: int | None, out: Path,
                    log: Path) -> dict[str, Any] | None:
    argv = [sys.executable, "-m", "ollamamax", "bench", url, "--model", args.model, "--concurrency", str(c),
            "--stream", "--duration", args.duration, "--warmup", args.warmup, "--json", str(out), "--no-progress"]
    if driver_cpu is not None:
        argv = ["taskset", "-c", str(driver_cpu), *argv]
    bound = parse_duration(args.duration) + parse_duration(args.warmup, allow_zero=True) + 90
    with open(log, "ab") as f:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=f, stderr=subprocess.STDOUT,
                                                    env=P.tree_env(TREE / "src"))
        try:
            await asyncio.wait_for(proc.wait(), bound)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            return None
    try:
        return json.loads(out.read_text())["levels"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return None


async def run_target(target: str, args: argparse.Namespace, procs: P.Procs, driver_cpu: int | None,
                     levels: list[int], tmp: Path) -> dict[str, Any]:
    kind, _, strategy = target.partition(":")
    n = 1 if kind == "direct" else args.hosts
    ports = [args.base_port + 1 + i for i in range(n)]
    env = P.tree_env(TREE / "src")
    hosts = []
    label = target.replace(":", "-")
    for i, port in enumerate(ports):
        argv = [sys.executable, "-m", "ollamamax", "mock", "--port", str(port), "--host-id", f"h{i}",
                "--models", args.model, "--max-loaded-models", str(args.max_loaded_models),
                "--num-parallel", str(args.num_parallel), "--tokens-per-sec", str(args.tokens_per_sec),
                "--load-delay", str(args.load_delay), "--response-tokens", args.response_tokens,
                "--seed", str(args.seed)] + (["--preload", args.model] if args.preload else [])
        hosts.append(procs.start(f"{label}-h{i}", argv, env=env))
    proxy = None
    rows = []
    try:
        for h, port in zip(hosts, ports):
            await procs.wait_ready(h, f"http://127.0.0.1:{port}/")
        if kind == "direct":
            url = f"http://127.0.0.1:{ports[0]}"
        elif kind == "nginx-rr":
            conf = tmp / "nginx-rr.conf"
            conf.write_text(P.nginx_conf(tmp, args.base_port, ports, hash_model=False))
            proxy = procs.start("nginx-rr", P.nginx_argv(tmp, conf))
            url = f"http://127.0.0.1:{args.base_port}"
            await procs.wait_ready(proxy, url + "/api/tags")
        else:
            src = TREE / "src" if kind == "ollamamax" else Path(args.baseline_src).resolve() / "src"
            extra = (["--strategy", strategy] if strategy else []) + list(args.gateway_arg)
            proxy = procs.start(label, P.serve_argv(args.base_port, [f"http://127.0.0.1:{p}" for p in ports], extra),
                                env=P.tree_env(src))
            url = f"http://127.0.0.1:{args.base_port}"
            await procs.wait_ready(proxy, url + "/ollamamax/status", check=P.gateway_ready(n))
        for c in levels:
            before = served([await P.get_json(f"http://127.0.0.1:{p}/_mock/stats") for p in ports])
            res = await run_bench(url, args, c, driver_cpu, tmp / f"{label}-c{c}.json", tmp / f"{label}-bench.log")
            after = served([await P.get_json(f"http://127.0.0.1:{p}/_mock/stats") for p in ports])
            spread = [b - a for a, b in zip(before, after)]
            row = {"concurrency": c, "spread": spread, "bench": res}
            if res is not None:
                row |= {"requests_per_s": res.get("requests_per_s"), "ttft_ms": res.get("ttft_ms"),
                        "ok": res.get("ok"), "errors": res.get("errors"), "error_kinds": res.get("error_kinds")}
            rows.append(row)
            print(f"  {target} c={c}: {row.get('requests_per_s')} req/s, spread {spread}", file=sys.stderr, flush=True)
    finally:
        if proxy is not None:
            procs.stop(proxy)
        for h in hosts:
            procs.stop(h)
    return {"hosts": n, "levels": rows}


def fmt(x: float | None, unit: str = "") -> str:
    return "-" if x is None else f"{x:.1f}{unit}"


def report(doc: dict[str, Any]) -> list[str]:
    res = doc["targets"]
    direct = {r["concurrency"]: r for r in res.get("direct", {}).get("levels", [])}
    lines = ["| target | concurrency | req/s | vs 1 host | TTFT p50 | TTFT p99 | errors | served per host |",
             "|---|---|---|---|---|---|---|---|"]
    for name, t in res.items():
        for r in t["levels"]:
            rps = r.get("requests_per_s")
            ref = (direct.get(r["concurrency"]) or {}).get("requests_per_s")
            ratio = f"{rps / ref:.2f}x" if rps and ref and name != "direct" else "-"
            ttft = r.get("ttft_ms") or {}
            lines.append(f"| {name} | {r['concurrency']} | {fmt(rps)} | {ratio} | {fmt(ttft.get('p50'), ' ms')} | "
                         f"{fmt(ttft.get('p99'), ' ms')} | {r.get('errors', '-')} | "
                         f"{' / '.join(str(x) for x in r['spread'])} |")
    top = max(doc["concurrency"])
    idle = ((direct.get(1) or {}).get("ttft_ms") or {}).get("p50")
    ref = (direct.get(top) or {}).get("requests_per_s")
    goals = []
    for name, t in res.items():
        if name == "direct":
            continue
        r = next((x for x in t["levels"] if x["concurrency"] == top), None)
        if r is None or not r.get("requests_per_s"):
            continue
        gain = r["requests_per_s"] / ref if ref else None
        used = sum(1 for x in r["spread"] if x > 0)
        p50 = (r.get("ttft_ms") or {}).get("p50")
        ok = (gain is not None and gain >= 2.5 and used == t["hosts"] and p50 is not None and idle is not None
              and p50 <= 2 * idle)
        goals.append(f"- {name} at concurrency {top}: {fmt(gain)}x one host's req/s, {used} of {t['hosts']} hosts "
                     f"used, TTFT p50 {fmt(p50, ' ms')} vs one idle host's {fmt(idle, ' ms')}: goal "
                     f"{'met' if ok else 'not met'}")
    if goals:
        title = f"Goal (>= 2.5x one host, every host used, TTFT p50 <= 2x one idle host's) at concurrency {top}:"
        lines += ["", title, *goals]
    return lines


async def amain(args: argparse.Namespace) -> int:
    try:
        levels = parse_concurrency(args.concurrency)
        parse_duration(args.duration)
        parse_duration(args.warmup, allow_zero=True)
    except UsageError as exc:
        print(f"bench_hot_model: {exc}", file=sys.stderr)
        return 2
    baseline = Path(args.baseline_src).resolve() if args.baseline_src else None
    targets = parse_targets(args.targets, baseline)
    busy = [p for p in range(args.base_port, args.base_port + args.hosts + 1) if not P.port_free(p)]
    if busy:
        print(f"bench_hot_model: ports in use: {busy} (choose another --base-port)", file=sys.stderr)
        return 1
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    pinning = (f"hosts and proxies pinned to CPU {args.server_cpu}, ollamamax bench to CPU {args.driver_cpu} "
               f"(taskset)" if pin else "not pinned")
    tmp = Path(tempfile.mkdtemp(prefix="bench_hot_model."))
    procs = P.Procs(tmp, args.server_cpu if pin else None)
    doc: dict[str, Any] = {
        "meta": {"commit": git_rev(TREE), "baseline_commit": git_rev(baseline) if baseline else None,
                 "machine": machine(), "pinning": pinning, "command": shlex.join([sys.executable, *sys.argv]),
                 "started": time.strftime("%Y-%m-%d %H:%M:%S")},
        "hosts": args.hosts, "model": args.model, "concurrency": levels, "duration": args.duration,
        "host_flags": {"max_loaded_models": args.max_loaded_models, "num_parallel": args.num_parallel,
                       "tokens_per_sec": args.tokens_per_sec, "load_delay": args.load_delay,
                       "response_tokens": args.response_tokens, "preload": args.preload},
        "targets": {},
    }
    print(f"bench_hot_model: {', '.join(targets)} at concurrency {args.concurrency}; {pinning}", file=sys.stderr)
    try:
        for t in targets:
            doc["targets"][t] = await run_target(t, args, procs, args.driver_cpu if pin else None, levels, tmp)
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    m = doc["meta"]
    print(f"## One hot model on every host: {args.hosts} hosts x {args.model}\n")
    print(f"- hosts: `ollamamax mock --models {args.model} --max-loaded-models {args.max_loaded_models} "
          f"--num-parallel {args.num_parallel} --tokens-per-sec {args.tokens_per_sec:g} --load-delay "
          f"{args.load_delay:g} --response-tokens {args.response_tokens}`{' --preload' if args.preload else ''}, "
          f"fresh per target; direct = one host alone")
    print(f"- load: `ollamamax bench URL --model {args.model} --concurrency C --stream --duration {args.duration} "
          f"--warmup {args.warmup}` per level")
    print(f"- machine: {m['machine']['cpus']} CPUs ({m['machine']['cpu']}), {m['machine']['python']}; {pinning}")
    print(f"- tree {m['commit']}" + (f", baseline {m['baseline_commit']}" if m.get("baseline_commit") else ""))
    print(f"- command: `{m['command']}`\n")
    print("\n".join(report(doc)))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
