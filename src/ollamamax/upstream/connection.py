"""One keep-alive HTTP/1.1 connection to a host and the response read on it (the
dispatcher's hot path).

Why not aiohttp's ClientSession: per request it builds a URL object, a request object,
auto headers, a connection-key lookup, trace signals and a payload writer; profiled under
load that was a third of the gateway's CPU.  Ollama speaks plain HTTP/1.1 with
Content-Length or chunked bodies, so a small protocol does the job:

* :class:`Connection` — an ``asyncio.Protocol`` per connection with an incremental
  response parser (the byte-level parts are in ``http1.py``): status line, headers, then a
  Content-Length body, a chunked body (decoded; chunk extensions and trailers skipped) or
  a body delimited by the connection's end.  No ``Accept-Encoding`` is sent, so bodies come
  back uncompressed.  A parsed head is cached by its bytes (a host repeats the same head
  within a second, the Date header's resolution), and a run of plain
  ``<hex>\r\n<data>\r\n`` chunks is cut out in one step.  Reuse happens only after a
  complete response on a connection that the server did not mark ``Connection: close``.
* :class:`RawResponse` — what a request returns once the head arrived.  Body bytes are
  queued in a small deque as they arrive (a waiting reader is woken through one future);
  when more than ``HIGH_WATER`` bytes wait unread, the transport stops reading until the
  consumer catches up (flow control).  Timeouts are loop timer handles, not an
  ``asyncio.timeout`` per read: ``set_timeout`` (time to first byte, ended by the first
  body bytes read: a deadline on the response, served by one lazily re-armed timer per
  connection, so a request with the usual timeout arms nothing) and ``readany(timeout)``
  (gap between chunks: one timer per stream, re-armed lazily, that fires only if a
  reader has been waiting that long).  On a timeout the response fails with
  ``TimeoutError`` and its connection is closed.  ``headers`` (a CIMultiDictProxy) is
  built on first use; ``header_list`` and ``content_type`` are there at once.
  ``release()`` returns the connection to its pool (``pool.py``) when the response was
  read to the end, else closes it; ``close()`` always closes it (the host sees the client
  go).

The request is written as one buffer: request line, Host, the host's fixed headers, the
forwarded client headers, Content-Length and the body.  Errors raised are
:class:`~ollamamax.upstream.http1.UpstreamError` subclasses (all ``OSError``) or
``TimeoutError``.  The two classes here call each other's underscore methods: they are
one mechanism split in two objects, and nothing outside this module does.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from multidict import CIMultiDict, CIMultiDictProxy

from .http1 import (
    BURST_BYTES,
    CHUNK_SIZE_LINE,
    MAX_HEAD,
    MAX_LINE,
    NO_BODY_STATUS,
    BadResponse,
    Disconnected,
    parse_head,
    plain_run,
)

__all__ = ["HIGH_WATER", "Connection", "PoolLike", "RawResponse"]

HIGH_WATER = 256 * 1024  # unread body bytes that pause reading from the socket
BODY_SLICE = 256 * 1024  # a larger request body is written this much at a time

class PoolLike(Protocol):
    """What a connection needs of its pool (``pool.HostPool``)."""

    def put_idle(self, conn: Connection) -> None: ...

    def forget(self, conn: Connection) -> None: ...


# parser states
_HEAD, _LEN, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER, _UNTIL_EOF, _DONE = range(8)


class Connection(asyncio.Protocol):
    """One upstream connection; parses the response of the one request in flight."""

    __slots__ = (
        "_buf",
        "_got_bytes",
        "_head_method",
        "_left",
        "_state",
        "_timer_due",
        "_timer_h",
        "_writing_paused",
        "_body_left",
        "closed",
        "idle_since",
        "paused",
        "pool",
        "resp",
        "reusable",
        "transport",
    )

    def __init__(self, pool: PoolLike) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.resp: RawResponse | None = None
        self.closed = False
        self.paused = False
        self.reusable = True
        self.idle_since = 0.0
        self._buf = b""
        self._state = _DONE
        self._left = 0
        self._head_method = False
        self._got_bytes = False
        self._timer_h: asyncio.TimerHandle | None = None  # first-byte timer (see _arm)
        self._writing_paused = False  # the transport's buffer is over its high-water mark
        self._body_left: memoryview | None = None  # what is left to write of a large body
        self._timer_due = 0.0

    @property
    def got_bytes(self) -> bool:
        """Some byte of an answer to the current request arrived (a reused connection that
        the host had closed gets none: the request may then be sent again)."""
        return self._got_bytes

    @property
    def writing_body(self) -> bool:
        """Part of a large request body is still to be written (the host answered early):
        the connection cannot carry another request."""
        return self._body_left is not None

    @property
    def timer_handle(self) -> asyncio.TimerHandle | None:
        """The connection's first-byte timer: one loop timer, re-armed lazily for the
        requests it carries (None when none is armed)."""
        return self._timer_h

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        resp = self.resp
        if resp is None or self._state == _DONE:
            # bytes nobody asked for: the connection's state is unknown -> drop it
            self.reusable = False
            self.close()
            return
        self._got_bytes = True
        try:
            if _CHUNK_SIZE <= self._state <= _TRAILER:  # a stream's next bytes: straight on
                self._feed_chunked(resp, data)
            else:
                self._feed(resp, data)
        except BadResponse as exc:
            self.reusable = False
            resp._fail(exc)
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        self._disarm()
        self.pool.forget(self)
        resp = self.resp
        if resp is not None:
            if self._state == _UNTIL_EOF:
                self._state = _DONE
                resp._complete()
            elif self._state != _DONE:
                msg = "connection lost" if exc is None else f"connection lost: {exc}"
                resp._fail(Disconnected(msg))

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._body_left is not None:
            self._write_body()

    def _write_body(self) -> None:
        """Write the rest of a large request body a slice at a time, as the socket takes it
        (the transport's flow control calls back here), so no single step of the event loop
        copies megabytes and the transport never buffers the whole body."""
        view = self._body_left
        t = self.transport
        while view is not None and not self._writing_paused and t is not None and not t.is_closing():
            t.write(view[:BODY_SLICE])
            view = view[BODY_SLICE:] if len(view) > BODY_SLICE else None
        self._body_left = view

    # -- control -----------------------------------------------------------------------
    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.reusable = False
            self._disarm()
            self._body_left = None
            self.pool.forget(self)
            t = self.transport
            if t is not None:
                t.abort()  # no lingering: the host must see the client go now

    def pause(self) -> None:
        if not self.paused and not self.closed and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and not self.closed and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    # -- first-byte timer: one lazily re-armed handle per connection -------------------
    # A response keeps its first-byte deadline in ``RawResponse._timer`` (loop time or
    # None).  The connection holds at most one timer handle; a new deadline later than
    # the armed one (the usual case: the same timeout on every request) arms nothing,
    # the handle re-arms itself for the current deadline when it fires early.
    def _arm(self, due: float, loop: asyncio.AbstractEventLoop) -> None:
        h = self._timer_h
        if h is not None:
            if self._timer_due <= due:
                return
            h.cancel()
        self._timer_due = due
        self._timer_h = loop.call_at(due, self._on_timer)

    def _disarm(self) -> None:
        h = self._timer_h
        if h is not None:
            self._timer_h = None
            h.cancel()

    def _on_timer(self) -> None:
        self._timer_h = None
        resp = self.resp
        if resp is None or self.closed:
            return
        due = resp._timer
        if due is None:
            return  # no deadline now: the next set_timeout arms again
        loop = resp._loop
        if loop.time() >= due - 0.001:  # timers may fire up to a clock tick early
            resp._on_timeout()
        else:
            self._arm(due, loop)

    def start(self, resp: RawResponse, request: bytes, body: bytes, head_only: bool) -> None:
        self.resp = resp
        self._state = _HEAD
        self._buf = b""
        self._head_method = head_only
        self._got_bytes = False
        t = self.transport
        assert t is not None
        if body and len(body) > BODY_SLICE:
            t.write(request)
            self._body_left = memoryview(body)
            self._write_body()
        else:
            t.write(request + body if body else request)

    # -- parser ------------------------------------------------------------------------
    def _feed(self, resp: RawResponse, data: bytes) -> None:
        state = self._state
        if state == _LEN:
            left = self._left
            n = len(data)
            if n < left:
                self._left = left - n
                resp._data(data)
                return
            if n > left:
                self.reusable = False  # bytes beyond the response: never reuse
                data = data[:left]
            self._state = _DONE
            self._left = 0
            if data:
                resp._data(data)
            resp._complete()
            return
        if state == _HEAD:
            buf = self._buf + data if self._buf else data
            while True:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise BadResponse("response head too long")
                    self._buf = buf
                    return
                rest = buf[end + 4 :]
                if self._parse_head(resp, buf[:end]):
                    break
                buf = rest  # an interim 1xx answer: the real head follows
            self._buf = b""
            resp._head = True
            if self._state == _DONE:
                if rest:
                    self.reusable = False
                resp._complete()
                return
            if rest:
                self._feed(resp, rest)  # wakes the reader if it delivers anything
            resp._wake()
            return
        if state == _UNTIL_EOF:
            resp._data(data)
            return
        if state == _DONE:
            self.reusable = False
            return
        self._feed_chunked(resp, data)

    def _parse_head(self, resp: RawResponse, head: bytes) -> bool:
        """Parse one head; False for an interim 1xx answer (to be skipped)."""
        parsed = parse_head(head)
        if parsed is None:
            return False
        status, resp.reason, resp.header_list, resp.content_type, length, chunked, close = parsed
        resp.status = status
        resp._headers = None  # the CIMultiDictProxy is built on first access
        if close:
            self.reusable = False
        if self._head_method or status in NO_BODY_STATUS:
            self._state = _DONE
        elif chunked:
            self._state = _CHUNK_SIZE
        elif length >= 0:
            self._left = length
            self._state = _LEN if length else _DONE
        else:
            self.reusable = False
            self._state = _UNTIL_EOF
        return True

    def _feed_chunked(self, resp: RawResponse, data: bytes) -> None:
        if self._state == _CHUNK_SIZE and not self._buf:
            # a streamed token usually arrives as exactly one whole chunk
            m = CHUNK_SIZE_LINE.match(data)
            if m is not None:
                start = m.end()
                size = int(m[1], 16)
                if size and start + size + 2 == len(data) and data.endswith(b"\r\n"):
                    resp._data(data[start:-2])
                    return
        buf = self._buf + data if self._buf else data
        n = len(buf)
        pos = 0
        out: list[bytes] = []
        state = self._state
        left = self._left
        if state == _CHUNK_SIZE and n >= BURST_BYTES:
            # many small chunks at once (judged by the first one): cut them in one go
            m = CHUNK_SIZE_LINE.match(buf)
            if m is not None and (int(m[1], 16) + 8) * 8 <= n:
                out, pos = plain_run(buf)
                if not out:
                    out = []  # (never append to the shared empty run)
        match_size = CHUNK_SIZE_LINE.match
        startswith = buf.startswith
        append = out.append
        while pos < n:
            if state == _CHUNK_SIZE:
                # fast path: a plain hex size line, and often the whole chunk behind it
                m = match_size(buf, pos)
                if m is not None:
                    size = int(m[1], 16)
                    start = m.end()
                    if not size:
                        pos = start
                        state = _TRAILER
                        continue
                    end = start + size
                    if startswith(b"\r\n", end):  # the data and its CRLF are all here
                        append(buf[start:end])
                        pos = end + 2
                        continue
                    pos = start
                    left = size
                    state = _CHUNK_DATA
                    continue
            if state == _CHUNK_DATA:
                take = n - pos
                if take >= left:
                    take = left
                    state = _CHUNK_CRLF
                out.append(buf[pos : pos + take] if (pos or take < n) else buf)
                pos += take
                left -= take
            elif state == _CHUNK_SIZE:
                i = buf.find(b"\r\n", pos)
                if i < 0:
                    if n - pos > MAX_LINE:
                        raise BadResponse("chunk size line too long")
                    break
                line = buf[pos:i]
                semi = line.find(b";")
                if semi >= 0:
                    line = line[:semi]
                line = line.strip()
                try:
                    size = int(line, 16)
                except ValueError:
                    size = -1
                if size < 0 or not line.isalnum():
                    raise BadResponse(f"invalid chunk size {line[:40]!r}")
                pos = i + 2
                if size:
                    left = size
                    state = _CHUNK_DATA
                else:
                    state = _TRAILER
            elif state == _CHUNK_CRLF:
                if n - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise BadResponse("missing CRLF after chunk data")
                pos += 2
                state = _CHUNK_SIZE
            elif state == _TRAILER:
                i = buf.find(b"\r\n", pos)
                if i < 0:
                    if n - pos > MAX_LINE:
                        raise BadResponse("trailer line too long")
                    break
                if i == pos:
                    pos += 2
                    state = _DONE
                    break
                pos = i + 2
            else:  # pragma: no cover - not reached
                break
        self._state = state
        self._left = left
        if state == _DONE:
            self._buf = b""
            if pos < n:
                self.reusable = False
        else:
            self._buf = buf[pos:] if pos < n else b""
        if out:
            resp._data(out[0] if len(out) == 1 else b"".join(out))
        if state == _DONE:
            resp._complete()


class RawResponse:
    """One upstream response.  ``content`` is the response itself (``readany``,
    ``read_nowait``, ``at_eof``), so code written for aiohttp's shape keeps working."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_done",
        "_eof",
        "_exc",
        "_head",
        "_headers",
        "_high",
        "_idle",
        "_idle_timer",
        "_loop",
        "_mark",
        "_size",
        "_timer",
        "_waiter",
        "content_type",
        "header_list",
        "reason",
        "status",
    )

    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.status = 0
        self.reason = ""
        # the head's headers in order, names as sent; ``headers`` is the same as a
        # case-insensitive CIMultiDictProxy (built on first use)
        self.header_list: tuple[tuple[str, str], ...] = ()
        self.content_type = ""  # the first Content-Type header's value ("" if none)
        self._headers: CIMultiDictProxy[str] | None = _EMPTY_HEADERS
        self._conn = conn
        self._loop = loop
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: float | None = None  # first-byte deadline (loop time), see Connection._arm
        self._idle_timer: asyncio.TimerHandle | None = None  # gap between chunks
        self._idle = 0.0
        self._mark = 0.0  # when the current wait for data began
        self._head = False
        self._high = HIGH_WATER
        self._done = False  # released or closed

    @property
    def content(self) -> RawResponse:
        return self

    # -- state, read-only (for the owner's decisions and for tests) --------------------
    @property
    def head_received(self) -> bool:
        """The status line and headers arrived."""
        return self._head

    @property
    def complete(self) -> bool:
        """The whole body arrived (it may not all have been read yet)."""
        return self._eof

    @property
    def error(self) -> BaseException | None:
        """Why the response failed (the exception a read raises), or None."""
        return self._exc

    def peek(self) -> bytes:
        """The body bytes received and not yet read, without consuming them."""
        return b"".join(self._chunks)

    @property
    def first_byte_deadline(self) -> float | None:
        """Loop time at which the time-to-first-byte limit fires, None when not armed."""
        return self._timer

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        h = self._headers
        if h is None:
            h = self._headers = CIMultiDictProxy(CIMultiDict(self.header_list))
        return h

    # -- called by the connection ------------------------------------------------------
    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    def _data(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > self._high:
            self._conn.pause()
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    def _complete(self) -> None:
        self._eof = True
        self._timer = None
        if self._idle_timer is not None:
            self._cancel_all()
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._eof or self._exc is not None:
            return
        self._exc = exc
        self._cancel_all()
        self._wake()

    # -- timeouts ----------------------------------------------------------------------
    def set_timeout(self, delay: float | None) -> None:
        """Fail with ``TimeoutError`` unless body bytes are read (or ``cancel_timeout()``
        is called) within ``delay`` seconds."""
        if delay is not None and not self._eof and self._exc is None:
            loop = self._loop
            self._timer = due = loop.time() + delay
            self._conn._arm(due, loop)
        else:
            self._timer = None

    def cancel_timeout(self) -> None:
        self._timer = None

    def _cancel_all(self) -> None:
        self._timer = None
        t = self._idle_timer
        if t is not None:
            self._idle_timer = None
            t.cancel()

    def _on_timeout(self) -> None:
        self._timer = None
        self._fail(TimeoutError())
        self._conn.close()

    def _on_idle(self) -> None:
        # One lazily re-armed timer per stream instead of one per chunk: it fails the
        # response only if a reader is waiting and has waited ``_idle`` seconds.
        self._idle_timer = None
        if self._eof or self._exc is not None or self._waiter is None:
            return  # no reader waiting now: the next wait re-arms it
        due = self._mark + self._idle
        if self._loop.time() >= due:
            self._on_timeout()
        else:
            self._idle_timer = self._loop.call_at(due, self._on_idle)

    # -- reading -----------------------------------------------------------------------
    async def wait_head(self) -> None:
        while not self._head:
            if self._exc is not None:
                raise self._exc
            w = self._waiter = self._loop.create_future()
            await w

    def _take(self) -> bytes:
        self._timer = None  # body bytes handed out: a first-byte deadline is done
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        if self._conn.paused:
            self._conn.resume()
        return data

    def read_nowait(self) -> bytes:
        """Everything buffered now (``b""`` if nothing); raises a stored failure only
        once the buffered bytes are consumed."""
        if self._chunks:
            return self._take()
        if self._exc is not None and not self._eof:
            raise self._exc
        return b""

    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    async def readany(self, timeout: float | None = None) -> bytes:
        """The next bytes as soon as there are any; ``b""`` at the end.  With ``timeout``
        a gap longer than that fails the response with ``TimeoutError``."""
        while True:
            if self._chunks:
                return self._take()
            if self._eof:
                return b""
            if self._exc is not None:
                raise self._exc
            loop = self._loop
            if timeout is not None:
                self._mark = now = loop.time()
                if self._idle_timer is None or timeout < self._idle:
                    if self._idle_timer is not None:
                        self._idle_timer.cancel()
                    self._idle_timer = loop.call_at(now + timeout, self._on_idle)
                self._idle = timeout
            w = self._waiter = loop.create_future()
            await w

    async def read(self) -> bytes:
        """The whole body."""
        self._high = 1 << 62  # the caller wants everything: no flow control
        if self._conn.paused:
            self._conn.resume()
        while not self._eof:
            if self._exc is not None:
                raise self._exc
            w = self._waiter = self._loop.create_future()
            await w
        chunks = self._chunks
        if not chunks:
            return b""
        return self._take()

    # -- ending ------------------------------------------------------------------------
    def release(self) -> None:
        """Done with the response: the connection goes back to the pool if the response
        was complete, else it is closed."""
        if self._done:
            return
        self._done = True
        self._timer = None
        if self._idle_timer is not None:
            self._cancel_all()
        conn = self._conn
        if self._eof and self._exc is None and conn.reusable and not conn.closed and not conn.writing_body:
            conn.resp = None
            if conn.paused:
                conn.resume()  # complete but not all read: reading may still be paused
            conn.pool.put_idle(conn)
        else:
            conn.close()
            conn.resp = None

    def abort(self, exc: BaseException) -> None:
        """Fail the response with ``exc`` (what a pending read raises) and close the
        connection (the host sees the request cancelled)."""
        if not self._eof and self._exc is None:
            self._exc = exc
            self._wake()
        self.close()

    def close(self) -> None:
        """Abort: close the connection now (the host sees the request cancelled)."""
        self._cancel_all()
        if not self._eof and self._exc is None:
            self._exc = Disconnected("response closed")
            self._wake()
        if self._done:
            return
        self._done = True
        self._conn.close()
        self._conn.resp = None


_EMPTY_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
