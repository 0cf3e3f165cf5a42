"""DispatcherTransport: the official clients reach the Dispatcher in-process, no gateway."""

from __future__ import annotations

import asyncio
import json

import httpx
import ollama
import openai
import pytest
from test_gateway_common import (
    DISPATCH_KW,
    new_host,
    ollama_scenarios,
    openai_scenarios,
    wait_until,
)

from ollamamax.dispatch import Dispatcher, DispatcherConfig, DispatchResponse
from ollamamax.frontends.transport import DispatcherTransport

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def hosts():
    hs = [new_host(0), new_host(1)]
    for h in hs:
        await h.start()
    try:
        yield hs
    finally:
        for h in hs:
            await h.stop()


@pytest.fixture
async def dispatcher(hosts):
    async with Dispatcher([h.url for h in hosts], config=DispatcherConfig(**DISPATCH_KW)) as d:
        yield d


@pytest.fixture
async def single():
    h = new_host(9)
    await h.start()
    try:
        yield h
    finally:
        await h.stop()


async def test_ollama_client_same_as_single_host(dispatcher, single):
    t = DispatcherTransport(dispatcher)
    async with ollama.AsyncClient(host="http://ollamamax", transport=t) as c:
        via_transport = await ollama_scenarios(c)
    async with ollama.AsyncClient(host=single.url) as c:
        direct = await ollama_scenarios(c)
    assert via_transport == direct


async def test_openai_client_same_as_single_host(dispatcher, single):
    t = DispatcherTransport(dispatcher)
    async with httpx.AsyncClient(transport=t) as http:
        async with openai.AsyncOpenAI(base_url="http://ollamamax/v1", api_key="x",
                                      http_client=http, max_retries=0) as c:
            via_transport = await openai_scenarios(c)
    async with openai.AsyncOpenAI(base_url=single.url + "/v1", api_key="x", max_retries=0) as c:
        direct = await openai_scenarios(c)
    assert via_transport == direct


async def test_streaming_streams_and_early_close_cancels_upstream():
    h = new_host(0, tokens_per_sec=20, response_tokens=(200, 200))
    await h.start()
    try:
        async with Dispatcher([h.url], config=DispatcherConfig(**DISPATCH_KW)) as d:
            async with httpx.AsyncClient(transport=DispatcherTransport(d),
                                         base_url="http://ollamamax") as c:
                async with c.stream("POST", "/api/generate",
                                    json={"model": "llama3.2", "prompt": "long"}) as r:
                    assert r.status_code == 200
                    assert r.headers["content-type"] == "application/x-ndjson"
                    lines = r.aiter_lines()
                    first = await asyncio.wait_for(lines.__anext__(), 10)
                    assert json.loads(first)["done"] is False  # arrived long before the end
                    assert h.stats()["totals"]["in_flight"] == 1
                # leaving the block closed the response -> upstream cancelled
                assert await wait_until(lambda: h.stats()["totals"]["in_flight"] == 0, 5.0)
                # the dispatcher is still usable
                r = await c.post("/api/generate", json={
                    "model": "llama3.2", "prompt": "x", "stream": False,
                    "options": {"num_predict": 2}})
                assert r.status_code == 200
    finally:
        await h.stop()


async def test_headers_query_and_errors(dispatcher):
    async with httpx.AsyncClient(transport=DispatcherTransport(dispatcher),
                                 base_url="http://anything:1234") as c:
        r = await c.get("/api/tags")
        assert r.status_code == 200 and "X-Ollamamax-Host" in r.headers
        assert "transfer-encoding" not in r.headers
        r = await c.post("/api/generate", content=b"{bad")
        assert r.status_code == 400 and r.json()["error"]
        r = await c.get("/nosuch")
        assert r.status_code == 404 and r.text == "404 page not found"
        r = await c.get("/")
        assert r.text == "Ollama is running"


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.closed = 0

    async def handle(self, method, path, body, headers, *, query=""):
        self.calls.append((method, path, body, dict(headers), query))

        async def close() -> None:
            self.closed += 1

        return DispatchResponse(200, {"Content-Type": "text/plain", "Content-Length": "999"},
                                body=b"ok", _close=close)


async def test_request_mapping_with_a_test_double():
    rec = _Recorder()
    async with httpx.AsyncClient(transport=DispatcherTransport(rec)) as c:
        r = await c.put("http://h/some/path?a=1&b=%2F", content=b"xyz", headers={"X-K": "v"})
    assert r.status_code == 200 and r.text == "ok"
    assert r.headers["content-length"] == "2"  # recomputed, not the dispatcher's
    method, path, body, headers, query = rec.calls[0]
    assert (method, path, body, query) == ("PUT", "/some/path", b"xyz", "a=1&b=%2F")
    assert headers["x-k"] == "v" and "host" not in headers
    assert rec.closed == 1


async def test_transport_does_not_close_the_dispatcher(dispatcher):
    t = DispatcherTransport(dispatcher)
    async with httpx.AsyncClient(transport=t) as c:
        assert (await c.get("http://x/api/version")).status_code == 200
    # the client (and transport) are closed; the dispatcher still works
    resp = await dispatcher.handle("GET", "/api/version", b"", {})
    assert resp.status == 200
    await resp.aclose()
