"""The client side: one keep-alive connection pool per host (see ``connection.py``).

Each host gets its own :class:`~._rawhttp.HostPool` (at most the host's in-flight
capacity plus a few idle connections for probes and broadcasts are kept), so one slow host
never affects another.  Only the TCP connect is bounded here (``connect_timeout``); the
time-to-first-byte and idle-gap limits are the caller's: ``send(timeout=...)`` arms a
timer on the response that stays armed until body bytes are read (or ``cancel_timeout()``), and
``readany(timeout)`` bounds one gap between chunks.  Both are loop timer handles, re-armed
lazily (see ``connection.py``).  Request heads are built once per (method, path, query,
forwarded header values) and kept in a small per-host cache.

Connection set-up time is measured only when a new connection is created (reused
keep-alive connections cost nothing) and written into the attempt's :class:`TraceCtx`.
This module knows HTTP and hosts, not Ollama: what a request means is the dispatcher's
business.
"""

from __future__ import annotations

import asyncio
import json
import ssl as _ssl
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

from .connection import RawResponse
from .http1 import (
    BadResponse,
    ConnectFailed,
    Disconnected,
    HostGone,
    LocalResourceError,
    StatusError,
    UpstreamError,
    head_prefix,
)
from .pool import HostPool

if sys.version_info >= (3, 11):
    from asyncio import timeout
else:  # pragma: no cover - Python 3.10
    from async_timeout import timeout

__all__ = [
    "UPSTREAM_ERRORS",
    "RawResponse",
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
    """One attempt as the transport saw it: the connect time of a new connection, and the
    response object once the request is written (so the owner can abort it)."""

    __slots__ = ("connect_s", "response")

    def __init__(self) -> None:
        self.connect_s: float | None = None
        self.response: RawResponse | None = None


def _check_header(k: str, v: str) -> None:
    if any(c in k for c in "\r\n:") or not k.strip() or any(c in str(v) for c in "\r\n"):
        raise ValueError(f"invalid header {k!r}")


class Upstream:
    """One host's HTTP client.  Create inside a running loop; ``await close()``.

    ``url`` is the host's base URL, ``headers`` are sent with every request (e.g. the
    host's Authorization), ``capacity`` is how many requests may be in flight at once
    (that many idle keep-alive connections, plus a few for probes, are kept).
    """

    def __init__(
        self, url: str, *, headers: Mapping[str, str] | None = None, capacity: int = 8, connect_timeout: float = 5.0
    ) -> None:
        self.base = url.rstrip("/")
        u = urlsplit(self.base)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"invalid host URL {url!r}")
        tls = u.scheme == "https"
        port = u.port or (443 if tls else 80)
        self.extra_headers = dict(headers or {})
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
            connect_timeout=connect_timeout,
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

    @property
    def cached_heads(self) -> int:
        """How many prebuilt request heads this client keeps now (read-only; at most
        ``HEAD_CACHE_SIZE``: the cache is cleared when full)."""
        return len(self._heads)

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
    if isinstance(exc, HostGone):
        return "host taken out of rotation"
    if isinstance(exc, LocalResourceError):
        return "the gateway is out of resources (descriptors or memory)"
    if isinstance(exc, Disconnected):
        return "connection lost"
    if isinstance(exc, ConnectFailed):
        return "connection refused"
    if isinstance(exc, BadResponse):
        return f"invalid response: {str(exc)[:200]}"
    text = str(exc).split("\n", 1)[0][:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
