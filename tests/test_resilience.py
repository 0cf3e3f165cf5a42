"""Failures stay where they start: the gateway tells a host's fault from a request's.

Each test here failed on the gateway before outlier detection learned whose fault a 5xx
is (the hardening issue); the realistic bug each one catches is named in its docstring.
Loopback only, emulated hosts (``FakeOllama``) or tiny scripted hosts; seeded where
randomness is involved.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from ollamamax.dispatch import Dispatcher
from ollamamax.testing import FakeOllama

pytestmark = pytest.mark.timeout(90)

FAST: dict[str, Any] = dict(tokens_per_sec=0, load_delay=0.01, num_parallel=4, max_loaded_models=3)
NO_VISION = "this model is missing data required for image input"
IMG = base64.b64encode(b"\x89PNG not really").decode()


@contextlib.asynccontextmanager
async def fleet(n: int, **kw: Any) -> AsyncIterator[list[FakeOllama]]:
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for i in range(n):
            spec = {**FAST, "host_id": f"h{i}", "seed": 100 + i, **kw}
            out.append(await stack.enter_async_context(FakeOllama(["llama3.2", "qwen3"], **spec)))
        yield out


def chat(model: str = "llama3.2", content: str = "hi", *, images: bool = False, stream: bool = False) -> bytes:
    msg: dict[str, Any] = {"role": "user", "content": content}
    if images:
        msg["images"] = [IMG]
    return json.dumps({"model": model, "messages": [msg], "stream": stream}).encode()


async def ok(d: Dispatcher, body: bytes) -> tuple[int, bytes, dict[str, str]]:
    r = await d.handle("POST", "/api/chat", body, {})
    data = await r.read()
    failed = r.status != 200 or b'{"error"' in data
    return (500 if failed and r.status == 200 else r.status), data, r.headers


# ----------------------------------------------------------------------- request faults


async def test_a_request_that_every_host_refuses_never_takes_the_fleet_offline() -> None:
    """Bug caught: every 5xx counts against the host that answered.  Images sent to a
    text-only model get Ollama's 500 from every host; repeated 40 times they used to eject
    every host, after which every user of every model got 503 "no healthy host"."""
    async with fleet(3) as hosts, Dispatcher([h.url for h in hosts], eject_after_failures=3,
                                             strategy="round-robin") as d:
        for i in range(40):
            status, data, headers = await ok(d, chat(content=f"look {i}", images=True))
            assert status == 500 and json.loads(data) == {"error": NO_VISION}, data
            assert int(headers["X-Ollamamax-Attempts"]) <= 2  # a second opinion, then the client's
            # everyone else keeps being served, on every model
            for model in ("llama3.2", "qwen3"):
                status, data, _ = await ok(d, chat(model, f"hello {i}"))
                assert status == 200, data
        assert all(h["healthy"] for h in d.status()["hosts"])
        counters = d.metrics_snapshot()["counters"]
        assert counters["ejections"] == {}
        assert counters["request_faults"] >= 35  # the rest met a host already busy or similar


async def test_a_host_that_fails_where_its_peers_succeed_is_charged() -> None:
    """Bug caught: an unattributed 500 is never charged, so a host that answers every
    request with a 500 its peers do not give stays in rotation forever.  It is ejected by
    its failure share (every request still succeeds, on the other host)."""
    async with fleet(1, preload=["llama3.2"]) as (good,), fleet(1, fail_rate=1.0, preload=["llama3.2"]) as (bad_fake,):
        bad_fake.fail_message = "something odd on this host only"  # not a known runner failure
        async with Dispatcher([good.url, bad_fake.url], eject_after_failures=3, panic_threshold=0,
                              strategy="round-robin", refresh_interval=60, eject_cooldown=60) as d:
            for i in range(40):
                status, data, _ = await ok(d, chat(content=f"q{i}"))
                assert status == 200, data  # retried on the good host
            bad = next(h for h in d.hosts if h.url == bad_fake.url)
            assert bad.down and bad.ejected
            assert d.metrics_snapshot()["counters"]["ejections"] == {bad.name: 1}


# ------------------------------------------------------------------------ random 5xx


async def _success_rate_direct(hosts: list[FakeOllama], n: int, stream: bool) -> float:
    import aiohttp

    good = 0
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            h = hosts[i % len(hosts)]
            async with s.post(h.url + "/api/chat", data=chat(content=f"d{i}", stream=stream)) as r:
                data = await r.read()
                good += r.status == 200 and b'{"error"' not in data
    return good / n


async def _success_rate_gateway(d: Dispatcher, n: int, stream: bool, concurrency: int = 4) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> bool:
        async with sem:
            status, _, _ = await ok(d, chat(content=f"g{i}", stream=stream))
            return status == 200

    results = await asyncio.gather(*(one(i) for i in range(n)))
    return sum(results) / n


@pytest.mark.parametrize("stream", [False, True], ids=["non-streaming", "streaming"])
async def test_random_5xx_on_every_host_are_absorbed(stream: bool) -> None:
    """Bug caught: consecutive random failures eject hosts until none is left.  Three nets
    catch it now (5xx never eject by count, the ejection bound, panic routing); this fails
    only with all three gone, as in the old gateway.
    With 30% of requests failing at random on every host (a fixed seed per host), the
    gateway must succeed for at least 90% and more often than going direct."""
    n = 150
    async with fleet(3, fail_rate=0.3) as hosts:
        direct = await _success_rate_direct(hosts, n, stream)
    async with fleet(3, fail_rate=0.3) as hosts, Dispatcher([h.url for h in hosts]) as d:
        through = await _success_rate_gateway(d, n, stream)
    assert through >= 0.9, (through, direct)
    assert through > direct, (through, direct)


# ------------------------------------------------------------------------ ejection bound


async def test_no_more_than_the_configured_share_of_hosts_is_ever_ejected() -> None:
    """Bug caught: outlier detection ejects every host of a failing fleet, and then nobody
    is served at all.  Every host refuses connections (the hosts' own fault), with one
    failure enough to eject: at most half of the 4 hosts are ever out by outlier detection
    (no probe runs during the test: refresh_interval is long)."""
    async with fleet(4) as hosts, Dispatcher(
            [h.url for h in hosts], eject_after_failures=1, max_ejection_percent=50,
            eject_cooldown=60, refresh_interval=60) as d:
        for h in hosts:
            await h.kill()
        most = 0
        for i in range(30):
            await ok(d, chat(content=f"x{i}"))
            most = max(most, sum(h.ejected for h in d.hosts))
        assert most == 2
        assert sum(d.metrics_snapshot()["counters"]["ejections_prevented"].values()) > 0


# ------------------------------------------------------------------------- retry budget


class SlowFailingHost:
    """A scripted host for a full outage: answers its probes, and fails every chat after
    ``delay`` seconds with a runner failure (Ollama's text), counting the attempts."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.attempts = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> SlowFailingHost:
        app = web.Application()
        app.router.add_get("/api/tags", self._tags)
        app.router.add_get("/api/ps", self._ps)
        app.router.add_get("/api/version", self._version)
        app.router.add_post("/api/chat", self._chat)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    async def _ps(self, request: web.Request) -> web.Response:
        return web.json_response({"models": []})

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.32.15"})

    async def _tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest"}]})

    async def _chat(self, request: web.Request) -> web.Response:
        self.attempts += 1
        await asyncio.sleep(self.delay)
        return web.json_response({"error": "llama runner process has terminated: exit status 2"}, status=500)


async def test_the_retry_budget_holds_during_a_full_outage() -> None:
    """Bug caught: every request retries up to max_attempts during an outage, multiplying
    the load on hosts that are already failing (3x here).  With the budget, retries in
    progress stay within 20% of the requests in progress (at least 3)."""
    n = 40
    async with contextlib.AsyncExitStack() as stack:
        hosts = [await stack.enter_async_context(SlowFailingHost(0.3)) for _ in range(4)]
        d = await stack.enter_async_context(Dispatcher(
            [h.url for h in hosts], max_attempts=3, eject_after_failures=1000, retry_backoff=0.0,
            refresh_interval=60))
        most_retries = 0
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal most_retries
            while not done.is_set():
                most_retries = max(most_retries, d.metrics_snapshot()["retries_in_progress"])
                await asyncio.sleep(0.005)

        sampler = asyncio.create_task(sample())
        results = await asyncio.gather(*(ok(d, chat(content=f"o{i}")) for i in range(n)))
        done.set()
        await sampler
        assert all(status == 500 for status, _, _ in results)
        attempts = sum(h.attempts for h in hosts)
        counters = d.metrics_snapshot()["counters"]
        assert 0 < most_retries <= max(3, int(0.2 * n))  # never above the budget
        assert counters["retries_denied"] > 0
        assert counters["retries"] == attempts - n
        assert attempts <= 0.6 * n * 3, attempts  # without a budget: n * 3 = 120 attempts


# ------------------------------------------------------------------ the gateway's own EMFILE


async def test_the_gateways_own_descriptor_exhaustion_is_charged_to_no_host(monkeypatch) -> None:
    """Bug caught: the gateway's own EMFILE was reported as "connection refused" against the
    hosts, and all healthy hosts were ejected.  Now the client gets 503 busy and no host is
    charged, neither by requests nor by probes."""
    async with fleet(2) as hosts, Dispatcher([h.url for h in hosts], eject_after_failures=1,
                                             refresh_interval=60) as d:
        for h in d.hosts:  # no idle keep-alive connection to reuse: every request connects
            pool = d.upstream(h).pool
            while (c := pool.take_idle()) is not None:
                c.close()
        loop = asyncio.get_running_loop()

        async def out_of_descriptors(*a: Any, **kw: Any) -> Any:
            raise OSError(errno.EMFILE, "Too many open files")

        monkeypatch.setattr(loop, "create_connection", out_of_descriptors)
        for i in range(10):
            r = await d.handle("POST", "/api/chat", chat(content=f"e{i}"), {})
            assert r.status == 503 and "Retry-After" in r.headers
        for h in d.hosts:
            assert not await d.refresher.refresh_host(h)  # skipped, not failed
        monkeypatch.undo()
        assert all(not h.down and h.consecutive_failures == 0 for h in d.hosts)
        assert d.metrics_snapshot()["counters"]["ejections"] == {}
        status, data, _ = await ok(d, chat(content="after"))
        assert status == 200, data


# ------------------------------------------------------------------------------ hung host


async def test_requests_on_a_hung_host_move_as_soon_as_it_is_taken_out() -> None:
    """Bug caught: requests already sent to a host that hangs wait out first_byte_timeout
    (300 s) before their retry, although the probe takes the host out within seconds.  Now
    the probe's verdict moves them to another host at once."""
    async with fleet(2) as (a, b), Dispatcher([a.url, b.url], strategy="round-robin",
                                              connect_timeout=0.5, refresh_interval=0.5,
                                              first_byte_timeout=300) as d:
        a.hanging = True
        served = Counter()

        async def one(i: int) -> None:
            status, data, headers = await ok(d, chat(content=f"h{i}"))
            assert status == 200, data
            served[headers["X-Ollamamax-Host"]] += 1

        # 20 s is a liveness bound (the alternative is 300 s), not a speed goal
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(6))), 20)
        host_a = next(h for h in d.hosts if h.url == a.url)
        assert host_a.unreachable and set(served) == {next(h.name for h in d.hosts if h.url == b.url)}
        a.hanging = False


# ---------------------------------------------------------------------------------- panic


async def test_panic_routes_to_ejected_hosts_rather_than_refuse() -> None:
    """Bug caught: with the only host of a model ejected, every request got 503 "no
    healthy host" until the cooldown ended.  Below the panic threshold the ejected (but
    reachable) host serves; at panic_threshold=0 the old answer stands."""
    for n in (1, 2):
        for threshold, expect in ((50.0, 200), (0.0, 503)):
            async with fleet(n) as hosts, Dispatcher([h.url for h in hosts], eject_cooldown=60,
                                                     refresh_interval=60, max_ejection_percent=100,
                                                     panic_threshold=threshold) as d:
                for h in d.hosts:
                    assert d.health.eject(h, "test")
                status, data, _ = await ok(d, chat())
                assert status == expect, (n, threshold, data)


# ----------------------------------------------------------------------------- big bodies


@contextlib.asynccontextmanager
async def mock_process(*models: str) -> AsyncIterator[str]:
    """``ollamamax mock`` as a subprocess (this tree's package); yields its URL."""
    import os
    import re
    import sys
    from pathlib import Path

    import ollamamax

    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMAMAX_")}
    env["PYTHONPATH"] = str(Path(ollamamax.__file__).resolve().parents[1])
    if "OLLAMAMAX_NO_EXTENSIONS" in os.environ:
        env["OLLAMAMAX_NO_EXTENSIONS"] = os.environ["OLLAMAMAX_NO_EXTENSIONS"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ollamamax", "mock", "--port", "0", "--models", ",".join(models),
        "--tokens-per-sec", "0", "--load-delay", "0", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=env)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        m = re.search(rb"listening on (http://\S+)", line)
        assert m, line
        yield m.group(1).decode()
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


async def test_a_big_body_holds_the_event_loop_less_than_json_loads_would() -> None:
    """Bug caught: a 13 MiB vision chat was decoded with ``json.loads`` (and copied whole
    into the upstream transport) in one step of the event loop, so every other request
    waited that long.  The longest stall of the loop while the dispatcher takes such a
    request must stay under 1.25x what ``json.loads`` of the same body costs (the old path:
    1.5x), measured in the same run, before and beside the host's process (a ratio, so a
    slow or busy machine moves both sides alike)."""
    import os
    import time

    img = base64.b64encode(os.urandom(10 * 1024 * 1024)).decode()
    body = json.dumps({"model": "llava", "stream": False,
                       "messages": [{"role": "user", "content": "what is this", "images": [img]}]}).encode()
    ref = []
    for _ in range(5):
        t = time.perf_counter()
        json.loads(body)
        ref.append(time.perf_counter() - t)
    # the host in a process of its own: its decoding must not count as the gateway's stall
    async with mock_process("llava") as url, Dispatcher([url]) as d:
        await ok(d, chat("llava"))  # loaded, connection open
        stalls = []
        for _ in range(5):
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
            assert r.status == 200, await r.read()
            await r.read()
            done = True
            await p
            stalls.append(worst)
            t = time.perf_counter()  # the reference again, beside the host's process this time
            json.loads(body)
            ref.append(time.perf_counter() - t)
        reference = sorted(ref)[len(ref) // 2]
        # msgspec alone takes about 0.6 of json.loads's time here, and the longest step
        # (decode plus handing the body to the transport) 0.8-1.07 of it on 2-core CI
        # machines (1.0 failed there about one run in five); the old path (json.loads,
        # then the whole body copied into the transport in the same step) took 1.5 times
        # as long, so "under 1.25 json.loads" still tells the two apart
        assert min(stalls) < 1.25 * reference, (stalls, reference)
