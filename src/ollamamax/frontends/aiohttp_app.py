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
  (upstream credentials belong in ``HostConfig.headers``).  ``GET /`` and ``HEAD /`` need
  no key (liveness probes); ``/api/version`` does (see ``GatewayRules.refusal``).
* **Browsers** (``rules.py``, as Ollama).  CORS: an ``Origin`` that is not allowed gets 403
  on any method; a preflight (``OPTIONS`` from an allowed origin) gets 204 with the
  ``Access-Control-Allow-*`` headers; any other request from an allowed origin is served and
  every answer to it (errors included) carries ``Access-Control-Allow-Origin``.  Host check:
  on a loopback listener a request whose ``Host`` is not local gets 403 (DNS rebinding).
  Both come first, before the key check, in a middleware, so they cover the routes added to
  the app later (``/metrics``) and work the same when the app is mounted.
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
* **Slow clients**.  A client that accepts no bytes of its answer for ``send_timeout`` seconds
  (a write that does not drain) is disconnected and its request cancelled, which frees its
  host slot; answers are written inside the handler so this covers every answer.  A request
  body not fully arrived ``body_timeout`` seconds after the handler started gets 408 and the
  connection is closed.  The same polling timer checks both (precision: one interval).
* **Shutdown**.  A request still running when the grace period ends (:meth:`Gateway.end_streams`,
  called by the fast path's ``GatewayServer.close``; or, when the app is mounted, aiohttp's
  own shutdown giving up on a handler that reads a body) is cancelled; a stream it was writing gets
  the in-band error line in its dialect and the chunked end marker, an answer not yet started
  gets 503: the client always sees done-or-error, never a silent cut.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import HttpVersion11, web
from multidict import CIMultiDict

from ..wire.response import HOP_BY_HOP, DispatchResponse
from .accesslog import MODEL_KEY, PREPARED_KEY, model_from_body, request_key
from .request_head import head_problem
from .rules import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_SEND_TIMEOUT,
    ERROR_HEADERS,
    GatewayRules,
    OriginPolicy,
    gateway_error_body,
    shutdown_message,
)

__all__ = ["GATEWAY_KEY", "Gateway", "build_app"]

log = logging.getLogger("ollamamax.gateway")

_CORS_KEY = request_key("ollamamax_cors")  # the CORS headers every answer to it carries


class _Busy(Exception):
    """The budget of request bodies being received at once is spent (see GatewayRules.reserve)."""


class _BodyTimeout(Exception):
    """Set on a request's payload when its body did not arrive in time."""


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
        send_timeout: float | None = DEFAULT_SEND_TIMEOUT,
        body_timeout: float | None = DEFAULT_BODY_TIMEOUT,
        origins: OriginPolicy | str | Iterable[str] | None = None,
        listener_loopback: bool | None = None,
    ) -> None:
        if disconnect_check_interval <= 0:
            raise ValueError("disconnect_check_interval must be positive")
        self.rules = rules = GatewayRules(
            dispatcher, api_keys=api_keys, admin_keys=admin_keys, max_body_size=max_body_size,
            send_timeout=send_timeout, body_timeout=body_timeout, origins=origins,
            listener_loopback=listener_loopback,
        )
        self.dispatcher = dispatcher
        self.auth_enabled = rules.auth_enabled
        self.max_body_size = rules.max_body_size
        self.disconnect_check_interval = float(disconnect_check_interval)
        self._watch = _DisconnectWatch(self.disconnect_check_interval, rules.send_timeout)
        # the counters of the HTTP server in front of this app (set by the fast path's
        # start_server; read by the observability routes)
        self.http_stats: Any = None

    # ------------------------------------------------------------------ shutdown

    @property
    def stopping(self) -> bool:
        """True once the application's shutdown began (``on_shutdown``)."""
        return self._watch.stopping

    async def on_shutdown(self, app: web.Application) -> None:
        self._watch.stopping = True

    def running(self) -> list[asyncio.Task[Any]]:
        """The handler tasks of the requests in flight (on this app's connections)."""
        return self._watch.running()

    def end_streams(self, message: str | None = None) -> int:
        """The grace period is over: cancel every request still running; a stream gets
        ``message`` as its in-band error line and its end marker, an answer not yet started
        gets 503.  Returns how many were cut."""
        return self._watch.cut_all(message or shutdown_message(None))

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
        """The body, or ``None`` once it passes ``max_body_size``; raises :class:`_BodyTimeout`
        when it has not fully arrived ``body_timeout`` seconds after this call."""
        if not request.body_exists:
            return b""
        limit = self.max_body_size
        content = request.content
        if content.is_eof():  # fast path: the whole (small) body is already buffered
            data = content.read_nowait()
            return data if len(data) <= limit else None
        timeout = self.rules.body_timeout
        timer = None
        if timeout is not None:  # wakes the read below with the error
            timer = asyncio.get_running_loop().call_later(
                timeout, content.set_exception, _BodyTimeout())
        rules = self.rules
        size = 0
        try:
            parts: list[bytes] = []
            while True:
                chunk = await content.readany()
                if not chunk:
                    break
                if size + len(chunk) > limit:
                    return None
                if not rules.reserve(len(chunk)):  # shared with the fast path's bodies
                    raise _Busy
                size += len(chunk)
                parts.append(chunk)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        finally:
            rules.release(size)
            if timer is not None:
                timer.cancel()

    # ------------------------------------------------------------------ the handler

    @staticmethod
    def _path(request: web.Request) -> str:
        tail = request.match_info.get("tail")
        return "/" + tail if tail is not None else request.path

    def guard(self, request: web.Request) -> web.Response | None:
        """CORS and the Host check, before anything else (Ollama runs gin-cors, then
        ``allowedHostsMiddleware``): 403 for an origin not allowed or a Host not local, 204
        for a preflight; for an allowed cross-origin request, notes the headers every answer
        to it gets (added by :meth:`on_response_prepare`).  ``None``: go on."""
        headers = request.headers
        host = headers.get("Host")
        problem = head_problem(f"{request.version.major}.{request.version.minor}", host)
        if problem is not None:  # HTTP/2.0 in an HTTP/1 request line; HTTP/1.1 without Host
            resp = self.error_response(self._path(request), problem[0], problem[1])
            resp.force_close()
            return resp
        rules = self.rules
        decision = rules.cors(request.method, headers.get("Origin"), host)
        action = decision.action
        if action == "refuse":
            return self._forbidden(request, "forbidden: origin not allowed")
        if action == "preflight":
            return web.Response(status=204, headers=decision.headers)
        if action == "allow":
            request[_CORS_KEY] = decision.headers
        if not rules.host_allowed(host):
            return self._forbidden(request, "forbidden: host not allowed")
        return None

    def _forbidden(self, request: web.Request, message: str) -> web.Response:
        resp = self.error_response(self._path(request), 403, message)
        if request.body_exists:
            resp.force_close()  # do not wait for (or read) a body we refuse
        return resp

    async def on_response_prepare(self, request: web.BaseRequest,
                                  response: web.StreamResponse) -> None:
        """Every answer to an allowed cross-origin request carries the CORS headers; the
        access log learns when the status line went out."""
        cors = request.get(_CORS_KEY)
        if cors:
            response.headers.update(cors)
        request[PREPARED_KEY] = asyncio.get_running_loop().time()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        refused = self.guard(request)
        if refused is not None:
            return refused
        return await handler(request)

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
        refused = self.guard(request) or self.precheck(request, self._path(request))
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
        resp: DispatchResponse | None = None
        out: web.StreamResponse | None = None
        tail = b""  # the last chunk of a stream written so far
        ended = False  # the stream's end marker went out
        try:
            try:
                body = await self._read_body(request)
            except _BodyTimeout:
                resp408 = self.error_response(path, 408, self.rules.body_timeout_message())
                resp408.force_close()
                return resp408
            except _Busy:
                log.info("request bodies being received hold %d bytes (limit %d); refusing one more",
                         self.rules.receiving, self.rules.max_receiving)
                resp503 = self.error_response(path, 503, self.rules.busy_message(), headers={"Retry-After": "1"})
                resp503.force_close()
                return resp503
            if body is None:
                return self._too_large(path, "body")
            request[MODEL_KEY] = model_from_body(body)
            try:
                resp = await self.dispatcher.handle(
                    method, path, body, headers, query=request.rel_url.raw_query_string,
                    tenant=self.rules.tenant_of(request.headers.get("Authorization")),
                )
            except Exception:
                log.exception("dispatcher failed on %s %s", method, path)
                return self.error_response(path, 500, "internal error in ollamamax gateway")
            try:
                out_headers = self._out_headers(resp.headers)
                if resp.stream is None:
                    # written here, not by aiohttp after the handler returns, so that the
                    # send timeout covers it too
                    out = web.Response(status=resp.status, headers=out_headers,
                                       body=resp.body or b"")
                    watch.sending(task)
                    try:
                        await out.prepare(request)
                        await out.write_eof()
                    except (ConnectionError, OSError):
                        log.debug("client disconnected during %s %s", method, path)
                    watch.sent(task)
                    return out
                out = web.StreamResponse(status=resp.status, headers=out_headers)
                await out.prepare(request)
                stream = resp.stream
                # a stream that can tell its last chunk lets it go out with the end marker
                # (and, for a short stream, with the headers): one write instead of two
                at_eof = getattr(stream, "at_eof", None)
                try:
                    async for chunk in stream:
                        if chunk:
                            tail = chunk
                            watch.sending(task)
                            if at_eof is not None and at_eof():
                                ended = True
                                await out.write_eof(chunk)
                            else:
                                await out.write(chunk)
                            watch.sent(task)
                    ended = True
                    await out.write_eof()  # no-op when already ended
                except (ConnectionError, OSError):  # client went away mid-write
                    log.debug("client disconnected during %s %s", method, path)
                return out
            finally:
                watch.discard(task)  # nothing of ours may interrupt the close
                await resp.aclose()
        except asyncio.CancelledError:
            message = watch.was_cut(task)
            if message is None:
                raise
            # the grace period is over: end with done-or-error, never a silent cut
            if task is not None and hasattr(task, "uncancel"):
                task.uncancel()
            if out is None or not out.prepared:
                refused = self.error_response(path, 503, message)
                refused.force_close()
                return refused
            if resp is not None and resp.stream is not None and not ended:
                out.force_close()
                try:
                    await out.write_eof(self.rules.stream_end(path, resp.headers, message, tail))
                except (ConnectionError, OSError):
                    pass
                return out
            raise
        finally:
            watch.discard(task)


class _DisconnectWatch:
    """Cancels a handler's task when its client's transport closes, when a write to it has
    not drained for ``send_timeout`` seconds (the transport is aborted too), or when the
    gateway's shutdown ends it (:meth:`cut_all`, or aiohttp's shutdown giving up on it).

    One polling timer per gateway serves every in-flight request (registering is a dict
    insert, not a timer per request); it ticks every ``interval`` seconds while any request
    is registered, so a closed client is noticed within about one interval.
    """

    __slots__ = ("_interval", "_entries", "_handle", "_loop", "_sending", "_unsent",
                 "_send_timeout", "_cut", "stopping")

    def __init__(self, interval: float, send_timeout: float | None = None) -> None:
        self._interval = interval
        self._entries: dict[asyncio.Task[Any], web.BaseRequest] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sending: dict[asyncio.Task[Any], float] = {}  # task -> when its write began
        # task -> unsent bytes when its write was last seen making progress
        self._unsent: dict[asyncio.Task[Any], int] = {}
        self._send_timeout = send_timeout
        self._cut: dict[asyncio.Task[Any], str] = {}  # tasks ended by shutdown -> message
        self.stopping = False

    def sending(self, task: asyncio.Task[Any] | None) -> None:
        """``task`` starts a write to its client (it may wait for the client to read)."""
        if task is not None and self._send_timeout is not None and self._loop is not None:
            self._sending[task] = self._loop.time()

    def sent(self, task: asyncio.Task[Any] | None) -> None:
        if self._sending.pop(task, None) is not None:  # type: ignore[arg-type]
            self._unsent.pop(task, None)  # type: ignore[arg-type]

    def running(self) -> list[asyncio.Task[Any]]:
        return [t for t in self._entries if not t.done()]

    def cut_all(self, message: str) -> int:
        """Cancel every registered request; :meth:`was_cut` tells each one why."""
        tasks = [t for t in self._entries if not t.done()]
        for task in tasks:
            self._cut[task] = message
            task.cancel()
        return len(tasks)

    def was_cut(self, task: asyncio.Task[Any] | None) -> str | None:
        """The shutdown message if ``task`` was cancelled by the gateway's shutdown."""
        return self._cut.pop(task, None) if task is not None else None  # type: ignore[arg-type]

    def add(self, request: web.BaseRequest, task: asyncio.Task[Any] | None) -> None:
        if task is None:
            return
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or the gateway moved to another loop
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None
            self._entries.clear()
            self._sending.clear()
            self._unsent.clear()
            self._cut.clear()
            self._loop = loop
        self._entries[task] = request
        if self._handle is None:
            self._handle = loop.call_later(self._interval, self._check)

    def discard(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self._entries.pop(task, None)
            self._sending.pop(task, None)
            self._unsent.pop(task, None)

    def _check(self) -> None:
        self._handle = None
        entries = self._entries
        gone = []
        stuck = []
        cut = []
        sending = self._sending
        timeout = self._send_timeout
        now = self._loop.time() if self._loop is not None else 0.0
        for task, request in entries.items():
            transport = request.transport
            if transport is None or transport.is_closing():
                gone.append(task)
                continue
            if timeout is not None and task in sending:
                # a write in progress: what is unsent is noted at the first tick that sees
                # it; once the write has waited send_timeout, it is stuck unless that shrank
                unsent = transport.get_write_buffer_size()
                noted = self._unsent.setdefault(task, unsent)
                if now - sending[task] >= timeout:
                    if unsent < noted:  # the client read something: another period
                        self._unsent[task] = unsent
                        sending[task] = now
                    else:
                        stuck.append(task)
                        continue
            if self.stopping and isinstance(request.content.exception(), asyncio.CancelledError):
                # aiohttp's shutdown stopped waiting for this handler (it set the payload's
                # exception); the grace period is over
                cut.append(task)
        for task in gone:
            request = entries.pop(task)
            log.debug("client gone; cancelling %s %s", request.method, request.path)
            task.cancel()
        for task in stuck:
            request = entries.pop(task)
            sending.pop(task, None)
            self._unsent.pop(task, None)
            log.info("client %s accepted no bytes for %g s; disconnecting it (%s %s)",
                     request.remote, timeout, request.method, request.path)
            transport = request.transport
            if transport is not None:
                transport.abort()
            task.cancel()
        for task in cut:
            self._cut[task] = shutdown_message(None)
            entries.pop(task)
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
    send_timeout: float | None = DEFAULT_SEND_TIMEOUT,
    body_timeout: float | None = DEFAULT_BODY_TIMEOUT,
    origins: OriginPolicy | str | Iterable[str] | None = None,
    listener_loopback: bool | None = None,
) -> web.Application:
    """An aiohttp application serving the Ollama and OpenAI APIs through ``dispatcher``
    (a started :class:`~ollamamax.dispatch.Dispatcher`, or anything with the same
    ``handle()``; the application does not own it and never closes it).  Its
    :class:`Gateway` is at ``app[GATEWAY_KEY]``.  Every method and path goes to it;
    routes added to ``app`` later (e.g. ``/metrics``) still win, because aiohttp (>= 3.10)
    resolves the most specific path first.

    ``send_timeout``: a client that accepts no bytes of its answer for this many seconds is
    disconnected (its request is cancelled, its host slot freed); ``body_timeout``: a request
    body must have arrived this many seconds after its head, else 408.  None: no limit.

    ``origins``: origins browsers may call from besides Ollama's defaults (a list, a
    comma-separated string or an ``OriginPolicy``; None: the defaults plus
    ``OLLAMA_ORIGINS`` from the environment, as Ollama).  ``listener_loopback``: whether
    the server listens on a loopback address, which turns on Ollama's Host check (None:
    not known, no check; ``ollamamax serve`` passes it; pass True when mounting the app in
    a service that listens on 127.0.0.1 or ::1)."""
    gateway = Gateway(dispatcher, api_keys=api_keys, admin_keys=admin_keys,
                      max_body_size=max_body_size,
                      disconnect_check_interval=disconnect_check_interval,
                      send_timeout=send_timeout, body_timeout=body_timeout,
                      origins=origins, listener_loopback=listener_loopback)
    # client_max_size only matters if someone calls request.read(); the gateway counts itself.
    app = web.Application(client_max_size=max_body_size, middlewares=[gateway.middleware])
    app[GATEWAY_KEY] = gateway
    app.on_shutdown.append(gateway.on_shutdown)
    app.on_response_prepare.append(gateway.on_response_prepare)
    app.router.add_route("*", "/{tail:.*}", gateway.handle, expect_handler=gateway.expect_handler)
    return app
