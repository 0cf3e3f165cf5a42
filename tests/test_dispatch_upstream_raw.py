"""The raw keep-alive upstream client (``ollamamax.upstream``: ``http1``, ``connection``)
and ``Upstream`` (``ollamamax.upstream.client``).

Parser tests feed bytes to a connection with a fake transport (split at every offset) and
look at the response through its read-only seams (``head_received``, ``complete``,
``error``, ``peek()``, ``first_byte_deadline``); pool/timeout/error tests run a scripted
HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from ollamamax.upstream.client import TraceCtx, Upstream, describe_error
from ollamamax.upstream.connection import HIGH_WATER, Connection, RawResponse
from ollamamax.upstream.http1 import (
    BadResponse,
    ConnectFailed,
    Disconnected,
    StatusError,
    build_head,
)
from ollamamax.upstream.pool import HostPool

pytestmark = pytest.mark.timeout(30)


# -- parser with a fake transport -------------------------------------------------------
class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False
        self.paused = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def wired_conn(pool: HostPool | None = None) -> tuple[HostPool, Connection, RawResponse, FakeTransport]:
    """A connection of ``pool`` (a new one by default) over a fake transport, counted as
    open by the pool (``adopt``), with one request started on it:
    (pool, conn, response, transport)."""
    pool = pool or HostPool("127.0.0.1", 1, max_idle=4, connect_timeout=1.0)
    conn = Connection(pool)
    t = FakeTransport()
    conn.connection_made(t)  # type: ignore[arg-type]
    pool.adopt(conn)
    resp = RawResponse(conn, asyncio.get_running_loop())
    conn.start(resp, b"GET / HTTP/1.1\r\n\r\n", b"", False)
    return pool, conn, resp, t


def _body(resp: RawResponse) -> bytes:
    """The body bytes received and not read yet (not consumed)."""
    return resp.peek()


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n"
    b"1A\r\n" + b"x" * 26 + b"\r\n"
    b"0\r\nX-Trailer: 1\r\n\r\n"
)
LENGTH = b"HTTP/1.1 201 Created\r\nContent-Length: 11\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello world"


@pytest.mark.parametrize(
    "raw,status,body",
    [(CHUNKED, 200, b"hello" + b"x" * 26), (LENGTH, 201, b"hello world")],
)
async def test_parser_at_every_split(raw: bytes, status: int, body: bytes) -> None:
    for cut in range(1, len(raw)):
        for pieces in (
            [raw[:cut], raw[cut:]],
            [raw[i : i + 1] for i in range(len(raw))] if cut == 1 else [],
        ):
            if not pieces:
                continue
            _, conn, resp, _t = wired_conn()
            for p in pieces:
                conn.data_received(p)
            assert resp.status == status and resp.head_received
            assert resp.complete and _body(resp) == body
            assert conn.reusable


async def test_headers_reason_and_multi_values() -> None:
    _, conn, resp, _t = wired_conn()
    conn.data_received(LENGTH)
    assert resp.reason == "Created"
    assert resp.headers.getall("x-a") == ["1", "2"]
    assert resp.headers["content-length"] == "11"


async def test_interim_100_is_skipped() -> None:
    _, conn, resp, _t = wired_conn()
    conn.data_received(b"HTTP/1.1 100 Continue\r\n\r\n" + LENGTH)
    assert resp.status == 201 and _body(resp) == b"hello world"


async def test_no_body_for_head_and_204() -> None:
    pool = HostPool("127.0.0.1", 1, max_idle=4, connect_timeout=1.0)
    conn = Connection(pool)
    conn.connection_made(FakeTransport())  # type: ignore[arg-type]
    resp = RawResponse(conn, asyncio.get_running_loop())
    conn.start(resp, b"HEAD / HTTP/1.1\r\n\r\n", b"", True)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n")
    assert resp.complete and _body(resp) == b"" and conn.reusable
    _, conn, resp, _t = wired_conn()
    conn.data_received(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert resp.complete and resp.status == 204


async def test_body_until_eof_and_connection_close() -> None:
    _, conn, resp, _t = wired_conn()
    conn.data_received(b"HTTP/1.0 200 OK\r\n\r\nabc")
    conn.data_received(b"def")
    assert not resp.complete and not conn.reusable
    conn.connection_lost(None)
    assert resp.complete and _body(resp) == b"abcdef"
    _, conn, resp, _t = wired_conn()
    conn.data_received(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx")
    assert resp.complete and not conn.reusable


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTQ/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 42 Odd\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno-colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n",
        b"HTTP/1.1 2\xb200 OK\r\n\r\n",
        b"HTTP/1.1 200OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxYY",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 5000,
        b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20000,
    ],
)
async def test_bad_responses_fail_and_close(raw: bytes) -> None:
    _, conn, resp, t = wired_conn()
    conn.data_received(raw)
    assert isinstance(resp.error, BadResponse)
    assert t.aborted and not conn.reusable
    assert describe_error(resp.error).startswith("invalid response")


async def test_extra_bytes_after_response_prevent_reuse() -> None:
    _, conn, resp, _t = wired_conn()
    conn.data_received(LENGTH + b"HTTP/1.1 200 OK\r\n")
    assert resp.complete and not conn.reusable
    _, conn, resp, _t = wired_conn()
    conn.data_received(CHUNKED + b"junk")
    assert resp.complete and not conn.reusable


async def test_unsolicited_bytes_close_an_idle_connection() -> None:
    pool, conn, resp, t = wired_conn()
    conn.data_received(LENGTH)
    resp.release()
    assert pool.idle_count == 1
    conn.data_received(b"surprise")
    assert t.aborted and conn.closed
    assert pool.take_idle() is None and pool.open_count == 0  # not handed out again


async def test_flow_control_pauses_and_resumes() -> None:
    _, conn, resp, t = wired_conn()
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    piece = b"y" * 65536
    frame = b"%x\r\n" % len(piece) + piece + b"\r\n"
    for _ in range(HIGH_WATER // len(piece) + 1):
        conn.data_received(frame)
    assert t.paused
    data = await resp.readany()
    assert len(data) > HIGH_WATER and not t.paused
    conn.data_received(b"0\r\n\r\n")
    assert await resp.readany() == b"" and resp.at_eof()


async def test_connection_lost_mid_body_is_disconnected() -> None:
    _, conn, resp, _t = wired_conn()
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    conn.connection_lost(ConnectionResetError("reset"))
    assert await resp.readany() == b"abc"  # what arrived is still delivered
    with pytest.raises(Disconnected):
        await resp.readany()
    assert describe_error(Disconnected("x")) == "connection lost"


async def test_read_nowait_and_read() -> None:
    _, conn, resp, _t = wired_conn()
    assert resp.read_nowait() == b""
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    assert resp.read_nowait() == b"ab"
    conn.data_received(b"cd")
    assert await resp.read() == b"cd" and resp.at_eof()
    _, conn, resp, _t = wired_conn()
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    conn.connection_lost(None)
    with pytest.raises(Disconnected):
        await resp.read()
    assert resp.read_nowait() == b"ab"
    with pytest.raises(Disconnected):
        resp.read_nowait()


def test_build_head() -> None:
    h = build_head(
        "POST",
        "/api/chat?x=1",
        b"Host: h:1\r\n",
        b"A: b\r\n",
        {"Content-Type": "application/json"},
        3,
    )
    assert h == (
        b"POST /api/chat?x=1 HTTP/1.1\r\nHost: h:1\r\nA: b\r\nContent-Type: application/json\r\n"
        b"Content-Length: 3\r\n\r\n"
    )
    assert build_head("GET", "/", b"Host: h\r\n", b"", None, 0) == b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    assert build_head("POST", "/", b"", b"", None, 0).endswith(b"Content-Length: 0\r\n\r\n")


def test_pool_rejects_negative_idle_and_host_line() -> None:
    with pytest.raises(ValueError):
        HostPool("h", 1, max_idle=-1, connect_timeout=1)
    assert HostPool("h", 80, max_idle=1, connect_timeout=1).host_line() == b"Host: h\r\n"
    assert HostPool("::1", 8080, max_idle=1, connect_timeout=1).host_line() == b"Host: [::1]:8080\r\n"


# -- against a scripted server ----------------------------------------------------------
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.eof_seen = asyncio.Event()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = self.connections
        try:
            await self.handler(r, w, n)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()

    async def read_request(self, r: asyncio.StreamReader) -> bytes | None:
        try:
            head = await r.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            self.eof_seen.set()
            return None
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = await r.readexactly(length) if length else b""
        self.requests.append(head + body)
        return head + body


@contextlib.asynccontextmanager
async def serve(handler_factory: Callable[[Server], Handler]) -> AsyncIterator[Server]:
    s = Server(None)  # type: ignore[arg-type]
    s.handler = handler_factory(s)
    s.server = await asyncio.start_server(s._serve, "127.0.0.1", 0)
    s.port = s.server.sockets[0].getsockname()[1]
    try:
        yield s
    finally:
        s.server.close()
        await s.server.wait_closed()


def ok_forever(s: Server) -> Handler:
    async def h(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        for _ in range(100):
            if await s.read_request(r) is None:
                return
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
            await w.drain()

    return h


def upstream(port: int, **kw: object) -> Upstream:
    return Upstream(
        f"http://127.0.0.1:{port}", headers={"Authorization": "Bearer up"}, capacity=2, **kw  # type: ignore[arg-type]
    )


async def test_keepalive_reuse_headers_and_trace() -> None:
    async with serve(ok_forever) as s:
        up = upstream(s.port)
        try:
            for i in range(3):
                tr = TraceCtx()
                resp = await up.send(
                    "POST",
                    "/api/chat",
                    b'{"a":1}',
                    {
                        "content-type": "application/json",
                        "Authorization": "Bearer client",
                        "X-Other": "1",
                    },
                    query="q=1" if i == 0 else "",
                    trace=tr,
                )
                assert await resp.read() == b"{}"
                resp.release()
                assert (tr.connect_s is not None) == (i == 0)
            assert s.connections == 1
            first = s.requests[0]
            assert first.startswith(b"POST /api/chat?q=1 HTTP/1.1\r\n")
            assert f"Host: 127.0.0.1:{s.port}\r\n".encode() in first
            assert b"Authorization: Bearer up\r\n" in first and b"client" not in first
            assert b"X-Other" not in first and b"Content-Length: 7\r\n" in first
            assert first.endswith(b'{"a":1}')
            assert await up.get_json("/api/tags", 1.0) == {}
        finally:
            await up.close()


async def test_default_content_type_and_bad_header_values() -> None:
    async with serve(ok_forever) as s:
        up = upstream(s.port)
        try:
            resp = await up.send("POST", "/api/embed", b"{}", None)
            resp.release()
            assert b"Content-Type: application/json\r\n" in s.requests[0]
            with pytest.raises(ValueError):
                await up.send("POST", "/x", b"{}", {"User-Agent": "a\r\nX: y"})
        finally:
            await up.close()
    with pytest.raises(ValueError):
        Upstream("http://h:1", headers={"A": "b\r\nc"}, capacity=1)
    with pytest.raises(ValueError):
        Upstream("ftp://h:1", capacity=1)


async def test_get_json_non_200_raises_status_error() -> None:
    def h404(s: Server) -> Handler:
        async def h(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            await s.read_request(r)
            w.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            await w.drain()
            await r.read()

        return h

    async with serve(h404) as s:
        up = upstream(s.port)
        try:
            with pytest.raises(StatusError) as ei:
                await up.get_json("/api/ps", 1.0)
            assert ei.value.status == 404
        finally:
            await up.close()


async def test_stale_idle_connection_is_retried_once_on_a_new_one() -> None:
    def answer_once(s: Server) -> Handler:
        async def h(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            await s.read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" + str(n).encode())
            await w.drain()
            await s.read_request(r)  # the next request on this connection: closed unanswered

        return h

    async with serve(answer_once) as s:
        up = upstream(s.port)
        try:
            for expect in (b"1", b"2"):
                resp = await up.send("GET", "/", None)
                assert await resp.read() == expect
                resp.release()
            assert s.connections == 2
        finally:
            await up.close()


async def test_connect_refused_and_connect_timeout() -> None:
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    up = upstream(port)
    try:
        with pytest.raises(ConnectFailed) as ei:
            await up.send("GET", "/", None)
        assert describe_error(ei.value) == "connection refused"
    finally:
        await up.close()
    # a connect that never completes (stubbed: loopback connects are instant)
    loop = asyncio.get_running_loop()

    async def never(*a: object, **k: object) -> None:
        await asyncio.sleep(10)

    pool = HostPool("127.0.0.1", port, max_idle=1, connect_timeout=0.05)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "create_connection", never)
        with pytest.raises(TimeoutError):
            await pool.request(b"GET / HTTP/1.1\r\n\r\n", b"")
    await pool.close()
    with pytest.raises(ConnectFailed):
        await pool.request(b"GET / HTTP/1.1\r\n\r\n", b"")


def hang_then(s: Server) -> Handler:
    async def h(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        if await s.read_request(r) is None:
            return
        if n == 1:  # first connection: never answers
            await r.read()
            s.eof_seen.set()
            return
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await w.drain()
        await r.read()  # then stalls mid-stream until the client goes
        s.eof_seen.set()

    return h


async def test_first_byte_timeout_closes_connection() -> None:
    async with serve(hang_then) as s:
        up = upstream(s.port)
        try:
            with pytest.raises(TimeoutError):
                await up.send("POST", "/api/chat", b"{}", timeout=0.1)
            await asyncio.wait_for(s.eof_seen.wait(), 5)  # the host saw us go
            assert up.pool.open_count == 0
        finally:
            await up.close()


async def test_idle_timeout_between_chunks_and_close_aborts() -> None:
    async with serve(hang_then) as s:
        up = upstream(s.port)
        try:
            with pytest.raises(TimeoutError):
                await up.send("POST", "/", b"{}", timeout=0.1)
            s.eof_seen.clear()
            resp = await up.send("POST", "/", b"{}", timeout=1.0)
            assert await resp.readany() == b"abc"
            assert resp.first_byte_deadline is None  # the first body bytes end the first-byte timer
            with pytest.raises(TimeoutError):
                await resp.readany(0.05)
            await asyncio.wait_for(s.eof_seen.wait(), 5)
            resp.close()
            resp.release()  # idempotent after close
        finally:
            await up.close()


async def test_close_mid_stream_is_seen_by_host_and_not_reused() -> None:
    def stream_slow(s: Server) -> Handler:
        async def h(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            await s.read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n")
            await w.drain()
            await r.read()
            s.eof_seen.set()

        return h

    async with serve(stream_slow) as s:
        up = upstream(s.port)
        try:
            resp = await up.send("POST", "/", b"{}")
            assert await resp.readany() == b"ab"
            resp.release()  # incomplete -> closed, not pooled
            await asyncio.wait_for(s.eof_seen.wait(), 5)
            assert up.pool.idle_count == 0
        finally:
            await up.close()


async def test_cancelled_send_closes_connection() -> None:
    async with serve(hang_then) as s:
        up = upstream(s.port)
        try:
            t = asyncio.create_task(up.send("POST", "/", b"{}"))
            await asyncio.sleep(0.05)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            await asyncio.wait_for(s.eof_seen.wait(), 5)
        finally:
            await up.close()


async def test_idle_pool_is_bounded_and_ttl_reaped() -> None:
    async with serve(ok_forever) as s:
        pool = HostPool("127.0.0.1", s.port, max_idle=2, connect_timeout=1.0, idle_ttl=60.0)
        try:
            head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
            resps = [await pool.request(head, b"") for _ in range(3)]
            for r in resps:
                await r.read()
                r.release()
            assert pool.idle_count == 2 and s.connections == 3 and pool.open_count == 2
            pool.idle_ttl = 0.05
            await asyncio.sleep(0.1)  # both idle ones are now past their TTL
            r = await pool.request(head, b"")  # takes the most recent idle one (LIFO)
            await r.read()
            r.release()  # reaps the older idle one
            assert pool.idle_count == 1 and pool.open_count == 1 and s.connections == 3
        finally:
            await pool.close()


async def test_idle_reaping_starts_at_the_oldest() -> None:
    """``put_idle`` closes what has been idle past the TTL from the oldest end, keeps a
    fresh one, and hands out the most recently used first (LIFO)."""
    pool = HostPool("127.0.0.1", 1, max_idle=2, connect_timeout=1.0, idle_ttl=60.0)
    conns = []
    for _ in range(3):
        c = Connection(pool)
        c.connection_made(FakeTransport())  # type: ignore[arg-type]
        pool.adopt(c)
        conns.append(c)
    old, fresh, newest = conns
    pool.put_idle(old)
    await asyncio.sleep(0.1)
    pool.put_idle(fresh)  # idle: [old, fresh], both within the TTL
    assert pool.idle_count == 2
    pool.idle_ttl = 0.05  # old (idle >= 0.1 s) is past it now, fresh (idle for microseconds) is not
    pool.put_idle(newest)  # reaps old from the bottom (not fresh), so newest fits under max_idle
    assert old.closed and old.transport.aborted  # type: ignore[union-attr]
    assert not fresh.closed and not newest.closed
    assert pool.idle_count == 2 and pool.open_count == 2
    assert pool.take_idle() is newest and pool.take_idle() is fresh and pool.take_idle() is None
    await pool.close()


async def test_idle_timer_is_per_gap_not_per_stream() -> None:
    def drip(s: Server) -> Handler:
        async def h(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            await s.read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(8):  # 8 x 40 ms = 320 ms in all, each gap well under 150 ms
                await asyncio.sleep(0.04)
                w.write(b"1\r\nx\r\n")
                await w.drain()
            await r.read()  # then stalls
            s.eof_seen.set()

        return h

    async with serve(drip) as s:
        up = upstream(s.port)
        try:
            resp = await up.send("POST", "/", b"{}")
            got = b""
            while len(got) < 8:
                got += await resp.readany(0.15)
            assert got == b"x" * 8
            await asyncio.sleep(0.2)  # a slow reader (not waiting) is not timed out
            with pytest.raises(TimeoutError):
                await resp.readany(0.15)
            await asyncio.wait_for(s.eof_seen.wait(), 5)
            resp.close()
        finally:
            await up.close()


async def test_replay_and_passthrough_at_eof() -> None:
    from ollamamax.upstream.streams import PassThrough, Replay

    rp = Replay([b"a", b"b"])
    assert not rp.at_eof()
    assert await rp.__anext__() == b"a" and not rp.at_eof()
    assert await rp.__anext__() == b"b" and rp.at_eof()
    with pytest.raises(StopAsyncIteration):
        await rp.__anext__()
    rp2 = Replay([b"a"])
    await rp2.aclose()
    assert [c async for c in rp2] == []

    _, conn, resp, _t = wired_conn()
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    first = await resp.readany()
    ends: list[object] = []
    st = PassThrough(
        resp,
        first,
        idle=1.0,
        sse=False,
        label="h",
        on_finish=lambda s, ok, e: ends.append(ok),
    )
    assert await st.__anext__() == b"ab" and not st.at_eof()
    conn.data_received(b"cd")
    assert await st.__anext__() == b"cd" and st.at_eof()
    with pytest.raises(StopAsyncIteration):
        await st.__anext__()
    assert ends == [True] and not st.at_eof()


async def test_release_of_complete_but_unread_response_resumes_reading() -> None:
    pool, conn, resp, t = wired_conn()
    big = b"z" * (HIGH_WATER + 10)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big)
    assert t.paused and resp.complete
    resp.release()
    assert not t.paused and pool.idle_count == 1


async def test_unsafe_path_and_query_are_quoted_and_utf8_headers_kept() -> None:
    async with serve(ok_forever) as s:
        up = upstream(s.port)
        try:
            resp = await up.send("GET", "/a b/é", None, {"User-Agent": "clïent"}, query="x=1 2")
            await resp.read()
            resp.release()
            line = s.requests[0].split(b"\r\n", 1)[0]
            assert line == b"GET /a%20b/%C3%A9?x=1%202 HTTP/1.1"
            assert "User-Agent: clïent\r\n".encode() in s.requests[0]
        finally:
            await up.close()


async def test_a_large_request_body_is_written_a_slice_at_a_time_as_the_socket_takes_it() -> None:
    """Bug caught: a 13 MiB body handed to the transport in one write is copied whole into
    its buffer in one step of the event loop (every other request waits).  It goes out a
    slice at a time, each next slice when the transport's flow control says so; and a
    connection whose body is not all written yet is never reused."""
    from ollamamax.upstream.connection import BODY_SLICE

    pool = HostPool("127.0.0.1", 1, max_idle=4, connect_timeout=1.0)
    conn = Connection(pool)

    class Paced(FakeTransport):
        def write(self, data: bytes) -> None:
            super().write(bytes(data))
            if len(data) >= BODY_SLICE:
                conn.pause_writing()  # the buffer went over its high-water mark

        def is_closing(self) -> bool:
            return self.aborted

    t = Paced()
    conn.connection_made(t)  # type: ignore[arg-type]
    pool.adopt(conn)
    resp = RawResponse(conn, asyncio.get_running_loop())
    body = bytes(range(256)) * (13 * 4096)  # 13 MiB
    conn.start(resp, b"POST /api/chat HTTP/1.1\r\n\r\n", body, False)
    assert len(t.written) == 2 and conn.writing_body  # the head, one slice, then a pause
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")  # the host answered early
    resp.release()
    assert pool.take_idle() is None and t.aborted  # not reusable: the body was not all written
    conn2 = Connection(pool)
    t2 = Paced()
    conn = conn2
    conn2.connection_made(t2)  # type: ignore[arg-type]
    resp2 = RawResponse(conn2, asyncio.get_running_loop())
    conn2.start(resp2, b"POST /api/chat HTTP/1.1\r\n\r\n", body, False)
    while conn2.writing_body:
        conn2.resume_writing()
    assert b"".join(t2.written[1:]) == body and max(len(w) for w in t2.written) <= BODY_SLICE
