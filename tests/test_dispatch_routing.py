"""Dispatcher routing against emulated hosts: model awareness and every strategy."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ollamamax.dispatch import Dispatcher, HostConfig
from ollamamax.fleet.learning import Ewma
from ollamamax.testing import FakeOllama
from ollamamax.wire.response import HEADER_COLD, HEADER_HOST

pytestmark = pytest.mark.timeout(60)

FAST = dict(tokens_per_sec=0, load_delay=0.02, num_parallel=4, max_loaded_models=2)


@contextlib.asynccontextmanager
async def fleet(*specs: dict[str, Any]) -> AsyncIterator[list[FakeOllama]]:
    async with contextlib.AsyncExitStack() as stack:
        hosts = []
        for i, spec in enumerate(specs):
            kw = {**FAST, "host_id": "abcdefgh"[i], **spec}
            hosts.append(await stack.enter_async_context(FakeOllama(**kw)))
        yield hosts


def chat_body(model: str = "llama3.2", content: str = "hi", stream: bool = False, **extra: Any) -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream, **extra}
    ).encode()


async def chat(d: Dispatcher, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    r = await d.handle("POST", "/api/chat", body, headers or {})
    data = await r.read()
    return r.status, r.headers[HEADER_HOST], data


def served(host: FakeOllama, model: str = "llama3.2:latest") -> int:
    return host.stats()["models"].get(model, {}).get("served", 0)


async def test_model_present_only_on_b_is_served_only_by_b() -> None:
    async with fleet({"models": ["llama3.2"]}, {"models": ["llama3.2", "qwen3:8b"]}) as (a, b):
        async with Dispatcher([a.url, b.url]) as d:
            for i in range(5):
                status, host, _ = await chat(d, chat_body("qwen3:8b", f"q{i}"))
                assert status == 200
                assert host == d.hosts[1].name
            assert served(b, "qwen3:8b") == 5
            assert "qwen3:8b" not in a.stats()["models"]


async def test_loaded_host_preferred_over_present_host() -> None:
    async with fleet({"preload": ["llama3.2"]}, {"models": ["llama3.2"]}) as (a, b):
        async with Dispatcher([a.url, b.url]) as d:
            # sequential and concurrent (within A's slots): all on A, B never loads
            for i in range(4):
                status, host, _ = await chat(d, chat_body(content=f"s{i}"))
                assert (status, host) == (200, d.hosts[0].name)
            results = await asyncio.gather(*(chat(d, chat_body(content=f"c{i}")) for i in range(8)))
            assert {r[1] for r in results} == {d.hosts[0].name}
            assert served(a) == 12 and served(b) == 0
            assert b.stats()["models"].get("llama3.2:latest", {}).get("loads", 0) == 0


async def test_loads_elsewhere_when_wait_exceeds_load_cost() -> None:
    async with fleet(
        {"preload": ["llama3.2"], "tokens_per_sec": 20, "response_tokens": (10, 10)}, {"models": ["llama3.2"]}
    ) as (a, b):
        async with Dispatcher([HostConfig(a.url, max_concurrency=1), HostConfig(b.url, max_concurrency=1)]) as d:
            ha, hb = d.hosts
            # A request holds A's only slot 5 s, loading on B is cheap and the model is in
            # steady demand: the second request's wait makes the planner load a copy on B.
            d.service["llama3.2:latest"] = svc = Ewma()
            svc.add(5.0)
            hb.load_cost["llama3.2:latest"] = e = Ewma()
            e.add(0.05)
            r1 = await d.handle("POST", "/api/chat", chat_body(stream=True), {})
            assert r1.headers[HEADER_HOST] == ha.name
            r2 = await d.handle("POST", "/api/chat", chat_body(), {})
            assert r2.headers[HEADER_HOST] == hb.name
            assert r2.headers[HEADER_COLD] == "1"
            await r2.read()
            await r1.read()


async def test_waits_for_loaded_host_when_load_is_dearer() -> None:
    async with fleet(
        {"preload": ["llama3.2"], "tokens_per_sec": 50, "response_tokens": (5, 5)}, {"models": ["llama3.2"]}
    ) as (a, b):
        async with Dispatcher([HostConfig(a.url, max_concurrency=1), HostConfig(b.url, max_concurrency=1)]) as d:
            # default load cost (10 s) >> a short wait at A: both requests are served by A
            results = await asyncio.gather(chat(d, chat_body(content="1")), chat(d, chat_body(content="2")))
            assert [r[1] for r in results] == [d.hosts[0].name] * 2
            assert served(b) == 0


async def test_round_robin_spreads_evenly() -> None:
    pre = {"preload": ["llama3.2"]}
    async with fleet(pre, pre, pre) as hosts:
        async with Dispatcher([h.url for h in hosts], strategy="round-robin") as d:
            for i in range(9):
                assert (await chat(d, chat_body(content=str(i))))[0] == 200
            assert [served(h) for h in hosts] == [3, 3, 3]


@pytest.mark.parametrize("strategy", ["least-loaded", "p2c"])
async def test_load_aware_strategies_avoid_busy_host(strategy: str) -> None:
    slow = {"preload": ["llama3.2"], "tokens_per_sec": 20, "response_tokens": (20, 20)}
    async with fleet(slow, slow) as (a, b):
        async with Dispatcher([a.url, b.url], strategy=strategy) as d:
            held = [await d.handle("POST", "/api/chat", chat_body(stream=True, content=str(i)), {}) for i in range(3)]
            # three streams: least loaded puts them 2/1 (or 1/2); the next goes to the less loaded
            busy = {d.hosts[0].name: 0, d.hosts[1].name: 0}
            for r in held:
                busy[r.headers[HEADER_HOST]] += 1
            assert sorted(busy.values()) == [1, 2]
            less = min(busy, key=busy.__getitem__)
            r = await d.handle("POST", "/api/chat", chat_body(stream=True, content="x"), {})
            assert r.headers[HEADER_HOST] == less
            for x in [*held, r]:
                await x.aclose()


async def test_latency_strategy_prefers_fast_host() -> None:
    async with fleet(
        {"preload": ["llama3.2"], "tokens_per_sec": 0},
        {"preload": ["llama3.2"], "tokens_per_sec": 40, "response_tokens": (8, 8)},
    ) as (a, b):
        async with Dispatcher([a.url, b.url], strategy="latency") as d:
            for i in range(8):
                assert (await chat(d, chat_body(content=str(i))))[0] == 200
            # each host is measured once, then the fast one takes everything
            assert served(b) == 1 and served(a) == 7


async def test_affinity_keeps_conversation_on_one_host() -> None:
    pre = {"preload": ["llama3.2"]}
    async with fleet(pre, pre, pre) as hosts:
        async with Dispatcher([h.url for h in hosts], strategy="affinity") as d:
            used_first = set()
            for conv in range(6):
                messages: list[dict[str, str]] = [{"role": "user", "content": f"conversation {conv} starts"}]
                seen = set()
                for turn in range(3):
                    body = json.dumps({"model": "llama3.2", "messages": messages, "stream": False}).encode()
                    r = await d.handle("POST", "/api/chat", body, {})
                    assert r.status == 200
                    seen.add(r.headers[HEADER_HOST])
                    reply = json.loads(r.body)["message"]
                    messages = [*messages, reply, {"role": "user", "content": f"turn {turn}"}]
                assert len(seen) == 1, seen
                used_first |= seen
            assert len(used_first) >= 2  # conversations spread over hosts


async def test_affinity_session_header_is_stable_across_dispatchers() -> None:
    pre = {"preload": ["llama3.2"]}
    async with fleet(pre, pre, pre) as hosts:
        urls = [h.url for h in hosts]
        mapping: list[dict[str, str]] = []
        for _ in range(2):
            async with Dispatcher(urls, strategy="affinity") as d:
                m = {}
                for k in range(12):
                    hdr = {"x-ollamamax-session": f"user-{k}"}  # header lookup is case-insensitive
                    status, host, _ = await chat(d, chat_body(content=f"anything {k}"), hdr)
                    assert status == 200
                    m[f"user-{k}"] = host
                mapping.append(m)
        assert mapping[0] == mapping[1]
        assert len(set(mapping[0].values())) >= 2


async def test_affinity_overflows_under_load() -> None:
    slow = {"preload": ["llama3.2"], "tokens_per_sec": 20, "response_tokens": (20, 20)}
    async with fleet(slow, slow, slow) as hosts:
        async with Dispatcher([h.url for h in hosts], strategy="affinity") as d:
            hdr = {"X-Ollamamax-Session": "one-busy-user"}
            held = [await d.handle("POST", "/api/chat", chat_body(stream=True, content=str(i)), hdr) for i in range(6)]
            used = {r.headers[HEADER_HOST] for r in held}
            assert len(used) >= 2  # bounded load pushed some to the next hosts on the ring
            for r in held:
                await r.aclose()
            # with the load gone, the session goes back to its home host
            first = held[0].headers[HEADER_HOST]
            assert (await chat(d, chat_body(content="again"), hdr))[1] == first


async def test_unknown_strategy_rejected() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        Dispatcher(["http://127.0.0.1:1"], strategy="random")
    with pytest.raises(ValueError, match="invalid host URL"):
        Dispatcher(["ftp://x"])
    with pytest.raises(ValueError, match="at least one host"):
        Dispatcher([])


async def test_load_cost_learned_from_load_duration() -> None:
    async with fleet({"models": ["llama3.2"], "load_delay": 0.2}) as (a,):
        async with Dispatcher([a.url]) as d:
            h = d.hosts[0]
            assert h.expected_load_cost("llama3.2:latest") == 10.0  # the default before any load
            r = await d.handle("POST", "/api/chat", chat_body(), {})
            assert r.status == 200 and r.headers[HEADER_COLD] == "1"
            learned = h.expected_load_cost("llama3.2:latest")
            assert 0.15 < learned < 2.0
            # the next request finds it warm
            r = await d.handle("POST", "/api/chat", chat_body(content="again"), {})
            assert r.headers[HEADER_COLD] == "0"
            assert d.metrics_snapshot()["histograms"]["tokens_per_s"]
