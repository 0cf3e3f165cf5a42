"""The keep-alive connections to one host: :class:`HostPool`.

A LIFO stack of idle connections (the most recently used one is reused first, so idle ones
age out), at most ``max_idle`` kept, a connection idle for longer than ``idle_ttl`` closed
when found, new connections bounded by ``connect_timeout``.  :meth:`HostPool.request` writes
one request and returns once the response head arrived; a request sent on a reused
connection that the host had closed meanwhile (no byte of an answer arrived) is sent once
more on a new connection, like browsers do.  It owns connections, not what is said on them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .connection import Connection, RawResponse
from .http1 import LOCAL_ERRNOS, ConnectFailed, Disconnected, LocalResourceError

__all__ = ["HostPool"]


class HostPool:
    """The idle keep-alive connections to one host, and the request writer."""

    __slots__ = (
        "_all",
        "_closed",
        "_host_line",
        "_idle",
        "connect_timeout",
        "host",
        "idle_ttl",
        "max_idle",
        "port",
        "ssl",
    )

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_idle: int,
        connect_timeout: float,
        idle_ttl: float = 30.0,
        ssl: Any = None,
    ) -> None:
        if max_idle < 0:
            raise ValueError("max_idle must be >= 0")
        self.host = host
        self.port = port
        self.ssl = ssl  # an ssl.SSLContext for https hosts, else None
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self.idle_ttl = idle_ttl
        self._idle: list[Connection] = []  # LIFO: the end is the most recently used
        self._all: set[Connection] = set()
        self._closed = False
        default_port = 443 if ssl is not None else 80
        name = f"[{host}]" if ":" in host and not host.startswith("[") else host
        hostport = name if port == default_port else f"{name}:{port}"
        self._host_line = f"Host: {hostport}\r\n".encode("latin-1")

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def open_count(self) -> int:
        return len(self._all)

    def host_line(self) -> bytes:
        return self._host_line

    # -- connections -------------------------------------------------------------------
    async def _connect(self, loop: asyncio.AbstractEventLoop) -> Connection:
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: Connection(self), self.host, self.port, ssl=self.ssl),
                self.connect_timeout,
            )
        except (TimeoutError, asyncio.TimeoutError):
            raise TimeoutError(f"connect to {self.host}:{self.port} timed out") from None
        except OSError as exc:
            if exc.errno in LOCAL_ERRNOS:
                raise LocalResourceError(f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from exc
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from exc
        if self._closed:
            conn.close()
            raise ConnectFailed("pool closed")
        self.adopt(conn)
        return conn

    def take_idle(self) -> Connection | None:
        idle = self._idle
        while idle:
            c = idle.pop()
            if not c.closed:
                return c
        return None

    def put_idle(self, conn: Connection) -> None:
        if self._closed or conn.closed:
            conn.close()
            return
        idle = self._idle
        now = time.monotonic()
        conn.idle_since = now
        # reap from the bottom (oldest) what has been idle too long
        ttl = self.idle_ttl
        while idle and (idle[0].closed or now - idle[0].idle_since > ttl):
            idle.pop(0).close()
        if len(idle) >= self.max_idle:
            conn.close()
            return
        idle.append(conn)

    def adopt(self, conn: Connection) -> None:
        """Count ``conn`` as one of this pool's open connections (``request`` does this for
        the connections it opens; a test that wires a connection by hand calls it)."""
        self._all.add(conn)

    def forget(self, conn: Connection) -> None:
        self._all.discard(conn)
        # an idle one that the server closed is skipped in take_idle (closed flag)

    # -- requests ----------------------------------------------------------------------
    async def request(
        self,
        head: bytes,
        body: bytes,
        *,
        head_only: bool = False,
        timeout: float | None = None,
        trace: Any = None,
    ) -> RawResponse:
        """Send ``head`` (request line and headers, ending with the blank line) and
        ``body``; return once the response head arrived.  ``timeout`` (seconds, from
        the moment the request is written) stays armed on the response until body bytes
        are read or the caller calls ``cancel_timeout()``; ``trace.connect_s`` receives the time a new
        connection took."""
        if self._closed:
            raise ConnectFailed("pool closed")
        loop = asyncio.get_running_loop()
        for attempt in (0, 1):
            conn = self.take_idle() if attempt == 0 else None
            reused = conn is not None
            if conn is None:
                t0 = time.perf_counter()
                conn = await self._connect(loop)
                if trace is not None:
                    trace.connect_s = time.perf_counter() - t0
            resp = RawResponse(conn, loop)
            if trace is not None:
                trace.response = resp  # so the owner can abort it (see RawResponse.abort)
            conn.reusable = True
            conn.start(resp, head, body, head_only)
            if timeout is not None:
                resp.set_timeout(timeout)
            try:
                await resp.wait_head()
            except Disconnected:
                resp.close()
                if reused and not conn.got_bytes:
                    continue  # the server had closed the idle connection: once more, fresh
                raise
            except BaseException:
                resp.close()
                raise
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        self._closed = True
        self._idle.clear()
        for c in list(self._all):
            c.close()
        self._all.clear()
