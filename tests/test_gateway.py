"""The gateway end to end: official clients -> create_app -> Dispatcher -> emulated hosts.

Every client result through the gateway must equal the result against one emulated host
(timestamps, durations and ids aside): the hosts share a seed, so their answers are
identical and any difference is the gateway's doing.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import httpx
import ollama
import openai
import pytest
from test_gateway_common import (
    HOST_KW,
    ThreadedStack,
    new_host,
    ollama_scenarios,
    openai_scenarios,
    stack,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def gw(front):
    async with stack(2, front=front) as s:
        yield s


@pytest.fixture
async def single():
    h = new_host(9)
    await h.start()
    try:
        yield h
    finally:
        await h.stop()


async def test_ollama_async_client_same_as_single_host(gw, single):
    async with ollama.AsyncClient(host=gw.url) as c:
        via_gateway = await ollama_scenarios(c)
    async with ollama.AsyncClient(host=single.url) as c:
        direct = await ollama_scenarios(c)
    assert via_gateway == direct
    # sanity: the scenarios really exercised something
    assert direct["chat"]["message"]["content"]
    assert direct["errors"]["chat_unknown"] == (404, "model 'nosuch' not found")
    assert direct["pull"] == "success"


async def test_openai_client_same_as_single_host(gw, single):
    async def run(base: str) -> dict:
        async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="x", max_retries=0) as c:
            return await openai_scenarios(c)

    via_gateway = await run(gw.url)
    direct = await run(single.url)
    assert via_gateway == direct
    assert direct["stream_text"] and direct["errors"]["chat_unknown"][0] == 404


def test_ollama_sync_client_through_gateway_on_a_thread():
    with ThreadedStack(n=2) as s:
        with ollama.Client(host=s.url) as c:
            _sync_checks(c)


def _sync_checks(c: ollama.Client) -> None:
    r = c.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert r.message.role == "assistant" and r.message.content and r.done
    parts = list(c.generate(model="llama3.2", prompt="hi", stream=True))
    assert parts[-1].done and "".join(p.response for p in parts)
    assert len(c.embed(model="nomic-embed-text", input=["a", "b"]).embeddings) == 2
    assert {m.model for m in c.list().models} >= {"llama3.2:latest", "qwen3:8b"}
    with pytest.raises(ollama.ResponseError) as err:
        c.generate(model="nosuch", prompt="x")
    assert err.value.status_code == 404


async def test_streams_pass_through_unchanged_framing(gw):
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url + "/api/chat", json={
                "model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "application/x-ndjson"
            assert r.headers["X-Ollamamax-Host"] != "-"
            body = await r.read()
        lines = body.split(b"\n")
        assert lines[-1] == b"" and all(lines[:-1])
        assert json.loads(lines[-2])["done"] is True
        async with s.post(gw.url + "/v1/chat/completions", json={
                "model": "llama3.2", "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            assert (await r.read()).endswith(b"data: [DONE]\n\n")


async def test_root_status_and_unknown_route(gw):
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/") as r:
            assert r.status == 200 and await r.text() == "Ollama is running"
        async with s.head(gw.url + "/") as r:
            assert r.status == 200
        async with s.get(gw.url + "/ollamamax/status") as r:
            assert r.status == 200
            status = await r.json()
        assert len(status["hosts"]) == 2
        async with s.get(gw.url + "/api/nosuch") as r:
            assert r.status == 404 and await r.text() == "404 page not found"


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, None),
    (b"", 400, "missing request body"),
    (b'{"model": 3}', 400, None),
    (b'{"model": "nosuch"}', 404, "model 'nosuch' not found"),
])
async def test_malformed_requests_get_ollama_errors_and_the_gateway_keeps_serving(
        gw, body, status, message):
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url + "/api/generate", data=body) as r:
            assert r.status == status
            assert r.headers["Content-Type"].startswith("application/json")
            err = (await r.json())["error"]
            assert err and (message is None or err == message)
        async with s.post(gw.url + "/api/generate",
                          json={"model": "llama3.2", "prompt": "x", "stream": False}) as r:
            assert r.status == 200


@pytest.mark.parametrize("handler_cancellation", [True, False])
async def test_client_disconnect_mid_stream_frees_the_host_slot(handler_cancellation, front):
    # slow, long streams: each would take ~10 s if nobody hung up
    async with stack(1, tokens_per_sec=20, response_tokens=(200, 200),
                     runner_kw={"handler_cancellation": handler_cancellation}, front=front) as s:
        host = s.hosts[0]
        async with aiohttp.ClientSession() as sess:
            r = await sess.post(s.url + "/api/generate",
                                json={"model": "llama3.2", "prompt": "long story"})
            assert r.status == 200
            await asyncio.wait_for(r.content.readline(), 10)
            assert host.stats()["totals"]["in_flight"] == 1
            r.close()  # the client goes away mid-stream
            assert await wait_until(lambda: host.stats()["totals"]["in_flight"] == 0, 5.0)
            # and the dispatcher is not left holding the slot either
            async with sess.post(s.url + "/api/generate", json={
                    "model": "llama3.2", "prompt": "x", "stream": False,
                    "options": {"num_predict": 2}}) as r2:
                assert r2.status == 200


@pytest.mark.parametrize("handler_cancellation", [True, False])
async def test_client_disconnect_while_queued_leaves_the_queue(handler_cancellation, front):
    # one slot in all: the second request waits in the gateway's queue, then hangs up
    async with stack(1, tokens_per_sec=20, response_tokens=(200, 200),
                     dispatch_kw={"max_in_flight_per_host": 1},
                     runner_kw={"handler_cancellation": handler_cancellation}, front=front) as s:
        host = s.hosts[0]
        body = {"model": "llama3.2", "prompt": "long story"}
        async with aiohttp.ClientSession() as sess:
            first = await sess.post(s.url + "/api/generate", json=body)
            await asyncio.wait_for(first.content.readline(), 10)
            waiting = asyncio.ensure_future(sess.post(s.url + "/api/generate", json=body))
            assert await wait_until(lambda: s.d.status()["queue"]["depth"] == 1, 5.0)
            waiting.cancel()  # the queued client goes away
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert await wait_until(lambda: s.d.status()["queue"]["depth"] == 0, 5.0)
            first.close()
            assert await wait_until(lambda: host.stats()["totals"]["in_flight"] == 0, 5.0)
            assert host.stats()["totals"]["served"] == 0  # the waiter never reached the host


async def test_auth_and_admin_keys_with_the_real_dispatcher(front):
    async with stack(1, app_kw={"api_keys": ["u"], "admin_keys": ["a"]}, front=front) as s:
        async with ollama.AsyncClient(host=s.url, headers={"Authorization": "Bearer u"}) as user, \
                ollama.AsyncClient(host=s.url, headers={"Authorization": "Bearer a"}) as admin, \
                ollama.AsyncClient(host=s.url) as anon:
            await _auth_checks(s, user, admin, anon)


async def _auth_checks(s, user, admin, anon) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        await anon.list()
    assert (err.value.status_code, err.value.error) == (401, "unauthorized")
    assert (await user.list()).models
    with pytest.raises(ollama.ResponseError) as err:
        await user.pull("all-minilm")
    assert err.value.status_code == 403
    assert (await admin.pull("all-minilm")).status == "success"
    async with openai.AsyncOpenAI(base_url=s.url + "/v1", api_key="wrong",
                                  max_retries=0) as oc:
        with pytest.raises(openai.AuthenticationError):
            await oc.models.list()
    async with openai.AsyncOpenAI(base_url=s.url + "/v1", api_key="u", max_retries=0) as oc:
        assert (await oc.models.list()).data


async def test_413_through_the_real_path(front):
    async with stack(1, app_kw={"max_body_size": 4096}, front=front) as s:
        big = json.dumps({"model": "llama3.2", "prompt": "x" * 5000}).encode()
        async with httpx.AsyncClient() as c:
            r = await c.post(s.url + "/api/generate", content=big)
            assert r.status_code == 413 and "too large" in r.json()["error"]

            async def chunks():
                for i in range(0, len(big), 1000):
                    yield big[i:i + 1000]

            r = await c.post(s.url + "/api/generate", content=chunks())
            assert r.status_code == 413
            r = await c.post(s.url + "/api/generate", json={"model": "llama3.2", "prompt": "x",
                                                             "stream": False})
            assert r.status_code == 200
        assert s.hosts[0].stats()["totals"]["served"] == 1


async def test_failover_when_a_host_dies(gw):
    msgs = [{"role": "user", "content": "hi"}]
    async with ollama.AsyncClient(host=gw.url) as client:
        await client.chat(model="llama3.2", messages=msgs)
        await gw.hosts[0].kill()
        for _ in range(6):  # every request still succeeds through the surviving host
            r = await client.chat(model="llama3.2", messages=msgs)
            assert r.message.content


def test_host_kw_is_fast():
    # keep this file quick: the emulated hosts must not sleep on loads or tokens
    assert HOST_KW["tokens_per_sec"] == 0 and HOST_KW["load_delay"] < 0.1
