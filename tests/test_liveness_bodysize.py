"""Liveness probes without a key, and a body limit a vision workload never hits.

* With API keys set, ``GET /`` and ``HEAD /`` answer 200 without one (load balancer and
  Kubernetes probes); ``/api/version`` and every other route still need a key.
* The default body limit is 1 GiB: a 100 MiB image chat passes through the gateway to an
  emulated host on both front ends; a body over the limit is still refused with 413 while
  it arrives (chunked), never read whole.
"""

from __future__ import annotations

import base64
import io

import aiohttp
import pytest
from test_gateway_common import stack

from ollamamax.frontends.rules import DEFAULT_MAX_BODY_SIZE, GatewayRules
from ollamamax.ops.config import load_config

pytestmark = pytest.mark.timeout(120)


def test_refusal_lets_liveness_probes_through():
    r = GatewayRules(None, api_keys=["k"])
    assert r.refusal("GET", "/", None) is None
    assert r.refusal("HEAD", "/", "Bearer wrong") is None
    for method, path in (("POST", "/"), ("GET", "/api/version"), ("HEAD", "/api/version"),
                         ("GET", "/api/tags"), ("GET", "//"), ("GET", "/metrics")):
        refused = r.refusal(method, path, None)
        assert refused is not None and refused.status == 401, (method, path)
    assert r.refusal("GET", "/api/version", "Bearer k") is None


@pytest.mark.parametrize("front", ["fast", "aiohttp"])
async def test_probes_need_no_key_version_does(front):
    async with stack(1, front=front, app_kw={"api_keys": ["k"]}) as s, \
            aiohttp.ClientSession() as c:
        async with c.get(s.url + "/") as r:
            assert r.status == 200 and await r.read() == b"Ollama is running"
        async with c.head(s.url + "/") as r:
            assert r.status == 200
        async with c.get(s.url + "/api/version") as r:
            assert r.status == 401
        async with c.get(s.url + "/api/version", headers={"Authorization": "Bearer k"}) as r:
            assert r.status == 200 and "version" in await r.json()
        async with c.post(s.url + "/api/chat", data=b"{}") as r:
            assert r.status == 401


def test_default_body_limit_is_one_gib():
    assert DEFAULT_MAX_BODY_SIZE == 1 << 30
    assert GatewayRules(None).max_body_size == 1 << 30
    assert load_config({"backends": ["http://a:1"]}, {}).max_body_size == 1 << 30


def _image_chat(image_bytes: int) -> bytes:
    # base64 of zero bytes is all "A": build the encoded image directly, 100 MiB of it
    b64 = b"A" * image_bytes
    assert base64.b64decode(b64[:8]) == b"\0" * 6
    return (b'{"model":"llava","stream":false,"messages":[{"role":"user",'
            b'"content":"what is in this picture?","images":["' + b64 + b'"]}]}')


@pytest.mark.parametrize("front", ["fast", "aiohttp"])
async def test_a_100_mib_image_chat_passes_through(front):
    body = _image_chat(100 * 1024 * 1024)
    assert len(body) > 100 * 1024 * 1024
    async with stack(1, front=front, models=("llava",)) as s, aiohttp.ClientSession() as c:
        async with c.post(s.url + "/api/chat", data=io.BytesIO(body),
                          headers={"Content-Type": "application/json",
                                   "Content-Length": str(len(body))}) as r:
            got = await r.json()
            assert r.status == 200, got
            assert got["done"] is True and got["message"]["role"] == "assistant"
            assert r.headers["X-Ollamamax-Host"] in s.hosts[0].url  # served upstream


@pytest.mark.parametrize("front", ["fast", "aiohttp"])
async def test_a_chunked_body_over_the_limit_is_refused_while_it_arrives(front):
    limit = 4 * 1024 * 1024
    sent = 0

    async def chunks():
        nonlocal sent
        yield b'{"model":"llava","messages":[{"role":"user","images":["'
        for _ in range(64):  # up to 64 MiB offered, the limit is 4 MiB
            sent += 1024 * 1024
            yield b"A" * (1024 * 1024)
        yield b'"]}]}'

    async with stack(1, front=front, models=("llava",),
                     app_kw={"max_body_size": limit}) as s, aiohttp.ClientSession() as c:
        try:
            async with c.post(s.url + "/api/chat", data=chunks()) as r:
                assert r.status == 413
                assert "exceeds the limit" in (await r.json())["error"]
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
            pass  # the gateway may close before the client finished sending
        assert sent < 64 * 1024 * 1024  # refused before the whole body was sent
