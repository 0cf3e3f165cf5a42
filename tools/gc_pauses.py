#!/usr/bin/env python3
"""GC pauses of the gateway under load, with default GC settings and with GC tuning.

Runs the same fixed, bounded load twice, each time in a fresh child process (so the two
runs do not share a heap): once with CPython's default GC, once after
``tune_gc(freeze=True, thresholds=...)`` (``gc.freeze()`` after start-up plus larger
thresholds, the Python counterpart of the original OllamaMax report's GC tuning).  Each
child starts two emulated Ollama hosts, a Dispatcher and the gateway app on loopback,
warms up, installs a :class:`GcPauseRecorder`, then sends ``--requests`` requests with
``--concurrency`` workers (a mix of /api/chat streaming and not, and /api/generate) and
reports the GC pause histogram: count, p50, p99, max and total GC time, per generation
and overall, plus throughput.

What is in the measured process: by default (``--hosts inprocess``) the emulated hosts
and the HTTP client run in the same process as the gateway, so their garbage is
collected there too; ``--hosts subprocess`` runs each host as ``ollamamax mock`` in its
own process; ``--mode handle`` calls ``Dispatcher.handle`` directly (no gateway HTTP
server or client in the process).

    python tools/gc_pauses.py                         # 20k requests, concurrency 32
    python tools/gc_pauses.py --hosts subprocess --threshold 50000,20,20 --resident 300000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path and (ROOT / "src" / "ollamamax").is_dir():
    sys.path.insert(0, str(ROOT / "src"))

MODEL = "llama3.2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _wait_listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            await w.wait_closed()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"emulated host on port {port} did not start") from None
            await asyncio.sleep(0.1)


def _bodies() -> list[bytes]:
    out = []
    for i in range(8):
        msg = [{"role": "user", "content": f"question {i}: why is the sky blue?"}]
        out.append(json.dumps({"model": MODEL, "messages": msg, "stream": i % 2 == 0}).encode())
    return out


async def _child(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp
    from aiohttp import web

    from ollamamax import create_app
    from ollamamax.dispatch import Dispatcher
    from ollamamax.ops.gcstats import GcPauseRecorder, parse_gc_threshold, tune_gc
    from ollamamax.ops.metrics import install_observability
    from ollamamax.testing import FakeOllama

    host_kw = dict(load_delay=0, tokens_per_sec=0, num_parallel=32, preload=[MODEL], seed=1)
    async with contextlib.AsyncExitStack() as stack:
        urls: list[str] = []
        procs: list[subprocess.Popen[bytes]] = []
        if args.hosts == "subprocess":
            for _ in range(2):
                port = _free_port()
                p = subprocess.Popen(
                    [sys.executable, "-m", "ollamamax", "mock", "--port", str(port), "--models", MODEL,
                     "--preload", MODEL, "--tokens-per-sec", "0", "--load-delay", "0", "--num-parallel", "32",
                     "--seed", "1"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
                procs.append(p)
                urls.append(f"http://127.0.0.1:{port}")

            def stop_hosts() -> None:
                for p in procs:
                    p.terminate()
                for p in procs:
                    try:
                        p.wait(10)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()

            stack.callback(stop_hosts)
            for u in urls:
                await _wait_listening(int(u.rsplit(":", 1)[1]))
        else:
            for _ in range(2):
                h = await stack.enter_async_context(FakeOllama([MODEL], **host_kw))
                urls.append(h.url)
        d = await stack.enter_async_context(Dispatcher(urls, max_in_flight_per_host=32))

        bodies = _bodies()
        headers = {"Content-Type": "application/json"}
        if args.mode == "gateway":
            app = create_app(d)
            install_observability(app, d, record_gc=False)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            port = _free_port()
            site = web.TCPSite(runner, "127.0.0.1", port)
            await site.start()
            session = await stack.enter_async_context(
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency)))
            url = f"http://127.0.0.1:{port}/api/chat"

            async def one(i: int) -> None:
                async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"HTTP {r.status}")
        else:

            async def one(i: int) -> None:
                resp = await d.handle("POST", "/api/chat", bodies[i % len(bodies)], headers)
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")

        async def run(n: int) -> None:
            it = iter(range(n))

            async def worker() -> None:
                for i in it:
                    await one(i)

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))

        await run(args.warmup)
        resident = [{"id": i, "tags": [i]} for i in range(args.resident)]  # long-lived service state
        tuning = None
        if args.config == "tuned":
            thresholds = None if args.threshold in ("", "default") else parse_gc_threshold(args.threshold)
            tuning = tune_gc(freeze=not args.no_freeze, thresholds=thresholds)
        else:
            gc.collect()
        rec = GcPauseRecorder().install()
        t0 = time.perf_counter()
        await run(args.requests)
        wall = time.perf_counter() - t0
        rec.uninstall()
        pending = list(gc.get_count())
        import resource

        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        tracked = len(gc.get_objects())
        del resident
        s = rec.summary()
        return {
            "config": args.config,
            "thresholds": list(gc.get_threshold()),
            "frozen": tuning.frozen if tuning else 0,
            "previous_thresholds": list(tuning.previous_thresholds) if tuning else list(gc.get_threshold()),
            "requests": args.requests,
            "wall_s": wall,
            "req_per_s": args.requests / wall,
            "gc": s,
            "gc_count_at_end": pending,
            "tracked_objects_at_end": tracked,
            "max_rss_mb": rss_mb,
            "python": sys.version.split()[0],
            "native_hist": type(rec.histograms()[0]).__module__,
        }


def _fmt_row(name: str, s: dict[str, Any], wall: float, rps: float | None) -> str:
    return (f"{name:<30} {s['count']:>7} {s['p50_us'] / 1000:>9.3f} {s['p99_us'] / 1000:>9.3f} "
            f"{s['max_us'] / 1000:>9.2f} {s['total_us'] / 1000:>10.1f} {100 * s['total_us'] / 1e6 / wall:>6.2f}% "
            + (f"{rps:>8.0f}" if rps is not None else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--threshold", default="50000,20,20",
                    help="GC thresholds of the tuned run ('default': keep CPython's)")
    ap.add_argument("--no-freeze", action="store_true", help="no gc.freeze() in the tuned run")
    ap.add_argument("--resident", type=int, default=0,
                    help="extra long-lived objects the process holds (simulated service state)")
    ap.add_argument("--mode", choices=("gateway", "handle"), default="gateway")
    ap.add_argument("--hosts", choices=("inprocess", "subprocess"), default="inprocess")
    ap.add_argument("--repeat", type=int, default=1, help="alternate default/tuned runs this many times")
    ap.add_argument("--json", action="store_true", help="print the raw results as JSON")
    ap.add_argument("--config", choices=("default", "tuned"), help=argparse.SUPPRESS)  # child mode
    args = ap.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.repeat < 1 or args.warmup < 0 or args.resident < 0:
        ap.error("--requests, --concurrency and --repeat must be >= 1; --warmup and --resident >= 0")
    if args.config is not None:
        print(json.dumps(asyncio.run(_child(args))))
        return 0

    results = []
    for config in ("default", "tuned") * args.repeat:
        cmd = [sys.executable, __file__, "--config", config, "--requests", str(args.requests),
               "--concurrency", str(args.concurrency), "--warmup", str(args.warmup),
               "--threshold", args.threshold, "--resident", str(args.resident), "--mode", args.mode,
               "--hosts", args.hosts] + (["--no-freeze"] if args.no_freeze else [])
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False)
        if out.returncode != 0:
            sys.stderr.write(out.stderr)
            return 1
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    r0 = results[0]
    print(f"GC pauses under load: {args.requests} requests, concurrency {args.concurrency}, mode {args.mode}, "
          f"hosts {args.hosts}, resident objects {args.resident}; Python {r0['python']}, "
          f"histogram {r0['native_hist']}")
    print(f"{'run / generation':<30} {'count':>7} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} {'total ms':>10} "
          f"{'of wall':>7} {'req/s':>8}")
    for r in results:
        label = ("default " + ",".join(map(str, r["thresholds"])) if r["config"] == "default"
                 else f"{'' if args.no_freeze else 'freeze+'}{','.join(map(str, r['thresholds']))}")
        for key in ("all", "gen0", "gen1", "gen2"):
            name = f"{label} {key}" if key == "all" else f"  {key}"
            print(_fmt_row(name, r["gc"][key], r["wall_s"], r["req_per_s"] if key == "all" else None))
        print(f"  frozen objects {r['frozen']}, gc.get_count() at end {r['gc_count_at_end']}, tracked objects "
              f"at end {r['tracked_objects_at_end']}, max RSS {r['max_rss_mb']:.0f} MB")
    for i in range(0, len(results) - 1, 2):
        a, b = results[i]["gc"]["all"], results[i + 1]["gc"]["all"]
        if a["total_us"] > 0:
            print(f"tuned/default (pair {i // 2 + 1}): total GC time x{b['total_us'] / a['total_us']:.3f}, "
                  f"collections x{b['count'] / max(a['count'], 1):.3f}, "
                  f"max pause x{b['max_us'] / max(a['max_us'], 1e-9):.3f}, "
                  f"throughput x{results[i + 1]['req_per_s'] / results[i]['req_per_s']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
