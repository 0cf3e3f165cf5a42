"""Limits no client can exhaust, on both front ends, on raw sockets: the send timeout (a client
that stops reading is cut and its host slot freed), the body timeout (408), the connection cap
(503 in the route's dialect, handed-over connections counted) and grace expiry (a stream ends
with an in-band error line and the chunked end marker, never a silent cut).

``front``: ``fast`` is ``fastpath.start_server`` (what ``ollamamax serve`` runs), with a
request shape it serves itself; ``handed`` is the same server with a request shape it hands
to aiohttp (a chunked request body); ``aiohttp`` is the app alone on an ``AppRunner`` (as when
mounted).  The descriptor-limit tests need a process of their own: ``test_serve.py``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from test_gateway_common import HOST_KW, new_host, wait_until

from ollamamax import create_app
from ollamamax.dispatch import Dispatcher, DispatcherConfig, HostConfig
from ollamamax.frontends import connections, fastpath
from ollamamax.frontends.fastpath import start_server
from ollamamax.wire.response import DispatchResponse

pytestmark = pytest.mark.timeout(90)

FRONTS = ("fast", "handed", "aiohttp")
GENERATE = {"model": "llama3.2", "prompt": "tell me a long story"}
CHAT_V1 = {"model": "llama3.2", "stream": True,
           "messages": [{"role": "user", "content": "tell me a long story"}]}


def request_bytes(path: str, payload: dict[str, Any], front: str = "fast") -> bytes:
    """A POST the fast path serves itself, or (``handed``) one it hands to aiohttp."""
    body = json.dumps(payload).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    if front == "handed":
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + \
            b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


@asynccontextmanager
async def gateway(front: str, *, n_hosts: int = 1, app_kw: dict[str, Any] | None = None,
                  dispatch_kw: dict[str, Any] | None = None, server_kw: dict[str, Any] | None = None,
                  grace: float = 1.0, **host_kw: Any) -> AsyncIterator[SimpleNamespace]:
    """Emulated hosts, a Dispatcher and the gateway on loopback; ``ns.close()`` shuts the
    gateway down with ``grace`` (once; the context exit does it otherwise)."""
    hosts = [new_host(i, **host_kw) for i in range(n_hosts)]
    started = []
    try:
        for h in hosts:
            await h.start()
            started.append(h)
        cfg = DispatcherConfig(**{"refresh_interval": 0.5, "connect_timeout": 1.0,
                                  **(dispatch_kw or {})})
        # the gateway is told each host's parallelism (else it learns it by probing)
        slots = host_kw.get("num_parallel", HOST_KW["num_parallel"])
        async with Dispatcher([HostConfig(h.url, num_parallel=slots) for h in hosts], config=cfg) as d:
            app = create_app(d, **(app_kw or {}))
            closed = False
            if front == "aiohttp":
                runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                                       shutdown_timeout=grace, **(server_kw or {}))
                await runner.setup()
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                port = runner.addresses[0][1]
                server = None

                async def close() -> None:
                    nonlocal closed
                    if not closed:
                        closed = True
                        await runner.cleanup()
            else:
                server = await start_server(app, "127.0.0.1", 0, access_log=None,
                                            **(server_kw or {}))
                port = server.port

                async def close() -> None:
                    nonlocal closed
                    if not closed:
                        closed = True
                        await server.close(grace)
            try:
                yield SimpleNamespace(hosts=hosts, d=d, port=port, server=server, close=close,
                                      url=f"http://127.0.0.1:{port}")
            finally:
                await close()
    finally:
        for h in started:
            await h.stop()


async def raw_connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    """A non-blocking client socket; ``rcvbuf`` set before connecting (a small window)."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def read_response(reader: asyncio.StreamReader, timeout: float = 10.0
                        ) -> tuple[int, dict[str, str], bytes]:
    """One response: (status, headers, body); a chunked body must end with its end marker
    (``IncompleteReadError`` otherwise: the stream was cut)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head[:-4].decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    status = int(lines[0].split(" ")[1])
    if "content-length" in headers:
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout)
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while True:
            size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout))[:-2], 16)
            data = await asyncio.wait_for(reader.readexactly(size + 2), timeout)
            assert data.endswith(b"\r\n"), data[-10:]
            if size == 0:
                break
            parts.append(data[:-2])
        body = b"".join(parts)
    else:
        body = await asyncio.wait_for(reader.read(), timeout)
    return status, headers, body


def in_flight(d: Dispatcher) -> int:
    return sum(h["in_flight"] for h in d.status()["hosts"])


# ------------------------------------------------------------------ send timeout


@pytest.mark.parametrize("front", FRONTS)
async def test_clients_that_stop_reading_are_freed_at_the_send_timeout(front):
    """Two clients that never read a long stream hold both host slots; at the send timeout
    they are disconnected, the upstream streams closed and the slots freed: a normal request
    then succeeds (before, it got 503 for as long as the streams lasted)."""
    async with gateway(front, app_kw={"send_timeout": 1.0},
                       dispatch_kw={"max_in_flight_per_host": 2, "queue_timeout": 0.3},
                       tokens_per_sec=20_000, response_tokens=(2_000_000, 2_000_000)) as g:
        loop = asyncio.get_running_loop()
        stuck = []
        for _ in range(2):
            sock = await raw_connect(g.port, rcvbuf=4096)
            await loop.sock_sendall(sock, request_bytes("/api/generate", GENERATE, front))
            stuck.append(sock)
        try:
            assert await wait_until(lambda: in_flight(g.d) == 2, 10)
            async with aiohttp.ClientSession() as s:
                embed = {"model": "nomic-embed-text", "input": "hi"}
                async with s.post(g.url + "/api/embed", json=embed) as r:
                    assert r.status == 503  # both slots are held by the clients that stopped
                started = time.monotonic()
                while True:
                    async with s.post(g.url + "/api/embed", json=embed) as r:
                        if r.status == 200:
                            break
                    # the streams last ~100 s; the slots must come back long before
                    assert time.monotonic() - started < 20, "slots never freed"
                    await asyncio.sleep(0.2)
            assert await wait_until(lambda: in_flight(g.d) == 0, 5)
            # the stuck clients were disconnected: what they can still read ends
            for sock in stuck:
                sock.setblocking(True)
                sock.settimeout(10)
                try:
                    while sock.recv(1 << 20):
                        pass
                except ConnectionResetError:
                    pass
        finally:
            for sock in stuck:
                sock.close()


@pytest.mark.parametrize("front", ("fast", "handed"))
async def test_a_client_that_reads_slowly_but_steadily_is_not_cut(front):
    """The send timeout is about no progress, not about slowness: with small socket buffers
    on both sides, a client reading ~40 KB/s keeps the server's writes waiting for longer
    than the send timeout at a time (64 KiB high water to 16 KiB low water takes ~1.2 s),
    yet it gets its whole answer (~160 KB)."""
    async with gateway(front, app_kw={"send_timeout": 0.5},
                       tokens_per_sec=3000, response_tokens=(1500, 1500)) as g:
        sock = await raw_connect(g.port, rcvbuf=4096)
        loop = asyncio.get_running_loop()
        try:
            assert await wait_until(lambda: len(g.server._shared.conns) == 1, 5)
            served = next(iter(g.server._shared.conns))._transport.get_extra_info("socket")
            served.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            await loop.sock_sendall(sock, request_bytes("/api/generate", GENERATE, front))
            data = bytearray()
            while not data.endswith(b"0\r\n\r\n"):
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
                assert chunk, "cut"
                data += chunk
                await asyncio.sleep(0.1)
        finally:
            sock.close()
        lines = [x for x in data.split(b"\n") if x.startswith(b"{")]
        assert json.loads(lines[-1])["done"] is True


class BigAnswer:
    """A dispatcher double whose every answer is one 16 MiB body."""

    async def handle(self, method, path, body, headers, *, query="", tenant=None):
        return DispatchResponse(200, {"Content-Type": "application/json"}, body=b"x" * (16 << 20))


@pytest.mark.parametrize("front", ("fast", "handed"))
async def test_a_client_that_never_reads_a_large_answer_is_disconnected(front, monkeypatch):
    """Not only streams: a complete answer the client does not read would hold the connection
    (and its descriptor) forever.  The fast path's sweep aborts an idle connection whose unsent
    bytes do not shrink; on aiohttp the answer is written under the send watch."""
    monkeypatch.setattr(connections, "SWEEP_INTERVAL", 0.2)
    server = await start_server(create_app(BigAnswer(), send_timeout=0.5), "127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    sock = await raw_connect(server.port, rcvbuf=4096)
    try:
        await loop.sock_sendall(sock, request_bytes("/api/tags", {}, front))
        assert await wait_until(lambda: server.open_connections == 1, 5)
        await asyncio.sleep(0.3)
        assert server.open_connections == 1  # the answer is being written
        assert await wait_until(lambda: server.open_connections == 0, 10), "never disconnected"
        got = 0
        try:
            while data := await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10):
                got += len(data)
        except ConnectionResetError:
            pass
        assert got < 16 << 20
    finally:
        sock.close()
        await server.close(1.0)


# ------------------------------------------------------------------ body timeout


@pytest.mark.parametrize("front", FRONTS)
async def test_a_body_that_trickles_gets_408(front):
    async with gateway(front, app_kw={"body_timeout": 1.0}) as g:
        reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
        body = json.dumps({"model": "llama3.2", "prompt": "x" * 200, "stream": False}).encode()
        if front == "handed":
            writer.write(b"POST /api/generate HTTP/1.1\r\nHost: x\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
        else:
            writer.write(b"POST /api/generate HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body))
        started = time.monotonic()

        async def trickle() -> None:  # a byte every 0.1 s: never idle, never done
            for i in range(100):
                writer.write(b"1\r\nx\r\n" if front == "handed" else body[i:i + 1])
                await asyncio.sleep(0.1)

        sender = asyncio.ensure_future(trickle())
        try:
            status, headers, answer = await read_response(reader, timeout=6)
            elapsed = time.monotonic() - started
            assert status == 408
            assert json.loads(answer) == {
                "error": "request body did not arrive within 1 s of its head"}
            assert headers["connection"] == "close"
            assert 0.9 < elapsed < 3.0, elapsed
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed
        finally:
            sender.cancel()
            writer.close()
        requests = g.d.status()["hosts"][0]["requests"]
        assert requests["ok"] + requests["errors"] == 0  # nothing was dispatched


@pytest.mark.parametrize("front", ("fast", "handed"))
async def test_a_body_that_arrives_in_time_is_served(front):
    """The body timer is per request: a body that completes in time is not cut, and the next
    request on the connection gets a timer of its own."""
    async with gateway(front, app_kw={"body_timeout": 1.0}) as g:
        reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
        try:
            for _ in range(2):
                raw = request_bytes("/api/generate", {**GENERATE, "stream": False}, front)
                for i in range(0, len(raw), 20):  # in pieces, over ~0.6 s
                    writer.write(raw[i:i + 20])
                    await asyncio.sleep(0.15)
                status, _, answer = await read_response(reader)
                assert status == 200 and json.loads(answer)["done"] is True
        finally:
            writer.close()


# ------------------------------------------------------------------ connection cap


async def test_connections_over_the_cap_get_503_and_handed_over_ones_count():
    async with gateway("fast", server_kw={"max_connections": 3}) as g:
        conns = []
        try:
            for _ in range(2):  # two on the fast path, idle
                conns.append(await asyncio.open_connection("127.0.0.1", g.port))
            r, w = await asyncio.open_connection("127.0.0.1", g.port)
            conns.append((r, w))
            w.write(b"GET /api/version HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")  # aiohttp's
            status, _, _ = await read_response(r)
            assert status == 200 and g.server.stats.handed_over == 1
            assert g.server.open_connections == 3
            # the fourth: 503 in Ollama's shape (or OpenAI's on /v1), Retry-After, closed
            for path, shape in (("/api/generate", "ollama"), ("/v1/chat/completions", "openai")):
                r4, w4 = await asyncio.open_connection("127.0.0.1", g.port)
                w4.write(request_bytes(path, {**GENERATE, "stream": False}))
                status, headers, body = await read_response(r4)
                assert status == 503 and headers["retry-after"] == "1"
                assert headers["connection"] == "close"
                assert headers["content-type"] == "application/json; charset=utf-8"
                err = json.loads(body)["error"]
                msg = "ollamamax gateway has too many connections (limit 3); retry later"
                assert err == msg if shape == "ollama" else err["message"] == msg
                assert await asyncio.wait_for(r4.read(), 5) == b""
                w4.close()
            assert g.server.stats.rejected == 2
            # one goes away (the handed-over one): a new client is served again
            w.close()
            conns.pop()
            await wait_until(lambda: g.server.open_connections == 2, 5)
            r5, w5 = await asyncio.open_connection("127.0.0.1", g.port)
            w5.write(request_bytes("/api/generate", {**GENERATE, "stream": False}))
            status, _, body = await read_response(r5)
            assert status == 200 and json.loads(body)["done"] is True
            w5.close()
        finally:
            for _, w in conns:
                w.close()


async def test_a_flood_over_the_cap_is_refused_at_accept(monkeypatch):
    """Beyond REJECT_BACKLOG connections being answered 503 at once, more are aborted as soon
    as they are accepted: refusing costs the gateway a bounded number of descriptors."""
    monkeypatch.setattr(fastpath, "REJECT_BACKLOG", 2)
    async with gateway("fast", server_kw={"max_connections": 1}) as g:
        first = await asyncio.open_connection("127.0.0.1", g.port)
        idle = [await asyncio.open_connection("127.0.0.1", g.port) for _ in range(5)]
        try:
            # two wait for a request line (then get 503); three are reset at once
            outcomes = []
            for r, _ in idle:
                try:
                    outcomes.append(await asyncio.wait_for(r.read(), 5))
                except ConnectionResetError:
                    outcomes.append(b"reset")
            answered = [o for o in outcomes if o.startswith(b"HTTP/1.1 503")]
            assert len(answered) == 2, outcomes
            assert all(o in (b"", b"reset") for o in outcomes if o not in answered)
            assert g.server.stats.rejected == 5
            # each refused connection is let go within REJECT_WAIT + REJECT_LINGER
            assert await wait_until(lambda: g.server._shared.rejecting == 0, 3)
        finally:
            first[1].close()
            for _, w in idle:
                w.close()


# ------------------------------------------------------------------ grace expiry


@pytest.mark.parametrize("dialect", ("ndjson", "sse"))
@pytest.mark.parametrize("front", FRONTS)
async def test_grace_expiry_ends_a_stream_with_an_in_band_error(front, dialect):
    """A long stream, the gateway closed with a short grace: the client reads a whole chunked
    answer (end marker included) whose last line is the error, in the route's dialect."""
    async with gateway(front, grace=0.5, tokens_per_sec=50, response_tokens=(5000, 5000)) as g:
        reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
        path, payload = ("/api/generate", GENERATE) if dialect == "ndjson" else \
            ("/v1/chat/completions", CHAT_V1)
        writer.write(request_bytes(path, payload, front))
        assert await wait_until(lambda: in_flight(g.d) == 1, 10)
        await asyncio.sleep(0.3)  # the stream is running
        reading = asyncio.ensure_future(read_response(reader))
        started = time.monotonic()
        await asyncio.wait_for(g.close(), 10)
        assert time.monotonic() - started < 4
        status, _, body = await asyncio.wait_for(reading, 10)  # the end marker came
        writer.close()
        assert in_flight(g.d) == 0
    assert status == 200
    if dialect == "ndjson":
        lines = [json.loads(x) for x in body.splitlines() if x.strip()]
        assert len(lines) > 2
        assert all("response" in x and x["done"] is False for x in lines[:-1])
        assert set(lines[-1]) == {"error"}
        message = lines[-1]["error"]
    else:
        events = [e for e in body.split(b"\n\n") if e.strip()]
        assert len(events) > 2 and all(e.startswith(b"data: {") for e in events)
        last = json.loads(events[-1].removeprefix(b"data: "))
        assert last["error"]["type"] == "api_error"
        message = last["error"]["message"]
        assert b"[DONE]" not in body
    assert message.startswith("ollamamax gateway shutting down")
    if front != "aiohttp":  # the fast path's close knows its grace period (aiohttp's does not)
        assert message.endswith("the grace period of 0.5 s ended")
