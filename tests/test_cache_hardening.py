"""The response cache cannot hurt: a byte budget, the model's identity and the tenant in
the key, and only complete answers kept.

* bytes: 500 large distinct embeddings keep the gateway's RSS under the budget plus a
  margin (measured in a subprocess), and the cache never reports more than its budget;
* identity: after a delete through the gateway the next request gets Ollama's 404, not a
  cached 200; after a re-pull, re-create or copy over the model, or a new digest in
  ``/api/tags`` (a pull done on the host directly), the same request is a miss;
* tenants: with two API keys, one key's text is never a hit for the other (both front
  ends), unless ``cache_scope="shared"``;
* failed streams: a stream cut short (a close-delimited body that ends before its final
  object), one whose last event is an error, and one the client abandons are not cached.

All through public entry points against emulated hosts (or a scripted one) on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_gateway_common import stack

import ollamamax
from ollamamax.dispatch import Dispatcher
from ollamamax.dispatch.cache import CachedResponse, ResponseCache
from ollamamax.testing import FakeOllama
from ollamamax.wire.routes import lookup

pytestmark = pytest.mark.timeout(120)

FAST: dict[str, Any] = {"tokens_per_sec": 0, "load_delay": 0.01, "num_parallel": 4, "max_loaded_models": 3,
                        "seed": 11}
HOST = "X-Ollamamax-Host"
CACHE = "X-Ollamamax-Cache"
EMBED = "nomic-embed-text"
SRC = str(Path(ollamamax.__file__).resolve().parents[1])  # the subprocess imports the same package


def js(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def embed_request(path: str, model: str, text: str) -> bytes:
    if path == "/api/embeddings":
        return js({"model": model, "prompt": text})
    return js({"model": model, "input": text})


@contextlib.asynccontextmanager
async def one_host(**kw: Any) -> AsyncIterator[FakeOllama]:
    async with FakeOllama(**{**FAST, "host_id": "h0", **kw}) as h:
        yield h


def served(h: FakeOllama) -> int:
    return int(h.stats()["totals"]["served"])


# ------------------------------------------------------------------------------ bytes

RSS_SCRIPT = textwrap.dedent(
    """
    import asyncio, gc, json, os, sys
    from ollamamax.dispatch import Dispatcher
    from ollamamax.testing import FakeOllama

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    async def main(budget, n):
        common = [f"a common passage, number {j}" for j in range(63)]
        def body(i):  # 64 vectors of 768 floats: about 600 kB of JSON per answer
            return json.dumps({"model": "nomic-embed-text", "input": [f"document {i}"] + common}).encode()
        async with FakeOllama(models=["nomic-embed-text"], load_delay=0.0, tokens_per_sec=0) as a, \\
                Dispatcher([a.url], cache_bytes=budget, refresh_interval=60) as d:
            for i in range(20):  # warm up: buffers, the emulator's vectors of the common passages
                assert (await d.handle("POST", "/api/embed", body(-1 - i), {})).status == 200
            d.cache.clear()
            gc.collect()
            before = peak = rss()
            max_bytes = answer = 0
            for i in range(n):
                r = await d.handle("POST", "/api/embed", body(i), {})
                assert r.status == 200 and r.headers["X-Ollamamax-Cache"] == "miss", r.body
                answer = max(answer, len(r.body))
                max_bytes = max(max_bytes, d.cache.stats().get("bytes", 0))
                peak = max(peak, rss())
            print(json.dumps({"before": before, "peak": peak, "answer": answer,
                              "max_bytes": max_bytes, "stats": d.cache.stats()}))

    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_rss_stays_under_the_byte_budget_over_500_large_embeddings() -> None:
    """Each answer is ~600 kB, 500 of them ~300 MB: kept by entry count alone (the cache
    holds 4,096) the gateway grows by all of it.  With a 32 MiB budget it grows by at
    most the budget plus a 32 MiB margin, and the cache never reports more than 32 MiB.
    Runs in a subprocess so that neither pytest nor other tests' garbage is measured."""
    budget = 32 * 1024 * 1024
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(budget), "500"], env=env,
                         capture_output=True, text=True, timeout=100, check=False)
    assert out.returncode == 0, out.stderr
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m["answer"] > 500_000  # the answers are large: together ~10x the budget
    growth = m["peak"] - m["before"]
    assert 0 < m["max_bytes"] <= budget, m
    assert growth <= budget + 32 * 1024 * 1024, f"RSS grew by {growth / 2**20:.0f} MiB: {m}"
    assert m["stats"]["evictions"] > 400  # the budget, not the entry count, did the bounding


def test_answers_above_a_fraction_of_the_budget_are_not_cached() -> None:
    c = ResponseCache(100, None, max_bytes=160_000)
    route = lookup("POST", "/api/embed")
    assert route is not None
    small, big = (c.key_for(route, "m:latest", {"model": "m", "input": t}) for t in ("a", "b"))
    assert small is not None and big is not None
    c.put(small, CachedResponse(200, {"Content-Type": "application/json"}, b"{}" + b" " * 9_000, None))
    c.put(big, CachedResponse(200, {"Content-Type": "application/json"}, b"{}" + b" " * 11_000, None))
    assert c.get(small) is not None and c.get(big) is None  # 1/16 of the budget is 10,000
    assert 9_000 < c.stats()["bytes"] < 10_000 + 1_000  # the body plus key, headers, objects
    for i in range(100):  # the reported bytes never exceed the budget
        k = c.key_for(route, "m:latest", {"model": "m", "input": f"t{i}"})
        assert k is not None
        c.put(k, CachedResponse(200, {}, b"{}" + b" " * 9_000, None))
        assert c.stats()["bytes"] <= 160_000
    assert c.stats()["currsize"] < 17


# --------------------------------------------------------------------------- identity

EMBED_PATHS = ["/api/embed", "/api/embeddings", "/v1/embeddings"]


async def _miss_then_hit(d: Dispatcher, h: FakeOllama, path: str, model: str = EMBED,
                         text: str = "the same text") -> None:
    before = served(h)
    r = await d.handle("POST", path, embed_request(path, model, text), {})
    assert (r.status, r.headers[CACHE]) == (200, "miss"), r.body
    assert served(h) == before + 1  # the host answered
    r = await d.handle("POST", path, embed_request(path, model, text), {})
    assert (r.status, r.headers[CACHE]) == (200, "hit"), r.body
    assert served(h) == before + 1


@pytest.mark.parametrize("path", EMBED_PATHS)
async def test_after_a_delete_the_model_is_not_found_not_a_cached_200(path: str) -> None:
    async with one_host(models=[EMBED, "llama3.2"]) as a, Dispatcher([a.url], refresh_interval=60) as d:
        await _miss_then_hit(d, a, path)
        await _miss_then_hit(d, a, path, "llama3.2")  # another model's entry stays
        r = await d.handle("DELETE", "/api/delete", js({"model": EMBED}), {})
        assert r.status == 200, r.body
        r = await d.handle("POST", path, embed_request(path, EMBED, "the same text"), {})
        assert r.status == 404, (r.status, r.body)
        assert "not found" in json.dumps(json.loads(r.body))
        assert r.headers[CACHE] == "miss"
        assert d.cache.stats()["currsize"] == 1  # its entries were dropped, not just hidden
        r = await d.handle("POST", path, embed_request(path, "llama3.2", "the same text"), {})
        assert (r.status, r.headers[CACHE]) == (200, "hit")


async def test_after_a_delete_on_the_host_itself_the_model_is_not_found() -> None:
    """Deleted behind the gateway's back: once a refresh shows the model gone, the
    request reaches the 404 path (the snapshot no longer lists it, and its digest left
    the key), not the cache."""
    async with one_host(models=[EMBED, "llama3.2"]) as a, Dispatcher([a.url], refresh_interval=60) as d:
        await _miss_then_hit(d, a, "/api/embed")
        async with aiohttp.ClientSession() as session, \
                session.delete(a.url + "/api/delete", json={"model": EMBED}) as r:
            assert r.status == 200
        await d.refresher.refresh_all(d.hosts)
        r = await d.handle("POST", "/api/embed", embed_request("/api/embed", EMBED, "the same text"), {})
        assert (r.status, r.headers[CACHE]) == (404, "miss"), r.body


@pytest.mark.parametrize("op", ["pull", "create", "copy"])
async def test_a_model_changed_through_the_gateway_is_a_miss(op: str) -> None:
    """Pull, create or copy over a model through the gateway: its cached answers are
    gone at once, even though the emulator keeps the digest (the generation changes)."""
    async with one_host(models=[EMBED, "granite-embedding"]) as a, Dispatcher([a.url], refresh_interval=60) as d:
        await _miss_then_hit(d, a, "/api/embed")
        if op == "pull":
            r = await d.handle("POST", "/api/pull", js({"model": EMBED, "stream": False}), {})
        elif op == "create":
            r = await d.handle("POST", "/api/create", js({"model": EMBED, "from": "granite-embedding",
                                                          "stream": False}), {})
        else:
            r = await d.handle("POST", "/api/copy", js({"source": "granite-embedding", "destination": EMBED}), {})
        assert r.status == 200, r.body
        if r.stream is not None:
            await r.read()
        await _miss_then_hit(d, a, "/api/embed")


async def test_a_streamed_pull_through_the_gateway_is_a_miss_after_it_ends() -> None:
    async with one_host(models=[EMBED]) as a, Dispatcher([a.url], refresh_interval=60) as d:
        await _miss_then_hit(d, a, "/api/embed")
        r = await d.handle("POST", "/api/pull", js({"model": EMBED}), {})
        assert r.status == 200 and r.stream is not None
        assert b'"success"' in await r.read()
        await _miss_then_hit(d, a, "/api/embed")


async def test_a_new_digest_in_the_tags_is_a_miss() -> None:
    """The model is re-pulled on the host directly (not through the gateway): once a
    refresh shows its new digest, the old answers no longer match."""
    async with one_host(models=[EMBED]) as a, Dispatcher([a.url], refresh_interval=60) as d:
        await _miss_then_hit(d, a, "/api/embed")
        info = a.lookup(EMBED)
        assert info is not None
        info.digest = "f" * 64
        await d.refresher.refresh_all(d.hosts)
        assert d.snapshot.digests[f"{EMBED}:latest"] == "f" * 64
        await _miss_then_hit(d, a, "/api/embed")
        info.digest = "e" * 64  # and once more
        await d.refresher.refresh_all(d.hosts)
        await _miss_then_hit(d, a, "/api/embed")


def test_invalidation_changes_keys_and_frees_bytes() -> None:
    c = ResponseCache(100, None)
    route = lookup("POST", "/api/embed")
    assert route is not None
    obj = {"model": "m", "input": "x"}
    k1 = c.key_for(route, "m:latest", obj, digest="d1")
    assert k1 is not None
    assert c.key_for(route, "m:latest", obj, digest="d2") != k1
    assert c.key_for(route, "m:latest", obj, digest="d1") == k1
    other = c.key_for(route, "o:latest", obj, digest="d1")
    assert other is not None
    c.put(k1, CachedResponse(200, {}, b"{}", None))
    c.put(other, CachedResponse(200, {}, b"{}", None))
    c.invalidate_model("m:latest")
    assert c.key_for(route, "m:latest", obj, digest="d1") != k1
    assert c.get(k1) is None and c.get(other) is not None
    assert c.stats()["currsize"] == 1


def test_many_invalidated_models_keep_the_generation_table_bounded() -> None:
    c = ResponseCache(100, None)
    route = lookup("POST", "/api/embed")
    assert route is not None
    obj = {"model": "m", "input": "x"}
    k = c.key_for(route, "m:latest", obj)
    assert k is not None
    c.put(k, CachedResponse(200, {}, b"{}", None))
    for i in range(10_000):  # e.g. deletes of names nobody has
        c.invalidate_model(f"nosuch{i}:latest")
    assert len(c._generation) <= 4096
    assert c.key_for(route, "m:latest", obj) != k  # a new epoch: nothing of before matches


# ---------------------------------------------------------------------------- tenants


@pytest.mark.parametrize("path", ["/api/embed", "/v1/embeddings"])
async def test_one_tenants_text_is_never_a_hit_for_another(front: str, path: str) -> None:
    async with stack(1, app_kw={"api_keys": ["key-of-a", "key-of-b"]}, front=front) as s, \
            aiohttp.ClientSession() as session:
        host = s.hosts[0]

        async def ask(key: str) -> str:
            async with session.post(s.url + path, data=embed_request(path, EMBED, "a secret"),
                                    headers={"Authorization": f"Bearer {key}",
                                             "Content-Type": "application/json"}) as r:
                assert r.status == 200, await r.text()
                await r.read()
                return r.headers[CACHE]

        before = served(host)
        assert await ask("key-of-a") == "miss"
        assert await ask("key-of-a") == "hit"
        assert await ask("key-of-b") == "miss"  # B asks the host itself
        assert served(host) == before + 2
        assert await ask("key-of-b") == "hit"
        assert await ask("key-of-a") == "hit"
        assert served(host) == before + 2


async def test_a_shared_scope_shares_hits_across_tenants(front: str) -> None:
    async with stack(1, app_kw={"api_keys": ["key-of-a", "key-of-b"]}, front=front,
                     dispatch_kw={"cache_scope": "shared"}) as s, aiohttp.ClientSession() as session:
        tags = []
        for key in ("key-of-a", "key-of-b"):
            async with session.post(s.url + "/api/embed", json={"model": EMBED, "input": "public"},
                                    headers={"Authorization": f"Bearer {key}"}) as r:
                assert r.status == 200
                tags.append(r.headers[CACHE])
        assert tags == ["miss", "hit"]


def test_unknown_cache_scope_is_refused() -> None:
    with pytest.raises(ValueError, match="scope"):
        ResponseCache(10, None, scope="everyone")


# ---------------------------------------------------------------------- failed streams

GEN_BODY = {"model": "llama3.2", "prompt": "tell me", "stream": True, "options": {"temperature": 0, "seed": 42}}
CHAT_V1_BODY = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                "temperature": 0, "seed": 42}
TAGS = js({"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest", "digest": "a" * 64,
                       "size": 1, "modified_at": "2024-01-01T00:00:00Z", "details": {}}]})
# the model is resident, so the scheduler sends the requests straight to it (no load request)
PS = js({"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest", "digest": "a" * 64,
                     "size": 1, "size_vram": 1, "expires_at": "2099-01-01T00:00:00Z", "details": {}}]})

Answer = Callable[[asyncio.StreamWriter], Awaitable[None]]


def _json_reply(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


@contextlib.asynccontextmanager
async def scripted_host(answer: Answer) -> AsyncIterator[tuple[str, list[int]]]:
    """A host that answers the refresh like Ollama and every inference with ``answer``
    (which writes a response and returns; the connection is then closed).  Yields its
    URL and a one-item list counting the inference requests."""
    count = [0]

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if length:
                    await r.readexactly(length)
                target = head.split(b" ", 2)[1]
                if target == b"/api/tags":
                    w.write(_json_reply(TAGS))
                elif target == b"/api/ps":
                    w.write(_json_reply(PS))
                elif target == b"/api/version":
                    w.write(_json_reply(b'{"version":"0.9.0"}'))
                else:
                    count[0] += 1
                    await answer(w)
                    return
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", count
    finally:
        server.close()
        await server.wait_closed()


async def truncated_ndjson(w: asyncio.StreamWriter) -> None:
    """A close-delimited stream (no length, not chunked) that ends before its final
    object: at the transport level it looks complete."""
    w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n")
    for word in ("Once", " upon", " a"):
        w.write(js({"model": "llama3.2", "created_at": "2024-01-01T00:00:00Z", "response": word,
                    "done": False}) + b"\n")
        await w.drain()


async def sse_error_then_done(w: asyncio.StreamWriter) -> None:
    """An OpenAI stream whose last event before ``[DONE]`` is an error."""
    w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
    w.write(b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,'
            b'"delta":{"role":"assistant","content":"Hel"}}]}\n\n')
    w.write(b'data: {"error":{"message":"the model runner stopped","type":"api_error"}}\n\n')
    w.write(b"data: [DONE]\n\n")
    await w.drain()


@pytest.mark.parametrize("path,body,answer", [
    ("/api/generate", GEN_BODY, truncated_ndjson),
    ("/v1/chat/completions", CHAT_V1_BODY, sse_error_then_done),
], ids=["truncated-ndjson", "sse-error-then-done"])
async def test_a_failed_or_truncated_stream_is_never_cached(path: str, body: dict[str, Any], answer: Answer) -> None:
    async with scripted_host(answer) as (url, count), Dispatcher(
            [url], cache_generate=True, eject_after_failures=100, refresh_interval=60) as d:
        for attempt in range(3):
            r = await d.handle("POST", path, js(body), {})
            assert r.status == 200 and r.stream is not None
            await r.read()
            assert r.headers[CACHE] == "miss", attempt
            assert count[0] == attempt + 1  # every time from the host, never a replay
        assert d.status()["cache"]["currsize"] == 0


async def test_a_stream_the_client_abandons_is_not_cached() -> None:
    async with one_host(preload=["llama3.2"], tokens_per_sec=200, response_tokens=(40, 40)) as a, \
            Dispatcher([a.url], cache_generate=True, refresh_interval=60) as d:
        r = await d.handle("POST", "/api/generate", js(GEN_BODY), {})
        assert r.status == 200 and r.stream is not None
        first = await r.stream.__anext__()
        assert b'"done":false' in first
        await r.aclose()  # the client goes away mid-way
        assert d.status()["cache"]["currsize"] == 0
        r = await d.handle("POST", "/api/generate", js(GEN_BODY), {})
        assert r.headers[CACHE] == "miss"
        lines = (await r.read()).splitlines()
        assert json.loads(lines[-1])["done"] is True
        # the complete one is kept: the control that caching works here at all
        assert d.status()["cache"]["currsize"] == 1
        r = await d.handle("POST", "/api/generate", js(GEN_BODY), {})
        assert r.headers[CACHE] == "hit" and (await r.read()).splitlines() == lines


@pytest.mark.parametrize("ctype,chunks,kept", [
    ("application/x-ndjson", (b'{"response":"a","done":false}\n', b'{"response":"","done":true}\n'), True),
    ("application/x-ndjson", (b'{"response":"a","done":false}\n{"response":"","done":true}', ), True),
    ("application/x-ndjson", (b'{"response":"a","done":false}\n', ), False),
    ("application/x-ndjson", (b'{"response":"a","done":false}\n', b'{"error":"boom"}\n'), False),
    ("application/x-ndjson", (b'{"response":"a","done":false}\n', b'{"response":"","do'), False),
    ("application/x-ndjson", (), False),
    ("text/event-stream", (b'data: {"choices":[]}\n\n', b"data: [DONE]\n\n"), True),
    ("text/event-stream", (b'data: {"choices":[]}\n\n', ), False),
    ("text/event-stream", (b'data: {"error":{"message":"x"}}\n\n', b"data: [DONE]\n\n"), False),
])
def test_put_keeps_only_complete_streams(ctype: str, chunks: tuple[bytes, ...], kept: bool) -> None:
    c = ResponseCache(10, None, cache_generate=True)
    route = lookup("POST", "/api/generate")
    assert route is not None
    key = c.key_for(route, "llama3.2:latest", GEN_BODY)
    assert key is not None
    c.put(key, CachedResponse(200, {"Content-Type": ctype}, None, chunks))
    assert (c.get(key) is not None) == kept


def test_put_refuses_errors_and_non_200() -> None:
    c = ResponseCache(10, None)
    route = lookup("POST", "/api/embed")
    assert route is not None
    key = c.key_for(route, "m:latest", {"model": "m", "input": "x"})
    assert key is not None
    c.put(key, CachedResponse(500, {}, b'{"error":"x"}', None))
    c.put(key, CachedResponse(200, {}, b' {"error":"x"}', None))
    assert c.get(key) is None
    c.put(key, CachedResponse(200, {}, b'{"embeddings":[]}', None))
    assert c.get(key) is not None
