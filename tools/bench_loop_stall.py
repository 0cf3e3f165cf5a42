"""How long does the dispatcher hold its event loop for one 13 MiB request?

    PYTHONPATH=<tree>/src python tools/bench_loop_stall.py [--body-mib 13] [--reps 5]

Runs the dispatcher of the tree on ``PYTHONPATH`` (an older tree is measured the same way;
only public names are used) in this process, and one emulated host from *this* repository
in a process of its own (its decoding must not count).  For each of ``--reps`` vision-chat
requests carrying a ``--body-mib`` image it records the longest gap between two turns of
the event loop while ``Dispatcher.handle`` takes the request, forwards it and reads the
answer; and, in the same run, how long ``json.loads`` of that body takes (the reference:
what a loop step that parses the body with the standard library costs at least).  Prints
the median and best of both.  Loopback only; bounded by ``--reps``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

from ollamamax.dispatch import Dispatcher

REPO_SRC = Path(__file__).resolve().parents[1] / "src"


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--body-mib", type=float, default=13.0)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    img = base64.b64encode(os.urandom(int(a.body_mib * 1024 * 1024 * 3 / 4))).decode()
    body = json.dumps({"model": "llava", "stream": False,
                       "messages": [{"role": "user", "content": "what is this", "images": [img]}]}).encode()
    ref = []
    for _ in range(a.reps):
        t = time.perf_counter()
        json.loads(body)
        ref.append(time.perf_counter() - t)
    env = {**os.environ, "PYTHONPATH": str(REPO_SRC)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ollamamax", "mock", "--port", "0", "--models", "llava", "--tokens-per-sec", "0",
        "--load-delay", "0", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env)
    try:
        assert proc.stdout is not None
        m = re.search(rb"listening on (http://\S+)", await asyncio.wait_for(proc.stdout.readline(), 30))
        assert m
        async with Dispatcher([m.group(1).decode()]) as d:
            small = json.dumps({"model": "llava", "stream": False,
                                "messages": [{"role": "user", "content": "hi"}]}).encode()
            await (await d.handle("POST", "/api/chat", small, {})).read()
            stalls = []
            for _ in range(a.reps):
                worst = 0.0
                done = False

                async def probe() -> None:
                    nonlocal worst
                    last = time.perf_counter()
                    while not done:
                        await asyncio.sleep(0)
                        now = time.perf_counter()
                        worst = max(worst, now - last)
                        last = now

                p = asyncio.create_task(probe())
                await asyncio.sleep(0)
                r = await d.handle("POST", "/api/chat", body, {})
                await r.read()
                assert r.status == 200, r.status
                done = True
                await p
                stalls.append(worst)
    finally:
        proc.terminate()
        await proc.wait()
    ms = 1000.0
    print(f"{len(body) / 2**20:.1f} MiB body, {a.reps} requests; dispatcher from "
          f"{Path(sys.modules['ollamamax'].__file__).parents[1]}")
    print(f"longest event-loop stall: median {statistics.median(stalls) * ms:.1f} ms, best "
          f"{min(stalls) * ms:.1f} ms;  json.loads of the body: median {statistics.median(ref) * ms:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
