"""Emulated hosts without sockets: :class:`SimHost` and the :class:`SimUpstream` that reaches it.

Owns the in-memory wire between the dispatcher and an emulated host, for the fleet
simulator (``simulator``), which runs on :class:`~._virtualtime.VirtualTimeLoop` where no
socket ever becomes ready.  A :class:`SimHost` is the emulator itself (the same engine,
scheduler and route handlers as :class:`~._server.FakeOllama`, through the server's own
:func:`~._server.answer`), minus the listening; a :class:`SimUpstream` is an
:class:`~ollamamax.upstream.client.Upstream` whose ``send`` hands the request to a host's
handler as a task and returns the dispatcher's own
:class:`~ollamamax.upstream.connection.RawResponse`, fed by the handler's writes, so
everything above the transport (first-byte and idle timers, the pass-through stream,
release and abort) is the production code.  Closing a response before its end cancels the
host's handler, as a dropped connection does to a real Ollama's request.

It must not decide anything about routing, and must not read a clock: time is the
running loop's (virtual in the simulator).  Flow control is not modelled (a host's writes
never wait for the reader): the simulator measures scheduling, not bandwidth.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from ..upstream.client import TraceCtx, Upstream
from ..upstream.connection import RawResponse
from ..upstream.http1 import ConnectFailed, Disconnected
from ._httphost import CT_NDJSON, HttpHost
from ._server import answer

__all__ = ["SimHost", "SimUpstream"]


class SimHost(HttpHost):
    """An emulated Ollama host that answers in memory (arguments as for
    :class:`~._engine.Engine`).  ``up`` False refuses every connection (a host that is down);
    :meth:`restart` is a fresh process: nothing loaded, counters kept."""

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = name
        self.host_header = name
        self.up = True
        self.requests_total = 0

    def stats(self) -> dict[str, Any]:
        per, tot = self.model_stats()
        return {"host_id": self.name, "models": per, "totals": tot, "loaded": self.loaded_models(),
                "requests": self.requests_total}

    def restart(self) -> None:
        self.fresh_scheduler()

    async def start_stream(self, request: Any, ctype: str = CT_NDJSON) -> Any:
        self.streamed.add(id(request))
        return request.wire.stream(200, self._headers(ctype))


class _Request:
    """What the route handlers read of a request: method, path, body (``read``)."""

    __slots__ = ("method", "path", "_body", "wire")

    def __init__(self, method: str, path: str, body: bytes, wire: _Wire) -> None:
        self.method = method
        self.path = path
        self._body = body
        self.wire = wire

    async def read(self) -> bytes:
        return self._body


class _Wire:
    """One request's connection: the host writes the response into ``resp``.  It plays the
    part of :class:`~ollamamax.upstream.connection.Connection` for the response (pause,
    resume, the first-byte timer, close)."""

    __slots__ = ("resp", "task", "paused", "closed", "reusable", "writing_body", "pool", "_head_sent")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.resp: RawResponse | None = None
        self.task: asyncio.Task[None] | None = None
        self.paused = False
        self.closed = False
        self.reusable = False  # never pooled: each request gets its own wire
        self.writing_body = False
        self.pool = self
        self._head_sent = False

    # -- the host's side ----------------------------------------------------------------
    def head(self, status: int, headers: Mapping[str, str]) -> None:
        r = self.resp
        if r is None or self._head_sent:
            return
        self._head_sent = True
        r.status = status
        r.reason = ""
        r.header_list = tuple((str(k), str(v)) for k, v in headers.items())
        r.content_type = str(headers.get("Content-Type", ""))
        r._headers = None
        r._head = True
        r._wake()

    def data(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("the client closed the connection")
        if data and self.resp is not None:
            self.resp._data(data)

    def end(self) -> None:
        if self.resp is not None and not self.closed:
            self.resp._complete()

    def stream(self, status: int, headers: Mapping[str, str]) -> _Stream:
        return _Stream(self, status, dict(headers))

    # -- the response's side (Connection's interface) -------------------------------------
    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def _arm(self, due: float, loop: asyncio.AbstractEventLoop) -> None:
        loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        r = self.resp
        if r is not None and r._timer is not None and asyncio.get_running_loop().time() >= r._timer - 1e-9:
            r._on_timeout()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        t = self.task
        if t is not None and not t.done():
            t.cancel()  # the host sees its client go away
        r = self.resp
        if r is not None:
            r._fail(Disconnected("connection closed"))

    def put_idle(self, conn: Any) -> None:
        self.close()


class _Stream:
    """A streamed reply as the route handlers write it (``write``, ``write_eof``); the head
    leaves with the first bytes, as in the emulator's server."""

    __slots__ = ("wire", "status", "headers")

    def __init__(self, wire: _Wire, status: int, headers: dict[str, str]) -> None:
        self.wire = wire
        self.status = status
        self.headers = headers
        headers.pop("Content-Length", None)

    async def write(self, data: bytes) -> None:
        self.wire.head(self.status, self.headers)
        self.wire.data(data)
        await asyncio.sleep(0)

    async def write_eof(self, data: bytes = b"") -> None:
        self.wire.head(self.status, self.headers)
        self.wire.data(data)
        self.wire.end()


class SimUpstream(Upstream):
    """The dispatcher's client for one :class:`SimHost` (``send`` and ``get_json`` as
    :class:`~ollamamax.upstream.client.Upstream`'s)."""

    def __init__(self, host: SimHost) -> None:  # no pool: nothing to connect
        self.host = host
        self.wires: set[_Wire] = set()

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
        host = self.host
        if not host.up:
            raise ConnectFailed(f"connection to {host.name} refused")
        loop = asyncio.get_running_loop()
        wire = _Wire(loop)
        resp = RawResponse(wire, loop)  # type: ignore[arg-type]  # _Wire plays the Connection
        wire.resp = resp
        if trace is not None:
            trace.response = resp
        if timeout is not None:
            resp.set_timeout(timeout)
        wire.task = loop.create_task(self._serve(wire, _Request(method, path, body or b"", wire)))
        self.wires.add(wire)
        try:
            await resp.wait_head()
        except BaseException:
            resp.close()
            raise
        return resp

    async def _serve(self, wire: _Wire, request: _Request) -> None:
        host = self.host
        host.requests_total += 1
        try:
            out = await answer(host, request)
        except asyncio.CancelledError:
            return
        except Exception as exc:  # noqa: BLE001 - a handler bug drops the connection, as the server does
            if wire.resp is not None:
                wire.resp._fail(Disconnected(f"host {host.name} dropped the connection: {exc!r}"))
            return
        finally:
            self.wires.discard(wire)
        if isinstance(out, _Stream):
            return  # written already
        assert isinstance(out, web.Response)
        headers = dict(out.headers)
        wire.head(out.status, headers)
        body = out.body
        wire.data(body if isinstance(body, bytes) else b"")
        wire.end()

    def drop_all(self) -> None:
        """The host died: every open request's connection breaks."""
        for w in list(self.wires):
            if w.resp is not None:
                w.resp._fail(Disconnected(f"host {self.host.name} reset the connection"))
            w.close()

    async def close(self) -> None:
        for w in list(self.wires):
            w.close()


def make_hosts(names: Sequence[str], models: Sequence[str], **knobs: Any) -> list[SimHost]:
    """One :class:`SimHost` per name, each with ``models`` on disk and the engine's ``knobs``."""
    return [SimHost(n, list(models), **knobs) for n in names]
