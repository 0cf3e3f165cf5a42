"""asv benchmarks for the dispatcher's own cost, against in-process emulated hosts.

Two ``FakeOllama`` hosts (unpaced generation, ``tokens_per_sec=0``; model preloaded;
16-token answers) run in a private event loop together with the client side, so every
figure is one core doing both ends over loopback.  ``path``:

* ``direct``   -- aiohttp ``ClientSession`` straight to the hosts (taken in turn): the
  reference, i.e. what the work costs without a dispatcher;
* ``dispatch`` -- ``Dispatcher.handle()`` (the in-process front end: no extra network hop),
  reply read to the end (``DispatchResponse.read()``).

``time_requests`` runs ``N_REQUESTS`` chats with ``concurrency`` in flight.  The difference
dispatch - direct is the dispatcher's overhead; ``track_overhead_ratio`` measures both in
the same call and reports dispatch/direct, which is steadier across machines than either
time.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import aiohttp

try:
    from ollamamax.dispatch import Dispatcher
    from ollamamax.testing import FakeOllama
except ImportError:  # a commit from before the dispatcher / emulator: asv skips these
    Dispatcher = FakeOllama = None  # type: ignore[assignment,misc]

N_REQUESTS = 100
USER = [{"role": "user", "content": "Why is the sky blue?"}]
BODIES = {
    "chat": json.dumps({"model": "llama3.2", "messages": USER, "stream": False}).encode(),
    "chat_stream": json.dumps({"model": "llama3.2", "messages": USER, "stream": True}).encode(),
}
HEADERS = {"Content-Type": "application/json"}


class _Hosts:
    """Two emulated hosts, a Dispatcher over them and a plain session, in one private loop."""

    def start(self) -> None:
        if Dispatcher is None or FakeOllama is None:
            raise NotImplementedError("ollamamax.dispatch is not in this commit")
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._start())

    async def _start(self) -> None:
        self.hosts = []
        for _ in range(2):
            h = FakeOllama(
                ["llama3.2"],
                tokens_per_sec=0,
                load_delay=0,
                num_parallel=32,
                max_queue=10000,
                preload=["llama3.2"],
                response_tokens=(16, 16),
                seed=1,
            )
            await h.start()
            self.hosts.append(h)
        urls = [h.url for h in self.hosts]
        self.urls = itertools.cycle([u + "/api/chat" for u in urls])
        # refresh_interval: no background refresh inside a timed run
        self.dispatcher = Dispatcher(urls, max_in_flight_per_host=32, refresh_interval=3600.0)
        await self.dispatcher.start()
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))

    def stop(self) -> None:
        if getattr(self, "loop", None) is None:  # setup skipped (NotImplementedError)
            return
        self.loop.run_until_complete(self._stop())
        self.loop.close()

    async def _stop(self) -> None:
        await self.session.close()
        await self.dispatcher.close()
        for h in self.hosts:
            await h.stop()

    # -- one batch of requests --------------------------------------------------------
    async def _batch(self, path: str, body: bytes, concurrency: int) -> None:
        remaining = N_REQUESTS
        if path == "direct":
            session, urls = self.session, self.urls

            async def one() -> None:
                async with session.post(next(urls), data=body, headers=HEADERS) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"direct: HTTP {r.status}")
        else:
            handle = self.dispatcher.handle

            async def one() -> None:
                resp = await handle("POST", "/api/chat", body, HEADERS)
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"dispatch: HTTP {resp.status}")

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await one()

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    def run(self, path: str, route: str, concurrency: int) -> None:
        self.loop.run_until_complete(self._batch(path, BODIES[route], concurrency))


class DispatchOverhead(_Hosts):
    """``N_REQUESTS`` chats (non-streaming / streaming) with ``concurrency`` in flight."""

    params = [["direct", "dispatch"], list(BODIES), [1, 16]]
    param_names = ["path", "route", "concurrency"]
    timeout = 120
    warmup_time = 0.2

    def setup(self, path: str, route: str, concurrency: int) -> None:
        self.start()
        self.run(path, route, concurrency)  # connections opened, code paths warm

    def teardown(self, path: str, route: str, concurrency: int) -> None:
        self.stop()

    def time_requests(self, path: str, route: str, concurrency: int) -> None:
        self.run(path, route, concurrency)


class DispatchOverheadRatio(_Hosts):
    """dispatch time / direct time for the same batch, measured back to back (best of 3)."""

    params = [list(BODIES), [1, 16]]
    param_names = ["route", "concurrency"]
    timeout = 120

    def setup(self, route: str, concurrency: int) -> None:
        self.start()
        for path in ("direct", "dispatch"):
            self.run(path, route, concurrency)

    def teardown(self, route: str, concurrency: int) -> None:
        self.stop()

    def _best(self, path: str, route: str, concurrency: int) -> float:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            self.run(path, route, concurrency)
            best = min(best, time.perf_counter() - t0)
        return best

    def track_overhead_ratio(self, route: str, concurrency: int) -> float:
        direct = self._best("direct", route, concurrency)
        dispatch = self._best("dispatch", route, concurrency)
        return dispatch / direct

    track_overhead_ratio.unit = "ratio"  # type: ignore[attr-defined]

    def track_overhead_us_per_request(self, route: str, concurrency: int) -> float:
        direct = self._best("direct", route, concurrency)
        dispatch = self._best("dispatch", route, concurrency)
        return (dispatch - direct) / N_REQUESTS * 1e6

    track_overhead_us_per_request.unit = "us"  # type: ignore[attr-defined]
