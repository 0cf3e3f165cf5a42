"""The gateway as an aiohttp application: every method and path goes to ``dispatcher.handle``.

:func:`build_app` returns the :class:`aiohttp.web.Application` behind ``ollamamax serve``'s
fast path; ``ollamamax.create_app`` (``ops.app``) adds the observability routes to it, and an
existing aiohttp service can mount the result as a sub-application::

    async with Dispatcher(["http://gpu1:11434", "http://gpu2:11434"]) as d:
        parent.add_subapp("/ollama", create_app(d, api_keys=["k1"]))

The front end owns transport concerns only (see ``wire.response`` for the contract; the
auth and size rules are ``rules.py``, shared with the fast path):

* **Authentication** (optional).  When any key is configured, every route needs
  ``Authorization: Bearer <key>`` (an api or admin key): missing or wrong -> 401 with
  Ollama's ``{"error": "unauthorized"}`` (OpenAI's error object on ``/v1``).  The model
  management routes ``/api/pull``, ``/api/push``, ``/api/create``, ``/api/copy``,
  ``/api/delete`` and blob uploads need an admin key -> 403 otherwise (the path is checked
  after collapsing ``//``, ``.``/``..`` segments, a trailing slash and case, so no spelling
  of an admin route slips through).  Keys are compared in
  constant time; the gateway's ``Authorization`` header is not passed to the dispatcher
  (upstream credentials belong in ``HostConfig.headers``).  Keys apply to ``GET /`` too, so
  an unauthenticated health probe should use TCP checks or a key.
* **Body size**.  A ``Content-Length`` over ``max_body_size`` is refused with 413 before
  anything is read; a chunked body is counted while it is read and refused the moment it
  passes the limit (this works the same when mounted, where the parent's
  ``client_max_size`` would otherwise apply).  413 responses close the connection.  With
  ``Expect: 100-continue`` the 401/403/413 answer comes before the client sends the body.
* **Streaming** without buffering: status and headers are sent when the dispatcher answers,
  then each chunk is written as it arrives (no compression).
* **Disconnects**.  ``resp.aclose()`` runs in a ``finally`` on every path.  A client that
  goes away cancels the handler: aiohttp does that itself when the server runs with
  ``handler_cancellation=True`` (``ollamamax serve`` does); otherwise (e.g. mounted in an
  app run with aiohttp's default) one shared polling timer notices the closed transport within
  about ``disconnect_check_interval`` seconds, so a stalled or queued request never outlives its
  client.  Cancelling makes the dispatcher drop the upstream request at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import HttpVersion11, web
from multidict import CIMultiDict

from ..wire.response import HOP_BY_HOP, DispatchResponse
from .rules import (
    DEFAULT_MAX_BODY_SIZE,
    ERROR_HEADERS,
    GatewayRules,
    gateway_error_body,
)

__all__ = ["GATEWAY_KEY", "Gateway", "build_app"]

log = logging.getLogger("ollamamax.gateway")


class Gateway:
    """The request handler behind :func:`build_app` (one per application)."""

    def __init__(
        self,
        dispatcher: Any,
        *,
        api_keys: Iterable[str] = (),
        admin_keys: Iterable[str] = (),
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        disconnect_check_interval: float = 0.25,
    ) -> None:
        if disconnect_check_interval <= 0:
            raise ValueError("disconnect_check_interval must be positive")
        self.rules = rules = GatewayRules(
            dispatcher, api_keys=api_keys, admin_keys=admin_keys, max_body_size=max_body_size
        )
        self.dispatcher = dispatcher
        self.auth_enabled = rules.auth_enabled
        self.max_body_size = rules.max_body_size
        self.disconnect_check_interval = float(disconnect_check_interval)
        self._watch = _DisconnectWatch(self.disconnect_check_interval)
        # the counters of the HTTP server in front of this app (set by the fast path's
        # start_server; read by the observability routes)
        self.http_stats: Any = None

    # ------------------------------------------------------------------ helpers

    @classmethod
    def error_response(cls, path: str, status: int, message: str, *, code: str | None = None,
                       headers: Mapping[str, str] | None = None) -> web.Response:
        """An error in the shape the route's clients expect (Ollama or OpenAI)."""
        hdrs = dict(ERROR_HEADERS)
        if headers:
            hdrs.update(headers)
        return web.Response(status=status, headers=hdrs,
                            body=gateway_error_body(path, status, message, code))

    def _too_large(self, path: str, detail: str) -> web.Response:
        resp = self.error_response(path, 413, self.rules.too_large_message(detail))
        resp.force_close()  # the rest of the body is never read
        return resp

    @staticmethod
    def _out_headers(headers: Mapping[str, str]) -> dict[str, str]:
        return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}

    async def _read_body(self, request: web.BaseRequest) -> bytes | None:
        """The body, or ``None`` once it passes ``max_body_size``."""
        if not request.body_exists:
            return b""
        limit = self.max_body_size
        content = request.content
        if content.is_eof():  # fast path: the whole (small) body is already buffered
            data = content.read_nowait()
            return data if len(data) <= limit else None
        parts: list[bytes] = []
        size = 0
        while True:
            chunk = await content.readany()
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                return None
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # ------------------------------------------------------------------ the handler

    @staticmethod
    def _path(request: web.Request) -> str:
        tail = request.match_info.get("tail")
        return "/" + tail if tail is not None else request.path

    def precheck(self, request: web.BaseRequest, path: str) -> web.Response | None:
        """401 / 403 / 413 decided from the request head alone, or ``None`` to go on."""
        refused = self.rules.refusal(request.method, path, request.headers.get("Authorization"))
        if refused is not None:
            resp = self.error_response(path, refused.status, refused.message, code=refused.code,
                                       headers=refused.headers)
            if request.body_exists:
                resp.force_close()  # do not wait for (or read) a body we refuse
            return resp
        length = request.content_length
        if length is not None and length > self.max_body_size:
            return self._too_large(path, f"Content-Length {length}")
        return None

    async def expect_handler(self, request: web.Request) -> web.Response | None:
        """``Expect: 100-continue``: refuse (401/403/413) before the client sends the body."""
        refused = self.precheck(request, self._path(request))
        if refused is not None:
            return refused
        if request.version == HttpVersion11:
            if request.headers.get("Expect", "").lower() != "100-continue":
                return self.error_response(self._path(request), 417, "expectation failed")
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = self._path(request)
        method = request.method
        headers: Mapping[str, str] = request.headers
        refused = self.precheck(request, path)
        if refused is not None:
            return refused
        if self.auth_enabled:  # the gateway's credentials are not passed on
            fwd = CIMultiDict(request.headers)
            fwd.popall("Authorization", None)
            headers = fwd

        task = asyncio.current_task()
        watch = self._watch
        watch.add(request, task)
        try:
            body = await self._read_body(request)
            if body is None:
                return self._too_large(path, "body")
            try:
                resp: DispatchResponse = await self.dispatcher.handle(
                    method, path, body, headers, query=request.rel_url.raw_query_string,
                    tenant=self.rules.tenant_of(request.headers.get("Authorization")),
                )
            except Exception:
                log.exception("dispatcher failed on %s %s", method, path)
                return self.error_response(path, 500, "internal error in ollamamax gateway")
            try:
                out_headers = self._out_headers(resp.headers)
                if resp.stream is None:
                    return web.Response(status=resp.status, headers=out_headers,
                                        body=resp.body or b"")
                out = web.StreamResponse(status=resp.status, headers=out_headers)
                await out.prepare(request)
                stream = resp.stream
                # a stream that can tell its last chunk lets it go out with the end marker
                # (and, for a short stream, with the headers): one write instead of two
                at_eof = getattr(stream, "at_eof", None)
                try:
                    async for chunk in stream:
                        if chunk:
                            if at_eof is not None and at_eof():
                                await out.write_eof(chunk)
                            else:
                                await out.write(chunk)
                    await out.write_eof()  # no-op when already ended
                except (ConnectionError, OSError):  # client went away mid-write
                    log.debug("client disconnected during %s %s", method, path)
                return out
            finally:
                watch.discard(task)  # nothing of ours may interrupt the close
                await resp.aclose()
        finally:
            watch.discard(task)


class _DisconnectWatch:
    """Cancels a handler's task when its client's transport closes.

    One polling timer per gateway serves every in-flight request (registering is a dict
    insert, not a timer per request); it ticks every ``interval`` seconds while any request
    is registered, so a closed client is noticed within about one interval.
    """

    __slots__ = ("_interval", "_entries", "_handle", "_loop")

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._entries: dict[asyncio.Task[Any], web.BaseRequest] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, request: web.BaseRequest, task: asyncio.Task[Any] | None) -> None:
        if task is None:
            return
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or the gateway moved to another loop
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None
            self._entries.clear()
            self._loop = loop
        self._entries[task] = request
        if self._handle is None:
            self._handle = loop.call_later(self._interval, self._check)

    def discard(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self._entries.pop(task, None)

    def _check(self) -> None:
        self._handle = None
        entries = self._entries
        gone = []
        for task, request in entries.items():
            transport = request.transport
            if transport is None or transport.is_closing():
                gone.append(task)
        for task in gone:
            request = entries.pop(task)
            log.debug("client gone; cancelling %s %s", request.method, request.path)
            task.cancel()
        if entries and self._loop is not None:
            self._handle = self._loop.call_later(self._interval, self._check)


GATEWAY_KEY: web.AppKey[Gateway] = web.AppKey("ollamamax_gateway", Gateway)


def build_app(
    dispatcher: Any,
    *,
    api_keys: Iterable[str] = (),
    admin_keys: Iterable[str] = (),
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    disconnect_check_interval: float = 0.25,
) -> web.Application:
    """An aiohttp application serving the Ollama and OpenAI APIs through ``dispatcher``
    (a started :class:`~ollamamax.dispatch.Dispatcher`, or anything with the same
    ``handle()``; the application does not own it and never closes it).  Its
    :class:`Gateway` is at ``app[GATEWAY_KEY]``.  Every method and path goes to it;
    routes added to ``app`` later (e.g. ``/metrics``) still win, because aiohttp (>= 3.10)
    resolves the most specific path first."""
    gateway = Gateway(dispatcher, api_keys=api_keys, admin_keys=admin_keys,
                      max_body_size=max_body_size,
                      disconnect_check_interval=disconnect_check_interval)
    # client_max_size only matters if someone calls request.read(); the gateway counts itself.
    app = web.Application(client_max_size=max_body_size)
    app[GATEWAY_KEY] = gateway
    app.router.add_route("*", "/{tail:.*}", gateway.handle, expect_handler=gateway.expect_handler)
    return app
