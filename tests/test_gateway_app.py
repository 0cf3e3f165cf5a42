"""The gateway app's own duties, against a test double of the dispatcher.

The double records every ``handle()`` call and answers by path, which lets these tests pin
down transport behaviour exactly: auth (401/403), body limits (413, Content-Length and
chunked), pass-through of status/headers/body, unbuffered streaming, ``aclose()`` on every
path including client disconnects, errors raised by the dispatcher, and mounting as a
sub-application.  The end-to-end tests with the real Dispatcher are in test_gateway.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from ollamamax import create_app
from ollamamax.frontends.aiohttp_app import GATEWAY_KEY
from ollamamax.wire.response import DispatchResponse
from ollamamax.wire.routes import ROUTES

ADMIN_PATHS = frozenset(r.path for r in ROUTES.values() if r.admin_methods)
from test_gateway_common import serve_app

pytestmark = pytest.mark.timeout(60)


class FakeDispatcher:
    """Answers by path; records calls and closes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bytes, dict[str, str], str]] = []
        self.closed = 0
        self.closed_event = asyncio.Event()
        self.handle_cancelled = asyncio.Event()
        self.release = asyncio.Event()  # lets /gated continue
        self.first_sent = asyncio.Event()

    def _closer(self):
        async def close() -> None:
            self.closed += 1
            self.closed_event.set()

        return close

    async def handle(self, method, path, body, headers, *, query="", tenant=None):
        self.calls.append((method, path, body, dict(headers), query))
        if path == "/boom" or path == "/v1/boom":
            raise RuntimeError("dispatcher bug")
        if path == "/hang":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.handle_cancelled.set()
                raise
        if path == "/stream":
            return DispatchResponse(200, {"Content-Type": "application/x-ndjson"},
                                    stream=self._lines(5), _close=self._closer())
        if path == "/gated":
            return DispatchResponse(200, {"Content-Type": "application/x-ndjson"},
                                    stream=self._gated(), _close=self._closer())
        if path == "/forever":
            return DispatchResponse(200, {"Content-Type": "application/x-ndjson"},
                                    stream=self._forever(), _close=self._closer())
        payload = {"method": method, "path": path, "body": body.decode("latin-1"),
                   "query": query, "auth": headers.get("Authorization")}
        return DispatchResponse(
            201 if path == "/created" else 200,
            {"Content-Type": "application/json; charset=utf-8", "X-Ollamamax-Host": "fake",
             "Connection": "keep-alive", "Transfer-Encoding": "chunked"},
            body=json.dumps(payload).encode(),
            _close=self._closer(),
        )

    async def _lines(self, n: int) -> AsyncIterator[bytes]:
        for i in range(n):
            yield json.dumps({"i": i}).encode() + b"\n"

    async def _gated(self) -> AsyncIterator[bytes]:
        yield b'{"first":true}\n'
        self.first_sent.set()
        await self.release.wait()
        yield b'{"done":true}\n'

    async def _forever(self) -> AsyncIterator[bytes]:
        yield b'{"first":true}\n'
        self.first_sent.set()
        await asyncio.Event().wait()
        yield b""  # pragma: no cover


async def _start(app: web.Application, front: str, **runner_kw):
    return await serve_app(app, front, **runner_kw)


@pytest.fixture
async def gw(front):
    """(dispatcher, base_url, session) for a gateway with default settings."""
    d = FakeDispatcher()
    runner, url = await _start(create_app(d), front)
    async with aiohttp.ClientSession() as s:
        yield d, url, s
    await runner()


@pytest.fixture
async def authgw(front):
    d = FakeDispatcher()
    runner, url = await _start(create_app(d, api_keys=["user-key"], admin_keys=["admin-key"]), front)
    async with aiohttp.ClientSession() as s:
        yield d, url, s
    await runner()


# ------------------------------------------------------------------ pass-through


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS"])
async def test_every_method_and_path_reaches_the_dispatcher(gw, method):
    d, url, s = gw
    async with s.request(method, url + "/any/where?x=1&y=%20", data=b"payload") as r:
        assert r.status == 200
        got = await r.json()
    assert got == {"method": method, "path": "/any/where", "body": "payload",
                   "query": "x=1&y=%20", "auth": None}
    assert d.closed == 1


async def test_status_headers_and_body_pass_through_hop_by_hop_dropped(gw):
    d, url, s = gw
    async with s.post(url + "/created", data=b"{}") as r:
        assert r.status == 201
        assert r.headers["Content-Type"] == "application/json; charset=utf-8"
        assert r.headers["X-Ollamamax-Host"] == "fake"
        assert "Transfer-Encoding" not in r.headers  # the upstream's framing is not copied
        assert int(r.headers["Content-Length"]) == len(await r.read())


async def test_head_has_no_body(gw):
    d, url, s = gw
    async with s.head(url + "/") as r:
        assert r.status == 200
        assert await r.read() == b""


async def test_empty_body_is_empty_bytes(gw):
    d, url, s = gw
    async with s.get(url + "/api/tags") as r:
        assert r.status == 200
    assert d.calls[-1][:3] == ("GET", "/api/tags", b"")


async def test_stream_is_written_chunk_by_chunk(gw):
    d, url, s = gw
    async with s.post(url + "/gated") as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "application/x-ndjson"
        assert "Content-Encoding" not in r.headers
        # the first line arrives while the dispatcher still holds the second: no buffering
        first = await asyncio.wait_for(r.content.readline(), 10)
        assert first == b'{"first":true}\n'
        d.release.set()
        rest = await r.read()
    assert rest == b'{"done":true}\n'
    await asyncio.wait_for(d.closed_event.wait(), 10)
    assert d.closed == 1


async def test_full_stream(gw):
    d, url, s = gw
    async with s.post(url + "/stream") as r:
        lines = (await r.read()).splitlines()
    assert [json.loads(x)["i"] for x in lines] == [0, 1, 2, 3, 4]
    assert d.closed == 1


async def test_dispatcher_exception_is_500_in_route_shape(gw):
    d, url, s = gw
    async with s.post(url + "/boom") as r:
        assert r.status == 500
        assert await r.json() == {"error": "internal error in ollamamax gateway"}
    async with s.post(url + "/v1/boom") as r:
        assert r.status == 500
        body = await r.json()
        assert body["error"]["type"] == "api_error"
        assert body["error"]["message"] == "internal error in ollamamax gateway"
    # and the gateway keeps serving
    async with s.get(url + "/ok") as r:
        assert r.status == 200


# ------------------------------------------------------------------ mounting


async def test_mounted_as_sub_application():
    d = FakeDispatcher()
    parent = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="parent")

    parent.router.add_get("/hello", hello)
    sub = create_app(d, api_keys=["k"])
    parent.add_subapp("/ollama", sub)
    assert sub[GATEWAY_KEY].auth_enabled
    runner, url = await _start(parent, "aiohttp")
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "/hello") as r:
                assert await r.text() == "parent"
            async with s.get(url + "/ollama/api/tags?a=b",
                             headers={"Authorization": "Bearer k"}) as r:
                assert r.status == 200
                got = await r.json()
            assert got["path"] == "/api/tags" and got["query"] == "a=b"
            async with s.get(url + "/ollama/api/tags") as r:
                assert r.status == 401
    finally:
        await runner()


def test_create_app_rejects_bad_limits():
    with pytest.raises(ValueError):
        create_app(FakeDispatcher(), max_body_size=0)
    with pytest.raises(ValueError):
        create_app(FakeDispatcher(), disconnect_check_interval=0)
    for bad in ([""], [" k"], [None]):
        with pytest.raises(ValueError):
            create_app(FakeDispatcher(), api_keys=bad)
        with pytest.raises(ValueError):
            create_app(FakeDispatcher(), admin_keys=bad)


# ------------------------------------------------------------------ auth


async def test_no_keys_means_no_auth(gw):
    d, url, s = gw
    async with s.post(url + "/api/pull", data=b"{}") as r:
        assert r.status == 200
    # the client's header is left alone when the gateway does not use it
    async with s.get(url + "/x", headers={"Authorization": "Bearer abc"}) as r:
        assert (await r.json())["auth"] == "Bearer abc"


@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Basic dXNlcjprZXk=", "Bearer", "user-key",
                                  "Bearer user-key-but-longer"])
async def test_401_without_a_valid_key(authgw, auth):
    d, url, s = authgw
    headers = {"Authorization": auth} if auth else {}
    async with s.post(url + "/api/chat", data=b"{}", headers=headers) as r:
        assert r.status == 401
        assert r.headers["Content-Type"] == "application/json; charset=utf-8"
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert await r.json() == {"error": "unauthorized"}
    assert d.calls == []


async def test_401_openai_shape_on_v1(authgw):
    d, url, s = authgw
    async with s.post(url + "/v1/chat/completions", data=b"{}") as r:
        assert r.status == 401
        assert await r.json() == {"error": {"message": "unauthorized",
                                            "type": "invalid_request_error",
                                            "param": None, "code": "invalid_api_key"}}


async def test_every_route_needs_a_key(authgw):
    d, url, s = authgw
    for path in ("/api/version", "/ollamamax/status", "/nosuch"):  # GET / is a liveness probe
        async with s.get(url + path) as r:
            assert r.status == 401, path


@pytest.mark.parametrize("key", ["user-key", "admin-key"])
async def test_valid_key_passes_and_is_not_forwarded(authgw, key):
    d, url, s = authgw
    async with s.post(url + "/api/chat", data=b"{}",
                      headers={"Authorization": f"bearer {key}"}) as r:
        assert r.status == 200
        assert (await r.json())["auth"] is None
    assert "authorization" not in {k.lower() for k in d.calls[-1][3]}


@pytest.mark.parametrize("path", sorted(ADMIN_PATHS) + [
    "/api//pull", "/API/Pull/", "/api/blobs/sha256:00", "/api/%70ull", "/api/./pull",
    "/api/x/../pull", "/api/pull%2F..%2Fpull"])
async def test_admin_routes_need_admin_key(authgw, path):
    d, url, s = authgw
    method = "DELETE" if path == "/api/delete" else "POST"
    raw = URL(url + path, encoded=True)  # sent exactly as written, no client-side cleanup
    async with s.request(method, raw, data=b"{}",
                         headers={"Authorization": "Bearer user-key"}) as r:
        assert r.status == 403
        assert (await r.json())["error"].startswith("forbidden")
    assert d.calls == []
    async with s.request(method, raw, data=b"{}",
                         headers={"Authorization": "Bearer admin-key"}) as r:
        assert r.status == 200
    assert len(d.calls) == 1


async def test_blob_check_is_not_admin(authgw):
    d, url, s = authgw
    async with s.head(url + "/api/blobs/sha256:00", headers={"Authorization": "Bearer user-key"}) as r:
        assert r.status == 200


async def test_admin_only_keys_enable_auth(front):
    d = FakeDispatcher()
    runner, url = await _start(create_app(d, admin_keys=["a"]), front)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "/api/tags") as r:
                assert r.status == 401
            async with s.get(url + "/api/tags", headers={"Authorization": "Bearer a"}) as r:
                assert r.status == 200
    finally:
        await runner()


# ------------------------------------------------------------------ body size


@pytest.fixture
async def smallgw(front):
    d = FakeDispatcher()
    runner, url = await _start(create_app(d, max_body_size=1024), front)
    async with aiohttp.ClientSession() as s:
        yield d, url, s
    await runner()


async def test_body_at_the_limit_passes(smallgw):
    d, url, s = smallgw
    async with s.post(url + "/api/chat", data=b"x" * 1024) as r:
        assert r.status == 200
    assert len(d.calls[-1][2]) == 1024


async def test_413_from_content_length(smallgw):
    d, url, s = smallgw
    async with s.post(url + "/api/chat", data=b"x" * 1025) as r:
        assert r.status == 413
        assert r.headers["Content-Type"] == "application/json; charset=utf-8"
        err = (await r.json())["error"]
    assert "Content-Length 1025" in err and "1024" in err
    assert d.calls == []


async def test_413_openai_shape(smallgw):
    d, url, s = smallgw
    async with s.post(url + "/v1/embeddings", data=b"x" * 5000) as r:
        assert r.status == 413
        body = await r.json()
    assert body["error"]["type"] == "invalid_request_error"
    assert "too large" in body["error"]["message"]


async def test_413_for_chunked_body(smallgw):
    d, url, s = smallgw

    async def gen() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"y" * 200  # 1600 bytes in all, no Content-Length

    async with s.post(url + "/api/chat", data=gen()) as r:
        assert r.status == 413
        assert "too large" in (await r.json())["error"]
    assert d.calls == []


async def test_chunked_body_under_the_limit_passes(smallgw):
    d, url, s = smallgw

    async def gen() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"z" * 100

    async with s.post(url + "/api/chat", data=gen()) as r:
        assert r.status == 200
    assert d.calls[-1][2] == b"z" * 400


# ------------------------------------------------------------------ disconnects


@pytest.mark.parametrize("handler_cancellation", [False, True])
async def test_client_disconnect_mid_stream_closes_upstream(handler_cancellation, front):
    d = FakeDispatcher()
    runner, url = await _start(create_app(d, disconnect_check_interval=0.05), front,
                               handler_cancellation=handler_cancellation)
    try:
        async with aiohttp.ClientSession() as s:
            r = await s.post(url + "/forever")
            assert await asyncio.wait_for(r.content.readline(), 10) == b'{"first":true}\n'
            r.close()  # drop the connection mid-stream
            await asyncio.wait_for(d.closed_event.wait(), 10)
        assert d.closed == 1
    finally:
        await runner()


@pytest.mark.parametrize("handler_cancellation", [False, True])
async def test_client_disconnect_before_answer_cancels_handle(handler_cancellation, front):
    d = FakeDispatcher()
    runner, url = await _start(create_app(d, disconnect_check_interval=0.05), front,
                               handler_cancellation=handler_cancellation)
    try:
        async with aiohttp.ClientSession() as s:
            task = asyncio.ensure_future(s.post(url + "/hang"))
            for _ in range(200):  # bounded: wait until the request reached handle()
                if d.calls:
                    break
                await asyncio.sleep(0.01)
            assert d.calls
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(d.handle_cancelled.wait(), 10)
    finally:
        await runner()


# ------------------------------------------------------------------ Expect: 100-continue


async def _raw(url: str, head: str, body: bytes = b"", *, then: bytes | None = None) -> list[bytes]:
    """Send a raw request head; return the status lines received (bounded reads)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head.encode() + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        statuses = [data.split(b"\r\n", 1)[0]]
        if then is not None and statuses[0].endswith(b"100 Continue"):
            writer.write(then)
            await writer.drain()
            data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            statuses.append(data.split(b"\r\n", 1)[0])
        return statuses
    finally:
        writer.close()


async def test_expect_continue_refuses_oversized_body_before_it_is_sent(smallgw):
    d, url, s = smallgw
    head = ("POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n"
            "Expect: 100-continue\r\n\r\n")
    assert await _raw(url, head) == [b"HTTP/1.1 413 Request Entity Too Large"]
    assert d.calls == []


async def test_expect_continue_then_body(smallgw):
    d, url, s = smallgw
    head = "POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    assert await _raw(url, head, then=b"abcd") == [b"HTTP/1.1 100 Continue", b"HTTP/1.1 200 OK"]
    assert d.calls[-1][2] == b"abcd"


async def test_expect_continue_refuses_unauthorized(authgw):
    d, url, s = authgw
    head = "POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    assert await _raw(url, head) == [b"HTTP/1.1 401 Unauthorized"]
    head = ("POST /api/pull HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n"
            "Authorization: Bearer user-key\r\n\r\n")
    assert await _raw(url, head) == [b"HTTP/1.1 403 Forbidden"]
    assert d.calls == []


async def test_unknown_expectation_is_417(gw):
    d, url, s = gw
    head = "POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: teapot\r\n\r\n"
    assert await _raw(url, head) == [b"HTTP/1.1 417 Expectation Failed"]
