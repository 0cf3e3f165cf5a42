"""FakeOllama scheduling and fault modes (raw HTTP over loopback)."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from ollamamax.testing import FakeOllama

BUSY = "server busy, please try again.  maximum pending requests exceeded"


def gen(model: str = "llama3.2", prompt: str = "hello there", **kw) -> dict:
    return {"model": model, "prompt": prompt, "stream": False, **kw}


async def post(session: aiohttp.ClientSession, url: str, body) -> tuple[int, dict]:
    async with session.post(url, json=body) as r:
        return r.status, await r.json(content_type=None)


async def until(cond, timeout: float = 5.0) -> None:
    """Wait (bounded) until ``cond()`` is true; state changes here are event-driven."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


async def test_slots_limit_in_flight(session):
    async with FakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=50, num_parallel=2, response_tokens=(10, 10)) as h:
        tasks = [asyncio.create_task(post(session, h.url + "/api/generate", gen(prompt=f"p{i}"))) for i in range(5)]
        # all five arrived and the (instant) load finished: then two run and three wait; the
        # in-flight count never goes above the slots while they drain
        await until(lambda: h.stats()["totals"]["queued"] + h.stats()["totals"]["in_flight"] == 5
                    and h.stats()["totals"]["in_flight"] > 0)
        st = h.stats()["models"]["llama3.2:latest"]
        assert st["in_flight"] == 2
        assert st["queued"] == 3
        res = await asyncio.gather(*tasks)
        assert all(s == 200 for s, _ in res)
        st = h.stats()["models"]["llama3.2:latest"]
        assert st == {**st, "in_flight": 0, "queued": 0, "served": 5, "loads": 1}


async def test_queue_limit_503(session):
    async with FakeOllama(["llama3.2"], load_delay=0.3, tokens_per_sec=0, max_queue=3) as h:
        tasks = [asyncio.create_task(post(session, h.url + "/api/generate", gen(prompt=f"p{i}"))) for i in range(5)]
        res = await asyncio.gather(*tasks)
        codes = sorted(s for s, _ in res)
        assert codes == [200, 200, 200, 503, 503]
        bodies = [b for s, b in res if s == 503]
        assert bodies[0] == {"error": BUSY}
        assert h.stats()["totals"]["rejected_503"] == 2


async def test_shared_cold_load(session):
    async with FakeOllama(["llama3.2"], load_delay=0.2, tokens_per_sec=0, num_parallel=4) as h:
        res = await asyncio.gather(*(post(session, h.url + "/api/generate", gen(prompt=f"p{i}")) for i in range(8)))
        assert all(s == 200 for s, _ in res)
        assert h.stats()["models"]["llama3.2:latest"]["loads"] == 1
        # every request waited for that one load and says so
        assert all(b["load_duration"] >= 150_000_000 for _, b in res)


async def test_eviction_lru(session):
    async with FakeOllama(["a1", "b2", "c3"], load_delay=0.01, tokens_per_sec=0, max_loaded_models=2) as h:
        for m in ("a1", "b2"):
            assert (await post(session, h.url + "/api/generate", gen(m)))[0] == 200
        assert sorted(h.loaded_models()) == ["a1:latest", "b2:latest"]
        await post(session, h.url + "/api/generate", gen("a1"))  # a1 most recently used
        await post(session, h.url + "/api/generate", gen("c3"))
        assert sorted(h.loaded_models()) == ["a1:latest", "c3:latest"]


async def test_busy_model_not_evicted(session):
    async with FakeOllama(["a1", "b2"], load_delay=0.01, tokens_per_sec=20, max_loaded_models=1, response_tokens=(8, 8)) as h:
        t_a = asyncio.create_task(post(session, h.url + "/api/generate", gen("a1")))
        await until(lambda: h.stats()["totals"]["in_flight"] == 1)
        t_b = asyncio.create_task(post(session, h.url + "/api/generate", gen("b2")))
        await until(lambda: h.stats()["totals"]["queued"] == 1)
        assert h.loaded_models() == ["a1:latest"]
        assert h.stats()["models"]["b2:latest"]["queued"] == 1
        (sa, _), (sb, _) = await asyncio.gather(t_a, t_b)
        assert sa == sb == 200
        assert h.loaded_models() == ["b2:latest"]


async def test_keep_alive_expiry_zero_and_negative(session):
    async with FakeOllama(["a1", "b2", "c3"], load_delay=0, tokens_per_sec=0, max_loaded_models=3) as h:
        await post(session, h.url + "/api/generate", gen("a1", keep_alive=0.15))
        await post(session, h.url + "/api/generate", gen("b2", keep_alive=0))
        await post(session, h.url + "/api/generate", gen("c3", keep_alive=-1))
        assert sorted(h.loaded_models()) == ["a1:latest", "c3:latest"]
        async with session.get(h.url + "/api/ps") as r:
            ps = await r.json()
        # sorted by remaining time: forever first
        assert [m["name"] for m in ps["models"]] == ["c3:latest", "a1:latest"]
        assert ps["models"][0]["expires_at"].startswith("23")  # ~292 years ahead
        await until(lambda: h.loaded_models() == ["c3:latest"], timeout=2.0)


async def test_keep_alive_go_durations(session):
    async with FakeOllama(["a1"], load_delay=0, tokens_per_sec=0) as h:
        for ka in ("1h30m", "30s", "0", "-1m", 12.5, "1.5h"):
            s, b = await post(session, h.url + "/api/generate", gen("a1", keep_alive=ka))
            assert s == 200, (ka, b)
        s, b = await post(session, h.url + "/api/generate", gen("a1", keep_alive="3600"))
        assert (s, b) == (400, {"error": 'time: missing unit in duration "3600"'})
        s, b = await post(session, h.url + "/api/generate", gen("a1", keep_alive="5x"))
        assert (s, b) == (400, {"error": 'time: unknown unit "x" in duration "5x"'})


async def test_load_and_unload_requests(session):
    async with FakeOllama(["a1"], load_delay=0.01, tokens_per_sec=0) as h:
        s, b = await post(session, h.url + "/api/generate", {"model": "a1"})
        assert s == 200 and b["done_reason"] == "load" and b["response"] == ""
        assert list(b) == ["model", "created_at", "response", "done", "done_reason"]
        assert h.loaded_models() == ["a1:latest"]
        s, b = await post(session, h.url + "/api/chat", {"model": "a1", "messages": [], "keep_alive": 0})
        assert s == 200 and b["done_reason"] == "unload"
        assert b["message"] == {"role": "assistant", "content": ""}
        assert h.loaded_models() == []


async def test_disconnect_frees_slot(session):
    async with FakeOllama(["a1"], load_delay=0, tokens_per_sec=10, response_tokens=(50, 50)) as h:  # 5 s replies
        t1 = asyncio.create_task(post(session, h.url + "/api/generate", gen("a1")))
        await until(lambda: h.stats()["totals"]["in_flight"] == 1)
        t2 = asyncio.create_task(post(session, h.url + "/api/generate", gen("a1", prompt="queued one")))
        await until(lambda: h.stats()["totals"]["queued"] == 1)
        t2.cancel()  # the waiter disconnects: leaves the queue
        await until(lambda: h.stats()["totals"]["queued"] == 0)
        assert h.stats()["totals"]["in_flight"] == 1
        t1.cancel()  # the running one disconnects: its slot is freed before its reply would end
        await until(lambda: h.stats()["totals"]["in_flight"] == 0, timeout=2.0)
        assert h.stats()["totals"]["served"] == 0  # neither reply was completed
        h.tokens_per_sec = 0
        assert (await post(session, h.url + "/api/generate", gen("a1")))[0] == 200


async def test_fail_rate(session):
    async with FakeOllama(["a1"], load_delay=0, tokens_per_sec=0, fail_rate=1.0) as h:
        s, b = await post(session, h.url + "/api/generate", gen("a1"))
        assert s == 500 and b["error"] == "llama-server process has terminated: exit status 2"
        async with session.post(h.url + "/api/chat", json={"model": "a1", "messages": [{"role": "user", "content": "x"}]}) as r:
            assert r.status == 500
            assert r.headers["Content-Type"] == "application/json; charset=utf-8"
        h.fail_rate = 0.0
        assert (await post(session, h.url + "/api/generate", gen("a1")))[0] == 200


async def test_midstream_fail(session):
    async with FakeOllama(["a1"], load_delay=0, tokens_per_sec=0, midstream_fail_rate=1.0, response_tokens=(10, 10)) as h:
        async with session.post(h.url + "/api/chat", json={"model": "a1", "messages": [{"role": "user", "content": "x"}]}) as r:
            assert r.status == 200
            raw = await r.read()
        lines = raw.decode().split("\n")
        assert lines[-1] == ""
        objs = [json.loads(x) for x in lines[:-1]]
        assert len(objs) >= 2
        assert "error" in objs[-1] and all(not o.get("done") for o in objs)
        assert all("error" not in o for o in objs[:-1])
        s, b = await post(session, h.url + "/api/generate", gen("a1"))
        assert s == 500 and "error" in b
        st = h.stats()["models"]["a1:latest"]
        assert (st["failed"], st["served"], st["in_flight"]) == (2, 0, 0)


async def test_busy_flag(session):
    async with FakeOllama(["a1"], load_delay=0, tokens_per_sec=0) as h:
        h.busy = True
        assert await post(session, h.url + "/api/generate", gen("a1")) == (503, {"error": BUSY})
        async with session.get(h.url + "/api/tags") as r:
            assert r.status == 200  # only inference is refused
        h.busy = False
        assert (await post(session, h.url + "/api/generate", gen("a1")))[0] == 200


async def test_hanging(session):
    async with FakeOllama(["a1"], load_delay=0, tokens_per_sec=0) as h:
        h.hanging = True
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(post(session, h.url + "/api/generate", gen("a1")), 0.2)
        async def version():
            async with session.get(h.url + "/api/version") as r:
                return r.status, await r.json()

        task = asyncio.create_task(version())
        await asyncio.sleep(0.1)
        assert not task.done()
        h.hanging = False
        assert await asyncio.wait_for(task, 2) == (200, {"version": "0.32.15"})


async def test_hanging_then_stop_closes(session):
    h = FakeOllama(["a1"], load_delay=0, tokens_per_sec=0)
    await h.start()
    h.hanging = True
    task = asyncio.create_task(post(session, h.url + "/api/generate", gen("a1")))
    await asyncio.sleep(0.1)
    await asyncio.wait_for(h.stop(), 3)
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(task, 3)


async def test_kill_resets_and_restart(session):
    h = FakeOllama(["a1"], load_delay=0, tokens_per_sec=20, response_tokens=(40, 40), preload=["a1"])
    await h.start()
    port = h.port
    try:
        async with session.post(h.url + "/api/generate", json={"model": "a1", "prompt": "x"}) as r:
            assert r.status == 200
            await r.content.readline()
            await h.kill()
            with pytest.raises(aiohttp.ClientError):
                await r.read()
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(h.url + "/"):
                pass
        assert h.loaded_models() == []
        await h.restart()
        assert h.port == port
        assert h.loaded_models() == ["a1:latest"]  # preload again, like a fresh process
        async with session.get(h.url + "/") as r:
            assert r.status == 200
    finally:
        await h.stop()


async def test_queue_waiter_for_cold_model_counts(session):
    async with FakeOllama(["a1"], load_delay=0.2, tokens_per_sec=0, max_queue=0) as h:
        s, b = await post(session, h.url + "/api/generate", gen("a1"))
        assert (s, b) == (503, {"error": BUSY})


async def test_stats_route(session):
    async with FakeOllama(["a1"], load_delay=0, tokens_per_sec=0, host_id="h-1") as h:
        await post(session, h.url + "/api/generate", gen("a1"))
        async with session.get(h.url + "/_mock/stats") as r:
            st = await r.json()
        assert st["host_id"] == "h-1" and r.headers["X-Ollama-Host-Id"] == "h-1"
        assert st["models"]["a1:latest"]["served"] == 1
        assert st["totals"]["served"] == 1 and st["loaded"] == ["a1:latest"]
        assert h.stats()["models"] == st["models"]


async def test_idle_timer_restarts_after_each_request(session):
    async with FakeOllama(["a1"], load_delay=0, tokens_per_sec=0) as h:
        await post(session, h.url + "/api/generate", gen("a1", keep_alive=0.6))
        await asyncio.sleep(0.35)
        await post(session, h.url + "/api/generate", gen("a1", keep_alive=0.6))
        await asyncio.sleep(0.4)  # 0.75 s after the first, 0.4 s after the second
        assert h.loaded_models() == ["a1:latest"]
        await until(lambda: h.loaded_models() == [], timeout=2.0)


async def test_keep_alive_shortened_by_later_request(session):
    async with FakeOllama(["a1"], load_delay=0, tokens_per_sec=0) as h:
        await post(session, h.url + "/api/generate", gen("a1", keep_alive="1h"))
        await post(session, h.url + "/api/generate", gen("a1", keep_alive="100ms"))
        await until(lambda: h.loaded_models() == [], timeout=2.0)
        await post(session, h.url + "/api/generate", gen("a1", keep_alive=-1))
        async with session.get(h.url + "/api/ps") as r:
            assert (await r.json())["models"][0]["expires_at"] > "2300"


async def test_default_keep_alive_setting(session):
    async with FakeOllama(["a1"], load_delay=0, tokens_per_sec=0, keep_alive="150ms") as h:
        await post(session, h.url + "/api/generate", gen("a1"))
        assert h.loaded_models() == ["a1:latest"]
        await until(lambda: h.loaded_models() == [], timeout=2.0)


async def test_paced_streaming_timing_fields(session):
    async with FakeOllama(["a1"], load_delay=0.05, tokens_per_sec=200, response_tokens=(20, 20)) as h:
        t0 = time.monotonic()
        async with session.post(h.url + "/api/generate", json={"model": "a1", "prompt": "x"}) as r:
            lines = [json.loads(x) async for x in r.content]
        elapsed = time.monotonic() - t0
        final = lines[-1]
        assert final["eval_count"] == 20 and len(lines) == 21
        assert final["eval_duration"] >= 0.09e9  # 20 tokens at 200/s = 0.1 s
        assert final["load_duration"] >= 0.04e9
        assert final["total_duration"] >= final["load_duration"] + final["eval_duration"]
        assert elapsed >= 0.14


async def test_embedding_models_run_one_slot(session):
    async with FakeOllama(["nomic-embed-text", "a1"], load_delay=0, tokens_per_sec=0, num_parallel=4, max_loaded_models=2) as h:
        assert h.scheduler.runner(h.lookup("nomic-embed-text")).parallel == 1
        assert h.scheduler.runner(h.lookup("a1")).parallel == 4


async def test_kill_with_requests_in_flight_and_queued(session):
    h = FakeOllama(["a1"], load_delay=0, tokens_per_sec=20, response_tokens=(40, 40))
    await h.start()
    try:
        tasks = [asyncio.create_task(post(session, h.url + "/api/generate", gen("a1", prompt=f"p{i}"))) for i in range(3)]
        await until(lambda: h.stats()["totals"]["in_flight"] == 1 and h.stats()["totals"]["queued"] == 2)
        await h.kill()
        res = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, aiohttp.ClientError) for r in res)
        await until(lambda: h.stats()["totals"]["in_flight"] == 0)
        t = h.stats()["totals"]
        assert (t["in_flight"], t["queued"], t["served"]) == (0, 0, 0)
        await h.restart()
        h.tokens_per_sec = 0
        assert (await post(session, h.url + "/api/generate", gen("a1")))[0] == 200
        assert h.stats()["totals"]["served"] == 1
    finally:
        await h.stop()


async def test_many_clients_with_random_disconnects(session):
    """200 requests over 3 models, 2 resident, a third of the clients give up early."""
    import random

    rng = random.Random(5)
    async with FakeOllama(
        ["a1", "b2", "c3"], load_delay=0.01, tokens_per_sec=500, num_parallel=3, max_loaded_models=2, response_tokens=(5, 15), seed=1
    ) as h:

        async def one(i: int):
            model = ("a1", "b2", "c3")[i % 3]
            stream = i % 2 == 0
            body = {"model": model, "prompt": f"q{i}", "stream": stream}
            async with session.post(h.url + "/api/generate", json=body) as r:
                data = await r.read()
            assert r.status == 200
            if stream:
                assert ndjson_ok(data)
            return 1

        tasks = [asyncio.create_task(one(i)) for i in range(200)]
        victims = rng.sample(tasks, 66)
        await asyncio.sleep(0.05)
        for t in victims:
            t.cancel()
        res = await asyncio.gather(*tasks, return_exceptions=True)
        done = sum(1 for r in res if r == 1)
        assert done >= 200 - 66
        await until(lambda: h.stats()["totals"]["in_flight"] == 0 and h.stats()["totals"]["queued"] == 0)
        t = h.stats()["totals"]
        assert t["served"] >= done and t["rejected_503"] == 0
        assert len(h.loaded_models()) <= 2


def ndjson_ok(data: bytes) -> bool:
    lines = data.decode().split("\n")
    return lines[-1] == "" and all(lines[:-1]) and json.loads(lines[-2])["done"] is True


@pytest.mark.parametrize("how", ["empty-request", "request-keep-alive-0", "unload-when-not-loaded"])
async def test_keep_alive_zero_dies_with_the_runner(session, how):
    """After a ``keep_alive: 0`` unload, requests without ``keep_alive`` get the server default
    again: Ollama's ``load()`` (server/sched.go) gives a fresh runner the request's value or
    ``envconfig.KeepAlive()``; the remembered value lived on the runner that was unloaded.
    The bug this catches: the 0 stuck to the model, so every later request paid a cold load."""
    async with FakeOllama(["a1"], load_delay=0.01, tokens_per_sec=0) as h:
        url = h.url + "/api/generate"
        if how == "empty-request":
            assert (await post(session, url, gen("a1")))[0] == 200
            _, b = await post(session, url, {"model": "a1", "keep_alive": 0})
            assert b["done_reason"] == "unload"
        elif how == "request-keep-alive-0":
            assert (await post(session, url, gen("a1", keep_alive=0)))[0] == 200
        else:
            _, b = await post(session, url, {"model": "a1", "keep_alive": 0})
            assert b["done_reason"] == "unload"
        assert h.loaded_models() == []
        loads = h.stats()["models"].get("a1:latest", {}).get("loads", 0)
        for _ in range(2):
            assert (await post(session, url, gen("a1")))[0] == 200
            assert h.loaded_models() == ["a1:latest"]
        assert h.stats()["models"]["a1:latest"]["loads"] == loads + 1
        async with session.get(h.url + "/api/ps") as r:
            (row,) = (await r.json())["models"]
        assert row["expires_at"] > rfc3339_in(240)  # the 5 minute default, not 0


async def test_loads_count_every_started_load_once_even_cancelled(session):
    async with FakeOllama(["a1"], load_delay=0.3, tokens_per_sec=0) as h:
        url = h.url + "/api/generate"
        task = asyncio.create_task(post(session, url, gen("a1")))
        await until(lambda: h.scheduler.runners.get(h.lookup("a1").key) is not None
                    and h.scheduler.runners[h.lookup("a1").key].load_task is not None)
        task.cancel()  # the client goes away during the load
        await until(lambda: h.stats()["totals"]["queued"] == 0)
        _, b = await post(session, url, {"model": "a1", "keep_alive": 0})  # cancels the load
        assert b["done_reason"] == "unload" and h.loaded_models() == []
        st = h.stats()["models"]["a1:latest"]
        assert (st["loads"], st["evictions"]) == (1, 0)
        assert (await post(session, url, gen("a1")))[0] == 200
        assert h.stats()["models"]["a1:latest"]["loads"] == 2


async def test_evictions_count_only_unloads_that_make_room(session):
    async with FakeOllama(["a1", "b2"], load_delay=0, tokens_per_sec=0, max_loaded_models=1) as h:
        url = h.url + "/api/generate"
        await post(session, url, gen("a1"))
        await post(session, url, gen("b2"))  # evicts a1
        await post(session, url, {"model": "b2", "keep_alive": 0})  # explicit unload: not an eviction
        await post(session, url, gen("a1", keep_alive=0.05))
        await until(lambda: h.loaded_models() == [])  # keep-alive expiry: not an eviction
        st = h.stats()
        assert [st["models"][m]["evictions"] for m in ("a1:latest", "b2:latest")] == [1, 0]
        assert st["totals"]["evictions"] == 1 and st["totals"]["loads"] == 3


def rfc3339_in(seconds: float) -> str:
    """The local RFC 3339 time ``seconds`` from now, comparable as a string with ``expires_at``."""
    from ollamamax.testing._goformat import rfc3339_at

    return rfc3339_at(time.time_ns() + int(seconds * 1e9))
