"""The dispatcher's hot-path shortcuts behave exactly like the general code they skip.

Covers: the response-head cache and lazy headers, the chunked fast path, the one
first-byte timer per connection, the cached request heads and the one-pass header
lookup of ``Upstream``, the final-metrics scan, the JSON fast path of the request parser,
the end-to-end header cache of the response builder and admission's release shortcut.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Mapping

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from test_dispatch_upstream_raw import FakeTransport, _conn

from ollamamax.dispatch import Dispatcher, _rawhttp
from ollamamax.dispatch._rawhttp import BadResponse, HostPool, RawResponse, _Conn
from ollamamax.dispatch._types import DispatcherConfig, HostConfig
from ollamamax.dispatch.admission import Admission
from ollamamax.dispatch.core import _RE_METRICS, _final_metrics
from ollamamax.dispatch.hosts import HostState, HostView
from ollamamax.dispatch.upstream import Upstream, header_get

pytestmark = pytest.mark.timeout(30)


# -- response heads ------------------------------------------------------------------
HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nX-A: 1\r\n"
    b"x-a: 2\r\nContent-Length: 2\r\nDate: Sat, 28 Nov 2026 04:13:27 GMT\r\n\r\n"
)


async def test_same_head_twice_gives_equal_results_and_independent_headers() -> None:
    results = []
    for _ in range(2):
        _, conn, resp, _t = _conn()
        conn.data_received(HEAD + b"{}")
        assert resp.status == 200 and resp.reason == "OK" and resp._eof and conn.reusable
        assert resp.content_type == "application/json; charset=utf-8"
        assert resp.headers.getall("X-A") == ["1", "2"]
        assert isinstance(resp.headers, CIMultiDictProxy)
        results.append(resp)
    a, b = results
    assert a.header_list == b.header_list
    assert a.headers is not b.headers  # one proxy per response
    assert a.headers == b.headers


async def test_head_without_content_type_and_first_of_two() -> None:
    _, conn, resp, _t = _conn()
    conn.data_received(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert resp.content_type == "" and resp.headers.get("Content-Type") is None
    _, conn, resp, _t = _conn()
    conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-type: a\r\nContent-Type: b\r\nContent-Length: 0\r\n\r\n")
    assert resp.content_type == "a" == resp.headers.get("Content-Type")


async def test_headers_before_the_head_are_empty() -> None:
    _, _, resp, _t = _conn()
    assert resp.header_list == () and resp.content_type == "" and len(resp.headers) == 0


async def test_a_bad_head_is_never_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"
    for _ in range(2):
        _, conn, resp, t = _conn()
        conn.data_received(bad)
        assert isinstance(resp._exc, BadResponse) and t.aborted
    assert bad[:-4] not in _rawhttp._HEADS


async def test_head_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_rawhttp, "HEAD_CACHE_SIZE", 4)
    for i in range(10):
        _, conn, resp, _t = _conn()
        conn.data_received(b"HTTP/1.1 200 OK\r\nX-N: %d\r\nContent-Length: 0\r\n\r\n" % i)
        assert resp.headers["X-N"] == str(i) and resp._eof
        assert len(_rawhttp._HEADS) <= 4


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
        _, conn, resp, _t = _conn()
        conn.data_received(raw[:cut])
        conn.data_received(raw[cut:])
        assert resp._eof and b"".join(resp._chunks) == expect and conn.reusable


@pytest.mark.parametrize(
    "body",
    [
        b"3\r\nabcXY",  # no CRLF after the data
        b"3\r\nabc\n\n",
        b"0x3\r\nabc\r\n",  # accepted by int(..., 16): still exactly as before (a 3-byte chunk)
    ],
)
async def test_chunked_fast_path_errors_as_general_path(body: bytes) -> None:
    _, conn, resp, _t = _conn()
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body + b"0\r\n\r\n")
    if body.startswith(b"0x"):
        assert resp._eof and b"".join(resp._chunks) == b"abc"
    else:
        assert isinstance(resp._exc, BadResponse) and not conn.reusable


async def test_chunks_arriving_one_per_read() -> None:
    _, conn, resp, _t = _conn()
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    got = []
    for piece in (b"ab", b"\r\n", b"c" * 40, b"x\r\ny"):
        conn.data_received(b"%x\r\n%s\r\n" % (len(piece), piece))
        got.append(await resp.readany())
    assert got == [b"ab", b"\r\n", b"c" * 40, b"x\r\ny"]
    conn.data_received(b"2\r\nab\r")  # incomplete: waits for the rest
    conn.data_received(b"\n0\r\n\r\n")
    assert await resp.readany() == b"ab" and resp.at_eof() and conn.reusable
    _, conn, resp, _t = _conn()
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    conn.data_received(b"3\r\nabcXY")  # right length, wrong end
    assert isinstance(resp._exc, BadResponse) and not conn.reusable


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
    conn = _Conn(pool)
    conn.connection_made(FakeTransport())  # type: ignore[arg-type]
    resp = RawResponse(conn, loop)
    conn.start(resp, b"GET / HTTP/1.1\r\n\r\n", b"", False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    prev = 0
    for c in [*cuts, len(body)]:
        if c > prev:
            conn.data_received(body[prev:c])
        prev = c
    failed = resp._exc is not None
    return failed, b"" if failed else b"".join(resp._chunks), conn.reusable and resp._eof


async def test_chunked_fast_paths_agree_with_byte_by_byte_parsing() -> None:
    rng = random.Random(11)
    for _ in range(600):
        body = _random_chunked(rng)
        reference = _decode(body, list(range(1, len(body))))  # one byte per read: general path
        for cuts in ([], sorted(rng.sample(range(1, len(body)), min(3, len(body) - 1)))):
            assert _decode(body, cuts) == reference, (body, cuts)


# -- first-byte timer: one handle per connection ---------------------------------------
async def test_first_byte_timer_is_armed_once_per_connection() -> None:
    pool = HostPool("127.0.0.1", 1, max_idle=4, connect_timeout=1.0)
    _, conn, resp, _t = _conn(pool)
    resp.set_timeout(30.0)
    handle = conn._timer_h
    assert handle is not None and resp._timer is not None
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    assert await resp.read() == b"{}" and resp._timer is None
    resp.release()
    assert pool._get_idle() is conn
    resp2 = RawResponse(conn, asyncio.get_running_loop())
    conn.start(resp2, b"GET / HTTP/1.1\r\n\r\n", b"", False)
    resp2.set_timeout(30.0)  # a later deadline: the armed handle serves it
    assert conn._timer_h is handle
    resp2.set_timeout(0.01)  # an earlier one: re-armed
    assert conn._timer_h is not handle
    with pytest.raises(TimeoutError):
        await resp2.read()
    assert conn.closed and conn._timer_h is None


async def test_early_timer_re_arms_for_a_later_deadline() -> None:
    _, conn, resp, _t = _conn()
    resp.set_timeout(0.02)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    await resp.read()
    resp.release()
    resp2 = RawResponse(conn, asyncio.get_running_loop())
    conn.start(resp2, b"GET / HTTP/1.1\r\n\r\n", b"", False)
    resp2.set_timeout(0.3)
    await asyncio.sleep(0.1)  # the 0.02 s handle fired meanwhile and re-armed itself
    assert resp2._exc is None and conn._timer_h is not None
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert await resp2.read() == b"ok"


async def test_cancel_timeout_and_idle_connection_timer_do_nothing() -> None:
    _, conn, resp, _t = _conn()
    resp.set_timeout(0.02)
    resp.cancel_timeout()
    await asyncio.sleep(0.06)
    assert resp._exc is None and not conn.closed
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    resp.release()
    _, conn2, resp2, _t2 = _conn()
    resp2.set_timeout(0.02)
    conn2.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    resp2.release()  # idle in its pool; the handle fires with no response
    await asyncio.sleep(0.06)
    assert not conn2.closed and conn2._timer_h is None


# -- Upstream: cached heads, header lookup ---------------------------------------------
def _values_by_header_get(up: Upstream, headers: Mapping[str, str] | None) -> tuple[str | None, ...]:
    return tuple(header_get(headers, n) for n in up._forward)


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
def test_forward_values_match_header_get(headers: Mapping[str, str] | None) -> None:
    up = Upstream(HostConfig(url="http://h:1"), 1, DispatcherConfig())
    assert up._forward_values(headers) == _values_by_header_get(up, headers)


async def test_send_writes_the_same_head_as_build_head(monkeypatch: pytest.MonkeyPatch) -> None:
    up = Upstream(HostConfig(url="http://h:1", headers={"Authorization": "Bearer x"}), 1, DispatcherConfig())
    sent: list[bytes] = []

    async def fake_request(head: bytes, body: bytes, **kw: object) -> None:
        sent.append(head + body)

    monkeypatch.setattr(up, "pool", type("P", (), {"request": staticmethod(fake_request)})())
    cases = [
        ("POST", "/api/chat", b'{"a":1}', {"Content-Type": "application/json"}, ""),
        ("POST", "/api/chat", b'{"a":12}', {"Content-Type": "application/json"}, ""),
        ("POST", "/api/chat", b"", None, ""),
        ("GET", "/api/tags", None, None, ""),
        ("HEAD", "/api/blobs/sha256:1", b"", {"accept": "x"}, ""),
        ("GET", "/a b", None, None, "q=1 2"),
        ("DELETE", "/api/delete", b"{}", {"User-Agent": "ua", "Accept": "*/*"}, ""),
    ]
    for _ in range(2):  # second round: every head comes from the cache
        for method, path, body, headers, query in cases:
            await up.send(method, path, body, headers, query=query)
    from urllib.parse import quote

    from ollamamax.dispatch._rawhttp import build_head

    expected = []
    for method, path, body, headers, query in cases:
        p = quote(path, safe="/:@!$&'()*+,;=-._~%") if " " in path else path
        q = quote(query, safe="/:@!$&'()*+,;=-._~%?") if " " in query else query
        target = p + "?" + q if q else p
        b = body or b""
        expected.append(
            build_head(method, target, up._host_line, up._fixed, up.request_headers(headers), len(b)) + b
        )
    assert sent == expected * 2
    assert b"GET /a%20b?q=1%202 HTTP/1.1\r\n" in sent[5]


async def test_send_head_cache_is_bounded_and_bad_headers_still_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    from ollamamax.dispatch import upstream as upmod

    monkeypatch.setattr(upmod, "HEAD_CACHE_SIZE", 3)
    up = Upstream(HostConfig(url="http://h:1"), 1, DispatcherConfig())

    async def fake_request(head: bytes, body: bytes, **kw: object) -> None:
        return None

    monkeypatch.setattr(up, "pool", type("P", (), {"request": staticmethod(fake_request)})())
    for i in range(10):
        await up.send("GET", f"/p{i}", None)
        assert len(up._heads) <= 3
    for _ in range(2):
        with pytest.raises(ValueError):
            await up.send("POST", "/x", b"{}", {"Content-Type": "a\r\nEvil: 1"})


# -- core: final metrics, request parsing, response headers ------------------------------
def _metrics_by_regex(tail: bytes) -> tuple[int | None, int | None, int | None]:
    m = {k: int(v) for k, v in _RE_METRICS.findall(tail)}
    return m.get(b"load_duration"), m.get(b"eval_count"), m.get(b"eval_duration")


def test_final_metrics_equal_a_full_scan() -> None:
    final = (
        b'{"done":true,"total_duration":5,"load_duration":24556,"prompt_eval_count":5,'
        b'"prompt_eval_duration":10000,"eval_count":16,"eval_duration":2474}\n'
    )
    assert _final_metrics(final) == (24556, 16, 2474)
    assert _final_metrics(b"") == (None, None, None)
    assert _final_metrics(b'"load_duration":x,"eval_count":1') == (None, 1, None)
    assert _final_metrics(b'"eval_count":7,"load_duration":3,"eval_duration":9') == (3, 7, 9)
    parts = [b'"load_duration":', b'"eval_count":', b'"eval_duration":', b"1", b"23", b"x", b'"', b",", b"\\"]
    rng = random.Random(7)
    for _ in range(5000):
        tail = b"".join(rng.choice(parts) for _ in range(rng.randint(0, 12)))
        assert _final_metrics(tail) == _metrics_by_regex(tail), tail


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


async def test_parse_accepts_surrounding_whitespace_and_trailing_values(d: Dispatcher) -> None:
    route = __import__("ollamamax.dispatch.routes", fromlist=["lookup"]).lookup("POST", "/api/chat")
    for body in (b'{"model":"m"}', b' {"model":"m"} ', b'\n{"model":"m"}\n', b'{"model":"m"} {"x":1}'):
        assert d._parse(route, "/api/chat", body) == {"model": "m"}


class _Resp:
    def __init__(self, pairs: tuple[tuple[str, str], ...]) -> None:
        self.header_list = pairs
        self.headers = CIMultiDictProxy(CIMultiDict(pairs))


def test_resp_headers_cached_copy_is_independent(d: Dispatcher) -> None:
    pairs = (("Content-Type", "application/json"), ("Date", "x"), ("X-Host-Id", "1"), ("connection", "close"))
    h = HostState(index=0, config=HostConfig(url="http://h:1"), name="h", url="http://h:1", capacity=1)
    a = d._resp_headers(_Resp(pairs), h, False, 0.0, 1, None)  # type: ignore[arg-type]
    a["X-Mutated"] = "1"
    b = d._resp_headers(_Resp(pairs), h, True, 0.0015, 2, "miss")  # type: ignore[arg-type]
    assert "X-Mutated" not in b and "Date" not in b and "connection" not in b
    assert b["Content-Type"] == "application/json" and b["X-Host-Id"] == "1"
    assert (b["X-Ollamamax-Cold-Load"], b["X-Ollamamax-Queue-Ms"], b["X-Ollamamax-Attempts"]) == ("1", "2", "2")
    assert b["X-Ollamamax-Cache"] == "miss"

    class Stub:  # a response object without the fast attribute
        headers = CIMultiDict(pairs)

    c = d._resp_headers(Stub(), h, False, 0.0, 1, None)  # type: ignore[arg-type]
    assert c == {k: v for k, v in a.items() if k != "X-Mutated"}


# -- admission: release with nobody waiting --------------------------------------------
async def test_release_without_waiters_then_a_waiter_still_gets_the_slot() -> None:
    hs = [HostState(index=i, config=HostConfig(url=f"http://h:{i + 1}"), name=f"h{i}", url="", capacity=1) for i in range(2)]
    for h in hs:
        h.down = False
    a, b = hs
    adm = Admission(hs, queue_size=4)
    assert adm.try_acquire(a) and adm.try_acquire(b)
    t = asyncio.create_task(adm.wait([a, b], 5))
    await asyncio.sleep(0)
    adm.release(b)  # grants t; a stale entry stays in a's ring
    assert await t is b
    assert a.queued == 0 and a.waiters.qsize() == 1
    adm.release(a)  # nobody live waits for a: the slot just frees
    assert a.in_flight == 0 and adm.try_acquire(a)
    t2 = asyncio.create_task(adm.wait([a], 5))
    await asyncio.sleep(0)
    adm.release(a)  # the stale entry is skipped, t2 gets it
    assert await t2 is a
    assert a.waiters.qsize() == 0


async def test_dispatcher_end_to_end_uses_the_fast_paths(d: Dispatcher, monkeypatch: pytest.MonkeyPatch) -> None:
    """One host answered by a fake transport: the 200 and the accounting are as usual."""
    h = d.hosts[0]
    d._set_view(
        HostView(0, h.name, h.url, healthy=True, present=frozenset({"m:latest"}), loaded=frozenset({"m:latest"}))
    )
    h.down = False
    reply = b'{"done":true,"load_duration":1,"eval_count":5,"eval_duration":1000000000}'
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: x\r\nContent-Length: %d\r\n\r\n" % len(reply)
    loop = asyncio.get_running_loop()
    assert h.upstream is not None
    pool = h.upstream.pool

    class T(FakeTransport):
        def __init__(self, conn: _Conn) -> None:
            super().__init__()
            self.conn = conn

        def write(self, data: bytes) -> None:
            super().write(data)
            loop.call_soon(self.conn.data_received, head + reply)

    c = _Conn(pool)
    c.connection_made(T(c))  # type: ignore[arg-type]
    pool._all.add(c)
    pool._put(c)
    for i in range(3):
        r = await d.handle("POST", "/api/chat", b'{"model":"m","stream":false}', {"Content-Type": "application/json"})
        assert r.status == 200 and r.body == reply
        assert r.headers["Content-Type"] == "application/json" and "Date" not in r.headers
        assert r.headers["X-Ollamamax-Host"] == h.name
    tm = d._hist[(h.name, "m:latest")]
    assert tm.ttfb.count == 3 and tm.tokens_per_s.count == 3
    assert d.counters["requests"][("/api/chat", "m:latest", h.name, 200)] == 3
    assert pool.open_count == 1 and c._timer_h is not None  # one timer for the connection
    assert re.match(rb"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1:9\r\n", c.transport.written[0])  # type: ignore[union-attr]


@pytest.mark.parametrize("strategy", ["least-loaded", "p2c", "round-robin", "latency", "affinity"])
async def test_select_one_candidate_shortcut_equals_general_path(
    strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ollamamax.dispatch import core

    async with Dispatcher(["http://127.0.0.1:9"], strategy=strategy, connect_timeout=0.2, refresh_interval=600) as d:
        h = d.hosts[0]
        h.down = False
        for loaded in (frozenset(), frozenset({"m:latest"})):
            d._set_view(HostView(0, h.name, h.url, healthy=True, present=frozenset({"m:latest"}), loaded=loaded))
            h.warm.clear()
            req = core._Req(core.lookup("POST", "/api/chat"), "POST", "/api/chat", b"{}", None, "")  # type: ignore[arg-type]
            req.model = "m:latest"
            req.pick = d._make_pick(req)
            results = []
            for shortcut in (True, False):
                if not shortcut:
                    monkeypatch.setattr(core, "_PLAIN_ORDER", frozenset())
                h.in_flight = 0
                got, wait_on, widen = d._select([h], req)
                h.in_flight = h.capacity  # full: nothing to take now
                full = d._select([h], req)
                results.append((got, list(wait_on), widen, full[0], list(full[1]), full[2]))
                monkeypatch.undo()
            assert results[0] == results[1]
            assert results[0][0] is h and results[0][3] is None and results[0][4] == [h]
        h.in_flight = 0


async def test_passthrough_tail_is_the_last_bytes() -> None:
    from ollamamax.dispatch.upstream import TAIL_BYTES, PassThrough

    rng = random.Random(5)
    _, conn, resp, _t = _conn()
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
