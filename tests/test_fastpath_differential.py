"""Differential test: for any request head, the fast path answers exactly as aiohttp does.

Hypothesis builds raw HTTP requests from a grammar that mixes well-formed and hostile parts
(odd methods and versions, %-escapes, dot segments, fragments, control bytes, spaces and tabs
around values, folded lines, duplicate, case-variant or signed Content-Length, a missing or
repeated Host, Transfer-Encoding, Expect, Connection tokens, header names with separators,
header lines past aiohttp's length limit, bare line feeds).  Each request goes to two
gateways over the same dispatcher double: one behind ``fastpath.start_server`` (what ``ollamamax serve`` runs)
and one on aiohttp alone.  The status code must match, and when the request reaches the
dispatcher, so must everything the dispatcher sees (method, path, query, body, headers).
A request the fast path cannot answer exactly like aiohttp must be handed over, so any
difference here is a bug in the fast path's acceptance rules.
"""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_gateway_common import serve_app

from ollamamax import create_app
from ollamamax.wire.response import DispatchResponse

pytestmark = pytest.mark.timeout(300)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, bytes, tuple[tuple[str, str], ...]]] = []

    async def handle(self, method, path, body, headers, *, query="", tenant=None):
        # names compared case-insensitively (aiohttp respells the ones it knows, "HOST" as
        # "Host"; HTTP does not care)
        self.calls.append((method, path, query, body, tuple((k.lower(), v) for k, v in headers.items())))
        return DispatchResponse(200, {"Content-Type": "application/json"}, body=b'{"ok":true}')


class Pair:
    """Two gateways (fast path, aiohttp alone) on a background event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.rec = {"fast": Recorder(), "aiohttp": Recorder()}
        self.urls: dict[str, tuple[str, int]] = {}
        self._closers: list = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Pair:
        self._thread.start()

        async def start() -> None:
            for front, rec in self.rec.items():
                close, url = await serve_app(create_app(rec, max_body_size=4096), front,
                                             access_log=None)
                self._closers.append(close)
                host, port = url.removeprefix("http://").split(":")
                self.urls[front] = (host, int(port))

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            for close in self._closers:
                await close()
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:  # e.g. aiohttp handlers of connections a test left open
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


def _exchange(addr: tuple[str, int], raw: bytes) -> int | None:
    """Send ``raw``; the status code of the first response (None: closed without one)."""
    with socket.create_connection(addr, timeout=5) as sock:  # generous: a loaded CI machine
        sock.sendall(raw)
        data = b""
        while b"\r\n" not in data:
            try:
                part = sock.recv(65536)
            except TimeoutError:
                return -1  # no answer at all (waiting for a body that never comes)
            if not part:
                return None
            data += part
        return int(data.split(b" ", 2)[1])


_SAFE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_~"
segment = st.one_of(
    st.text(_SAFE, min_size=1, max_size=6),
    st.text(_SAFE, min_size=1, max_size=6),
    st.sampled_from([".", "..", "%41", "%2F", "%zz", "a b", "a+b", "a;b", "é", "\x00", ":", "@"]),
)
path = st.lists(segment, min_size=0, max_size=4).map(lambda parts: "/" + "/".join(parts))
query = st.one_of(st.just(""), st.text(_SAFE + "=&%+/?", max_size=10).map(lambda q: "?" + q))
target = st.one_of(
    st.tuples(path, query).map("".join),
    st.tuples(path, query).map("".join),
    st.tuples(path, query).map("".join),
    st.sampled_from(["*", "http://h/x", "//x", "/x#frag", "/metrics", "/ollamamax/status", ""]),
)
# valid choices are weighted up, so most examples are otherwise valid and one odd part decides
method = st.sampled_from(["GET", "POST", "DELETE"] * 4
                         + ["HEAD", "PUT", "OPTIONS", "get", "PO ST", "BREW"])
version = st.sampled_from(["HTTP/1.1"] * 12 + ["HTTP/1.0", "HTTP/2.0", "HTTP/1.1 ", "http/1.1", "HTTP/1"])
name = st.one_of(
    st.sampled_from(["X-Test", "Accept", "User-Agent", "Content-Type", "X-Ollamamax-Session",
                     "Connection", "Expect", "Upgrade", "Transfer-Encoding", "Authorization"]),
    st.text(_SAFE + "!#$&'*+.^`|", min_size=1, max_size=8),
    st.sampled_from(["Bad Name", "X:Y", "", " X-Lead", "X-Trail ", "X\tTab", "Ä"]),
)
value = st.one_of(
    st.text(_SAFE + " ,;=/.", max_size=12),
    st.sampled_from(["close", "keep-alive", "Upgrade", "chunked", "100-continue", " padded ",
                     "\ttab\t", "a\x00b", "a\x7fb", "a\x01b", "é", "x\r\n folded"]),
)
# a nameless header is a bare line (no colon); never an empty line, which would end the head
header = st.tuples(name, value).map(lambda kv: f"{kv[0]}:{kv[1]}" if kv[0] else kv[1] or "X")
body = st.binary(max_size=40)
length = st.one_of(st.just("exact"), st.just("exact"), st.just("exact"), st.just("none"),
                   st.sampled_from(["+3", "-1", "3 ", " 3", "0x3", "03", "99999", "1e2", "3, 3", ""]))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    b = draw(body)
    head = [f"{draw(method)} {draw(target)} {draw(version)}"]
    head += draw(st.sampled_from([["Host: x"]] * 8 + [[], ["Host: x", "host: y"], ["HOST: x"]]))
    head += draw(st.lists(header, max_size=4))
    mode = draw(length)
    if mode == "exact":
        head.append(f"Content-Length: {len(b)}")
        if draw(st.integers(0, 7)) == 0:  # a case variant of the same header: smuggling
            head.append(f"content-length: {len(b) + 3}")
            b += b"abc"
    elif mode != "none":  # odd spellings of 3 (or not); 3 bytes follow, so none waits
        b = b"abc"
        head.append(f"Content-Length: {mode}")
        if draw(st.booleans()):
            head.append("Content-Length: 3")
    if draw(st.integers(0, 30)) == 0:  # a header line past aiohttp's 8,190-byte limit
        head.append("X-Long: " + "v" * draw(st.sampled_from([8000, 8190, 9000, 15000])))
    eol = draw(st.sampled_from(["\r\n"] * 30 + ["\n"]))  # bare line feeds: never a head
    raw = eol.join(head).encode("utf-8", "surrogatepass") + (eol * 2).encode()
    return raw + (b if mode != "none" else b"")


@pytest.fixture(scope="module")
def pair():
    with Pair() as p:
        yield p


_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.function_scoped_fixture])


@settings(max_examples=500, **_SETTINGS)
@given(raw=requests())
def test_fast_path_answers_like_aiohttp(pair, raw):
    _compare(pair, raw)


@pytest.mark.slow
@settings(max_examples=20_000, **_SETTINGS)
@given(raw=requests())
def test_fast_path_answers_like_aiohttp_long(pair, raw):
    _compare(pair, raw)


def _compare(pair: Pair, raw: bytes) -> None:
    fast, plain = pair.rec["fast"], pair.rec["aiohttp"]
    n_fast, n_plain = len(fast.calls), len(plain.calls)
    got_fast = _exchange(pair.urls["fast"], raw)
    got_plain = _exchange(pair.urls["aiohttp"], raw)
    assert got_fast == got_plain, raw
    assert fast.calls[n_fast:] == plain.calls[n_plain:], raw


def test_the_grammar_reaches_both_paths(pair):
    """Guard against a vacuous differential test: common requests stay on the fast path."""
    raw = b"POST /api/chat?x=1 HTTP/1.1\r\nHost: x\r\nX-Test:  v\r\nContent-Length: 2\r\n\r\n{}"
    assert _exchange(pair.urls["fast"], raw) == _exchange(pair.urls["aiohttp"], raw) == 200
    assert pair.rec["fast"].calls[-1] == pair.rec["aiohttp"].calls[-1]
