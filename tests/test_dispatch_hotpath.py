"""The dispatcher's hot-path shortcuts behave exactly like the general code they skip.

Covers: the response-head cache and lazy headers, the chunked fast path, the one
first-byte timer per connection, the cached request heads and the one-pass header
lookup of ``Upstream`` (checked on the bytes it writes), the final-metrics scan, the JSON
fast path of the request parser, the end-to-end header cache of the response builder
(through ``Dispatcher.handle``), admission's release shortcut and the router's
one-candidate shortcut.

Only public names and the documented read-only seams are used: ``RawResponse.complete``
/ ``.error`` / ``.peek()`` / ``.first_byte_deadline``, ``Connection.timer_handle``,
``HostPool.adopt`` / ``.put_idle`` / ``.take_idle``, ``Upstream.cached_heads``,
``http1.HEAD_CACHE``, ``Dispatcher.upstream(h)`` / ``.store`` / ``.accounting`` /
``.metrics_snapshot()``, and ``Router.choose``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import Mapping
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from test_dispatch_upstream_raw import FakeTransport, wired_conn

from ollamamax.dispatch import Dispatcher, HostConfig
from ollamamax.dispatch.accounting import final_metrics
from ollamamax.dispatch.admission import Admission
from ollamamax.fleet.hosts import HostState
from ollamamax.fleet.residency import LOADED, Residency
from ollamamax.fleet.snapshot import HostView
from ollamamax.upstream import client as upclient
from ollamamax.upstream import http1
from ollamamax.upstream.client import FORWARD_REQUEST_HEADERS, Upstream, header_get
from ollamamax.upstream.connection import Connection, RawResponse
from ollamamax.upstream.http1 import BadResponse, build_head
from ollamamax.upstream.pool import HostPool
from ollamamax.wire.response import (
    HEADER_ATTEMPTS,
    HEADER_CACHE,
    HEADER_COLD,
    HEADER_HOST,
    HEADER_QUEUE_MS,
)
from ollamamax.wire.routes import lookup
from ollamamax.wire.validate import parse_body

pytestmark = pytest.mark.timeout(30)


# -- response heads ------------------------------------------------------------------
HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nX-A: 1\r\n"
    b"x-a: 2\r\nContent-Length: 2\r\nDate: Sat, 28 Nov 2026 04:13:27 GMT\r\n\r\n"
)


async def test_same_head_twice_gives_equal_results_and_independent_headers() -> None:
    results = []
    for _ in range(2):
        _, conn, resp, _t = wired_conn()
        conn.data_received(HEAD + b"{}")
        assert resp.status == 200 and resp.reason == "OK" and resp.complete and conn.reusable
        assert resp.content_type == "application/json; charset=utf-8"
        assert resp.headers.getall("X-A") == ["1", "2"]
        assert isinstance(resp.headers, CIMultiDictProxy)
        results.append(resp)
    a, b = results
    assert a.header_list == b.header_list
    assert a.headers is not b.headers  # one proxy per response
    assert a.headers == b.headers


async def test_head_without_content_type_and_first_of_two() -> None:
    _, conn, resp, _t = wired_conn()
    conn.data_received(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert resp.content_type == "" and resp.headers.get("Content-Type") is None
    _, conn, resp, _t = wired_conn()
    conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-type: a\r\nContent-Type: b\r\nContent-Length: 0\r\n\r\n")
    assert resp.content_type == "a" == resp.headers.get("Content-Type")


async def test_headers_before_the_head_are_empty() -> None:
    _, _, resp, _t = wired_conn()
    assert resp.header_list == () and resp.content_type == "" and len(resp.headers) == 0


async def test_a_bad_head_is_never_cached() -> None:
    good = b"HTTP/1.1 200 OK\r\nX-Good: 1\r\nContent-Length: 0\r\n\r\n"
    _, conn, resp, _t = wired_conn()
    conn.data_received(good)
    assert resp.complete and good[:-4] in http1.HEAD_CACHE  # heads are cached by their bytes
    bad = b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"
    for _ in range(2):
        _, conn, resp, t = wired_conn()
        conn.data_received(bad)
        assert isinstance(resp.error, BadResponse) and t.aborted
    assert bad[:-4] not in http1.HEAD_CACHE


async def test_head_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http1, "HEAD_CACHE_SIZE", 4)
    for i in range(10):
        _, conn, resp, _t = wired_conn()
        conn.data_received(b"HTTP/1.1 200 OK\r\nX-N: %d\r\nContent-Length: 0\r\n\r\n" % i)
        assert resp.headers["X-N"] == str(i) and resp.complete
        assert 1 <= len(http1.HEAD_CACHE) <= 4


# -- chunked fast path ----------------------------------------------------------------
def _chunked(pieces: list[bytes], *, size_fmt: bytes = b"%x", ext: bool = False) -> bytes:
    out = []
    for p in pieces:
        line = size_fmt % len(p) + (b";e=1" if ext else b"")
        out.append(line + b"\r\n" + p + b"\r\n")
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(out) + b"0\r\n\r\n"


@pytest.mark.parametrize(
    "raw",
    [
        _chunked([b"a\r\nb", b"\r\n", b"x" * 300, b"\r\n\r\n", b"y"]),  # CRLF inside the data
        _chunked([b"abc", b"d" * 26], size_fmt=b"%X"),
        _chunked([b"abc", b"d" * 26], size_fmt=b"%06x"),
        _chunked([b"abc", b"d" * 26], ext=True),
        _chunked([b"q" * 17] * 20),
    ],
)
async def test_chunked_fast_path_at_every_split(raw: bytes) -> None:
    head_end = raw.index(b"\r\n\r\n") + 4
    expect = b""
    body = raw[head_end:]
    pos = 0
    while True:  # the reference decoding
        i = body.index(b"\r\n", pos)
        size = int(body[pos:i].split(b";")[0], 16)
        if not size:
            break
        expect += body[i + 2 : i + 2 + size]
        pos = i + 2 + size + 2
    for cut in range(1, len(raw)):
        _, conn, resp, _t = wired_conn()
        conn.data_received(raw[:cut])
        conn.data_received(raw[cut:])
        assert resp.complete and resp.peek() == expect and conn.reusable


@pytest.mark.parametrize(
    "body",
    [
        b"3\r\nabcXY",  # no CRLF after the data
        b"3\r\nabc\n\n",
        b"0x3\r\nabc\r\n",  # accepted by int(..., 16): still exactly as before (a 3-byte chunk)
    ],
)
async def test_chunked_fast_path_errors_as_general_path(body: bytes) -> None:
    _, conn, resp, _t = wired_conn()
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body + b"0\r\n\r\n")
    if body.startswith(b"0x"):
        assert resp.complete and resp.peek() == b"abc"
    else:
        assert isinstance(resp.error, BadResponse) and not conn.reusable


async def test_chunks_arriving_one_per_read() -> None:
    _, conn, resp, _t = wired_conn()
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    got = []
    for piece in (b"ab", b"\r\n", b"c" * 40, b"x\r\ny"):
        conn.data_received(b"%x\r\n%s\r\n" % (len(piece), piece))
        got.append(await resp.readany())
    assert got == [b"ab", b"\r\n", b"c" * 40, b"x\r\ny"]
    conn.data_received(b"2\r\nab\r")  # incomplete: waits for the rest
    conn.data_received(b"\n0\r\n\r\n")
    assert await resp.readany() == b"ab" and resp.at_eof() and conn.reusable
    _, conn, resp, _t = wired_conn()
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    conn.data_received(b"3\r\nabcXY")  # right length, wrong end
    assert isinstance(resp.error, BadResponse) and not conn.reusable


def _random_chunked(rng: random.Random) -> bytes:
    out = []
    for _ in range(rng.randint(0, 12)):
        n = rng.choice([1, 2, 5, 16, 40, 100, 300])
        data = bytes(rng.choice(b"ab\r\n{}") for _ in range(n)) if rng.random() < 0.2 else b"x" * n
        size = rng.choice([b"%x", b"%X", b"%03x"]) % n
        if rng.random() < 0.1:
            size += rng.choice([b";e=1", b" "])
        tail = b"\r\n" if rng.random() > 0.03 else b"\n\n"
        out.append(size + b"\r\n" + data + tail)
    out.append(b"0\r\n" + (b"T: 1\r\n" if rng.random() < 0.2 else b"") + b"\r\n")
    return b"".join(out)


def _decode(body: bytes, cuts: list[int]) -> tuple[bool, bytes, bool]:
    """Feed a chunked body cut at ``cuts``: (failed, data delivered, reusable)."""
    loop = asyncio.get_running_loop()
    pool = HostPool("127.0.0.1", 1, max_idle=4, connect_timeout=1.0)
    conn = Connection(pool)
    conn.connection_made(FakeTransport())  # type: ignore[arg-type]
    resp = RawResponse(conn, loop)
    conn.start(resp, b"GET / HTTP/1.1\r\n\r\n", b"", False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    prev = 0
    for c in [*cuts, len(body)]:
        if c > prev:
            conn.data_received(body[prev:c])
        prev = c
    failed = resp.error is not None
    return failed, b"" if failed else resp.peek(), conn.reusable and resp.complete


async def test_chunked_fast_paths_agree_with_byte_by_byte_parsing() -> None:
    rng = random.Random(11)
    for _ in range(600):
        body = _random_chunked(rng)
        reference = _decode(body, list(range(1, len(body))))  # one byte per read: general path
        for cuts in ([], sorted(rng.sample(range(1, len(body)), min(3, len(body) - 1)))):
            assert _decode(body, cuts) == reference, (body, cuts)


# -- first-byte timer: one handle per connection ---------------------------------------
def _count_call_at(monkeypatch: pytest.MonkeyPatch, loop: asyncio.AbstractEventLoop) -> list[float]:
    """Record the deadline of every ``loop.call_at`` from now on (timers armed)."""
    armed: list[float] = []
    real = loop.call_at

    def call_at(when: float, callback: Any, *args: Any, **kw: Any) -> asyncio.TimerHandle:
        armed.append(when)
        return real(when, callback, *args, **kw)

    monkeypatch.setattr(loop, "call_at", call_at)
    return armed


async def test_first_byte_timer_is_armed_once_per_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    armed = _count_call_at(monkeypatch, loop)
    pool = HostPool("127.0.0.1", 1, max_idle=4, connect_timeout=1.0)
    _, conn, resp, _t = wired_conn(pool)
    n = len(armed)
    resp.set_timeout(30.0)
    assert len(armed) == n + 1  # the first deadline on a connection arms its timer
    handle = conn.timer_handle
    assert handle is not None and resp.first_byte_deadline is not None
    assert handle.when() == resp.first_byte_deadline
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    assert await resp.read() == b"{}" and resp.first_byte_deadline is None
    resp.release()
    assert pool.take_idle() is conn
    resp2 = RawResponse(conn, loop)
    conn.start(resp2, b"GET / HTTP/1.1\r\n\r\n", b"", False)
    n = len(armed)
    resp2.set_timeout(30.0)  # a later deadline: the armed handle serves it, nothing is armed
    assert conn.timer_handle is handle and len(armed) == n and not handle.cancelled()
    resp2.set_timeout(0.01)  # an earlier one: re-armed (one new timer, the old one cancelled)
    assert conn.timer_handle is not handle and len(armed) == n + 1 and handle.cancelled()
    assert conn.timer_handle is not None and conn.timer_handle.when() == resp2.first_byte_deadline
    with pytest.raises(TimeoutError):
        await resp2.read()
    assert isinstance(resp2.error, TimeoutError)
    assert conn.closed and conn.timer_handle is None


async def test_early_timer_re_arms_for_a_later_deadline() -> None:
    _, conn, resp, _t = wired_conn()
    resp.set_timeout(0.02)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    await resp.read()
    resp.release()
    resp2 = RawResponse(conn, asyncio.get_running_loop())
    conn.start(resp2, b"GET / HTTP/1.1\r\n\r\n", b"", False)
    resp2.set_timeout(0.3)
    await asyncio.sleep(0.1)  # the 0.02 s handle fired meanwhile and re-armed itself
    assert resp2.error is None and not conn.closed
    h = conn.timer_handle
    assert h is not None and h.when() == resp2.first_byte_deadline  # for the current deadline
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert await resp2.read() == b"ok"


async def test_cancel_timeout_and_idle_connection_timer_do_nothing() -> None:
    _, conn, resp, _t = wired_conn()
    resp.set_timeout(0.02)
    resp.cancel_timeout()
    assert resp.first_byte_deadline is None
    await asyncio.sleep(0.06)
    assert resp.error is None and not conn.closed
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    resp.release()
    pool2, conn2, resp2, _t2 = wired_conn()
    resp2.set_timeout(0.02)
    conn2.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    resp2.release()  # idle in its pool; the handle fires with no response
    assert pool2.idle_count == 1
    await asyncio.sleep(0.06)
    assert not conn2.closed and conn2.timer_handle is None and pool2.idle_count == 1


# -- Upstream: cached heads, header lookup (checked on the bytes written) ---------------
EMPTY_200 = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


class AnsweringTransport(FakeTransport):
    """Records what is written and answers each write with ``answer`` (next loop turn)."""

    def __init__(self, conn: Connection, answer: bytes = EMPTY_200) -> None:
        super().__init__()
        self.conn = conn
        self.answer = answer

    def write(self, data: bytes) -> None:
        super().write(data)
        asyncio.get_running_loop().call_soon(self.conn.data_received, self.answer)


def wire_upstream(up: Upstream) -> AnsweringTransport:
    """One hand-wired idle keep-alive connection in ``up``'s pool, over a transport that
    answers every request: what ``up.send`` writes lands in its ``written``."""
    conn = Connection(up.pool)
    t = AnsweringTransport(conn)
    conn.connection_made(t)  # type: ignore[arg-type]
    up.pool.adopt(conn)
    up.pool.put_idle(conn)
    return t


async def send_and_capture(
    up: Upstream,
    t: AnsweringTransport,
    method: str,
    path: str,
    body: bytes | None,
    headers: Mapping[str, str] | None = None,
    query: str = "",
) -> bytes:
    """The bytes ``up.send`` wrote for one request (the connection goes back to the pool)."""
    n = len(t.written)
    resp = await up.send(method, path, body, headers, query=query)
    await resp.read()
    resp.release()
    assert up.pool.open_count == 1 and up.pool.idle_count == 1  # the one wired connection
    return b"".join(t.written[n:])


def _head_fields(request: bytes) -> list[tuple[str, str]]:
    """The header lines of a written request head, as (lower-case name, value)."""
    head = request.split(b"\r\n\r\n", 1)[0].decode("utf-8")
    out = []
    for line in head.split("\r\n")[1:]:
        name, sep, value = line.partition(": ")
        assert sep, line
        out.append((name.lower(), value))
    return out


@pytest.mark.parametrize(
    "headers",
    [
        None,
        {},
        {"Content-Type": "a"},
        {"content-type": "a", "Content-Type": "b"},
        {"Content-Type": "b", "content-type": "a"},
        {"CONTENT-TYPE": "x", "Content-type": "y", "ACCEPT": "z", "user-agent": "u"},
        {"X-Other": "1", "Authorization": "t"},
        CIMultiDict({"content-TYPE": "c", "Accept": "d"}),
        CIMultiDictProxy(CIMultiDict({"User-Agent": "e"})),
    ],
)
async def test_forwarded_headers_match_header_get(headers: Mapping[str, str] | None) -> None:
    """The one-pass lookup of the forwarded headers sends exactly what ``header_get``
    finds for each forwarded name (Content-Type defaulting to JSON), nothing else."""
    up = Upstream("http://h:1", capacity=1)
    t = wire_upstream(up)
    try:
        want = {"host": "h:1", "content-length": "2"}
        for name in FORWARD_REQUEST_HEADERS:
            v = header_get(headers, name)
            if v is not None:
                want[name] = v
        want.setdefault("content-type", "application/json")
        for _ in range(2):  # built, then from the head cache
            fields = _head_fields(await send_and_capture(up, t, "POST", "/api/chat", b"{}", headers))
            assert dict(fields) == want and len(fields) == len(want), fields
    finally:
        await up.close()


async def test_send_writes_the_same_head_as_build_head(monkeypatch: pytest.MonkeyPatch) -> None:
    up = Upstream("http://h:1", headers={"Authorization": "Bearer x"}, capacity=1)
    t = wire_upstream(up)
    builds: list[str] = []
    real_prefix = upclient.head_prefix

    def counting_prefix(method: str, target: str, *a: Any) -> bytes:
        builds.append(target)
        return real_prefix(method, target, *a)

    monkeypatch.setattr(upclient, "head_prefix", counting_prefix)
    cases = [
        ("POST", "/api/chat", b'{"a":1}', {"Content-Type": "application/json"}, ""),
        ("POST", "/api/chat", b'{"a":12}', {"Content-Type": "application/json"}, ""),
        ("POST", "/api/chat", b"", None, ""),
        ("GET", "/api/tags", None, None, ""),
        ("HEAD", "/api/blobs/sha256:1", b"", {"accept": "x"}, ""),
        ("GET", "/a b", None, None, "q=1 2"),
        ("DELETE", "/api/delete", b"{}", {"User-Agent": "ua", "Accept": "*/*"}, ""),
    ]
    distinct = 6  # the first two differ only in their body: one cached head
    sent: list[bytes] = []
    try:
        for rnd in range(2):  # second round: every head comes from the cache
            for method, path, body, headers, query in cases:
                sent.append(await send_and_capture(up, t, method, path, body, headers, query))
            assert len(builds) == distinct and up.cached_heads == distinct, rnd
    finally:
        await up.close()
    from urllib.parse import quote

    host_line = up.pool.host_line()
    assert host_line == b"Host: h:1\r\n"
    fixed = b"Authorization: Bearer x\r\n"  # the host's configured headers, on every request
    expected = []
    for method, path, body, headers, query in cases:
        p = quote(path, safe="/:@!$&'()*+,;=-._~%") if " " in path else path
        q = quote(query, safe="/:@!$&'()*+,;=-._~%?") if " " in query else query
        target = p + "?" + q if q else p
        b = body or b""
        expected.append(build_head(method, target, host_line, fixed, up.request_headers(headers), len(b)) + b)
    assert sent == expected * 2
    assert b"GET /a%20b?q=1%202 HTTP/1.1\r\n" in sent[5]


async def test_send_head_cache_is_bounded_and_bad_headers_still_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upclient, "HEAD_CACHE_SIZE", 3)
    up = Upstream("http://h:1", capacity=1)
    t = wire_upstream(up)
    try:
        for i in range(10):
            req = await send_and_capture(up, t, "GET", f"/p{i}", None)
            assert req.startswith(b"GET /p%d HTTP/1.1\r\n" % i)
            assert 1 <= up.cached_heads <= 3
        n = len(t.written)
        for _ in range(2):
            with pytest.raises(ValueError):
                await up.send("POST", "/x", b"{}", {"Content-Type": "a\r\nEvil: 1"})
        assert len(t.written) == n  # nothing was sent for them
        assert (await send_and_capture(up, t, "GET", "/ok", None)).startswith(b"GET /ok HTTP/1.1\r\n")
    finally:
        await up.close()


# -- final metrics, request parsing ------------------------------------------------------
# the reference: every "name":<digits> of the tail, the last one of each name wins
_RE_METRICS = re.compile(rb'"(load_duration|eval_count|eval_duration)":(\d+)')


def _metrics_by_regex(tail: bytes) -> tuple[int | None, int | None, int | None]:
    m = {k: int(v) for k, v in _RE_METRICS.findall(tail)}
    return m.get(b"load_duration"), m.get(b"eval_count"), m.get(b"eval_duration")


def test_final_metrics_equal_a_full_scan() -> None:
    final = (
        b'{"done":true,"total_duration":5,"load_duration":24556,"prompt_eval_count":5,'
        b'"prompt_eval_duration":10000,"eval_count":16,"eval_duration":2474}\n'
    )
    assert final_metrics(final) == (24556, 16, 2474)
    assert final_metrics(b"") == (None, None, None)
    assert final_metrics(b'"load_duration":x,"eval_count":1') == (None, 1, None)
    assert final_metrics(b'"eval_count":7,"load_duration":3,"eval_duration":9') == (3, 7, 9)
    parts = [b'"load_duration":', b'"eval_count":', b'"eval_duration":', b"1", b"23", b"x", b'"', b",", b"\\"]
    rng = random.Random(7)
    for _ in range(5000):
        tail = b"".join(rng.choice(parts) for _ in range(rng.randint(0, 12)))
        assert final_metrics(tail) == _metrics_by_regex(tail), tail


@pytest.fixture
async def d() -> Dispatcher:
    async with Dispatcher(["http://127.0.0.1:9"], connect_timeout=0.2, refresh_interval=600) as disp:
        yield disp  # type: ignore[misc]


@pytest.mark.parametrize(
    "body,status,needle",
    [
        (b' {"model":"m","stream":1}', 400, b"Go struct field ChatRequest.stream of type bool"),
        (b'{"model":"m","messages":{}}\n', 400, b"ChatRequest.messages of type []api.Message"),
        (b'{"model":"m","options":[]}', 400, b"ChatRequest.options of type map[string]interface"),
        (b'{"model":true}', 400, b"ChatRequest.model of type string"),
        (b"\xef\xbb\xbf{}", 400, b"invalid character"),
        (b"[1]", 400, b"cannot unmarshal array into Go value of type api.ChatRequest"),
        (b"   ", 400, b"missing request body"),
        (b'{"model":"m"', 400, b"unexpected EOF"),
        (b"\xff", 400, b"not UTF-8"),
    ],
)
async def test_parse_errors_unchanged(d: Dispatcher, body: bytes, status: int, needle: bytes) -> None:
    r = await d.handle("POST", "/api/chat", body)
    assert r.status == status and r.body is not None and needle in r.body, r.body


def test_parse_accepts_surrounding_whitespace_and_trailing_values() -> None:
    route = lookup("POST", "/api/chat")
    assert route is not None
    for body in (b'{"model":"m"}', b' {"model":"m"} ', b'\n{"model":"m"}\n', b'{"model":"m"} {"x":1}'):
        assert parse_body(route, body) == {"model": "m"}


# -- response headers: the forwarder's per-head-tuple cache, through Dispatcher.handle --
class StubResponse:
    """What the forwarder reads of an upstream answer (``Upstream.send``'s result)."""

    def __init__(self, status: int, pairs: tuple[tuple[str, str], ...], body: bytes = b"{}") -> None:
        self.status = status
        self.reason = ""
        self.header_list = pairs
        self.headers = CIMultiDictProxy(CIMultiDict(pairs))
        self.content_type = self.headers.get("Content-Type", "")
        self.body = body
        self.ended = False

    async def read(self) -> bytes:
        return self.body

    def release(self) -> None:
        self.ended = True

    def close(self) -> None:
        self.ended = True


async def test_resp_headers_cached_copy_is_independent(d: Dispatcher) -> None:
    """The end-to-end headers are filtered once per upstream header tuple and copied per
    answer: mutating one answer's headers, or another answer's per-call values (cold,
    queue, attempts, cache), never shows in the next one."""
    h = d.hosts[0]
    up = d.upstream(h)

    async def get_json(path: str, limit: float) -> Any:  # a refresh sees the same fleet
        if path == "/api/tags":
            return {"models": [{"name": "m:latest"}, {"name": "e:latest"}]}
        if path == "/api/ps":
            return {"models": [{"name": "m:latest"}]}
        return {"version": "0.0.0"}

    script: list[StubResponse] = []

    async def send(method: str, path: str, body: bytes | None, headers: Any = None, **kw: Any) -> StubResponse:
        return script.pop(0)

    up.get_json = get_json  # type: ignore[method-assign]
    up.send = send  # type: ignore[method-assign]
    d.store.publish(
        HostView(
            0, h.name, h.url, healthy=True, present=frozenset({"m:latest", "e:latest"}), loaded=frozenset({"m:latest"})
        )
    )
    h.down = h.unreachable = False
    assert d.scheduler is not None
    d.scheduler.reconcile(h, frozenset({"m:latest"}), d.clock())  # what a refresh would tell it
    pairs = (
        ("Content-Type", "application/json"),
        ("Date", "x"),
        ("X-Host-Id", "1"),
        ("connection", "close"),
        ("Server", "s"),
        ("Content-Length", "2"),
    )
    kept = {"Content-Type": "application/json", "X-Host-Id": "1"}  # hop-by-hop and Date/Server dropped
    chat = b'{"model":"m","stream":false}'

    def expect(cold: str, queue: str, attempts: str, cache: str | None = None) -> dict[str, str]:
        out = {**kept, HEADER_HOST: h.name, HEADER_COLD: cold, HEADER_QUEUE_MS: queue, HEADER_ATTEMPTS: attempts}
        if cache is not None:
            out[HEADER_CACHE] = cache
        return out

    # 1. warm model, one attempt, no wait, not a cacheable route
    script.append(StubResponse(200, pairs))
    a = await d.handle("POST", "/api/chat", chat)
    assert a.status == 200 and a.body == b"{}"
    assert a.headers == expect("0", "0", "1")
    a.headers["X-Mutated"] = "1"
    a.headers["Content-Type"] = "text/mutated"

    # 2. the same header tuple: a cold model (the scheduler's load is answered 30 ms
    # later, the request waits for it), a cacheable route
    real_send = send

    async def slow_load(method: str, path: str, body: bytes | None, headers: Any = None, **kw: Any) -> StubResponse:
        await asyncio.sleep(0.03)
        return StubResponse(200, (("Content-Type", "application/json"),), b'{"done":true}')

    loads: list[bytes | None] = []

    async def send2(method: str, path: str, body: bytes | None, headers: Any = None, **kw: Any) -> StubResponse:
        if body is not None and b'"keep_alive":-1' in body:
            loads.append(body)
            return await slow_load(method, path, body)
        return await real_send(method, path, body, headers, **kw)

    up.send = send2  # type: ignore[method-assign]
    script.append(StubResponse(200, pairs))
    b = await d.handle("POST", "/api/embed", b'{"model":"e","input":"x"}')
    assert b.status == 200 and b.body == b"{}"
    assert len(loads) == 1
    queue_ms = b.headers.pop(HEADER_QUEUE_MS)
    assert queue_ms.isdigit() and 25 <= int(queue_ms) < 5000, queue_ms  # whole milliseconds
    assert b.headers == {k: v for k, v in expect("1", "0", "1", "miss").items() if k != HEADER_QUEUE_MS}
    b.headers["X-Mutated-Too"] = "1"
    assert h.in_flight == 0

    # 3. the same tuple again: a busy first attempt, answered on the second
    script.extend([StubResponse(503, pairs, b'{"error":"busy"}'), StubResponse(200, pairs)])
    c = await d.handle("POST", "/api/chat", chat)
    assert c.status == 200 and c.headers == expect("0", "0", "2")

    # 4. an equal tuple that is another object, then a different head: no cross-talk
    script.append(StubResponse(200, tuple(list(pairs))))
    assert (await d.handle("POST", "/api/chat", chat)).headers == expect("0", "0", "1")
    other = (("Content-Type", "application/json"), ("X-Host-Id", "2"), ("Keep-Alive", "timeout=5"))
    script.append(StubResponse(200, other))
    e = await d.handle("POST", "/api/chat", chat)
    assert e.headers == {**expect("0", "0", "1"), "X-Host-Id": "2"}
    assert not script


# -- admission: release with nobody waiting --------------------------------------------
async def test_release_without_waiters_then_a_waiter_still_gets_the_slot() -> None:
    hs = [HostState(index=i, config=HostConfig(url=f"http://h:{i + 1}"), name=f"h{i}", url="", capacity=1) for i in range(2)]
    for h in hs:
        h.down = h.unreachable = False
    res = Residency(2)
    ra, rb = (res.add(i, "m", LOADED, 0.0) for i in range(2))
    adm = Admission(hs, res, queue_size=4)
    assert adm.try_take(ra) and adm.try_take(rb)
    t = asyncio.create_task(adm.wait("m", 5, 1.0))
    await asyncio.sleep(0)
    adm.release(rb, 2.0)  # grants t
    assert (await t).resident is rb
    assert adm.queued("m") == 0 and "m" not in adm.queues  # no stale entry left behind
    adm.release(ra, 3.0)  # nobody waits: the slot just frees
    assert ra.in_flight == 0 and hs[0].in_flight == 0 and adm.try_take(ra)
    t2 = asyncio.create_task(adm.wait("m", 5, 4.0))
    await asyncio.sleep(0)
    adm.release(ra, 5.0)
    assert (await t2).resident is ra
    assert adm.waiting == 0


async def test_dispatcher_end_to_end_uses_the_fast_paths(d: Dispatcher) -> None:
    """One host answered by a fake transport: the 200 and the accounting are as usual."""
    h = d.hosts[0]
    d.store.publish(
        HostView(0, h.name, h.url, healthy=True, present=frozenset({"m:latest"}), loaded=frozenset({"m:latest"}))
    )
    h.down = h.unreachable = False
    assert d.scheduler is not None
    d.scheduler.reconcile(h, frozenset({"m:latest"}), d.clock())  # resident: no load request
    reply = b'{"done":true,"load_duration":1,"eval_count":5,"eval_duration":1000000000}'
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: x\r\nContent-Length: %d\r\n\r\n" % len(reply)
    loop = asyncio.get_running_loop()
    pool = d.upstream(h).pool

    class T(FakeTransport):
        def __init__(self, conn: Connection) -> None:
            super().__init__()
            self.conn = conn

        def write(self, data: bytes) -> None:
            super().write(data)
            loop.call_soon(self.conn.data_received, head + reply)

    c = Connection(pool)
    t = T(c)
    c.connection_made(t)  # type: ignore[arg-type]
    pool.adopt(c)
    pool.put_idle(c)
    handle = None
    for i in range(3):
        r = await d.handle("POST", "/api/chat", b'{"model":"m","stream":false}', {"Content-Type": "application/json"})
        assert r.status == 200 and r.body == reply
        assert r.headers["Content-Type"] == "application/json" and "Date" not in r.headers
        assert r.headers["X-Ollamamax-Host"] == h.name
        if handle is None:
            handle = c.timer_handle
            assert handle is not None
        assert c.timer_handle is handle, i  # one timer for the connection, never re-armed
    hists = d.metrics_snapshot()["histograms"]
    assert hists["ttfb"][(h.name, "m:latest")].count == 3
    assert hists["tokens_per_s"][(h.name, "m:latest")].count == 3
    assert d.accounting.requests[("/api/chat", "m:latest", h.name, 200)] == 3
    assert d.metrics_snapshot()["counters"]["requests"][("/api/chat", "m:latest", h.name, 200)] == 3
    assert pool.open_count == 1 and pool.idle_count == 1 and not c.closed
    assert len(t.written) == 3
    for w in t.written:
        assert re.match(rb"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1:9\r\n", w)


async def test_passthrough_tail_is_the_last_bytes() -> None:
    from ollamamax.upstream.streams import TAIL_BYTES, PassThrough

    rng = random.Random(5)
    _, conn, resp, _t = wired_conn()
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n")
    st = PassThrough(resp, b"first", idle=1.0, sse=False, label="h", on_finish=lambda s, ok, e: None)
    seen = [await st.__anext__()]
    for _ in range(300):
        n = rng.choice([1, 7, 100, 1000, TAIL_BYTES - 1, TAIL_BYTES, 5000])
        piece = bytes(rng.randrange(256) for _ in range(n))
        conn.data_received(b"%x\r\n%s\r\n" % (n, piece))
        seen.append(await st.__anext__())
        if rng.random() < 0.3:
            assert st.tail == b"".join(seen)[-TAIL_BYTES:]
    assert st.tail == b"".join(seen)[-TAIL_BYTES:]
    await st.aclose()


async def test_a_refused_waiter_that_waits_again_is_not_orphaned_by_the_next_one_leaving() -> None:
    """Bug caught (seen in ``ollamamax demo`` about one run in five): a load failed, its
    waiters were refused and each waited again; the first to wait again started a new
    queue for the model, and the next refused waiter, leaving the old emptied queue,
    dropped the model's *current* queue from the table.  The waiters in it were never
    handed a slot and sat out their whole deadline beside an idle loaded copy (503)."""
    hs = [HostState(index=0, config=HostConfig(url="http://h:1"), name="h0", url="", capacity=4)]
    hs[0].down = hs[0].unreachable = False
    res = Residency(1)
    adm = Admission(hs, res, queue_size=8)
    got: list[object] = []

    async def retrying() -> None:
        try:
            await adm.wait("m", 5.0, 0.0)
        except RuntimeError:
            got.append((await adm.wait("m", 1.0, 0.0)).resident)  # waits again at once

    async def giving_up() -> None:
        with contextlib.suppress(RuntimeError):
            await adm.wait("m", 5.0, 0.0)

    a = asyncio.create_task(retrying())
    b = asyncio.create_task(giving_up())
    await asyncio.sleep(0)
    assert adm.refuse("m", lambda w: RuntimeError("load failed")) == 2
    await asyncio.sleep(0.01)  # a waits again, then b leaves the old queue
    assert b.done() and not a.done()
    r = res.add(0, "m", LOADED, 0.0)
    adm.grant("m")  # the copy is loaded: the waiting request must get its slot
    await asyncio.wait_for(a, 2.0)
    assert got == [r]
