"""Failure injection: success rate through the gateway against going direct.

    PYTHONPATH=src python tools/bench_failures.py [--requests 300] [--hosts 3] [--concurrency 4]

Three emulated hosts (``FakeOllama``, seeded) fail a share of requests at random with
Ollama's runner-crash 500 before the first byte (``fail_rate``: 10%, 30%, 50%).  The same
number of ``/api/chat`` requests, non-streaming and streaming, go (a) straight to the
hosts in turn and (b) through a :class:`ollamamax.dispatch.Dispatcher` with its defaults;
a request succeeds when it gets 200 and no in-band error.  Only public names are used, so
the same script measures an older source tree (``PYTHONPATH=<tree>/src``) in the same way.
Loopback only; every loop is bounded by ``--requests``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys

import aiohttp

from ollamamax.dispatch import Dispatcher
from ollamamax.testing import FakeOllama


def body(i: int, stream: bool) -> bytes:
    return json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": f"q{i}"}],
                       "stream": stream}).encode()


@contextlib.asynccontextmanager
async def fleet(n: int, rate: float):  # type: ignore[no-untyped-def]
    async with contextlib.AsyncExitStack() as stack:
        hosts = [await stack.enter_async_context(FakeOllama(
            ["llama3.2"], tokens_per_sec=0, load_delay=0.01, num_parallel=4, max_loaded_models=1,
            fail_rate=rate, seed=7 + i)) for i in range(n)]
        yield hosts


async def direct(hosts: list[FakeOllama], n: int, stream: bool) -> float:
    good = 0
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            async with s.post(hosts[i % len(hosts)].url + "/api/chat", data=body(i, stream)) as r:
                data = await r.read()
                good += r.status == 200 and b'{"error"' not in data
    return good / n


async def gateway(hosts: list[FakeOllama], n: int, stream: bool, concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)
    async with Dispatcher([h.url for h in hosts]) as d:
        async def one(i: int) -> bool:
            async with sem:
                r = await d.handle("POST", "/api/chat", body(i, stream), {})
                data = await r.read()
                return r.status == 200 and b'{"error"' not in data

        return sum(await asyncio.gather(*(one(i) for i in range(n)))) / n


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=4)
    a = ap.parse_args()
    print(f"{a.requests} /api/chat requests per cell, {a.hosts} emulated hosts, gateway concurrency "
          f"{a.concurrency}")
    print(f"{'fail rate':>9}  {'mode':<13} {'direct':>7} {'gateway':>8}")
    for rate in (0.1, 0.3, 0.5):
        for stream in (False, True):
            async with fleet(a.hosts, rate) as hosts:
                d = await direct(hosts, a.requests, stream)
            async with fleet(a.hosts, rate) as hosts:
                g = await gateway(hosts, a.requests, stream, a.concurrency)
            mode = "streaming" if stream else "non-streaming"
            print(f"{rate:>9.0%}  {mode:<13} {d:>7.1%} {g:>8.1%}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
