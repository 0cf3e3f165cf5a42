"""The fleet benchmark: one seeded trace through each router, with real processes, in one run.

    python tools/bench_fleet.py [--scenario "hosts=4,rate=10,..."] [--rate 10 ...]
        [--targets ollamamax,nginx-rr,nginx-hash] [--baseline-src DIR] [--gateway-arg=--strategy=p2c]
        [--json out.json] [--base-port 11600] [--timeout 120] [--no-pin]

The scenario (``ollamamax.testing.workload``; default: the fleet-scheduler issue's, 4
hosts x 6 models, Zipf(1.0), 10 requests/s for 60 s, half of them continued
conversations, 1 resident model and 2 slots per host, 1.5 s loads, 100 tokens/s,
20-token answers) becomes one seeded trace, replayed through each target in turn:

* ``ollamamax``: ``ollamamax serve`` from this tree, default strategy
  (``ollamamax:STRATEGY`` for another); ``baseline`` (``baseline:STRATEGY``): the same
  from ``--baseline-src DIR`` (e.g. a worktree of an older commit; build or copy its
  native modules, or it runs the pure-Python twins). ``--gateway-arg`` adds options to
  both.
* ``nginx-rr``: nginx round-robin; ``nginx-hash``: nginx ``hash $http_x_model
  consistent`` (the driver sends the model in ``X-Model`` to every target). Keep-alive
  upstream, ``proxy_buffering off``, 300 s read timeout.

For each target, N fresh, cold ``ollamamax mock`` hosts (this tree's emulator, every model
on disk, the scenario's knobs, the trace's seed, so replies, and with them the histories
of continued turns, are the same whichever host answers), then the proxy, then the
open-loop replay (``tools/fleetbench/replay.py``: streaming ``/api/chat``, continued turns
with their real history; a turn due while its conversation's previous one still runs is
sent on time with the history finished so far, or with ``--hold`` waits for it), then
every host's ``GET /_mock/stats`` (model loads, and evictions when the emulator reports
them). Hosts and proxies run on one core, the driver
on the other (``taskset``), when the machine has two. Prints, per target, TTFT
p50/p90/p99, total time, errors, model loads, TTFT for first and continued turns, per
model and the spread over the hosts, as markdown tables; ``--json`` writes every figure
and every request's outcome. Loopback only; each request is bounded by ``--timeout`` and
every process this script started is stopped by PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
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

from fleetbench import procs as P  # noqa: E402
from fleetbench import replicas as R  # noqa: E402
from fleetbench.replay import replay  # noqa: E402
from fleetbench.report import main_table, model_table, spread_table, target_figures  # noqa: E402

from ollamamax.testing.workload import Scenario, add_scenario_arguments, make_trace, summary  # noqa: E402

GATEWAYS = ("ollamamax", "baseline")
NGINX = ("nginx-rr", "nginx-hash")


def parse_targets(text: str, baseline: Path | None) -> list[str]:
    out = []
    for t in (x.strip() for x in text.split(",")):
        if not t:
            continue
        kind = t.split(":", 1)[0]
        if kind == "replicas":
            try:
                R.parse(t)
            except ValueError as exc:
                raise SystemExit(f"bench_fleet: {exc} (replicas:K:redis|alone[:kill-redis|:kill-replica])") from None
            out.append(t)
            continue
        if kind == "direct-floor":
            print("bench_fleet: direct-floor is the simulator's job (no process target); skipped", file=sys.stderr)
            continue
        if kind not in GATEWAYS + NGINX or (kind in NGINX and ":" in t):
            raise SystemExit(f"bench_fleet: unknown target {t!r} (ollamamax[:STRATEGY], baseline[:STRATEGY], "
                             f"nginx-rr, nginx-hash)")
        if kind == "baseline" and baseline is None:
            raise SystemExit("bench_fleet: target baseline needs --baseline-src DIR")
        out.append(t)
    if len(set(out)) != len(out) or not out:
        raise SystemExit(f"bench_fleet: --targets: give each target once, at least one: {text!r}")
    return out


def git_rev(tree: Path) -> str:
    try:
        rev = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nginx = ""
    if shutil.which("nginx"):
        r = subprocess.run(["nginx", "-v"], capture_output=True, text=True, timeout=10)
        nginx = (r.stderr or r.stdout).strip().split("/")[-1]
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": f"{platform.python_implementation()} "
            f"{platform.python_version()}", "platform": platform.platform(), "nginx": nginx}


class Run:
    """One benchmark run: the processes, the ports, the pinning."""

    def __init__(self, args: argparse.Namespace, scen: Scenario, tmp: Path) -> None:
        self.args = args
        self.scen = scen
        self.tmp = tmp
        pin = not args.no_pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
        self.server_cpu = args.server_cpu if pin else None
        if pin:
            os.sched_setaffinity(0, {args.driver_cpu})
            self.pinning = (f"hosts and proxies pinned to CPU {args.server_cpu}, the driver to CPU "
                            f"{args.driver_cpu} (taskset)")
        else:
            self.pinning = "not pinned" + (" (--no-pin)" if args.no_pin else " (needs 2 CPUs and taskset)")
        self.procs = P.Procs(tmp, self.server_cpu)
        self.proxy_port = args.base_port
        self.host_ports = [args.base_port + 1 + i for i in range(scen.hosts)]
        self.gateway_ports = [args.base_port + 60 + i for i in range(16)]  # replicas behind the L4 balancer
        self.redis_port = args.base_port + 59
        self.host_ids = [f"h{i}" for i in range(scen.hosts)]
        names: dict[str, str] = {}
        for hid, port in zip(self.host_ids, self.host_ports):
            for key in (hid, f"127.0.0.1:{port}", f"http://127.0.0.1:{port}", f"mock-{port}"):
                names[key] = hid
        self.names = names

    def host_name(self, header: str) -> str:
        return self.names.get(header, self.names.get(header.rstrip("/"), header))

    async def start_hosts(self, label: str) -> list[P.Proc]:
        env = P.tree_env(TREE / "src")
        hosts = [self.procs.start(f"{label}-{hid}", P.mock_argv(self.scen, port, hid), env=env)
                 for hid, port in zip(self.host_ids, self.host_ports)]
        for h, port in zip(hosts, self.host_ports):
            await self.procs.wait_ready(h, f"http://127.0.0.1:{port}/")
        return hosts

    async def start_proxy(self, target: str) -> P.Proc:
        kind, _, strategy = target.partition(":")
        port = self.proxy_port
        if kind in GATEWAYS:
            src = TREE / "src" if kind == "ollamamax" else Path(self.args.baseline_src) / "src"
            extra = (["--strategy", strategy] if strategy else []) + list(self.args.gateway_arg or [])
            argv = P.serve_argv(port, [f"http://127.0.0.1:{p}" for p in self.host_ports], extra)
            proxy = self.procs.start(target.replace(":", "-"), argv, env=P.tree_env(src))
            await self.procs.wait_ready(proxy, f"http://127.0.0.1:{port}/ollamamax/status",
                                        check=P.gateway_ready(len(self.host_ports)))
            return proxy
        conf = self.tmp / f"{kind}.conf"
        conf.write_text(P.nginx_conf(self.tmp, port, self.host_ports, hash_model=kind == "nginx-hash"))
        proxy = self.procs.start(kind, P.nginx_argv(self.tmp, conf))
        await self.procs.wait_ready(proxy, f"http://127.0.0.1:{port}/api/tags")
        return proxy

    async def start_replicas(self, target: str) -> tuple[list[P.Proc], list[P.Proc], R.Watch]:
        """K gateways (and Redis) behind nginx stream on the proxy port: (gateways, the
        others, the watcher that will carry out the target's fault)."""
        k, redis, fault = R.parse(target)
        label = target.replace(":", "-")
        others: list[P.Proc] = []
        extra = list(self.args.gateway_arg or [])
        redis_proc = None
        if redis:
            argv = R.redis_argv(self.redis_port, self.tmp)
            redis_proc = self.procs.start(f"{label}-redis", argv)
            others.append(redis_proc)
            await self.procs.wait_port(redis_proc, self.redis_port)
            extra += ["--redis", f"redis://127.0.0.1:{self.redis_port}/0", "--redis-prefix", label]
        ports = self.gateway_ports[:k]
        gateways = []
        for i, port in enumerate(ports):
            argv = P.serve_argv(port, [f"http://127.0.0.1:{p}" for p in self.host_ports], extra)
            gateways.append(self.procs.start(f"{label}-gw{i}", argv, env=P.tree_env(TREE / "src")))
        for g, port in zip(gateways, ports):
            await self.procs.wait_ready(g, f"http://127.0.0.1:{port}/ollamamax/status",
                                        check=P.gateway_ready(len(self.host_ports)))
        conf = self.tmp / f"{label}-stream.conf"
        conf.write_text(R.stream_conf(self.tmp, self.proxy_port, ports))
        lb = self.procs.start(f"{label}-nginx-stream", P.nginx_argv(self.tmp, conf))
        others.append(lb)
        await self.procs.wait_ready(lb, f"http://127.0.0.1:{self.proxy_port}/api/tags")
        watch = R.Watch(self.procs, [f"http://127.0.0.1:{p}" for p in ports], self.scen.duration, fault,
                        (redis_proc, R.redis_argv(self.redis_port, self.tmp)) if redis_proc else None,
                        gateways[-1] if fault == "kill-replica" else None)
        return gateways, others, watch

    async def target(self, target: str, trace: list[Any]) -> dict[str, Any]:
        label = target.replace(":", "-")
        hosts = await self.start_hosts(label)
        gateways: list[P.Proc] = []
        others: list[P.Proc] = []
        watch: R.Watch | None = None
        watcher = None
        try:
            if target.startswith("replicas:"):
                gateways, others, watch = await self.start_replicas(target)
            else:
                gateways = [await self.start_proxy(target)]
            url = f"http://127.0.0.1:{self.proxy_port}"
            t_cpu = {g.pid: P.cpu_ticks(g.pid) for g in gateways}
            t0 = time.monotonic()
            last = [0.0]

            def progress(done: int, total: int) -> None:
                now = time.monotonic()
                if not self.args.quiet and (now - last[0] >= 10 or done == total):
                    last[0] = now
                    print(f"  {target}: {done}/{total} requests done, {now - t0:.0f} s", file=sys.stderr, flush=True)

            if watch is not None:
                watcher = asyncio.get_running_loop().create_task(watch.run(t0))
            outcomes = await replay(url, trace, timeout=self.args.timeout, hold=self.args.hold,
                                    host_name=self.host_name, progress=progress)
            wall = time.monotonic() - t0
            cpu_s = sum(P.cpu_ticks(g.pid) - t_cpu[g.pid] for g in gateways if g.popen.poll() is None
                        ) / os.sysconf("SC_CLK_TCK")
            stats = [await P.get_json(f"http://127.0.0.1:{p}/_mock/stats") for p in self.host_ports]
            if target.startswith("replicas:"):
                status = [await P.get_json(f"http://127.0.0.1:{p}/ollamamax/status")
                          for p, g in zip(self.gateway_ports, gateways) if g.popen.poll() is None]
            else:
                status = await P.get_json(url + "/ollamamax/status") if target.split(":")[0] in GATEWAYS else None
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            if watch is not None and watch.redis is not None:
                others.append(watch.redis[0])  # Redis, or the one the watcher started again
            for p in (*others, *gateways, *hosts):
                self.procs.stop(p)
        figures = target_figures(outcomes, stats, self.host_ids)
        figures["proxy_cpu_s"] = round(cpu_s, 2)
        figures["wall_s"] = round(wall, 2)
        out = {"figures": figures, "host_stats": stats, "gateway_status": status,
               "outcomes": [o.to_dict() for o in outcomes]}
        if watch is not None:
            out["replicas"] = replicas_figures(target, watch, status)
        return out


def replicas_report(results: dict[str, Any], reps: dict[str, Any]) -> list[str]:
    """Several gateways against one: TTFT p99 and loads as ratios to the ``ollamamax``
    target of the same run; the replicas' load claims; when they saw each fault."""
    one = results.get("ollamamax")
    out = ["Several gateways behind nginx stream (round-robin per connection), against one gateway in the "
           "same run:", "", "| target | TTFT p99 | x one gateway | model loads | x one gateway | errors | "
           "claims won / joined / host busy / unasked | gateways' CPU |", "|---|---|---|---|---|---|---|---|"]
    for name, r in reps.items():
        f = results[name]
        p99, loads = f["ttft"].get("p99"), f.get("model_loads")
        one_p99 = one["ttft"].get("p99") if one else None
        one_loads = one.get("model_loads") if one else None
        rp = f"{p99 / one_p99:.2f}x" if p99 and one_p99 else "-"
        rl = f"{loads / one_loads:.2f}x" if loads is not None and one_loads else "-"
        c = r["claims"]
        claims = " / ".join(str(c.get(x, 0)) for x in ("won", "joined", "host_busy", "unasked")) if c else "-"
        p99s = f"{p99:.2f} s" if p99 is not None else "-"
        out.append(f"| {R.label(name)} | {p99s} | {rp} | {loads} | {rl} | {f['errors']} | {claims} | "
                   f"{f['proxy_cpu_s']:.1f} s |")
    for name, r in reps.items():
        ev = r["events"]
        if "redis_killed" in ev:
            out.append(f"- {R.label(name)}: Redis SIGKILLed at {ev['redis_killed']:.1f} s, every replica saw it "
                       f"down {ev.get('all_down_after_s')} s later; restarted empty at "
                       f"{ev.get('redis_restarted', float('nan')):.1f} s, every replica sharing again "
                       f"{ev.get('all_up_again_after_s')} s later")
        if "replica_killed" in ev:
            out.append(f"- {R.label(name)}: a replica SIGKILLed at {ev['replica_killed']:.1f} s; the others stopped "
                       f"counting it {ev.get('peer_gone_after_s')} s later (its published state's TTL is 3 s, "
                       f"its load leases' 9 s)")
    return out


def replicas_figures(target: str, watch: R.Watch, status: Any) -> dict[str, Any]:
    """What the replicas did: their claims (summed), and when they saw the fault."""
    k, _, _ = R.parse(target)
    claims: dict[str, int] = {}
    for doc in status or []:
        for name, n in (((doc or {}).get("shared") or {}).get("claims") or {}).items():
            claims[name] = claims.get(name, 0) + int(n)
    return {"k": k, "claims": claims, "events": watch.summary(k), "samples": watch.samples}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scenario_arguments(ap)
    ap.add_argument("--targets", default="ollamamax,nginx-rr,nginx-hash",
                    help="comma-separated: ollamamax[:STRATEGY], baseline[:STRATEGY], nginx-rr, nginx-hash "
                         "(default ollamamax,nginx-rr,nginx-hash, plus baseline with --baseline-src)")
    ap.add_argument("--baseline-src", default=None, metavar="DIR", help="source tree of target baseline")
    ap.add_argument("--replicas", default="", metavar="K,...",
                    help="also K gateways behind nginx stream (round-robin per connection), with one Redis "
                         "and without, for each K (targets replicas:K:redis, replicas:K:alone)")
    ap.add_argument("--faults", action="store_true",
                    help="with --replicas: also the first K with Redis SIGKILLed at a third of the trace and "
                         "restarted empty at 58%%, and with one replica SIGKILLed halfway")
    ap.add_argument("--gateway-arg", action="append", default=[], metavar="ARG",
                    help="extra option for ollamamax serve (repeatable, e.g. --gateway-arg=--max-in-flight=2)")
    ap.add_argument("--json", default=None, metavar="PATH", help="write every figure and outcome as JSON")
    ap.add_argument("--base-port", type=int, default=11600, help="proxy on P, hosts on P+1.. (default 11600)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per request at most (default 120)")
    ap.add_argument("--hold", action="store_true",
                    help="a continued turn waits for its conversation's previous turn (default: sent on time "
                         "with the history finished so far, so every target gets the same arrivals)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    ap.add_argument("--server-cpu", type=int, default=0, help="CPU of the hosts and proxies (default 0)")
    ap.add_argument("--driver-cpu", type=int, default=1, help="CPU of the driver (default 1)")
    ap.add_argument("--keep-logs", default=None, metavar="DIR", help="keep the processes' logs in DIR")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return ap


def print_report(doc: dict[str, Any], scen: Scenario) -> None:
    meta = doc["meta"]
    ts = doc["trace_summary"]
    results = {name: t["figures"] for name, t in doc["targets"].items()}
    print(f"## Fleet benchmark: {scen.hosts} hosts x {len(scen.models)} models\n")
    print(f"- scenario: `{doc['scenario_spec']}`")
    print(f"- trace: {ts['requests']} requests ({ts['first']} first turns, {ts['continued']} continued, "
          f"{ts['conversations']} conversations), seed {scen.seed}")
    print(f"- machine: {meta['machine']['cpus']} CPUs ({meta['machine']['cpu']}), {meta['machine']['python']}, "
          f"nginx {meta['machine']['nginx'] or '-'}; {meta['pinning']}")
    print(f"- tree {meta['commit']}" + (f", baseline {meta['baseline_commit']}" if meta.get("baseline_commit") else ""))
    print(f"- command: `{meta['command']}`\n")
    print("\n".join(main_table(results)))
    print("\nTTFT per model (most requested first):\n")
    print("\n".join(model_table(results, list(ts["per_model"]))))
    print("\nRequests served and model loads per host:\n")
    print("\n".join(spread_table(results, [f"h{i}" for i in range(scen.hosts)])))
    notes = []
    for name, f in results.items():
        if f["errors"]:
            kinds = ", ".join(f"{k} x{n}" for k, n in f["error_kinds"].items())
            sample = "; ".join(f"{k}: {v}" for k, v in f["error_samples"].items())
            notes.append(f"- {name}: errors {kinds} ({sample})")
        if name == "nginx-hash":
            ring = "; ".join(f"{h}: " + ", ".join(f"{m} ({n})" for m, n in ms.items())
                             for h, ms in f["models_per_host"].items())
            notes.append(f"- nginx-hash: the ring (over the hosts' addresses, so it moves with --base-port) "
                         f"sent {ring}")
        if f["driver_lag_max_s"] > 0.05:
            notes.append(f"- {name}: the driver started a request up to {f['driver_lag_max_s']:.2f} s late")
    if notes:
        print("\nNotes:\n" + "\n".join(notes))
    reps = {name: t["replicas"] for name, t in doc["targets"].items() if "replicas" in t}
    if reps:
        print("\n" + "\n".join(replicas_report(results, reps)))
    mode = ("held until the previous one ended ('held turns'; closed loop per conversation, --hold)"
            if doc["meta"]["hold"] else
            "sent on time anyway, with the turns finished so far as history ('early turns'; open loop)")
    print(f"\nLatencies cover successful requests, timed from the moment each was sent. A continued turn due "
          f"while an earlier turn of its conversation was still running was {mode}.")


async def amain(args: argparse.Namespace) -> int:
    try:
        scen = Scenario.from_args(args)
    except ValueError as exc:
        print(f"bench_fleet: {exc}", file=sys.stderr)
        return 2
    baseline = Path(args.baseline_src).resolve() if args.baseline_src else None
    if baseline is not None and not (baseline / "src" / "ollamamax").is_dir():
        print(f"bench_fleet: --baseline-src {baseline}: no src/ollamamax there", file=sys.stderr)
        return 2
    extra = ",baseline" if baseline and "baseline" not in args.targets else ""
    ks = [int(x) for x in args.replicas.split(",") if x.strip()] if args.replicas else []
    for k in ks:
        extra += f",replicas:{k}:redis,replicas:{k}:alone"
    if args.faults and ks:
        extra += f",replicas:{max(ks[0], 2)}:redis:kill-redis,replicas:{max(ks[0], 2)}:redis:kill-replica"
    targets = parse_targets(args.targets + extra, baseline)
    if any(t.startswith("replicas:") for t in targets):
        why = R.stream_available()
        if why:
            print(f"bench_fleet: --replicas: {why}", file=sys.stderr)
            return 1
        if any(R.parse(t)[1] for t in targets if t.startswith("replicas:")) and not shutil.which("redis-server"):
            print("bench_fleet: --replicas: redis-server not found (apt-get install redis-server)", file=sys.stderr)
            return 1
    if any(t.startswith("nginx") for t in targets) and not shutil.which("nginx"):
        print("bench_fleet: nginx not found (apt-get install nginx), or leave the nginx targets out", file=sys.stderr)
        return 1
    ports = list(range(args.base_port, args.base_port + scen.hosts + 1))
    if any(t.startswith("replicas:") for t in targets):
        ports += list(range(args.base_port + 59, args.base_port + 60 + max(R.parse(t)[0] for t in targets
                                                                            if t.startswith("replicas:"))))
    busy = [p for p in ports if not P.port_free(p)]
    if busy:
        print(f"bench_fleet: ports in use: {busy} (choose another --base-port)", file=sys.stderr)
        return 1
    if baseline is not None and not P.has_native(baseline / "src"):
        print(f"bench_fleet: note: no native modules in {baseline}/src (it runs the pure-Python structures)",
              file=sys.stderr)
    trace = make_trace(scen)
    tmp = Path(tempfile.mkdtemp(prefix="bench_fleet."))
    run = Run(args, scen, tmp)
    doc: dict[str, Any] = {
        "meta": {"commit": git_rev(TREE), "baseline_commit": git_rev(baseline) if baseline else None,
                 "machine": machine(), "pinning": run.pinning, "command": shlex.join([sys.executable, *sys.argv]),
                 "started": time.strftime("%Y-%m-%d %H:%M:%S"), "timeout_s": args.timeout,
                 "gateway_args": args.gateway_arg, "hold": args.hold},
        "scenario": scen.to_dict(), "scenario_spec": scen.spec(), "trace_summary": summary(trace), "targets": {},
    }
    if not args.quiet:
        print(f"bench_fleet: {len(trace)} requests over {scen.duration:.0f} s through {', '.join(targets)}; "
              f"{run.pinning}", file=sys.stderr, flush=True)
    try:
        for t in targets:
            doc["targets"][t] = await run.target(t, trace)
    finally:
        run.procs.stop_all()
        if args.keep_logs:
            Path(args.keep_logs).mkdir(parents=True, exist_ok=True)
            for f in tmp.glob("*.log"):
                shutil.copy(f, args.keep_logs)
        shutil.rmtree(tmp, ignore_errors=True)
    print_report(doc, scen)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # unwinds through amain's finally, which stops every process started


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
