"""Dispatcher overhead benchmark (marked ``bench``; skipped in the default run).

Run:  PYTHONPATH=src python -m pytest tests/test_dispatch_bench.py -m bench -s -q

One emulated host runs in a child process (pinned to CPU 1 when ``taskset`` exists);
this process (pinned to CPU 0) sends the same requests through a plain aiohttp client
(the reference) and through ``Dispatcher.handle()``, interleaved over several rounds.
It prints the median throughputs, their ratio and the implied added cost per request;
nothing about speed is asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator

import aiohttp
import pytest

from ollamamax.dispatch import Dispatcher

pytestmark = [pytest.mark.bench, pytest.mark.timeout(600)]

CHILD = """
import asyncio, sys
from ollamamax.testing import FakeOllama
async def main():
    async with FakeOllama(models=["llama3.2"], preload=["llama3.2"], tokens_per_sec=0, load_delay=0,
                          num_parallel=64, response_tokens=(16, 16)) as h:
        print(h.url, flush=True)
        await asyncio.Event().wait()
try:
    import uvloop
    uvloop.install()
except ImportError:
    pass
asyncio.run(main())
"""


@pytest.fixture
def host_url() -> Iterator[str]:
    cmd = [sys.executable, "-c", CHILD]
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        cmd = ["taskset", "-c", "1", *cmd]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().decode().strip()
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


async def _rate(fn: Callable[[], Awaitable[None]], n: int, concurrency: int) -> tuple[float, float]:
    """(requests per wall second, CPU microseconds of this process per request)."""
    it = iter(range(n))

    async def worker() -> None:
        for _ in it:
            await fn()

    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e6


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
async def test_dispatcher_overhead_vs_plain_client(host_url: str, stream: bool) -> None:
    n, concurrency, rounds = 2000, 16, 5
    body = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": stream}).encode()
    hdrs = {"Content-Type": "application/json"}
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s,
        Dispatcher([host_url], max_in_flight_per_host=concurrency, refresh_interval=60) as d,
    ):

        async def direct() -> None:
            async with s.post(host_url + "/api/chat", data=body, headers=hdrs) as r:
                async for _ in r.content.iter_any():
                    pass

        async def via() -> None:
            r = await d.handle("POST", "/api/chat", body, hdrs)
            await r.read()

        await _rate(direct, n // 4, concurrency)  # warm both paths
        await _rate(via, n // 4, concurrency)
        ref, ours = [], []
        for _ in range(rounds):
            ref.append(await _rate(direct, n, concurrency))
            ours.append(await _rate(via, n, concurrency))
    r = sorted(x[0] for x in ref)[rounds // 2]
    o = sorted(x[0] for x in ours)[rounds // 2]
    rc = sorted(x[1] for x in ref)[rounds // 2]
    oc = sorted(x[1] for x in ours)[rounds // 2]
    print(
        f"\n[dispatch bench, {'stream' if stream else 'body'}] median of {rounds} interleaved rounds x {n} chat "
        f"requests, concurrency {concurrency}: plain aiohttp {r:.0f} req/s ({rc:.0f} us CPU/req), "
        f"Dispatcher.handle {o:.0f} req/s ({oc:.0f} us CPU/req); throughput ratio {o / r:.2f}, "
        f"CPU ratio {oc / rc:.2f} (+{oc - rc:.0f} us CPU per request)"
    )


@pytest.mark.parametrize("n_hosts", [1, 8, 64, 256])
async def test_dispatcher_logic_cost_without_http(n_hosts: int) -> None:
    """CPU cost of the dispatcher's own logic per request, with ``n_hosts`` hosts in the
    fleet (the model on every host's disk, loaded on two of them, or on every host: the
    router's worst case): the host's HTTP answer is a stub, so parsing, routing, admission,
    headers and accounting are all that is measured.  Also the scheduler's planning pass
    over the whole fleet (it runs on a 250 ms tick, not per request).  Reference: the same
    number of bare ``json.loads`` of the request body."""
    from multidict import CIMultiDict

    from ollamamax.fleet.snapshot import HostView

    body = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}).encode()
    reply = (
        b'{"model":"llama3.2","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant","content":"ok"},'
        b'"done":true,"total_duration":1,"load_duration":1,"prompt_eval_count":1,"eval_count":5,"eval_duration":100000}'
    )

    class StubResponse:
        status = 200
        header_list = (("Content-Type", "application/json; charset=utf-8"), ("Content-Length", str(len(reply))))
        headers = CIMultiDict(header_list)
        content_type = "application/json; charset=utf-8"

        async def read(self) -> bytes:
            return reply

        def release(self) -> None:
            pass

        def close(self) -> None:
            pass

    async def stub_send(*args: object, **kwargs: object) -> StubResponse:
        return StubResponse()

    model = "llama3.2:latest"
    figures = []
    for loaded_on in sorted({min(2, n_hosts), n_hosts}):
        urls = [f"http://127.0.0.{1 + i // 60000}:{1024 + i}" for i in range(n_hosts)]
        async with Dispatcher(urls, connect_timeout=0.2, refresh_interval=3600) as d:
            for h in d.hosts:
                holds = frozenset({model}) if h.index < loaded_on else frozenset()
                d.store.publish(HostView(h.index, h.name, h.url, healthy=True, present=frozenset({model}),
                                         loaded=holds))
                h.down = h.unreachable = False
                assert d.scheduler is not None
                d.scheduler.reconcile(h, holds, d.clock())
                d.upstream(h).send = stub_send  # type: ignore[method-assign,assignment]
            hdrs = {"Content-Type": "application/json"}
            n = 20000
            for _ in range(1000):
                await d.handle("POST", "/api/chat", body, hdrs)
            c0 = time.process_time()
            for _ in range(n):
                r = await d.handle("POST", "/api/chat", body, hdrs)
            ours = (time.process_time() - c0) / n * 1e6
            assert r.status == 200
            c0 = time.process_time()
            for _ in range(200):
                d.scheduler.plan_now()
            plan_us = (time.process_time() - c0) / 200 * 1e6
            figures.append((loaded_on, ours, plan_us))
    c0 = time.process_time()
    for _ in range(20000):
        json.loads(body)
    ref = (time.process_time() - c0) / 20000 * 1e6
    for loaded_on, ours, plan_us in figures:
        print(
            f"\n[dispatch bench, logic] {n_hosts} hosts, model loaded on {loaded_on}: {ours:.1f} us CPU per "
            f"request ({1e6 / ours:.0f} req/s per core; bare json.loads {ref:.2f} us, ratio {ours / ref:.0f}x); "
            f"a planning pass {plan_us:.0f} us ({plan_us / 2500:.2f}% of a core at 4 passes/s)"
        )
