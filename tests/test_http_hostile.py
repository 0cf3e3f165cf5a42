"""Hostile and malformed HTTP input at the gateway: a clear 4xx (or 505), at once, never a 500,
a silent drop or an ERROR traceback per request; and nothing reaches the dispatcher that a
client did not send as one well-formed request.

Each test sends raw bytes over a socket to the server ``ollamamax serve`` runs (the fast path
in front of the aiohttp app) and, where the two front ends must agree, to the aiohttp app
alone.  The bugs each one catches are named in its docstring.
"""

from __future__ import annotations

import asyncio
import logging
import re

import pytest
from test_gateway_common import serve_app

from ollamamax import create_app
from ollamamax.frontends.aiohttp_app import GATEWAY_KEY
from ollamamax.wire.response import DispatchResponse

pytestmark = pytest.mark.asyncio


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bytes]] = []

    async def handle(self, method, path, body, headers, *, query="", tenant=None):
        self.calls.append((method, path, bytes(body)))
        return DispatchResponse(200, {"Content-Type": "application/json"}, body=b'{"ok":true}')


async def _serve(front: str = "fast", **app_kw):
    rec = Recorder()
    close, url = await serve_app(create_app(rec, **app_kw), front, access_log=None)
    host, port = url.removeprefix("http://").split(":")
    return rec, close, (host, int(port))


async def _exchange(addr, raw: bytes, *, read_for: float = 5.0) -> bytes:
    """Send ``raw``; everything the server answers until it closes or ``read_for`` passes."""
    reader, writer = await asyncio.open_connection(*addr)
    try:
        writer.write(raw)
        await writer.drain()
        out = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + read_for
        while True:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                part = await asyncio.wait_for(reader.read(65536), left)
            except (asyncio.TimeoutError, ConnectionError):
                break
            if not part:
                break
            out += part
        return out
    finally:
        writer.close()


def _statuses(answer: bytes) -> list[int]:
    """The status of every response in ``answer`` (bodies here never contain "HTTP/1.")."""
    return [int(m) for m in re.findall(rb"HTTP/1\.[01] (\d{3}) ", answer)]


@pytest.fixture
def log(caplog):
    """Every record logged during the test (malformed input must produce no ERROR)."""
    caplog.set_level(logging.DEBUG)
    return caplog


def _errors(log) -> list[logging.LogRecord]:
    return [r for r in log.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("front", ["fast", "aiohttp"])
async def test_case_variant_duplicate_content_length_is_refused_not_smuggled(front, log):
    """Request smuggling: ``Content-Length: 79`` then ``content-length: 115`` whose body hides a
    second request.  The old fast path found repeated names with a case-sensitive
    ``keys() & keys()`` (multidict < 6.3) and answered twice, running the hidden request."""
    inner = b"POST /api/delete HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\n\r\n{\"model\":\"evil\"}\n"
    outer_body = b'{"model":"llama3.2","prompt":"hi","stream":false,"x":"' + b"a" * 23 + b'"}'
    head = (b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\ncontent-length: %d\r\n\r\n"
            % (len(outer_body), len(outer_body) + len(inner)))
    rec, close, addr = await _serve(front)
    try:
        answer = await _exchange(addr, head + outer_body + inner, read_for=3.0)
    finally:
        await close()
    assert _statuses(answer) == [400], answer[:300]
    assert rec.calls == []
    assert _errors(log) == []


async def test_bare_line_feeds_and_tls_bytes_are_answered_at_once(log):
    """A head that can never end in CRLF CRLF (bare LF line ends, a TLS ClientHello) used to
    wait for the 75 s keep-alive sweep with no answer; it gets 400 at once."""
    rec, close, addr = await _serve()
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        lf = await _exchange(addr, b"GET /api/tags HTTP/1.1\nHost: x\n\n", read_for=3.0)
        tls = await _exchange(addr, bytes.fromhex("160301020001000001fc0303") + b"\x00" * 40, read_for=3.0)
        took = loop.time() - t0
    finally:
        await close()
    assert _statuses(lf) == [400], lf[:200]
    assert _statuses(tls) == [400], tls[:200]
    assert took < 5.0  # answered, not timed out (generous: the bound is the 3 s read window)
    assert rec.calls == []
    assert _errors(log) == []


@pytest.mark.parametrize("front", ["fast", "aiohttp"])
async def test_http11_without_host_is_400(front):
    """RFC 9112 section 3.2: an HTTP/1.1 request without Host is a 400 (it used to get 200)."""
    rec, close, addr = await _serve(front)
    try:
        answer = await _exchange(addr, b"GET /api/tags HTTP/1.1\r\n\r\n", read_for=2.0)
        ok = await _exchange(addr, b"GET /api/tags HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", read_for=2.0)
    finally:
        await close()
    assert _statuses(answer) == [400], answer[:200]
    assert b"Host" in answer
    assert _statuses(ok) == [200]
    assert len(rec.calls) == 1


@pytest.mark.parametrize("front", ["fast", "aiohttp"])
async def test_http2_in_a_request_line_is_505(front):
    """``HTTP/2.0`` in an HTTP/1 request line used to be answered ``HTTP/2.0 200`` with HTTP/1
    framing."""
    rec, close, addr = await _serve(front)
    try:
        answer = await _exchange(addr, b"GET /api/tags HTTP/2.0\r\nHost: x\r\n\r\n", read_for=2.0)
    finally:
        await close()
    # the fast path (what ``ollamamax serve`` runs) answers in HTTP/1.1; aiohttp alone (a
    # mounted app) writes its status line in the request's version, whatever it is
    assert answer.startswith(b"HTTP/1.1 505 " if front == "fast" else b"HTTP/2.0 505 "), answer[:200]
    assert rec.calls == []


async def test_overlong_url_is_414_and_long_fields_match_aiohttp():
    """A 100 KiB URL got 400 (or waited); it is 414.  Header lines between aiohttp's limit and
    the fast path's head size passed on the fast path only: both paths now refuse them alike."""
    rec, close, addr = await _serve()
    _, close2, addr2 = await _serve("aiohttp")
    try:
        url = await _exchange(addr, b"GET /api/tags?q=" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                              read_for=3.0)
        field = b"GET /api/tags HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 12_000 + b"\r\n\r\n"
        fast = await _exchange(addr, field, read_for=2.0)
        plain = await _exchange(addr2, field, read_for=2.0)
    finally:
        await close()
        await close2()
    assert _statuses(url) == [414], url[:200]
    assert _statuses(fast) == _statuses(plain) and _statuses(fast)[0] in (400, 431), (fast[:200], plain[:200])
    assert rec.calls == []


async def test_pipelined_http10_after_a_fast_path_request_is_served():
    """A pipelined HTTP/1.0 request after a fast-path request got 400 "Data after
    Connection: close" from the hand-over."""
    rec, close, addr = await _serve()
    try:
        answer = await _exchange(addr, b"GET /api/tags HTTP/1.1\r\nHost: x\r\n\r\n"
                                       b"GET /api/ps HTTP/1.0\r\n\r\n", read_for=2.0)
    finally:
        await close()
    assert _statuses(answer) == [200, 200], answer[:400]
    assert [c[1] for c in rec.calls] == ["/api/tags", "/api/ps"]


async def test_absurd_content_length_is_400_without_a_traceback(log):
    """A Content-Length of 4,300+ digits raised inside ``data_received`` (Python's int digit
    limit): the connection dropped with no answer and a traceback was logged."""
    rec, close, addr = await _serve()
    try:
        answer = await _exchange(addr, b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: "
                                 + b"9" * 5000 + b"\r\n\r\n{}", read_for=2.0)
    finally:
        await close()
    assert _statuses(answer) == [400], answer[:200]
    assert rec.calls == []
    assert _errors(log) == []


async def test_fuzzed_heads_log_no_errors(log):
    """Malformed heads were each logged at ERROR with a traceback (4,000 fuzzed heads made
    25,480 log lines); they are logged at DEBUG, or one rate-limited WARNING."""
    rec, close, addr = await _serve()
    bad = [b"GET / HTTP/1.1\r\nX: a\r\n b\r\nHost: x\r\n\r\n", b"GE\x00T / HTTP/1.1\r\nHost: x\r\n\r\n",
           b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
           b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n"] * 5
    try:
        for raw in bad:
            assert _statuses(await _exchange(addr, raw, read_for=1.0)) == [400], raw
    finally:
        await close()
    assert _errors(log) == []
    assert len([r for r in log.records if r.levelno == logging.WARNING]) <= 1


@pytest.mark.parametrize("front", ["fast", "aiohttp"])
async def test_keyless_huge_upload_is_refused_before_its_body(front):
    """Auth before the body: with a key set, a keyless request announcing 32 MiB is answered
    401 on its head alone; the old fast path read the whole body first (20 such connections
    took the gateway to 700 MB)."""
    rec, close, addr = await _serve(front, api_keys=["sekrit"])
    try:
        reader, writer = await asyncio.open_connection(*addr)
        writer.write(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % (32 * 1024 * 1024))
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5.0)  # no body byte was sent
        writer.close()
    finally:
        await close()
    assert line.startswith(b"HTTP/1.1 401"), line
    assert rec.calls == []


@pytest.mark.parametrize("front", ["fast", "aiohttp"])
async def test_large_bodies_in_flight_are_bounded_across_connections(front):
    """The bytes held by request bodies being received, over all connections and both front
    ends, are bounded (``GatewayRules.max_receiving``): one more gets 503 + Retry-After
    (before its body is read, on the fast path), not memory per connection without end."""
    rec = Recorder()
    app = create_app(rec, max_body_size=200_000)
    app[GATEWAY_KEY].rules.max_receiving = 300_000
    close, url = await serve_app(app, front, access_log=None)
    host, port = url.removeprefix("http://").split(":")
    addr = (host, int(port))
    if front == "fast":
        head = b"POST /api/embed HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
        frame = lambda data: data  # noqa: E731
    else:  # chunked: the aiohttp app counts what it has read
        head = b"POST /api/embed HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nX-Size: %d\r\n\r\n"
        frame = lambda data: b"%x\r\n%b\r\n" % (len(data), data) if data else b"0\r\n\r\n"  # noqa: E731
    try:
        r1, w1 = await asyncio.open_connection(*addr)
        w1.write(head % 200_000 + frame(b"a" * 190_000))
        await w1.drain()
        await asyncio.sleep(0.3)
        # (unfinished, as the first: a body that is all here already costs nothing to read)
        second = await _exchange(addr, head % 150_000 + frame(b"b" * 120_000), read_for=2.0)
        w1.write(frame(b"a" * 10_000) + frame(b""))
        await w1.drain()
        first = await asyncio.wait_for(r1.readline(), 5.0)
        w1.close()
        third = await _exchange(addr, head % 150_000 + frame(b"c" * 150_000) + frame(b""), read_for=2.0)
    finally:
        await close()
    assert _statuses(second) == [503] and b"Retry-After: 1" in second, second[:300]
    assert first.startswith(b"HTTP/1.1 200"), first
    assert _statuses(third)[:1] == [200]  # the budget came back when the first body completed
    assert [len(c[2]) for c in rec.calls] == [200_000, 150_000]




@pytest.mark.parametrize("front", ["fast", "aiohttp"])
async def test_a_bad_byte_in_authorization_is_401_without_a_traceback(front, log):
    """``Authorization: Bearer \\xff`` raised UnicodeEncodeError in the key check: a 500 and
    1.2 KB of ERROR log.  It is a wrong key: 401."""
    rec, close, addr = await _serve(front, api_keys=["sekrit"])
    try:
        answer = await _exchange(addr, b"POST /api/chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\r\n"
                                       b"Content-Length: 2\r\nConnection: close\r\n\r\n{}", read_for=2.0)
    finally:
        await close()
    assert _statuses(answer) == [401], answer[:200]
    assert rec.calls == []
    assert _errors(log) == []


async def test_json_nested_10k_deep_is_400_without_a_traceback(log):
    """JSON nested 10,000 deep raised RecursionError in the decoder (a 500); it is Ollama's
    400, and one client's bad body does not touch the next request."""
    from test_gateway_common import stack

    async with stack(1) as s:
        host, port = s.url.removeprefix("http://").split(":")
        deep = b'{"model":"llama3.2","messages":' + b"[" * 10_000 + b"]" * 10_000 + b"}"
        answer = await _exchange((host, int(port)), b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                                 b"Connection: close\r\n\r\n" % len(deep) + deep, read_for=3.0)
        good = b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}'
        after = await _exchange((host, int(port)), b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                                b"Connection: close\r\n\r\n" % len(good) + good, read_for=5.0)
    assert _statuses(answer) == [400], answer[:300]
    assert b"depth" in answer
    assert _statuses(after) == [200]
    assert _errors(log) == []


@pytest.mark.parametrize("front", ["fast", "aiohttp"])
async def test_bare_line_feeds_with_an_overlong_line_get_aiohttps_400(front):
    """Found by the differential test: a bare-LF head longer than aiohttp's line limit got
    414 (or, arriving in pieces, no answer) on the fast path, 400 on aiohttp.  The framing
    error in its first bytes decides, at once, on both."""
    rec, close, addr = await _serve(front)
    try:
        answer = await _exchange(addr, b"GET / HTTP/1.1\nHost: x\nX-Long: " + b"v" * 15_000 + b"\n\nabc",
                                 read_for=3.0)
    finally:
        await close()
    assert _statuses(answer) == [400], answer[:200]
    assert rec.calls == []
