"""The gateway's HTTP server: a lean HTTP/1.1 fast path in front of the aiohttp application.

``ollamamax serve`` listens with :func:`start_server`.  Every connection starts on
:class:`_FastProtocol`, a small ``asyncio.Protocol`` that serves the common request shape
itself -- ``GET``/``POST``/``DELETE`` over HTTP/1.1 with a plain path and a ``Content-Length``
body (or none) -- straight into the shared ``GatewayRules`` and ``Dispatcher.handle``: the head
is split with ``bytes.find``, the answer goes out as one prebuilt write, a stream as chunked frames written
as they arrive (the response head travels with the first chunk, the end marker with the last).

Anything else is *handed over*: the connection, with every byte read so far, is given to the
aiohttp application's own protocol (``transport.set_protocol``), which then owns it for good.
That covers HTTP/1.0, ``Transfer-Encoding`` request bodies, ``Expect: 100-continue``,
``Upgrade``, ``HEAD``, %-escaped or dot-segment paths, oversized or malformed heads and bodies
over the size limit, and the observability routes (``/metrics``, ``/ollamamax...``).  So the
fast path never has to be right about a corner of HTTP: aiohttp answers those exactly as
before, and both paths share one set of rules (``rules.py``: auth, size limit, error shapes)
and the same hop-by-hop filtering.

Why: under load, aiohttp's server side (request object, router, response object, header
serialisation, payload writer) was about a third of the gateway's CPU; see the README's
gateway overhead section for the figures before and after.

Behaviour kept from the aiohttp front end: a client that disconnects cancels its request at
once (the dispatcher drops the upstream request); keep-alive connections idle longer than
``keepalive_timeout`` are closed (one sweep timer per server, not a timer per request);
pipelined requests are answered in order; writes respect the transport's flow control;
shutdown stops listening, closes idle connections and waits up to the grace period for
requests in flight.

Limits no client can exhaust (the same on the handed-over connections, through the app):

* **send timeout** (``rules.send_timeout``): a client whose transport stays paused (it
  accepts no bytes) that long is aborted, which cancels its request and frees its host slot;
  the sweep does the same to an idle connection whose unsent answer does not shrink;
* **body timeout** (``rules.body_timeout``): a body not complete that long after its head
  gets 408 and the connection is closed (a timer only while a body is pending);
* **connection cap** (``max_connections``): connections on both paths are counted (a handed
  over one still counts until it closes); one over the cap gets a 503 in the route's
  dialect with ``Retry-After`` and is closed, or, when many are being refused at once,
  is aborted as soon as it is accepted;
* **grace expiry**: what still runs when ``GatewayServer.close``'s grace period ends is
  cancelled; a stream gets the in-band error line in its dialect and the chunked end marker,
  an answer not yet begun gets 503.  Done-or-error, never a silent cut.
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from ..wire.response import HOP_BY_HOP
from .aiohttp_app import GATEWAY_KEY, Gateway
from .accesslog import format_access, log_line, model_from_body
from .badrequests import quiet_malformed_requests
from .request_head import MAX_LINE, PROBE_LIMIT, BadHead, hopeless, parse_request_head
from .connections import FastStats, ServerState
from .rules import ERROR_HEADERS, GatewayRules, Refusal, gateway_error_body, shutdown_message

__all__ = ["GatewayServer", "start_server", "FastStats"]

log = logging.getLogger("ollamamax.gateway")

MAX_HEAD = 16 * 1024  # a longer request head is handed to aiohttp (which answers 431/400)
BIG_BODY = 64 * 1024  # a body at least this long is received in place (see _fill)
PREALLOCATE = 16 * 1024 * 1024  # ... into one buffer of its size up to this; a larger one grows
PAUSE_BUFFER = 256 * 1024  # pipelined bytes buffered while a request runs before reading pauses
REJECT_WAIT = 1.0  # a connection over the cap: how long to wait for its request line
REJECT_LINGER = 1.0  # ... and, once answered 503, to read (and drop) what it still sends
REJECT_BACKLOG = 32  # connections being refused at once; beyond that, aborted when accepted
FLUSH_AFTER_GRACE = 1.0  # after the grace period: time to send the last error lines
_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}
_TERMINATOR = b"0\r\n\r\n"


class _FastProtocol(asyncio.Protocol):
    __slots__ = ("_s", "_transport", "_buf", "task", "last", "_paused", "_drain", "_reading",
                 "_gone", "_timer", "_rejecting", "_unsent", "_unsent_since", "_send_timer",
                 "_drain_unsent", "_body", "_filled", "_pending", "_sent", "_first_write", "_want")

    def __init__(self, shared: ServerState) -> None:
        self._s = shared
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.last = 0.0
        self._paused = False  # the transport asked us to stop writing
        self._drain: asyncio.Future[None] | None = None
        self._reading = True
        self._gone = False  # the connection is closed, or no longer ours (handed over)
        # a large body being received: filled in place as it arrives (no copy at the end, no
        # head parsing per chunk); _pending is the request it belongs to
        self._body: bytearray | None = None
        self._filled = 0
        self._want = 0  # its announced size
        self._pending: tuple[str, str, str, CIMultiDict[str], str | None, bool] | None = None
        self._timer: asyncio.TimerHandle | None = None  # body timeout, or refusing (over the cap)
        self._rejecting = 0  # 1: over the cap, waiting for the request line; 2: answered 503
        self._unsent = 0  # write buffer size at the last sweep ...
        self._unsent_since = 0.0  # ... and since when it has been that size
        self._send_timer: asyncio.TimerHandle | None = None  # while a write waits to drain
        self._drain_unsent = 0  # write buffer size when that timer was armed
        self._sent = 0  # bytes written for the request running (for the access log)
        self._first_write: float | None = None  # ... and when the first of them went out

    # ------------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        s = self._s
        if s.max_connections is not None and s.full():
            self._reject()
            return
        self.last = s.loop.time()
        s.add(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._gone = True
        self._cancel_timer()
        self._drop_body()
        if self._rejecting:
            self._rejecting = 0
            self._s.rejecting -= 1
            return
        self._s.conns.discard(self)
        task = self.task
        if task is not None:  # the client went away: stop its request now
            task.cancel()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionResetError("client disconnected"))
            drain.exception()  # retrieved: nobody may be waiting any more
        self._drain = None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        drain = self._drain
        if drain is not None:
            self._drain = None
            if not drain.done():
                drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._rejecting:
            if self._rejecting == 1:
                self._buf += data
                self._refuse()
            return  # after the 503: read and dropped
        body = self._body
        if body is not None:
            data = self._fill(body, data)
            if not data:
                return
        self._buf += data
        if self.task is None:
            self._next()
        elif len(self._buf) > PAUSE_BUFFER and self._reading:
            self._reading = False
            self._transport.pause_reading()  # type: ignore[union-attr]

    def eof_received(self) -> None:
        # Like aiohttp: a client that shuts down its sending side has gone away (returning
        # None lets the transport close, so connection_lost cancels what is running).
        return None

    def _resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self._transport.resume_reading()  # type: ignore[union-attr]

    def close(self) -> None:
        t = self._transport
        if not self._gone and t is not None and not t.is_closing():
            t.close()

    def abort(self) -> None:
        t = self._transport
        if t is not None and not self._gone:
            t.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def stuck(self, now: float, timeout: float) -> bool:
        """True when this connection has had unsent bytes, never shrinking, for ``timeout``
        seconds (checked by the sweep on connections with no request running)."""
        t = self._transport
        size = t.get_write_buffer_size() if t is not None else 0
        if size == 0 or size != self._unsent:
            self._unsent = size
            self._unsent_since = now
            return False
        return now - self._unsent_since >= timeout

    # ------------------------------------------------------------------ over the cap

    def _reject(self) -> None:
        """Over ``max_connections``: answer 503 once the request line is here, or abort at
        once when many connections are being refused already."""
        s = self._s
        s.stats.rejected += 1
        self._gone = True  # never served
        if s.rejecting >= REJECT_BACKLOG:
            self._transport.abort()  # type: ignore[union-attr]
            return
        s.rejecting += 1
        self._rejecting = 1
        self._timer = s.loop.call_later(REJECT_WAIT, self._refuse)

    def _refuse(self) -> None:
        """Send the 503 (the dialect from the request line, if it came), stop sending, and
        keep reading what the client still sends for a moment so that closing does not
        reset the connection before the client read the answer."""
        if self._rejecting != 1:
            return
        self._rejecting = 2
        self._cancel_timer()
        t = self._transport
        assert t is not None
        line = bytes(self._buf[:self._buf.find(b"\r\n")] if b"\r\n" in self._buf else self._buf)
        parts = line.split(b" ")
        path = parts[1].decode("latin-1") if len(parts) == 3 else "/"
        self._buf = bytearray()
        cap = self._s.max_connections
        body = gateway_error_body(
            path, 503, f"ollamamax gateway has too many connections (limit {cap}); retry later")
        head = [b"HTTP/1.1 503 Service Unavailable\r\n"]
        head += [f"{k}: {v}\r\n".encode() for k, v in ERROR_HEADERS.items()]
        head.append(b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n" % len(body))
        head.append(self._s.date())
        t.write(b"".join(head) + b"\r\n" + body)
        if t.can_write_eof():
            t.write_eof()
        self._timer = self._s.loop.call_later(REJECT_LINGER, t.abort)

    # ------------------------------------------------------------------ requests

    def _handover(self) -> None:
        """Give this connection, and what it has sent so far, to the aiohttp protocol."""
        s = self._s
        s.conns.discard(self)
        s.stats.handed_over += 1
        self._gone = True
        self._cancel_timer()
        transport = self._transport
        assert transport is not None
        s.handed.add(transport)
        data = bytes(self._buf)
        self._buf = bytearray()
        proto = s.fallback()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        self._resume_reading()
        if data:
            proto.data_received(data)  # type: ignore[attr-defined]

    def _next(self) -> None:
        """Start the next complete request in the buffer, if there is one."""
        if self._gone:
            return
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0 and hopeless(bytes(buf[:PROBE_LIMIT])):
            # it can never become a request (TLS bytes, bare line feeds): aiohttp answers
            # now rather than the sweep in 75 s
            self._handover()
            return
        if len(buf) > MAX_LINE and buf.find(b"\r\n", 0, MAX_LINE + 2) < 0:
            self._refuse_head(BadHead(414, f"request line longer than {MAX_LINE} bytes", "/"))
            return
        if end < 0 or end > MAX_HEAD:
            if end > MAX_HEAD or len(buf) > MAX_HEAD:
                self._handover()  # too long for us: aiohttp answers 431/400
            return
        head = parse_request_head(bytes(buf[:end]), self._s.rules.max_body_size)
        if head is None:
            self._handover()  # a request shape aiohttp's rules decide (see request_head.py)
            return
        if isinstance(head, BadHead):
            self._refuse_head(head)
            return
        method, path, query, headers, length, close = head
        total = end + 4 + length
        s = self._s
        authorization = headers.get("Authorization")
        if len(buf) < total:
            self.last = s.loop.time()  # the body is still arriving: not idle
            rules = s.rules
            if _refusal(rules, method, path, headers, authorization) is not None:
                # refuse on the head alone: a body nobody may send is never read
                del buf[:end + 4]
                self.task = s.loop.create_task(
                    self._serve(method, path, query, headers, b"", authorization, True))
                return
            if self._timer is None and rules.body_timeout is not None:
                self._timer = s.loop.call_later(rules.body_timeout, self._body_timed_out, path)
            if length >= BIG_BODY:
                # receive the rest in place: one buffer of the announced size, within the
                # bytes all connections may hold in bodies being received at once
                if not rules.reserve(length):
                    del buf[:end + 4]
                    self._refuse_busy(path)
                    return
                have = len(buf) - end - 4
                if length <= PREALLOCATE:
                    body = bytearray(length)
                    body[:have] = memoryview(buf)[end + 4:]
                else:  # grown as it arrives: an announced size is not memory taken at once
                    body = bytearray(memoryview(buf)[end + 4:])
                del buf[:]
                self._body, self._filled, self._want = body, have, length
                self._pending = (method, path, query, headers, authorization, close)
            return
        if self._timer is not None:
            self._cancel_timer()
        small = bytes(buf[end + 4:total])
        del buf[:total]
        self._start(method, path, query, headers, small, authorization, close)

    def _fill(self, body: bytearray, data: bytes) -> bytes:
        """Copy ``data`` into the large body being received; return what is left over (the
        next pipelined request's bytes), after starting the request once the body is whole."""
        want = self._want
        n = min(len(data), want - self._filled)
        part = memoryview(data)[:n] if n < len(data) else data
        if len(body) == want:  # preallocated
            body[self._filled:self._filled + n] = part
        else:
            body += part
        self._filled += n
        if self._filled < want:
            self.last = self._s.loop.time()
            return b""
        pending = self._pending
        assert pending is not None
        self._drop_body()
        if self._timer is not None:
            self._cancel_timer()
        method, path, query, headers, authorization, close = pending
        self._start(method, path, query, headers, body, authorization, close)
        return data[n:]

    def _drop_body(self) -> None:
        """Forget the large body being received (its bytes leave the shared budget)."""
        if self._body is not None:
            self._s.rules.release(self._want)
        self._body = self._pending = None

    def _refuse_head(self, bad: BadHead) -> None:
        """Answer a head that is wrong whoever parses it (see request_head.py), and close."""
        self._buf = bytearray()
        log.debug("refused a request head: %d %s", bad.status, bad.message)
        try:
            self._write_error(bad.path, bad.status, bad.message, None, None, True)
        except ConnectionError:
            pass
        self._gone_after_answer()

    def _refuse_busy(self, path: str) -> None:
        """Too many large bodies are being received at once: 503 with Retry-After before
        reading this one (the connection closes, as its body is not read)."""
        s = self._s
        log.info("request bodies being received hold %d bytes (limit %d); refusing one more",
                 s.rules.receiving, s.rules.max_receiving)
        self._buf = bytearray()
        try:
            self._write_error(path, 503, s.rules.busy_message(), None, {"Retry-After": "1"}, True)
        except ConnectionError:
            pass
        self._gone_after_answer()

    def _gone_after_answer(self) -> None:
        """Close after the answer just written; read nothing more from this client."""
        self._s.conns.discard(self)
        self._gone = True
        self._cancel_timer()
        t = self._transport
        if t is not None and not t.is_closing():
            t.close()

    def _start(self, method: str, path: str, query: str, headers: CIMultiDict[str], body: bytes | bytearray,
               authorization: str | None, close: bool) -> None:
        s = self._s
        if authorization is not None and s.rules.auth_enabled:
            del headers["Authorization"]  # the gateway's credentials are not passed on
        s.stats.fast_requests += 1
        self.task = s.loop.create_task(
            self._serve(method, path, query, headers, body, authorization, close))

    def _body_timed_out(self, path: str) -> None:
        """The body did not arrive in ``body_timeout`` seconds: 408, and close."""
        self._timer = None
        if self._gone or self.task is not None:
            return
        self._buf = bytearray()
        self._drop_body()
        rules = self._s.rules
        log.info("request body did not arrive within %g s; closing the connection",
                 rules.body_timeout)
        try:
            self._write_error(path, 408, rules.body_timeout_message(), None, None, True)
        except ConnectionError:
            pass
        self.close()

    async def _serve(self, method: str, path: str, query: str, headers: CIMultiDict[str],
                     body: bytes | bytearray, authorization: str | None, close: bool) -> None:
        s = self._s
        rules = s.rules
        started = s.loop.time()
        status = 0
        answered = False
        self._sent, self._first_write = 0, None
        resp_headers: Mapping[str, str] | None = None  # a dispatcher's answer
        error_headers: Mapping[str, str] | None = None  # ... or one of ours
        try:
            refused = _refusal(rules, method, path, headers, authorization)
            if refused is not None:
                status, error_headers = refused.status, ERROR_HEADERS
                self._write_error(path, refused.status, refused.message, refused.code,
                                  refused.headers, close)
                return
            try:
                resp = await rules.dispatcher.handle(method, path, body, headers, query=query,
                                                     tenant=rules.tenant_of(authorization))
            except Exception:
                log.exception("dispatcher failed on %s %s", method, path)
                status, error_headers = 500, ERROR_HEADERS
                self._write_error(path, 500, "internal error in ollamamax gateway", None, None,
                                  close)
                return
            try:
                status = resp.status
                resp_headers = resp.headers
                close = close or s.closing  # shutting down: this is the last answer
                answered = True
                await self._respond(resp, close, path)
            finally:
                await resp.aclose()
        except (ConnectionError, OSError):
            log.debug("client disconnected during %s %s", method, path)
            close = True
        except asyncio.CancelledError:
            close = True
            if not self._gone:
                message = s.end_message
                if message is None:
                    raise  # cancelled by the server's shutdown, not by the client
                # the grace period ended before an answer: say so rather than cut
                _uncancel()
                if not answered:
                    status = 503
                    try:
                        self._write_error(path, 503, message, None, None, True)
                    except ConnectionError:
                        pass
        finally:
            self.task = None
            self.last = s.loop.time()
            if s.access is not None:
                first = self._first_write
                log_line(s.access, format_access(
                    method, path, status, resp_headers or error_headers, None if first is None else first - started,
                    self.last - started, self._sent, _peer(self._transport),
                    model_from_body(body) if resp_headers is not None else None))  # refused: unread
            if close or s.closing:
                self.close()
            elif not self._gone:
                self._resume_reading()
                if self._buf:
                    self._next()

    def _head(self, status: int, headers: Mapping[str, str], framing: bytes, close: bool) -> bytes:
        out = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
        for k, v in headers.items():
            if k.lower() not in HOP_BY_HOP:
                out.append(f"{k}: {v}\r\n".encode("utf-8", "surrogateescape"))
        s = self._s
        out.append(s.date())
        out.append(s.extra)
        out.append(framing)
        if close:
            out.append(b"Connection: close\r\n")
        out.append(b"\r\n")
        return b"".join(out)

    def _write_error(self, path: str, status: int, message: str, code: str | None,
                     headers: Mapping[str, str] | None, close: bool) -> None:
        body = gateway_error_body(path, status, message, code)
        hdrs = ERROR_HEADERS if not headers else {**ERROR_HEADERS, **headers}
        self._write(self._head(status, hdrs, b"Content-Length: %d\r\n" % len(body), close) + body)

    def _write(self, data: bytes) -> None:
        t = self._transport
        if self._gone or t is None or t.is_closing():
            raise ConnectionResetError("client disconnected")
        t.write(data)
        self._sent += len(data)
        if self._first_write is None:
            self._first_write = self._s.loop.time()

    async def _drained(self) -> None:
        """Wait until the transport takes writes again (called when paused); a client that
        accepts no bytes for ``send_timeout`` seconds is aborted (which cancels the request).
        A slow reader that makes progress is not: the timer checks that the unsent bytes
        shrank and, if they did, waits again."""
        if not self._gone:
            s = self._s
            fut = s.loop.create_future()
            self._drain = fut
            timeout = s.rules.send_timeout
            if timeout is None:
                await fut
                return
            t = self._transport
            self._drain_unsent = t.get_write_buffer_size() if t is not None else 0
            self._send_timer = s.loop.call_later(timeout, self._send_timed_out, timeout)
            try:
                await fut
            finally:
                if self._send_timer is not None:
                    self._send_timer.cancel()
                    self._send_timer = None

    def _send_timed_out(self, timeout: float) -> None:
        self._send_timer = None
        if self._gone or not self._paused:
            return
        t = self._transport
        unsent = t.get_write_buffer_size() if t is not None else 0
        if unsent < self._drain_unsent:  # the client read something: another period
            self._drain_unsent = unsent
            self._send_timer = self._s.loop.call_later(timeout, self._send_timed_out, timeout)
            return
        log.info("client accepted no bytes for %g s; disconnecting it", timeout)
        self.abort()  # connection_lost cancels the request, which frees its host slot

    async def _respond(self, resp: Any, close: bool, path: str = "/") -> None:
        stream = resp.stream
        if stream is None:
            body = resp.body or b""
            self._write(self._head(resp.status, resp.headers,
                                   b"Content-Length: %d\r\n" % len(body), close) + body)
            return
        pending: bytes | None = self._head(resp.status, resp.headers,
                                           b"Transfer-Encoding: chunked\r\n", close)
        at_eof = getattr(stream, "at_eof", None)
        ended = False
        tail = b""
        try:
            async for chunk in stream:
                if not chunk:
                    continue
                tail = chunk
                frame = b"%x\r\n%b\r\n" % (len(chunk), chunk)
                if at_eof is not None and at_eof():
                    frame += _TERMINATOR
                    ended = True
                if pending is not None:
                    frame = pending + frame
                    pending = None
                self._write(frame)
                if self._paused:
                    await self._drained()
                if ended:
                    return
        except asyncio.CancelledError:
            message = self._s.end_message
            if self._gone or message is None or ended:
                raise
            # the grace period is over: end the stream with an in-band error, then the end
            # marker (the connection closes after it)
            _uncancel()
            line = self._s.rules.stream_end(path, resp.headers, message, tail)
            frame = b"%x\r\n%b\r\n" % (len(line), line) + _TERMINATOR
            self._write(frame if pending is None else pending + frame)
            return
        self._write(_TERMINATOR if pending is None else pending + _TERMINATOR)


def _refusal(rules: GatewayRules, method: str, path: str, headers: CIMultiDict[str],
             authorization: str | None) -> Refusal | None:
    """What the head alone refuses, in Ollama's order: a Host that is not local on a loopback
    listener (403, DNS rebinding; ``rules.host_allowed``), then the key (401/403)."""
    if not rules.host_allowed(headers.get("Host")):
        return Refusal(403, "forbidden: host not allowed", None, None)
    return rules.refusal(method, path, authorization) if rules.auth_enabled else None


def _peer(transport: asyncio.Transport | None) -> Any:
    return transport.get_extra_info("peername") if transport is not None else None


def _uncancel() -> None:
    """A cancellation handled for good (Python >= 3.11 counts them per task)."""
    task = asyncio.current_task()
    if task is not None and hasattr(task, "uncancel"):
        task.uncancel()


class GatewayServer:
    """A listening gateway: the fast path plus the aiohttp application behind it."""

    def __init__(self, runner: web.AppRunner, server: asyncio.Server, shared: ServerState,
                 gateway: Gateway | None = None) -> None:
        self.runner = runner
        self.server = server
        self._shared = shared
        self._gateway = gateway

    @property
    def stats(self) -> FastStats:
        return self._shared.stats

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(self.server.sockets or ())

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        """Client connections open now on both paths (what ``max_connections`` caps)."""
        s = self._shared
        s._prune_handed()
        return len(s.conns) + len(s.handed)

    async def close(self, grace: float = 10.0) -> None:
        """Stop listening; close idle connections; give requests in flight (on both paths)
        ``grace`` seconds; then cancel what is left: a stream ends with the in-band error line
        in its dialect and the end marker, an unanswered request gets 503; then close every
        connection (after up to ``FLUSH_AFTER_GRACE`` seconds to send those last bytes) and
        clean up the application (its ``on_cleanup`` hooks run)."""
        s = self._shared
        gateway = self._gateway
        self.server.close()
        s.stop_sweeping()

        def running() -> list[asyncio.Task[Any]]:
            tasks = [c.task for c in s.conns if c.task is not None]
            if gateway is not None:
                tasks += gateway.running()
            return tasks

        async def drain() -> None:
            for conn in list(s.conns):
                if conn.task is None:
                    conn.close()
            deadline = s.loop.time() + grace
            while s.loop.time() < deadline:
                tasks = running()
                if not tasks:
                    break
                await asyncio.wait(tasks, timeout=max(0.0, deadline - s.loop.time()))
            message = shutdown_message(grace)
            s.end_message = message
            cut = [c.task for c in s.conns if c.task is not None]
            for task in cut:
                task.cancel()
            n = len(cut) + (gateway.end_streams(message) if gateway is not None else 0)
            if n:
                log.warning("grace period of %g s over: ending %d request(s) in flight with an "
                            "error", grace, n)
            flush_deadline = s.loop.time() + FLUSH_AFTER_GRACE
            tasks = running()
            if tasks:
                await asyncio.wait(tasks, timeout=FLUSH_AFTER_GRACE)
            for conn in list(s.conns):
                conn.close()  # sends what is buffered first
            while (s.conns or any(not t.is_closing() for t in s.handed)) and \
                    s.loop.time() < flush_deadline:
                await asyncio.sleep(0.02)
            for conn in list(s.conns):
                conn.abort()  # a client that does not read its last bytes
            for transport in s.handed:
                transport.abort()
            s.handed.clear()

        await asyncio.gather(drain(), self.runner.cleanup())
        await self.server.wait_closed()


async def start_server(app: web.Application, host: str | None, port: int, *,
                       reuse_port: bool | None = None, backlog: int = 1024,
                       extra_headers: Mapping[str, str] | None = None,
                       keepalive_timeout: float = 75.0, access_log: logging.Logger | None = None,
                       max_connections: int | None = None,
                       **runner_kw: Any) -> GatewayServer:
    """Listen on ``host:port`` with the fast path in front of ``app`` (from ``create_app`` or
    ``build_app``; its ``send_timeout`` and ``body_timeout`` apply on both paths).

    ``max_connections``: client connections at once, on both paths (None or 0: no cap;
    ``ollamamax serve`` derives one from the descriptor limit); one more gets 503 with
    ``Retry-After`` and is closed.

    ``extra_headers`` are added to every fast-path response (add the same ones to the app
    with ``on_response_prepare`` for the handed-over connections); ``runner_kw`` go to
    :class:`aiohttp.web.AppRunner` (``handler_cancellation=True`` is the default here).
    ``access_log``: a logger for one line per request on either path (None: no access log).
    """
    gateway = app.get(GATEWAY_KEY)
    if gateway is None:
        raise ValueError("start_server needs an application made by create_app()")
    quiet_malformed_requests()
    runner_kw.setdefault("handler_cancellation", True)
    runner_kw.setdefault("keepalive_timeout", keepalive_timeout)
    runner = web.AppRunner(app, access_log=access_log, **runner_kw)
    await runner.setup()
    try:
        fallback = runner.server  # aiohttp's protocol factory (web.Server), set by setup()
        assert fallback is not None
        shared = ServerState(gateway.rules, fallback, extra_headers or {}, keepalive_timeout,
                              access_log, max_connections)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _FastProtocol(shared), host, port,
                                          reuse_port=reuse_port, backlog=backlog)
    except BaseException:
        await runner.cleanup()
        raise
    gateway.http_stats = shared.stats  # exported by the observability routes, if installed
    return GatewayServer(runner, server, shared, gateway)
