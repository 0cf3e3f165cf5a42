"""Dispatcher routes other than plain inference: cache, merged, broadcast, /v1, status."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from ollamamax.dispatch import Dispatcher
from ollamamax.fleet.config import HostConfig
from ollamamax.testing import FakeOllama
from ollamamax.wire.response import HEADER_ATTEMPTS, HEADER_CACHE, HEADER_HOST

pytestmark = pytest.mark.timeout(60)

FAST = dict(tokens_per_sec=0, load_delay=0.02, num_parallel=4, max_loaded_models=3)
OUR_HEADERS = ("X-Ollamamax-Host", "X-Ollamamax-Cold-Load", "X-Ollamamax-Queue-Ms", "X-Ollamamax-Attempts")


@contextlib.asynccontextmanager
async def fleet(*specs: dict[str, Any]) -> AsyncIterator[list[FakeOllama]]:
    async with contextlib.AsyncExitStack() as stack:
        hosts = []
        for i, spec in enumerate(specs):
            kw = {**FAST, "host_id": "abcdefgh"[i], **spec}
            hosts.append(await stack.enter_async_context(FakeOllama(**kw)))
        yield hosts


def js(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def assert_our_headers(headers: dict[str, str]) -> None:
    for h in OUR_HEADERS:
        assert h in headers, h


async def test_embed_cache_miss_then_hit() -> None:
    async with fleet({"models": ["nomic-embed-text"]}) as (a,):
        async with Dispatcher([a.url]) as d:
            body = js({"model": "nomic-embed-text", "input": ["one", "two"]})
            r1 = await d.handle("POST", "/api/embed", body, {})
            r2 = await d.handle("POST", "/api/embed", body, {})
            assert (r1.status, r2.status) == (200, 200)
            assert r1.headers[HEADER_CACHE] == "miss" and r2.headers[HEADER_CACHE] == "hit"
            assert r2.headers[HEADER_ATTEMPTS] == "0" and r2.headers[HEADER_HOST] == "-"
            assert_our_headers(r2.headers)
            assert r1.body == r2.body
            # key ignores keep_alive and key order, not the input
            same = js({"input": ["one", "two"], "keep_alive": "1m", "model": "nomic-embed-text"})
            assert (await d.handle("POST", "/api/embed", same, {})).headers[HEADER_CACHE] == "hit"
            other = js({"model": "nomic-embed-text", "input": ["three"]})
            assert (await d.handle("POST", "/api/embed", other, {})).headers[HEADER_CACHE] == "miss"
            assert a.stats()["models"]["nomic-embed-text:latest"]["served"] == 2
            legacy = js({"model": "nomic-embed-text", "prompt": "x"})
            assert (await d.handle("POST", "/api/embeddings", legacy, {})).headers[HEADER_CACHE] == "miss"
            assert (await d.handle("POST", "/api/embeddings", legacy, {})).headers[HEADER_CACHE] == "hit"
            c = d.metrics_snapshot()["counters"]
            assert c["cache_hits"] == 3 and c["cache_misses"] == 3
            # errors are not cached
            bad = js({"model": "nosuch", "input": "x"})
            r = await d.handle("POST", "/api/embed", bad, {})
            assert r.status == 404 and r.headers[HEADER_CACHE] == "miss"


async def test_cache_disabled_and_generate_opt_in() -> None:
    async with fleet({"preload": ["llama3.2"]}) as (a,):
        async with Dispatcher([a.url], cache_size=0) as d:
            body = js({"model": "llama3.2", "input": "x"})
            r = await d.handle("POST", "/api/embed", body, {})
            assert HEADER_CACHE not in r.headers
        async with Dispatcher([a.url], cache_generate=True) as d:
            det = {"model": "llama3.2", "prompt": "p", "options": {"temperature": 0, "seed": 7}}
            r1 = await d.handle("POST", "/api/generate", js({**det, "stream": False}), {})
            r2 = await d.handle("POST", "/api/generate", js({**det, "stream": False}), {})
            assert (r1.headers[HEADER_CACHE], r2.headers[HEADER_CACHE]) == ("miss", "hit")
            assert r1.body == r2.body
            # streaming: the whole byte stream is cached and replayed
            s1 = await d.handle("POST", "/api/generate", js(det), {})
            b1 = await s1.read()
            s2 = await d.handle("POST", "/api/generate", js(det), {})
            b2 = await s2.read()
            assert (s1.headers[HEADER_CACHE], s2.headers[HEADER_CACHE]) == ("miss", "hit")
            assert b1 == b2 and s2.headers["Content-Type"].startswith("application/x-ndjson")
            # not deterministic (no seed): never cached
            nd = js({"model": "llama3.2", "prompt": "p", "options": {"temperature": 0}, "stream": False})
            assert (await d.handle("POST", "/api/generate", nd, {})).headers[HEADER_CACHE] == "miss"
            assert (await d.handle("POST", "/api/generate", nd, {})).headers[HEADER_CACHE] == "miss"


async def test_merged_tags_and_ps() -> None:
    async with fleet(
        {"models": ["llama3.2", "gemma3"], "preload": ["llama3.2"]},
        {"models": ["llama3.2", "qwen3:8b"], "preload": ["llama3.2", "qwen3:8b"]},
    ) as (a, b):
        async with Dispatcher([a.url, b.url]) as d:
            r = await d.handle("GET", "/api/tags", b"", {})
            assert r.status == 200
            assert_our_headers(r.headers)
            names = sorted(m["name"] for m in json.loads(r.body)["models"])
            assert names == ["gemma3:latest", "llama3.2:latest", "qwen3:8b"]
            r = await d.handle("GET", "/api/ps", b"", {})
            ps = json.loads(r.body)["models"]
            assert sorted(m["name"] for m in ps) == ["llama3.2:latest", "qwen3:8b"]
            assert all("expires_at" in m for m in ps)
            # embedded API: same shapes
            assert sorted(m["name"] for m in (await d.list())["models"]) == names
            assert len((await d.ps())["models"]) == 2
            # a dead host does not break the merge
            await b.kill()
            names2 = sorted(m["name"] for m in (await d.list())["models"])
            assert "llama3.2:latest" in names2


async def test_version_root_status_unknown_route() -> None:
    async with fleet({}, {}) as (a, b):
        async with Dispatcher([a.url, b.url]) as d:
            r = await d.handle("GET", "/api/version", b"", {})
            assert r.status == 200 and "version" in json.loads(r.body)
            r = await d.handle("GET", "/", b"", {})
            assert (r.status, r.body) == (200, b"Ollama is running")
            assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
            r = await d.handle("HEAD", "/", b"", {})
            assert r.status == 200
            for method, path in [("GET", "/api/nothing"), ("GET", "/api/chat"), ("DELETE", "/api/tags")]:
                r = await d.handle(method, path, b"", {})
                assert (r.status, r.body) == (404, b"404 page not found")
                assert_our_headers(r.headers)
            r = await d.handle("GET", "/ollamamax/status", b"", {})
            st = json.loads(r.body)
            assert st["strategy"] == "least-loaded"
            assert st["queue"]["depth"] == 0
            assert [h["url"] for h in st["hosts"]] == [a.url, b.url]
            h0 = st["hosts"][0]
            for key in ("name", "url", "healthy", "ejected_until", "models", "loaded", "in_flight", "capacity"):
                assert key in h0
            assert h0["models"] == ["llama3.2:latest"] and h0["capacity"] == 8
            again = d.status()
            assert again.pop("generated_at") >= st.pop("generated_at")
            assert again == st


async def test_version_is_lowest_among_hosts() -> None:
    async with fleet({}, {}) as (a, b):
        async with Dispatcher([a.url, b.url]) as d:
            from dataclasses import replace

            d.store.publish(replace(d.snapshot.hosts[1], version="0.9.2"))
            d.store.publish(replace(d.snapshot.hosts[0], version="0.10.0"))
            r = await d.handle("GET", "/api/version", b"", {})
            assert json.loads(r.body) == {"version": "0.9.2"}


async def test_unload_reaches_every_host_with_model_loaded() -> None:
    pre = {"preload": ["llama3.2"]}
    async with fleet(pre, pre, {"models": ["llama3.2"]}) as (a, b, c):
        async with Dispatcher([a.url, b.url, c.url]) as d:
            r = await d.handle("POST", "/api/generate", js({"model": "llama3.2", "keep_alive": 0}), {})
            assert r.status == 200
            assert json.loads(r.body)["done_reason"] == "unload"
            # every host that has the model (c too: the gateway's idea of what is loaded may be stale)
            hosts = set(r.headers[HEADER_HOST].split(","))
            assert hosts == {h.name for h in d.hosts}
            assert a.loaded_models() == [] and b.loaded_models() == []
            # chat form with empty messages
            for h in (a, b):
                await FakeOllamaPreload.load(h)
            await d.refresher.refresh_host(d.hosts[0])
            await d.refresher.refresh_host(d.hosts[1])
            r = await d.handle("POST", "/api/chat", js({"model": "llama3.2", "messages": [], "keep_alive": "0"}), {})
            assert r.status == 200
            assert a.loaded_models() == [] and b.loaded_models() == []
            # loaded nowhere: still answered, by the hosts that have it
            r = await d.handle("POST", "/api/generate", js({"model": "llama3.2", "keep_alive": 0}), {})
            assert r.status == 200
            r = await d.handle("POST", "/api/generate", js({"model": "nosuch", "keep_alive": 0}), {})
            assert r.status == 404


class FakeOllamaPreload:
    @staticmethod
    async def load(host: FakeOllama) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as s:
            async with s.post(host.url + "/api/generate", json={"model": "llama3.2"}) as r:
                assert r.status == 200
                await r.read()


async def test_pull_to_all_hosts_and_named_hosts() -> None:
    async with fleet({}, {}) as (a, b):
        async with Dispatcher([a.url, b.url]) as d:
            r = await d.handle("POST", "/api/pull", js({"model": "gemma3"}), {})
            assert r.status == 200 and r.headers["Content-Type"] == "application/x-ndjson"
            lines = [json.loads(x) for x in (await r.read()).splitlines()]
            assert lines[-1] == {"status": "success"}
            assert sum(x.get("status") == "success" for x in lines) == 1
            assert sum(x.get("status") == "pulling manifest" for x in lines) == 1  # one stream, not one per host
            assert all("gemma3:latest" in h["models"] for h in d.status()["hosts"])
            r = await d.handle("POST", "/api/chat", js({"model": "gemma3", "messages": [], "stream": False}), {})
            assert r.status == 200
            # named host via header, then via body field
            r = await d.handle(
                "POST", "/api/pull", js({"model": "qwen3:8b", "stream": False}), {"X-Ollamamax-Hosts": d.hosts[1].name}
            )
            assert r.status == 200 and json.loads(r.body) == {"status": "success"}
            st = d.status()["hosts"]
            assert "qwen3:8b" in st[1]["models"] and "qwen3:8b" not in st[0]["models"]
            r = await d.handle("POST", "/api/pull", js({"model": "mistral", "hosts": [a.url], "stream": False}), {})
            assert r.status == 200
            assert "mistral:latest" in d.status()["hosts"][0]["models"]
            r = await d.handle("POST", "/api/pull", js({"model": "mistral", "hosts": ["nohost"]}), {})
            assert r.status == 400 and "unknown host" in json.loads(r.body)["error"]
            # a model the registry does not know: one error line at the end, no success
            r = await d.handle("POST", "/api/pull", js({"model": "nosuchmodel-xyz"}), {})
            lines = [json.loads(x) for x in (await r.read()).splitlines()]
            assert "error" in lines[-1] and not any(x.get("status") == "success" for x in lines)
            r = await d.handle("POST", "/api/pull", js({"model": "nosuchmodel-xyz", "stream": False}), {})
            assert r.status == 500
            # embedded API
            assert (await d.pull("tinyllama"))["status"] == "success"
            parts = [p async for p in await d.pull("phi3", stream=True)]
            assert parts[-1] == {"status": "success"}


async def test_delete_copy_create_act_on_hosts_with_model() -> None:
    async with fleet({"models": ["llama3.2", "gemma3"]}, {"models": ["llama3.2"]}) as (a, b):
        async with Dispatcher([a.url, b.url]) as d:
            r = await d.handle("POST", "/api/copy", js({"source": "gemma3", "destination": "g2"}), {})
            assert r.status == 200 and r.body == b""
            st = d.status()["hosts"]
            assert "g2:latest" in st[0]["models"] and "g2:latest" not in st[1]["models"]
            r = await d.handle("POST", "/api/copy", js({"source": "nosuch", "destination": "x"}), {})
            assert r.status == 404 and json.loads(r.body) == {"error": 'model "nosuch" not found'}
            r = await d.handle("DELETE", "/api/delete", js({"model": "llama3.2"}), {})
            assert r.status == 200
            assert all("llama3.2:latest" not in h["models"] for h in d.status()["hosts"])
            r = await d.handle("DELETE", "/api/delete", js({"model": "llama3.2"}), {})
            assert r.status == 404 and json.loads(r.body) == {"error": "model 'llama3.2' not found"}
            # create from a model only A has -> only A
            r = await d.handle("POST", "/api/create", js({"model": "mine", "from": "gemma3", "stream": False}), {})
            assert r.status == 200
            st = d.status()["hosts"]
            assert "mine:latest" in st[0]["models"] and "mine:latest" not in st[1]["models"]
            parts = [p async for p in await d.create("mine2", from_="gemma3", stream=True)]
            assert parts[-1] == {"status": "success"}
            assert (await d.copy("gemma3", "g3")) == {"status": "success"}
            assert (await d.delete("g3")) == {"status": "success"}


async def test_show_routes_to_a_host_with_the_model() -> None:
    async with fleet({"models": ["llama3.2"]}, {"models": ["qwen3:8b"]}) as (a, b):
        async with Dispatcher([a.url, b.url]) as d:
            r = await d.handle("POST", "/api/show", js({"model": "qwen3:8b"}), {})
            assert r.status == 200 and r.headers[HEADER_HOST] == d.hosts[1].name
            assert "capabilities" in json.loads(r.body)
            r = await d.handle("POST", "/api/show", js({"name": "llama3.2"}), {})  # legacy field
            assert r.status == 200 and r.headers[HEADER_HOST] == d.hosts[0].name


async def test_openai_routes() -> None:
    async with fleet(
        {"preload": ["llama3.2"], "models": ["llama3.2", "nomic-embed-text"]}, {"models": ["qwen3:8b"]}
    ) as (
        a,
        b,
    ):
        async with Dispatcher([a.url, b.url]) as d:
            body = js({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]})
            r = await d.handle("POST", "/v1/chat/completions", body, {})
            assert r.status == 200
            assert json.loads(r.body)["object"] == "chat.completion"
            body = js({"model": "qwen3:8b", "messages": [{"role": "user", "content": "hi"}], "stream": True})
            r = await d.handle("POST", "/v1/chat/completions", body, {})
            assert r.headers["Content-Type"].startswith("text/event-stream")
            assert r.headers[HEADER_HOST] == d.hosts[1].name
            data = await r.read()
            assert data.endswith(b"data: [DONE]\n\n")
            r = await d.handle("POST", "/v1/embeddings", js({"model": "nomic-embed-text", "input": "x"}), {})
            assert r.status == 200 and r.headers[HEADER_CACHE] == "miss"
            r = await d.handle("GET", "/v1/models", b"", {})
            ids = sorted(m["id"] for m in json.loads(r.body)["data"])
            assert ids == ["llama3.2:latest", "nomic-embed-text:latest", "qwen3:8b"]
            r = await d.handle("GET", "/v1/models/qwen3:8b", b"", {})
            assert r.status == 200 and json.loads(r.body)["id"] == "qwen3:8b"
            r = await d.handle("GET", "/v1/models/nosuch", b"", {})
            assert r.status == 404 and json.loads(r.body)["error"]["type"] == "not_found_error"


async def test_sse_stream_broken_midway_gets_sse_error_event() -> None:
    async with fleet({"preload": ["llama3.2"], "tokens_per_sec": 50, "response_tokens": (30, 30)}) as (a,):
        async with Dispatcher([a.url], eject_after_failures=100) as d:
            body = js({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": True})
            r = await d.handle("POST", "/v1/chat/completions", body, {})
            assert r.stream is not None
            chunks = [await r.stream.__anext__()]
            await a.kill()
            async for c in r.stream:
                chunks.append(c)
            text = b"".join(chunks)
            events = [e for e in text.split(b"\n\n") if e]
            last = json.loads(events[-1][len(b"data: ") :])
            assert last["error"]["type"] == "api_error"
            assert b"[DONE]" not in text


async def test_concurrent_streams_all_complete() -> None:
    pre = {"preload": ["llama3.2"], "tokens_per_sec": 200, "num_parallel": 4}
    async with fleet(pre, pre) as (a, b):
        # the gateway sends each host as many requests as it runs at once (4 here)
        async with Dispatcher([HostConfig(a.url, num_parallel=4), HostConfig(b.url, num_parallel=4)]) as d:

            async def one(i: int) -> dict[str, Any]:
                body = js({"model": "llama3.2", "messages": [{"role": "user", "content": str(i)}]})
                r = await d.handle("POST", "/api/chat", body, {})
                lines = (await r.read()).splitlines()
                return json.loads(lines[-1])

            finals = await asyncio.gather(*(one(i) for i in range(30)))
            assert all(f["done"] for f in finals)
            assert all(h.in_flight == 0 for h in d.hosts)
            m = d.metrics_snapshot()
            ttfb = m["histograms"]["ttfb"]
            assert sum(h.count for h in ttfb.values()) == 30
            assert m["histograms"]["tokens_per_s"]
            assert sum(h.count for h in m["histograms"]["connect"].values()) >= 1  # new pooled connections
            assert sum(v for k, v in m["counters"]["requests"].items() if k[3] == 200) == 30


async def test_auto_pull_pulls_to_one_host_then_serves() -> None:
    async with fleet({"models": ["llama3.2"]}, {"models": ["llama3.2"]}) as (a, b):
        async with Dispatcher([a.url, b.url], auto_pull=True) as d:
            body = js({"model": "gemma3", "messages": [{"role": "user", "content": "hi"}], "stream": False})
            r = await d.handle("POST", "/api/chat", body, {})
            assert r.status == 200
            have = [h for h in d.status()["hosts"] if "gemma3:latest" in h["models"]]
            assert len(have) == 1 and r.headers[HEADER_HOST] == have[0]["name"]
            r = await d.handle("POST", "/api/chat", js({"model": "nosuchmodel-q", "messages": []}), {})
            assert r.status == 404
            assert json.loads(r.body) == {"error": "model 'nosuchmodel-q' not found"}
        async with Dispatcher([a.url, b.url]) as d:  # without auto_pull: 404
            r = await d.handle("POST", "/api/chat", js({"model": "phi3", "messages": []}), {})
            assert r.status == 404


async def test_close_with_open_stream_frees_everything() -> None:
    async with fleet({"preload": ["llama3.2"], "tokens_per_sec": 20, "response_tokens": (40, 40)}) as (a,):
        d = Dispatcher([a.url])
        await d.start()
        r = await d.handle("POST", "/api/chat", js({"model": "llama3.2", "messages": []}), {})
        r = await d.handle(
            "POST", "/api/chat", js({"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]}), {}
        )
        assert r.stream is not None
        await r.stream.__anext__()
        await d.close()
        await d.close()  # idempotent
        assert d.hosts[0].in_flight == 0
        for _ in range(100):
            if a.stats()["models"]["llama3.2:latest"]["in_flight"] == 0:
                break
            await asyncio.sleep(0.02)
        assert a.stats()["models"]["llama3.2:latest"]["in_flight"] == 0
        await r.aclose()


async def test_blobs_go_to_every_host() -> None:
    import hashlib

    data = b"some adapter bytes"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with fleet({}, {}) as (a, b):
        async with Dispatcher([a.url, b.url]) as d:
            r = await d.handle("HEAD", f"/api/blobs/{digest}", b"", {})
            assert r.status == 404
            r = await d.handle("POST", f"/api/blobs/{digest}", data, {"Content-Type": "application/octet-stream"})
            assert r.status == 201  # created (on both hosts)
            r = await d.handle("HEAD", f"/api/blobs/{digest}", b"", {})
            assert r.status == 200
            # uploading it again: every host already has it
            r = await d.handle("POST", f"/api/blobs/{digest}", data, {"Content-Type": "application/octet-stream"})
            assert r.status == 200
            # a blob only host a has: b creates it, so the answer is 201 ("created somewhere")
            data2 = b"a blob host a already has"
            digest2 = "sha256:" + hashlib.sha256(data2).hexdigest()
            async with aiohttp.ClientSession() as s, s.post(f"{a.url}/api/blobs/{digest2}", data=data2) as direct:
                assert direct.status == 201
            r = await d.handle("POST", f"/api/blobs/{digest2}", data2, {"Content-Type": "application/octet-stream"})
            assert r.status == 201


async def test_handle_requires_running_dispatcher() -> None:
    d = Dispatcher(["http://127.0.0.1:9"])
    with pytest.raises(RuntimeError, match="not running"):
        await d.handle("GET", "/", b"", {})


async def test_original_bytes_and_host_headers_forwarded() -> None:
    """The host gets the client's exact bytes, the host's configured headers, and never
    the client's own Authorization (meant for the gateway)."""
    from aiohttp import web

    from ollamamax.dispatch import HostConfig

    seen: list[tuple[bytes, dict[str, str], str]] = []

    async def tags(request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest"}]})

    async def ps(request: web.Request) -> web.Response:
        return web.json_response({"models": []})

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"version": "0.1.2"})

    async def chat(request: web.Request) -> web.Response:
        seen.append((await request.read(), dict(request.headers), request.query_string))
        return web.json_response({"model": "llama3.2", "message": {"role": "assistant", "content": "ok"}, "done": True})

    app = web.Application()
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_get("/api/version", version)
    app.router.add_post("/api/chat", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        host = HostConfig(f"http://127.0.0.1:{port}", headers={"Authorization": "Bearer host-secret"})
        async with Dispatcher([host]) as d:
            raw = b'{ "stream" :false,"messages":[{"content":"h\\u00e9","role":"user"}],  "model":"Llama3.2"}'
            r = await d.handle(
                "POST",
                "/api/chat",
                raw,
                {"Authorization": "Bearer client-key", "Content-Type": "application/json"},
                query="x=1",
            )
            assert r.status == 200
            body, headers, qs = seen[-1]
            assert body == raw
            assert headers["Authorization"] == "Bearer host-secret"
            assert qs == "x=1"
            assert json.loads((await d.handle("GET", "/api/version", b"", {})).body) == {"version": "0.1.2"}
    finally:
        await runner.cleanup()


async def test_path_parameters_cannot_escape_their_route() -> None:
    async with fleet({}) as (a,):
        async with Dispatcher([a.url]) as d:
            r = await d.handle("POST", "/api/blobs/../pull", js({"model": "gemma3"}), {})
            assert r.status == 400 and json.loads(r.body) == {"error": "invalid digest format"}
            r = await d.handle("GET", "/v1/models/../../api/tags", b"", {})
            assert r.status == 404
            assert "gemma3:latest" not in d.status()["hosts"][0]["models"]
