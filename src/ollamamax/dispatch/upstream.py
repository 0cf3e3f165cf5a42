"""The client side: one aiohttp session and keep-alive pool per host.

Each host gets its own ``TCPConnector`` (``limit`` = the host's in-flight capacity plus
a few connections for probes and broadcasts) so one slow host can never starve the
pool of another, and a ``ClientTimeout`` that bounds only the TCP connect.  The
time-to-first-byte and idle-gap limits are enforced by the caller around reading the
response headers/first chunk and each later chunk (``timeout()`` below), because
aiohttp's ``sock_read`` semantics (per socket read, reset by any byte) do not map onto
"first token" and "gap between tokens".

Connection set-up time is measured by the connector itself, only when a new connection
is created (reused keep-alive connections cost nothing).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

import aiohttp

from ._types import DispatcherConfig, HostConfig
from .errors import ollama_error_body, openai_error_body

if sys.version_info >= (3, 11):
    from asyncio import timeout
else:  # pragma: no cover - Python 3.10
    from async_timeout import timeout

__all__ = [
    "UPSTREAM_ERRORS",
    "PassThrough",
    "Replay",
    "TraceCtx",
    "Upstream",
    "describe_error",
    "header_get",
    "timeout",
]

# Exceptions that mean "this attempt failed at the transport level".
UPSTREAM_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, OSError, TimeoutError)
if sys.version_info < (3, 11):  # pragma: no cover
    UPSTREAM_ERRORS = UPSTREAM_ERRORS + (asyncio.TimeoutError,)

# Request headers we pass from the client to the host; everything else (notably the
# client's Authorization, meant for the gateway) stays behind.
FORWARD_REQUEST_HEADERS = ("content-type", "accept", "user-agent")
EXTRA_POOL_CONNECTIONS = 4


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


# The attempt that is opening a connection (task-local): the connector below writes the
# time the new connection took into it.  Reused keep-alive connections cost nothing.
_CONNECT_SINK: ContextVar[TraceCtx | None] = ContextVar("ollamamax_connect_sink", default=None)


class _TimedConnector(aiohttp.TCPConnector):
    """A TCPConnector that measures how long creating a new connection takes.

    Cheaper than an aiohttp ``TraceConfig``, which costs every request a dozen signal
    awaits.  It wraps the connector's connection factory; should a future aiohttp rename
    it, the override is simply never called (no connect timings, nothing else changes).
    """

    async def _create_connection(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await super()._create_connection(*args, **kwargs)
        finally:
            sink = _CONNECT_SINK.get()
            if sink is not None:
                sink.connect_s = time.perf_counter() - t0


class Upstream:
    """One host's HTTP client.  Create inside a running loop; ``await close()``."""

    def __init__(self, host: HostConfig, capacity: int, config: DispatcherConfig) -> None:
        self.base = host.url.rstrip("/")
        self.extra_headers = dict(host.headers)
        connector = _TimedConnector(
            limit=capacity + EXTRA_POOL_CONNECTIONS,
            limit_per_host=0,
            keepalive_timeout=30.0,
            ttl_dns_cache=300,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=config.connect_timeout, sock_connect=config.connect_timeout
            ),
            auto_decompress=True,
            raise_for_status=False,
            skip_auto_headers=("Content-Type",),
        )

    def request_headers(self, client_headers: Mapping[str, str] | None) -> dict[str, str]:
        out: dict[str, str] = {}
        if client_headers:
            for k, v in client_headers.items():
                if k.lower() in FORWARD_REQUEST_HEADERS:
                    out[k] = v
        if "Content-Type" not in out and "content-type" not in out:
            out["Content-Type"] = "application/json"
        out.update(self.extra_headers)
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
    ) -> aiohttp.ClientResponse:
        """Send one request; returns once the response headers arrived.

        The caller owns the response: ``release()`` it after reading it fully, or
        ``close()`` it to abort (drops the connection, so the host sees the client go).
        """
        url = self.base + path
        if query:
            url += "?" + query
        token = _CONNECT_SINK.set(trace)
        try:
            return await self.session.request(
                method,
                url,
                data=body if body else None,
                headers=self.request_headers(headers),
                allow_redirects=False,
            )
        finally:
            _CONNECT_SINK.reset(token)

    async def get_json(self, path: str, limit: float) -> Any:
        """GET a small JSON document within ``limit`` seconds (probes, refresh)."""
        async with timeout(limit):
            resp = await self.session.get(self.base + path, headers=self.extra_headers or None)
            try:
                if resp.status != 200:
                    raise aiohttp.ClientResponseError(
                        resp.request_info, resp.history, status=resp.status, message=resp.reason or ""
                    )
                return await resp.json(content_type=None)
            finally:
                resp.release()

    async def close(self) -> None:
        await self.session.close()


def describe_error(exc: BaseException, timeout_text: str = "timeout") -> str:
    """A short, client-safe description of a transport failure."""
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return timeout_text
    if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
        return "connection lost"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connection refused"
    text = str(exc).split("\n", 1)[0][:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


TAIL_BYTES = 2048  # how much of a stream's end is kept (final object, error line)
MAX_COLLECT_BYTES = 4 * 1024 * 1024  # a longer stream is not kept for the cache


class PassThrough:
    """Pass-through of one upstream stream: unbuffered, idle timeout, in-band errors.

    Yields the upstream's bytes exactly as they arrive (``readany``: each chunk as soon as
    it is there), the first one already read by the caller.  Each later read is bounded by
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
        "tail",
        "chunks",
        "content_type",
        "ctx",
    )

    def __init__(
        self,
        resp: aiohttp.ClientResponse,
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
        self.tail = b""
        self.chunks: list[bytes] | None = [] if collect else None
        self.content_type = resp.headers.get("Content-Type", "")
        self.ctx = ctx

    def __aiter__(self) -> PassThrough:
        return self

    def _note(self, chunk: bytes) -> None:
        if len(chunk) >= TAIL_BYTES:
            self.tail = chunk[-TAIL_BYTES:]
        else:
            self.tail = (self.tail + chunk)[-TAIL_BYTES:]
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
        content = self._resp.content
        try:
            # fast path: bytes already buffered need no timer
            chunk = content.read_nowait()
            if not chunk and not content.at_eof():
                async with timeout(self._idle):
                    chunk = await content.readany()
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

    __slots__ = ("_it",)

    def __init__(self, chunks: Sequence[bytes]) -> None:
        self._it = iter(chunks)

    def __aiter__(self) -> Replay:
        return self

    async def __anext__(self) -> bytes:
        try:
            return next(self._it)
        except StopIteration:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self._it = iter(())
