"""Do big request bodies stall other requests?  Latency of small requests through the
gateway while other clients send 13 MiB bodies, against the same small requests alone.

    PYTHONPATH=src python tools/bench_big_bodies.py [--seconds 8] [--big-clients 4]
        [--body-mib 13] [--gateway-src DIR]

Starts two emulated hosts (``ollamamax mock --tokens-per-sec 0``: one with a vision model
for the big bodies, one with a small model for the small requests, so that a host busy
decoding big bodies does not slow the small requests down) and ``ollamamax serve`` in front
of them (from ``--gateway-src``, default this tree's ``src``, so an older tree can be
measured the same way), as separate processes on loopback.  Phase 1:
one client sends small ``/api/chat`` requests back to back for ``--seconds``.  Phase 2:
the same, while ``--big-clients`` clients each send chats carrying a ``--body-mib`` image
back to back.  It prints p50 / p99 / max of the small requests' latency in both phases
and the difference, and how many big requests completed.  Every loop is bounded by
``--seconds``; only the processes this script started are stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(url: str, models: tuple[bytes, ...], limit: float = 20.0) -> None:
    """Until ``url`` lists the models (a gateway: once its refresh has seen the hosts)."""
    deadline = time.monotonic() + limit
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            try:
                async with s.get(url + "/api/tags") as r:
                    data = await r.read()
                    if r.status == 200 and all(m in data for m in models):
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def small_loop(url: str, seconds: float) -> list[float]:
    body = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False})
    out = []
    async with aiohttp.ClientSession() as s:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t = time.perf_counter()
            async with s.post(url + "/api/chat", data=body) as r:
                await r.read()
                assert r.status == 200, r.status
            out.append((time.perf_counter() - t) * 1000.0)
    return out


async def big_loop(url: str, seconds: float, body: bytes) -> int:
    n = 0
    async with aiohttp.ClientSession() as s:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            async with s.post(url + "/api/chat", data=body) as r:
                await r.read()
                n += r.status == 200
    return n


def big_process(url: str, seconds: float, mib: float, clients: int) -> int:
    """The big-body clients, in a process of their own (so that building and sending 13 MiB
    bodies never delays the small requests' own client)."""
    raw = os.urandom(int(mib * 1024 * 1024 * 3 / 4))
    body = json.dumps({"model": "llava", "stream": False, "messages": [
        {"role": "user", "content": "what is this", "images": [base64.b64encode(raw).decode()]}]}).encode()

    async def run() -> int:
        return sum(await asyncio.gather(*(big_loop(url, seconds, body) for _ in range(clients))))

    return asyncio.run(run())


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--big-clients", type=int, default=4)
    ap.add_argument("--body-mib", type=float, default=13.0)
    ap.add_argument("--gateway-src", default=str(ROOT / "src"))
    a = ap.parse_args()
    mock_port, small_port, gw_port = free_port(), free_port(), free_port()
    env_mock = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env_gw = {**os.environ, "PYTHONPATH": a.gateway_src}
    procs = [
        subprocess.Popen([sys.executable, "-m", "ollamamax", "mock", "--port", str(mock_port), "--models", "llava",
                          "--tokens-per-sec", "0", "--num-parallel", "8", "--load-delay", "0"],
                         env=env_mock, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-m", "ollamamax", "mock", "--port", str(small_port), "--models",
                          "llama3.2", "--tokens-per-sec", "0", "--num-parallel", "8", "--load-delay", "0"],
                         env=env_mock, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-m", "ollamamax", "serve", "--backend", f"http://127.0.0.1:{mock_port}",
                          "--backend", f"http://127.0.0.1:{small_port}",
                          "--listen", f"127.0.0.1:{gw_port}", "--max-body-size", "64MiB", "--log-level", "warning"],
                         env=env_gw, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        gw = f"http://127.0.0.1:{gw_port}"
        await wait_ready(f"http://127.0.0.1:{mock_port}", (b"llava",))
        await wait_ready(f"http://127.0.0.1:{small_port}", (b"llama3.2",))
        await wait_ready(gw, (b"llava", b"llama3.2"))
        await small_loop(gw, 1.0)  # warm up: model loaded, connections open
        alone = await small_loop(gw, a.seconds)
        loop = asyncio.get_running_loop()
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            bigs_f = loop.run_in_executor(pool, big_process, gw, a.seconds + 1.0, a.body_mib, a.big_clients)
            await asyncio.sleep(1.0)  # the big clients are sending
            loaded = await small_loop(gw, a.seconds)
            bigs = await bigs_f
        print(f"gateway from {a.gateway_src}; {a.big_clients} clients sending {a.body_mib:g} MiB bodies "
              f"({bigs} completed in {a.seconds + 1:g} s)")
        print(f"{'small requests':<26} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for label, xs in (("alone", alone), ("with big bodies", loaded)):
            print(f"{label:<26} {len(xs):>6} {pct(xs, .5):>8.2f} {pct(xs, .99):>8.2f} {max(xs):>8.2f}")
        print(f"{'added by big bodies':<26} {'':>6} {pct(loaded, .5) - pct(alone, .5):>8.2f} "
              f"{pct(loaded, .99) - pct(alone, .99):>8.2f} {max(loaded) - max(alone):>8.2f}")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
