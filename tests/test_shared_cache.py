"""The response cache's second level: answers shared by every gateway through a real Redis.

Real ``redis-server`` (the ``redis_server`` fixture in conftest), real emulated hosts, two
or three gateways (``Dispatcher``) in one process.  Each test names the bug it catches.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from conftest import RedisServer

from ollamamax.dispatch import Dispatcher
from ollamamax.dispatch import shared as shared_mod
from ollamamax.dispatch.cache import CachedResponse
from ollamamax.dispatch.sharedcache import decode, encode
from ollamamax.testing import FakeOllama
from ollamamax.wire.response import HEADER_CACHE

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def fast_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared_mod, "SYNC_INTERVAL", 0.05)


def body(content: str = "hi", *, stream: bool = False) -> bytes:
    return json.dumps({"model": "llama3.2", "stream": stream, "options": {"temperature": 0, "seed": 7},
                       "messages": [{"role": "user", "content": content}]}).encode()


async def ask(d: Dispatcher, content: str = "hi", *, stream: bool = False) -> tuple[int, str, bytes]:
    r = await d.handle("POST", "/api/chat", body(content, stream=stream), {})
    data = await r.read()
    return r.status, dict(r.headers).get(HEADER_CACHE, ""), data


def answered(h: FakeOllama) -> int:
    return int(h.stats()["totals"]["served"])


async def until(cond: Callable[[], bool], what: str) -> None:
    for _ in range(400):  # bounded: 4 s
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def gateway(h: FakeOllama, url: str, **kw: Any) -> Dispatcher:
    return Dispatcher([h.url], redis_url=url, redis_prefix="c", cache_generate=True, refresh_interval=30, **kw)


async def synced(d: Dispatcher, n: int = 2) -> None:
    assert d.shared is not None
    start = d.shared.syncs
    await until(lambda: d.shared is not None and d.shared.syncs >= start + n, "syncs")


def test_a_cached_answer_survives_the_trip_through_redis_bytes() -> None:
    # bug caught: a stream replayed from Redis with its chunks merged or cut elsewhere, or
    # a foreign value (another version's format) taken for an answer
    streamed = CachedResponse(200, {"Content-Type": "application/x-ndjson"}, None, (b'{"a":1}\n', b"", b'{"done":true}\n'))
    back = decode(encode(streamed))
    assert back is not None and back.chunks == streamed.chunks and back.headers == streamed.headers
    plain = CachedResponse(200, {"Content-Type": "application/json"}, b'{"x":"\\n"}', None)
    back = decode(encode(plain))
    assert back is not None and back.body == plain.body and back.chunks is None
    for junk in (b"", b"hello", b"OMC1{", b'OMC1{"s":200,"h":{},"c":[5]}\nabc', b'OMC1{"s":"x","h":{}}\n'):
        assert decode(junk) is None


async def test_an_answer_one_gateway_cached_is_a_hit_on_another(redis_server: RedisServer) -> None:
    """Bug caught: no second level (each replica asks the hosts again), for bodies and
    streams, or an answer that comes back from Redis other than it went in."""
    async with FakeOllama(["llama3.2"], tokens_per_sec=0, load_delay=0.01) as h, \
            gateway(h, redis_server.url) as a, gateway(h, redis_server.url) as b:
        assert a._shared_cache is not None and b._shared_cache is not None
        for stream in (False, True):
            puts = a._shared_cache.puts
            status, tag, first = await ask(a, f"s{stream}", stream=stream)
            assert (status, tag) == (200, "miss")
            await until(lambda: a._shared_cache is not None and a._shared_cache.puts > puts, "the put")
            before = answered(h)
            status, tag, again = await ask(b, f"s{stream}", stream=stream)
            assert (status, tag) == (200, "hit")
            assert again == first
            assert answered(h) == before  # no host was asked
            # now in b's own cache: a second ask does not go to Redis either
            hits = b._shared_cache.hits
            assert (await ask(b, f"s{stream}", stream=stream))[1] == "hit"
            assert b._shared_cache.hits == hits


CHANGES = {  # a call through one gateway that changes llama3.2 on the hosts
    "pull": ("POST", "/api/pull", {"model": "llama3.2", "stream": False}),
    "create": ("POST", "/api/create", {"model": "llama3.2", "from": "llama3.2", "system": "Be brief.",
                                       "stream": False}),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
async def test_a_model_changed_through_one_gateway_is_invalidated_in_every_gateways_cache(
        redis_server: RedisServer, change: str) -> None:
    """Bug caught: an invalidation (pull, create, copy, delete) that only the gateway it went
    through applies: the others keep replaying what the old model answered, from their own
    cache or from Redis."""
    method, path, payload = CHANGES[change]
    async with FakeOllama(["llama3.2"], tokens_per_sec=0, load_delay=0.01) as h, \
            gateway(h, redis_server.url) as a, gateway(h, redis_server.url) as b:
        assert (await ask(a))[1] == "miss"
        await until(lambda: a._shared_cache is not None and a._shared_cache.puts >= 1, "the put")
        assert (await ask(b))[1] == "hit"  # b holds it now, locally too
        r = await a.handle(method, path, json.dumps(payload).encode(), {})
        await r.read()
        assert r.status == 200
        await until(lambda: a._shared_cache is not None and not a._shared_cache._bumping, "the bump")
        await synced(b)  # b learns the new generation at its next sync
        puts = b._shared_cache.puts if b._shared_cache else 0
        assert (await ask(b))[1] == "miss"  # neither its own copy nor Redis's from before the pull
        await until(lambda: b._shared_cache is not None and b._shared_cache.puts > puts, "b's put")
        assert (await ask(a))[1] == "hit"  # sharing goes on: b's answer of after the pull
        async with gateway(h, redis_server.url) as c:
            await synced(c)
            assert (await ask(c))[1] == "hit"


async def test_a_model_deleted_through_one_gateway_is_never_replayed_by_another(redis_server: RedisServer) -> None:
    """Bug caught: a delete invalidated only the gateway it went through: another gateway
    keeps answering for a model the hosts no longer have, from its own cache or Redis's."""
    async with FakeOllama(["llama3.2"], tokens_per_sec=0, load_delay=0.01) as h, \
            gateway(h, redis_server.url) as a, gateway(h, redis_server.url) as b:
        assert (await ask(a))[1] == "miss"
        await until(lambda: a._shared_cache is not None and a._shared_cache.puts >= 1, "the put")
        assert (await ask(b))[1] == "hit"
        r = await a.handle("DELETE", "/api/delete", json.dumps({"model": "llama3.2"}).encode(), {})
        await r.read()
        assert r.status == 200
        await until(lambda: a._shared_cache is not None and not a._shared_cache._bumping, "the bump")
        await synced(b)
        status, cache, _ = await ask(b)
        assert status == 404 and cache != "hit"  # the host's answer, not a replay


async def test_with_redis_gone_each_gateway_keeps_its_own_cache(redis_server: RedisServer) -> None:
    """Bug caught: a cache that fails, or waits its timeout on every request, once Redis is
    down; or that stops caching locally."""
    async with FakeOllama(["llama3.2"], tokens_per_sec=0, load_delay=0.01) as h, gateway(h, redis_server.url) as a:
        assert (await ask(a, "one"))[1] == "miss"
        redis_server.stop()
        assert a.shared is not None
        await until(lambda: a.shared is not None and not a.shared.up, "redis seen down")
        assert (await ask(a, "one"))[1] == "hit"  # local
        status, tag, _ = await ask(a, "two")
        assert (status, tag) == (200, "miss")
        assert (await ask(a, "two"))[1] == "hit"
        assert a._shared_cache is not None and a._shared_cache.dropped >= 1  # its copy was not sent
        doc = a.status()
        assert doc["shared"]["cache"]["dropped"] >= 1
