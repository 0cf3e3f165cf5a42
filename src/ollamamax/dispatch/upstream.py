"""The client side: one keep-alive connection pool per host (see ``_rawhttp``).

Each host gets its own :class:`~._rawhttp.HostPool` (at most the host's in-flight
capacity plus a few idle connections for probes and broadcasts are kept), so one slow host
never affects another.  Only the TCP connect is bounded here (``connect_timeout``); the
time-to-first-byte and idle-gap limits are the caller's: ``send(timeout=...)`` arms a
timer on the response that stays armed until body bytes are read (or ``cancel_timeout()``), and
``readany(timeout)`` bounds one gap between chunks.  Both are loop timer handles, re-armed
lazily (see ``_rawhttp``).  Request heads are built once per (method, path, query,
forwarded header values) and kept in a small per-host cache.

Connection set-up time is measured only when a new connection is created (reused
keep-alive connections cost nothing) and written into the attempt's :class:`TraceCtx`.
"""

from __future__ import annotations

import asyncio
import json
import ssl as _ssl
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

from ._rawhttp import (
    BadResponse,
    ConnectFailed,
    Disconnected,
    HostPool,
    RawResponse,
    StatusError,
    UpstreamError,
    head_prefix,
)
from ._types import DispatcherConfig, HostConfig
from .errors import ollama_error_body, openai_error_body

if sys.version_info >= (3, 11):
    from asyncio import timeout
else:  # pragma: no cover - Python 3.10
    from async_timeout import timeout

__all__ = [
    "UPSTREAM_ERRORS",
    "PassThrough",
    "RawResponse",
    "Replay",
    "TraceCtx",
    "Upstream",
    "UpstreamError",
    "describe_error",
    "header_get",
    "timeout",
]

# Exceptions that mean "this attempt failed at the transport level".
# (UpstreamError is an OSError; listed for clarity.)
UPSTREAM_ERRORS: tuple[type[BaseException], ...] = (
    UpstreamError,
    OSError,
    TimeoutError,
)
if sys.version_info < (3, 11):  # pragma: no cover
    UPSTREAM_ERRORS = UPSTREAM_ERRORS + (asyncio.TimeoutError,)

# Request headers we pass from the client to the host; everything else (notably the
# client's Authorization, meant for the gateway) stays behind.
FORWARD_REQUEST_HEADERS = ("content-type", "accept", "user-agent")
_FORWARD_CANON = {
    "content-type": "Content-Type",
    "accept": "Accept",
    "user-agent": "User-Agent",
}
EXTRA_POOL_CONNECTIONS = 4
HEAD_CACHE_SIZE = 256  # request heads (without Content-Length) kept per host; cleared when full
IDLE_CONNECTION_TTL = 30.0  # seconds an idle keep-alive connection is kept


def header_get(headers: Mapping[str, str] | None, name: str) -> str | None:
    """Case-insensitive header lookup on any mapping."""
    if not headers:
        return None
    v = headers.get(name)
    if v is not None:
        return v
    low = name.lower()
    for k, val in headers.items():
        if k.lower() == low:
            return val
    return None


class TraceCtx:
    """Per-attempt timings filled in by the transport (connect time of a new connection)."""

    __slots__ = ("connect_s",)

    def __init__(self) -> None:
        self.connect_s: float | None = None


def _check_header(k: str, v: str) -> None:
    if any(c in k for c in "\r\n:") or not k.strip() or any(c in str(v) for c in "\r\n"):
        raise ValueError(f"invalid header {k!r}")


class Upstream:
    """One host's HTTP client.  Create inside a running loop; ``await close()``."""

    def __init__(self, host: HostConfig, capacity: int, config: DispatcherConfig) -> None:
        self.base = host.url.rstrip("/")
        u = urlsplit(self.base)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"invalid host URL {host.url!r}")
        tls = u.scheme == "https"
        port = u.port or (443 if tls else 80)
        self.extra_headers = dict(host.headers)
        for k, v in self.extra_headers.items():
            _check_header(k, v)
        lowered = {k.lower() for k in self.extra_headers}
        # the host's fixed headers, once; they override forwarded ones of the same name
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in self.extra_headers.items()).encode("utf-8", "surrogateescape")
        self._forward = tuple(n for n in FORWARD_REQUEST_HEADERS if n not in lowered)
        self._default_ct = "content-type" not in lowered
        self.pool = HostPool(
            u.hostname,
            port,
            max_idle=capacity + EXTRA_POOL_CONNECTIONS,
            connect_timeout=config.connect_timeout,
            idle_ttl=IDLE_CONNECTION_TTL,
            ssl=_ssl.create_default_context() if tls else None,
        )
        self._host_line = self.pool.host_line()
        self._fwd_cache: dict[tuple[str | None, ...], dict[str, str]] = {}
        self._fwd_set = frozenset(self._forward)
        self._no_vals: tuple[str | None, ...] = (None,) * len(self._forward)
        # (method, path, query, forwarded values) -> request line + Host + headers, the
        # whole head but its Content-Length line; a hit skips quoting and building
        self._heads: dict[tuple[Any, ...], bytes] = {}

    def _forward_values(self, client_headers: Mapping[str, str] | None) -> tuple[str | None, ...]:
        """The values of the forwarded header names (None if absent), looked up
        case-insensitively as :func:`header_get` does."""
        if not client_headers:
            return self._no_vals
        if isinstance(client_headers, (CIMultiDictProxy, CIMultiDict)):
            return tuple(map(client_headers.get, self._forward))
        # any other mapping: one pass.  As header_get: an exact lower-case key with a
        # value wins, else the first key (in order) that matches case-insensitively.
        wanted = self._fwd_set
        found: dict[str, str | None] = {}
        exact: dict[str, str] | None = None
        for k, v in client_headers.items():
            lk = k.lower()
            if lk in wanted:
                if k == lk and v is not None:
                    if exact is None:
                        exact = {}
                    exact[lk] = v
                elif lk not in found:
                    found[lk] = v
        if exact:
            found.update(exact)
        if not found:
            return self._no_vals
        return tuple(map(found.get, self._forward))

    def request_headers(self, client_headers: Mapping[str, str] | None) -> dict[str, str]:
        """The client headers passed on (Content-Type defaults to JSON), without the
        host's fixed headers (those are prebuilt)."""
        return self._headers_for(self._forward_values(client_headers))

    def _headers_for(self, vals: tuple[str | None, ...]) -> dict[str, str]:
        out = self._fwd_cache.get(vals)
        if out is None:
            out = {_FORWARD_CANON[n]: v for n, v in zip(self._forward, vals) if v is not None}
            for v in out.values():
                if "\r" in v or "\n" in v:
                    raise ValueError("invalid header value")
            if self._default_ct and "Content-Type" not in out:
                out["Content-Type"] = "application/json"
            if len(self._fwd_cache) < 64:  # a few distinct clients: bounded
                self._fwd_cache[vals] = out
        return out

    async def send(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str] | None = None,
        *,
        query: str = "",
        trace: TraceCtx | None = None,
        timeout: float | None = None,
    ) -> RawResponse:
        """Send one request; returns once the response head arrived.

        ``timeout``: seconds from sending until the first body bytes are read (``readany``)
        or the whole body is (``read``): time to first byte; on expiry the response fails
        with ``TimeoutError`` and its connection is closed.
        The caller owns the response: ``release()`` it after reading it fully, or
        ``close()`` it to abort (drops the connection, so the host sees the client go).
        """
        vals = self._forward_values(headers)
        key = (method, path, query, vals)
        prefix = self._heads.get(key)
        if prefix is None:
            prefix = self._build_prefix(method, path, query, vals)
            heads = self._heads
            if len(heads) >= HEAD_CACHE_SIZE:
                heads.clear()
            heads[key] = prefix
        if body:
            head = prefix + b"Content-Length: %d\r\n\r\n" % len(body)
        else:
            body = b""
            head = prefix + (b"\r\n" if method in ("GET", "HEAD") else b"Content-Length: 0\r\n\r\n")
        return await self.pool.request(head, body, head_only=method == "HEAD", timeout=timeout, trace=trace)

    def _build_prefix(self, method: str, path: str, query: str, vals: tuple[str | None, ...]) -> bytes:
        """The request head without its Content-Length line and final CRLF."""
        if not (path.isascii() and path.isprintable()) or " " in path:
            path = quote(path, safe="/:@!$&'()*+,;=-._~%")  # never a raw space or CR/LF
        if query and (not (query.isascii() and query.isprintable()) or " " in query):
            query = quote(query, safe="/:@!$&'()*+,;=-._~%?")
        target = path + "?" + query if query else path
        return head_prefix(method, target, self._host_line, self._fixed, self._headers_for(vals))

    async def get_json(self, path: str, limit: float) -> Any:
        """GET a small JSON document within ``limit`` seconds (probes, refresh)."""
        resp = await self.send("GET", path, None, None, timeout=limit)
        try:
            data = await resp.read()
        finally:
            resp.release()
        if resp.status != 200:
            raise StatusError(resp.status, resp.reason)
        return json.loads(data)

    async def close(self) -> None:
        await self.pool.close()


def describe_error(exc: BaseException, timeout_text: str = "timeout") -> str:
    """A short, client-safe description of a transport failure."""
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return timeout_text
    if isinstance(exc, Disconnected):
        return "connection lost"
    if isinstance(exc, ConnectFailed):
        return "connection refused"
    if isinstance(exc, BadResponse):
        return f"invalid response: {str(exc)[:200]}"
    text = str(exc).split("\n", 1)[0][:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


TAIL_BYTES = 2048  # how much of a stream's end is kept (final object, error line)
MAX_COLLECT_BYTES = 4 * 1024 * 1024  # a longer stream is not kept for the cache


class PassThrough:
    """Pass-through of one upstream stream: unbuffered, idle timeout, in-band errors.

    Yields the upstream's bytes exactly as they arrive (``readany``: what is buffered, as
    soon as there is something), the first one already read by the caller.  Each later read is bounded by
    ``idle`` seconds.  If the upstream fails after the first byte, it yields one in-band
    error — an NDJSON ``{"error": ...}`` line, or for SSE a ``data: {"error": {...}}``
    event — and ends, so output is never duplicated by a retry.  ``aclose()`` before the
    end closes the upstream connection at once (the host sees the client go and frees its
    slot).  ``on_finish(self, ok, error)`` is called exactly once, synchronously: ok True
    (clean end), False (upstream failed) or None (closed early by the consumer).

    It keeps the last ``TAIL_BYTES`` (``tail``: the final object carries the metrics) and,
    when ``collect`` is set, every chunk (``chunks``; None if it grew too large).
    """

    __slots__ = (
        "_resp",
        "_first",
        "_done",
        "_idle",
        "_sse",
        "_label",
        "_on_finish",
        "_nbytes",
        "_tail_len",
        "_tail_parts",
        "chunks",
        "content_type",
        "ctx",
    )

    def __init__(
        self,
        resp: RawResponse,
        first: bytes,
        *,
        idle: float,
        sse: bool,
        label: str,
        on_finish: Callable[[PassThrough, bool | None, str], None],
        collect: bool = False,
        ctx: Any = None,
    ) -> None:
        self._resp = resp
        self._first: bytes | None = first
        self._done = False
        self._idle = idle
        self._sse = sse
        self._label = label
        self._on_finish = on_finish
        self._nbytes = 0
        # the last chunks, joined and cut to TAIL_BYTES only when they exceed twice that
        # (or when ``tail`` is read): no copy of the tail per chunk
        self._tail_parts: list[bytes] = []
        self._tail_len = 0
        self.chunks: list[bytes] | None = [] if collect else None
        ct = getattr(resp, "content_type", None)
        self.content_type = ct if ct is not None else resp.headers.get("Content-Type", "")
        self.ctx = ctx

    def __aiter__(self) -> PassThrough:
        return self

    @property
    def tail(self) -> bytes:
        """The last ``TAIL_BYTES`` of what was passed through."""
        parts = self._tail_parts
        if not parts:
            return b""
        t = parts[0] if len(parts) == 1 else b"".join(parts)
        if len(t) > TAIL_BYTES:
            t = t[-TAIL_BYTES:]
        self._tail_parts = [t]
        self._tail_len = len(t)
        return t

    def _note(self, chunk: bytes) -> None:
        if len(chunk) >= TAIL_BYTES:
            self._tail_parts = [chunk[-TAIL_BYTES:]]
            self._tail_len = TAIL_BYTES
        else:
            parts = self._tail_parts
            parts.append(chunk)
            n = self._tail_len + len(chunk)
            if n > 2 * TAIL_BYTES:
                t = b"".join(parts)[-TAIL_BYTES:]
                self._tail_parts = [t]
                n = len(t)
            self._tail_len = n
        chunks = self.chunks
        if chunks is not None:
            self._nbytes += len(chunk)
            if self._nbytes > MAX_COLLECT_BYTES:
                self.chunks = None
            else:
                chunks.append(chunk)

    async def __anext__(self) -> bytes:
        first = self._first
        if first is not None:
            self._first = None
            self._note(first)
            return first
        if self._done:
            raise StopAsyncIteration
        resp = self._resp
        try:
            # fast path: bytes already buffered need no timer
            chunk = resp.read_nowait()
            if not chunk and not resp.at_eof():
                chunk = await resp.readany(self._idle)
        except UPSTREAM_ERRORS as exc:
            msg = describe_error(exc, "idle timeout between stream chunks")
            out = self._error_chunk(f"{self._label} failed mid-stream: {msg}")
            self._finish(False, msg)
            return out
        if not chunk:
            self._finish(True)
            raise StopAsyncIteration
        self._note(chunk)
        return chunk

    def at_eof(self) -> bool:
        """True when the chunk last returned was the final one (the upstream response is
        complete and nothing is left): a front end can send it with the end marker."""
        return not self._done and self._first is None and self._resp.at_eof()

    def _error_chunk(self, message: str) -> bytes:
        if self._sse:
            sep = b"" if self.tail.endswith(b"\n\n") or not self.tail else b"\n\n"
            return sep + b"data: " + openai_error_body(message, 500) + b"\n\n"
        sep = b"" if self.tail.endswith(b"\n") or not self.tail else b"\n"
        return sep + ollama_error_body(message) + b"\n"

    def _finish(self, ok: bool | None, error: str = "") -> None:
        if self._done:
            return
        self._done = True
        if ok:
            self._resp.release()
        else:
            self._resp.close()
        self._on_finish(self, ok, error)

    async def aclose(self) -> None:
        if not self._done and self._first is None:
            # A consumer that stops right after the final object (without waiting for
            # EOF) still counts as a success: the answer was complete.
            t = self.tail
            if t.endswith(b"data: [DONE]\n\n") if self._sse else (t.endswith(b"\n") and b'"done":true' in t):
                self._finish(True)
                return
        self._finish(None)


class Replay:
    """Replays a cached byte stream chunk by chunk."""

    __slots__ = ("_chunks", "_pos")

    def __init__(self, chunks: Sequence[bytes]) -> None:
        self._chunks = chunks
        self._pos = 0

    def __aiter__(self) -> Replay:
        return self

    async def __anext__(self) -> bytes:
        pos = self._pos
        if pos >= len(self._chunks):
            raise StopAsyncIteration
        self._pos = pos + 1
        return self._chunks[pos]

    def at_eof(self) -> bool:
        """True when the chunk last returned was the final one."""
        return self._pos >= len(self._chunks)

    async def aclose(self) -> None:
        self._pos = len(self._chunks)
