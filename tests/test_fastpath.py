"""The gateway's HTTP fast path (``ollamamax.dispatch.fastpath``) on raw sockets.

The shared gateway tests (test_gateway_app.py, test_gateway.py) already run every behaviour
through both front ends.  These tests pin what only the fast path has: which requests it
serves itself and which connections it hands to aiohttp (and that aiohttp then answers them
right), keep-alive and pipelining, bodies that arrive in pieces, clients that vanish
mid-body, flow control on a stream nobody reads, the idle sweep, shutdown, and uvloop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from test_gateway_common import stack, wait_until

from ollamamax import create_app
from ollamamax.frontends import connections, fastpath
from ollamamax.frontends.fastpath import start_server
from ollamamax.wire.response import DispatchResponse

pytestmark = pytest.mark.timeout(60)


class Double:
    """A dispatcher double: echoes requests; a few paths stream, hang or raise."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bytes, dict[str, str], str]] = []
        self.closed = 0
        self.yielded = 0
        self.release = asyncio.Event()

    async def handle(self, method, path, body, headers, *, query="", tenant=None):
        self.calls.append((method, path, body, dict(headers), query))

        async def close() -> None:
            self.closed += 1

        if path == "/firehose":
            return DispatchResponse(200, {"Content-Type": "application/x-ndjson"},
                                    stream=self._firehose(), _close=close)
        if path == "/slow":
            await self.release.wait()
        payload = {"method": method, "path": path, "n": len(body), "query": query}
        return DispatchResponse(200, {"Content-Type": "application/json; charset=utf-8"},
                                body=json.dumps(payload).encode(), _close=close)

    async def _firehose(self) -> AsyncIterator[bytes]:
        chunk = b"x" * 65535 + b"\n"
        for _ in range(100_000):  # bounded; flow control must stop it long before
            self.yielded += 1
            yield chunk


@pytest.fixture
async def srv():
    d = Double()
    server = await start_server(create_app(d), "127.0.0.1", 0, access_log=None)
    try:
        yield d, server
    finally:
        await server.close(1.0)


async def _conn(server):
    return await asyncio.open_connection("127.0.0.1", server.port)


async def _response(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    """Read one response (Content-Length or chunked): (status line, headers, body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head[:-4].split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.decode().partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while True:
            size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), 10))[:-2], 16)
            data = await asyncio.wait_for(reader.readexactly(size + 2), 10)
            if size == 0:
                break
            parts.append(data[:-2])
        body = b"".join(parts)
    else:
        body = await asyncio.wait_for(reader.read(), 10)
    return lines[0], headers, body


def _post(path: str, body: bytes = b"{}", extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def test_common_requests_stay_on_the_fast_path(srv):
    d, server = srv
    reader, writer = await _conn(server)
    try:
        for i in range(5):  # keep-alive: five requests, one connection
            writer.write(_post(f"/api/chat?i={i}", b'{"model":"m"}'))
            status, headers, body = await _response(reader)
            assert status == b"HTTP/1.1 200 OK"
            assert json.loads(body) == {"method": "POST", "path": "/api/chat", "n": 13,
                                        "query": f"i={i}"}
            assert headers["content-type"] == "application/json; charset=utf-8"
            assert "date" in headers
    finally:
        writer.close()
    assert server.stats.fast_requests == 5
    assert server.stats.handed_over == 0
    assert server.stats.connections == 1
    assert d.closed == 5


async def test_pipelined_requests_are_answered_in_order(srv):
    d, server = srv
    reader, writer = await _conn(server)
    try:
        writer.write(b"".join(_post(f"/p{i}") for i in range(4)))
        for i in range(4):
            _, _, body = await _response(reader)
            assert json.loads(body)["path"] == f"/p{i}"
    finally:
        writer.close()
    assert server.stats.fast_requests == 4


async def test_body_arriving_in_pieces(srv):
    d, server = srv
    reader, writer = await _conn(server)
    try:
        raw = _post("/api/embed", b'{"input":"' + b"a" * 5000 + b'"}')
        for i in range(0, len(raw), 700):
            writer.write(raw[i:i + 700])
            await writer.drain()
            await asyncio.sleep(0.002)
        _, _, body = await _response(reader)
        assert json.loads(body)["n"] == 5000 + 12
    finally:
        writer.close()
    assert d.calls[-1][2].startswith(b'{"input":"aaa')


async def test_connection_close_is_honoured(srv):
    d, server = srv
    reader, writer = await _conn(server)
    try:
        writer.write(_post("/x", extra="Connection: close\r\n"))
        status, headers, _ = await _response(reader)
        assert headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 10) == b""  # the server closed it
    finally:
        writer.close()


HANDED_OVER = {  # request -> the status aiohttp answers it with
    "http10": (b"GET /api/tags HTTP/1.0\r\nHost: x\r\n\r\n", b"200 OK"),
    "head": (b"HEAD /api/tags HTTP/1.1\r\nHost: x\r\n\r\n", b"200 OK"),
    "escaped-path": (b"GET /api/t%61gs HTTP/1.1\r\nHost: x\r\n\r\n", b"200 OK"),
    "chunked-body": (b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"2\r\n{}\r\n0\r\n\r\n", b"200 OK"),
    "over-limit": (b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000000\r\n\r\n",
                   b"413 Request Entity Too Large"),
    "two-lengths": (b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                    b"Content-Length: 2\r\n\r\n{}", b"400 Bad Request"),
    "bad-length": (b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
                   b"400 Bad Request"),
    "no-colon": (b"GET /api/tags HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", b"400 Bad Request"),
    "long-head": (b"GET /api/tags HTTP/1.1\r\nHost: x\r\nX-A" + b"a" * 20000 + b": 1\r\n\r\n",
                  b"400 Bad Request"),
    "garbage": (b"GARBAGE\r\n\r\n", b"400 Bad Request"),
}


@pytest.mark.parametrize("case", sorted(HANDED_OVER))
async def test_everything_else_is_handed_to_aiohttp(srv, case):
    raw, status = HANDED_OVER[case]
    d, server = srv
    reader, writer = await _conn(server)
    try:
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.split(b"\r\n", 1)[0].split(b" ", 1)[1] == status
    finally:
        writer.close()
    assert server.stats.handed_over == 1
    assert server.stats.fast_requests == 0
    assert len(d.calls) == (1 if status == b"200 OK" else 0)


async def test_after_a_hand_over_aiohttp_keeps_the_connection(srv):
    d, server = srv
    reader, writer = await _conn(server)
    try:
        writer.write(_post("/first"))
        assert json.loads((await _response(reader))[2])["path"] == "/first"
        writer.write(b"HEAD /api/tags HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 OK")
        writer.write(_post("/third"))
        status, _, body = await _response(reader)
        assert json.loads(body)["path"] == "/third"
    finally:
        writer.close()
    assert (server.stats.fast_requests, server.stats.handed_over) == (1, 1)
    assert [c[1] for c in d.calls] == ["/first", "/api/tags", "/third"]


async def test_observability_routes_are_served_through_aiohttp(srv):
    d, server = srv
    reader, writer = await _conn(server)
    try:
        writer.write(b"GET /ollamamax HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = await _response(reader)
        assert status == b"HTTP/1.1 302 Found" and headers["location"] == "ollamamax/"
    finally:
        writer.close()
    assert server.stats.handed_over == 1 and d.calls == []


async def test_client_gone_mid_body_dispatches_nothing(srv):
    d, server = srv
    reader, writer = await _conn(server)
    writer.write(_post("/api/chat", b"x" * 1000)[:-500])
    await writer.drain()
    writer.close()
    await asyncio.sleep(0.1)
    assert d.calls == []
    # and the server still serves others
    reader, writer = await _conn(server)
    try:
        writer.write(_post("/after"))
        assert json.loads((await _response(reader))[2])["path"] == "/after"
    finally:
        writer.close()


async def test_a_stream_nobody_reads_is_flow_controlled(srv):
    d, server = srv
    reader, writer = await _conn(server)
    try:
        writer.write(_post("/firehose"))
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        await asyncio.sleep(0.5)  # the client reads nothing more
        produced = d.yielded
        await asyncio.sleep(0.3)
        # paused: nothing more is produced, and what was is bounded by socket buffers
        assert d.yielded == produced
        assert produced < 2000, produced  # 2000 x 64 KiB = 125 MiB: far beyond any buffer
        # reading again resumes the stream
        await asyncio.wait_for(reader.readexactly(8 * 1024 * 1024), 10)
        assert d.yielded > produced
    finally:
        writer.close()
    await wait_until(lambda: d.closed, 2.0)
    assert d.closed == 1  # the client went away mid-stream: the stream was closed


async def test_idle_keep_alive_connections_are_swept(monkeypatch):
    monkeypatch.setattr(connections, "SWEEP_INTERVAL", 0.05)
    d = Double()
    server = await start_server(create_app(d), "127.0.0.1", 0, keepalive_timeout=0.1)
    try:
        reader, writer = await _conn(server)
        writer.write(_post("/x"))
        await _response(reader)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the sweep
        writer.close()
    finally:
        await server.close(1.0)


async def test_shutdown_lets_requests_in_flight_finish():
    d = Double()
    server = await start_server(create_app(d), "127.0.0.1", 0)
    reader, writer = await _conn(server)
    idle_r, idle_w = await _conn(server)
    try:
        writer.write(_post("/slow"))
        await wait_until(lambda: d.calls, 2.0)  # the request reached the dispatcher
        closing = asyncio.ensure_future(server.close(5.0))
        await asyncio.sleep(0.05)
        assert await asyncio.wait_for(idle_r.read(), 5) == b""  # idle: closed at once
        d.release.set()
        status, headers, body = await _response(reader)
        assert status == b"HTTP/1.1 200 OK" and headers["connection"] == "close"
        await asyncio.wait_for(closing, 10)
    finally:
        writer.close()
        idle_w.close()


async def test_shutdown_cancels_what_outlives_the_grace_period():
    d = Double()
    server = await start_server(create_app(d), "127.0.0.1", 0)
    reader, writer = await _conn(server)
    try:
        writer.write(_post("/slow"))
        await wait_until(lambda: d.calls, 2.0)  # the request reached the dispatcher
        await asyncio.wait_for(server.close(0.2), 5)
        # not answered when the grace period ended: 503 in Ollama's shape, then closed
        status, headers, body = await _response(reader)
        assert status == b"HTTP/1.1 503 Service Unavailable"
        assert headers["connection"] == "close"
        assert json.loads(body) == {
            "error": "ollamamax gateway shutting down: the grace period of 0.2 s ended"}
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert d.closed == 0  # it never had an answer to close
    finally:
        writer.close()


def test_start_server_needs_a_gateway_app():
    from aiohttp import web

    async def main() -> None:
        with pytest.raises(ValueError, match="create_app"):
            await start_server(web.Application(), "127.0.0.1", 0)

    asyncio.run(main())


def test_under_uvloop_including_hand_over():
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        d = Double()
        server = await start_server(create_app(d), "127.0.0.1", 0)
        try:
            reader, writer = await _conn(server)
            writer.write(_post("/a"))
            assert json.loads((await _response(reader))[2])["path"] == "/a"
            writer.write(b"HEAD /api/tags HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 OK")
            writer.write(_post("/firehose"))
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            await asyncio.wait_for(reader.readexactly(1024 * 1024), 10)
            writer.close()
            assert (server.stats.fast_requests, server.stats.handed_over) == (1, 1)
        finally:
            await server.close(1.0)

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


async def test_header_values_are_trimmed_and_names_keep_their_spelling(srv):
    d, server = srv
    reader, writer = await _conn(server)
    try:
        writer.write(_post("/h", extra="X-Padded: \t two words\r\nx-lower:v\r\n"))
        await _response(reader)
        writer.write(_post("/h2", extra="X-Plain: v\r\n"))
        await _response(reader)
    finally:
        writer.close()
    headers = d.calls[0][3]
    assert headers["X-Padded"] == "two words" and headers["x-lower"] == "v"
    assert d.calls[1][3]["X-Plain"] == "v"
    assert server.stats.handed_over == 0


async def test_trailing_blanks_in_a_value_are_handed_over(srv):
    """aiohttp releases differ on trailing blanks (3.14 strips them, 3.13 keeps them): such a
    head goes to aiohttp, so the dispatcher sees what the app alone would give it."""
    d, server = srv
    reader, writer = await _conn(server)
    try:
        writer.write(_post("/h", extra="X-Padded: two words \t\r\n"))
        await _response(reader)
    finally:
        writer.close()
    assert d.calls[0][3]["X-Padded"].rstrip() == "two words"
    assert server.stats.handed_over == 1


async def test_folded_header_line_is_handed_over(srv):
    d, server = srv
    reader, writer = await _conn(server)
    try:
        writer.write(_post("/f", extra="X-A: one\r\n two\r\n"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.split(b" ", 2)[1] in (b"200", b"400")  # aiohttp's decision, not ours
    finally:
        writer.close()
    assert server.stats.handed_over == 1 and server.stats.fast_requests == 0


async def test_pipelined_flood_pauses_reading_until_the_running_request_ends(srv):
    d, server = srv
    reader, writer = await _conn(server)
    try:
        writer.write(_post("/slow"))
        await wait_until(lambda: d.calls, 2.0)  # the request reached the dispatcher
        flood = b"".join(_post(f"/q{i}", b"y" * 1000) for i in range(2000))  # ~2.2 MB
        writer.write(flood)
        await asyncio.sleep(0.2)
        protos = [c for c in server._shared.conns]
        assert len(protos) == 1 and protos[0]._reading is False  # buffered > PAUSE_BUFFER
        assert len(protos[0]._buf) < 2 * fastpath.PAUSE_BUFFER  # the rest waits in the socket
        d.release.set()
        assert json.loads((await _response(reader))[2])["path"] == "/slow"
        for i in range(2000):
            assert json.loads((await _response(reader))[2])["path"] == f"/q{i}"
    finally:
        writer.close()
    assert server.stats.fast_requests == 2001


async def test_http_server_counters_in_metrics_and_status():
    async with stack(1) as st:
        host, port = st.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        body = b'{"model":"llama3.2","prompt":"hi","stream":false}'
        try:
            for _ in range(3):
                writer.write(_post("/api/generate", body))
                status, _, _ = await _response(reader)
                assert status == b"HTTP/1.1 200 OK"
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # hands this one over
            _, _, text = await _response(reader)
            writer.write(b"GET /ollamamax/status HTTP/1.1\r\nHost: x\r\n\r\n")
            _, _, status_json = await _response(reader)
        finally:
            writer.close()
    lines = dict(line.rsplit(" ", 1) for line in text.decode().splitlines()
                 if line.startswith("ollamamax_http_"))
    assert float(lines["ollamamax_http_fast_path_requests_total"]) == 3
    assert float(lines["ollamamax_http_connections_total"]) == 1
    assert float(lines["ollamamax_http_connections_handed_over_total"]) == 1
    assert float(lines["ollamamax_http_open_connections"]) == 0  # the connection is aiohttp's now
    assert float(lines["ollamamax_http_connections_rejected_total"]) == 0
    assert json.loads(status_json)["http"] == {"fast_requests": 3, "handed_over": 1,
                                               "connections": 1, "rejected": 0,
                                               "open_connections": 0}


async def test_a_large_body_arrives_in_pieces_with_a_pipelined_request_behind_it(srv):
    """A body over the in-place threshold (fastpath.BIG_BODY) is received into one buffer
    as it arrives; the bytes of the next pipelined request that came with its last piece
    are not lost, and the body reaches the dispatcher intact.  Bugs caught: bytes past the
    body dropped, or counted into it; a body assembled out of order."""
    from ollamamax.frontends.fastpath import BIG_BODY

    d, server = srv
    big = bytes(range(256)) * (3 * BIG_BODY // 256 + 7)
    wire = _post("/api/embed", big) + _post("/api/chat", b'{"model":"m"}')
    reader, writer = await _conn(server)
    try:
        cut = [1000, 70_000, len(_post("/api/embed", big)) - 10]  # head split, then body pieces
        pos = 0
        for c in cut:
            writer.write(wire[pos:c])
            await writer.drain()
            await asyncio.sleep(0.01)
            pos = c
        writer.write(wire[pos:])  # the last 10 body bytes and the whole next request
        for path, n in (("/api/embed", len(big)), ("/api/chat", 13)):
            status, _, body = await _response(reader)
            assert status == b"HTTP/1.1 200 OK" and json.loads(body)["path"] == path
            assert json.loads(body)["n"] == n
        assert d.calls[0][2] == big
    finally:
        writer.close()
