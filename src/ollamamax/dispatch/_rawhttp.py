"""A minimal keep-alive HTTP/1.1 client for the upstream hosts (the dispatcher's hot path).

Why not aiohttp's ClientSession: per request it builds a URL object, a request object,
auto headers, a connection-key lookup, trace signals and a payload writer; profiled under
load that was a third of the gateway's CPU.  Ollama speaks plain HTTP/1.1 with
Content-Length or chunked bodies, so a small protocol does the job:

* :class:`HostPool` — one per host: a LIFO stack of idle connections (the most recently
  used one is reused first, so idle ones age out), at most ``max_idle`` kept, a connection
  idle for longer than ``idle_ttl`` is closed when found, new connections bounded by
  ``connect_timeout``.  Reuse happens only after a complete response on a connection
  that the server did not mark ``Connection: close``.
* :class:`_Conn` — an ``asyncio.Protocol`` per connection with an incremental response
  parser: status line, headers, then a Content-Length body, a chunked body (decoded; chunk
  extensions and trailers skipped) or a body delimited by the connection's end.
  No ``Accept-Encoding`` is sent, so bodies come back uncompressed.  A parsed head is
  cached by its bytes (a host repeats the same head within a second, the Date header's
  resolution), and a plain ``<hex>\r\n<data>\r\n`` chunk is cut out in one step.
* :class:`RawResponse` — what ``send`` returns once the head arrived.  Body bytes are
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
  ``release()`` returns the connection to the pool when the response was read to the end,
  else closes it; ``close()`` always closes it (the host sees the client go).

The request is written as one buffer: request line, Host, the host's fixed headers, the
forwarded client headers, Content-Length and the body.

Errors raised are :class:`UpstreamError` subclasses (all ``OSError``) or ``TimeoutError``.
A request sent on a reused connection that the server had closed meanwhile (no byte of an
answer arrived) is sent once more on a new connection, like browsers do.
"""

from __future__ import annotations

import asyncio
import itertools
import operator
import re
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "BadResponse",
    "ConnectFailed",
    "Disconnected",
    "HostPool",
    "RawResponse",
    "StatusError",
    "UpstreamError",
    "build_head",
    "head_prefix",
]

HIGH_WATER = 256 * 1024  # unread body bytes that pause reading from the socket
LOW_WATER = 64 * 1024  # ... and resume it once below this
MAX_HEAD = 64 * 1024  # longest accepted response head
MAX_LINE = 4096  # longest accepted chunk-size / trailer line


class UpstreamError(OSError):
    """A transport-level failure talking to a host."""


class ConnectFailed(UpstreamError):
    """The TCP connection could not be opened."""


class Disconnected(UpstreamError):
    """The connection ended before the response was complete."""


class BadResponse(UpstreamError):
    """The host sent something that is not a valid HTTP/1.1 response."""


class StatusError(UpstreamError):
    """A non-200 answer where only 200 is acceptable (``get_json``)."""

    def __init__(self, status: int, reason: str = "") -> None:
        super().__init__(f"{status} {reason}".strip())
        self.status = status


# a chunk-size line without extension or padding (anything else takes the general path)
_CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]+)\r\n")
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_NO_RUN: tuple[list[bytes], int] = ([], 0)
# A chunked buffer at least this long, whose first chunk would fit 8 times into it, is
# first tried as a burst (splitting costs about as much as cutting 8 chunks one by one).
BURST_BYTES = 256


def _plain_run(buf: bytes) -> tuple[list[bytes], int]:
    """The leading run of complete plain chunks (``<hex>\\r\\n<data>\\r\\n``, size > 0) of
    ``buf``, which starts at a chunk boundary: (their data, bytes they take), found with
    C-level loops.  Anything unusual (an extension, padding, a CRLF inside the data that
    breaks the alternation) gives no run; the caller then parses chunk by chunk."""
    parts = buf.split(b"\r\n")
    datas = parts[1:-1:2]  # each followed by CRLF
    k = len(datas)
    if k < 2:
        return _NO_RUN
    sizes = parts[0 : 2 * k : 2]
    if not all(sizes) or b"".join(sizes).translate(None, _HEX_DIGITS):
        return _NO_RUN
    ints = list(map(int, sizes, itertools.repeat(16, k)))
    lens = list(map(len, datas))
    if ints != lens or 0 in ints:
        j = ints.index(0) if 0 in ints else k
        same = list(map(operator.eq, ints[:j], lens[:j]))
        if False in same:
            j = same.index(False)
        if not j:
            return _NO_RUN
        datas, sizes, lens = datas[:j], sizes[:j], lens[:j]
    return datas, sum(map(len, sizes)) + sum(lens) + 4 * len(datas)

# parser states
_HEAD, _LEN, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER, _UNTIL_EOF, _DONE = range(8)
_NO_BODY_STATUS = frozenset({204, 304})


# A head parsed once is parsed for good: a host sends the same head bytes for every
# answer of one kind within the same second (the Date header), so a small cache keyed
# by the head's bytes skips most parsing.  Cleared when full.
HEAD_CACHE_SIZE = 256
_HeadInfo = tuple[int, str, tuple[tuple[str, str], ...], str, int, bool, bool]
_HEADS: dict[bytes, _HeadInfo] = {}


def _parse_head_bytes(head: bytes) -> _HeadInfo | None:
    """(status, reason, header pairs, content type, content length or -1, chunked,
    close) of one response head, or None for an interim 1xx answer."""
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0]
    if not status_line.startswith("HTTP/1.") or status_line[8:9] != " ":
        raise BadResponse(f"invalid status line {status_line[:80]!r}")
    code = status_line[9:12]
    if len(code) != 3 or not (code.isascii() and code.isdigit()) or status_line[12:13] not in ("", " "):
        raise BadResponse(f"invalid status line {status_line[:80]!r}")
    status = int(code)
    if status < 100:
        raise BadResponse(f"invalid status {status}")
    if status < 200:
        return None
    pairs = []
    length = -1
    chunked = False
    ctype = None
    close = status_line[5:8] == "1.0"
    del lines[0]
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name[-1] in " \t":
            raise BadResponse(f"invalid header line {line[:80]!r}")
        value = value.strip()
        pairs.append((name, value))
        # only the framing headers (and Content-Type) matter here; compare cheaply
        # before lowercasing
        if name[0] in "CcTt":
            lk = name.lower()
            if lk == "content-type":
                if ctype is None:
                    ctype = value  # the first one, as CIMultiDict.get gives
            elif lk == "content-length":
                if not (value.isascii() and value.isdigit()):
                    raise BadResponse(f"invalid Content-Length {value[:40]!r}")
                n = int(value)
                if length >= 0 and n != length:
                    raise BadResponse("conflicting Content-Length headers")
                length = n
            elif lk == "transfer-encoding":
                chunked = value.lower().endswith("chunked")
            elif lk == "connection":
                tokens = value.lower()
                if "close" in tokens:
                    close = True
                elif "keep-alive" in tokens:
                    close = False
    return status, status_line[13:], tuple(pairs), ctype if ctype is not None else "", length, chunked, close


class _Conn(asyncio.Protocol):
    """One upstream connection; parses the response of the one request in flight."""

    __slots__ = (
        "_buf",
        "_got_bytes",
        "_head_method",
        "_left",
        "_state",
        "_timer_due",
        "_timer_h",
        "closed",
        "idle_since",
        "paused",
        "pool",
        "resp",
        "reusable",
        "transport",
    )

    def __init__(self, pool: HostPool) -> None:
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
        self._timer_due = 0.0

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
        self.pool._forget(self)
        resp = self.resp
        if resp is not None:
            if self._state == _UNTIL_EOF:
                self._state = _DONE
                resp._complete()
            elif self._state != _DONE:
                msg = "connection lost" if exc is None else f"connection lost: {exc}"
                resp._fail(Disconnected(msg))

    def pause_writing(
        self,
    ) -> None:  # request bodies are written at once; nothing to pause
        pass

    def resume_writing(self) -> None:
        pass

    # -- control -----------------------------------------------------------------------
    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.reusable = False
            self._disarm()
            self.pool._forget(self)
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
        if body and len(body) > 65536:
            t.write(request)
            t.write(body)
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
        parsed = _HEADS.get(head)
        if parsed is None:
            parsed = _parse_head_bytes(head)
            if parsed is None:
                return False
            if len(_HEADS) >= HEAD_CACHE_SIZE:
                _HEADS.clear()
            _HEADS[head] = parsed
        status, resp.reason, resp.header_list, resp.content_type, length, chunked, close = parsed
        resp.status = status
        resp._headers = None  # the CIMultiDictProxy is built on first access
        if close:
            self.reusable = False
        if self._head_method or status in _NO_BODY_STATUS:
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
            m = _CHUNK_SIZE_LINE.match(data)
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
            m = _CHUNK_SIZE_LINE.match(buf)
            if m is not None and (int(m[1], 16) + 8) * 8 <= n:
                out, pos = _plain_run(buf)
                if not out:
                    out = []  # (never append to the shared empty run)
        match_size = _CHUNK_SIZE_LINE.match
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

    def __init__(self, conn: _Conn, loop: asyncio.AbstractEventLoop) -> None:
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
        self._timer: float | None = None  # first-byte deadline (loop time), see _Conn._arm
        self._idle_timer: asyncio.TimerHandle | None = None  # gap between chunks
        self._idle = 0.0
        self._mark = 0.0  # when the current wait for data began
        self._head = False
        self._high = HIGH_WATER
        self._done = False  # released or closed

    @property
    def content(self) -> RawResponse:
        return self

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
    async def _wait_head(self) -> None:
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
        if self._eof and self._exc is None and conn.reusable and not conn.closed:
            conn.resp = None
            if conn.paused:
                conn.resume()  # complete but not all read: reading may still be paused
            conn.pool._put(conn)
        else:
            conn.close()
            conn.resp = None

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
        self._idle: list[_Conn] = []  # LIFO: the end is the most recently used
        self._all: set[_Conn] = set()
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
    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Conn:
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Conn(self), self.host, self.port, ssl=self.ssl),
                self.connect_timeout,
            )
        except (TimeoutError, asyncio.TimeoutError):
            raise TimeoutError(f"connect to {self.host}:{self.port} timed out") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from exc
        if self._closed:
            conn.close()
            raise ConnectFailed("pool closed")
        self._all.add(conn)
        return conn

    def _get_idle(self) -> _Conn | None:
        idle = self._idle
        while idle:
            c = idle.pop()
            if not c.closed:
                return c
        return None

    def _put(self, conn: _Conn) -> None:
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

    def _forget(self, conn: _Conn) -> None:
        self._all.discard(conn)
        # an idle one that the server closed is skipped in _get_idle (closed flag)

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
            conn = self._get_idle() if attempt == 0 else None
            reused = conn is not None
            if conn is None:
                t0 = time.perf_counter()
                conn = await self._connect(loop)
                if trace is not None:
                    trace.connect_s = time.perf_counter() - t0
            resp = RawResponse(conn, loop)
            conn.reusable = True
            conn.start(resp, head, body, head_only)
            if timeout is not None:
                resp.set_timeout(timeout)
            try:
                await resp._wait_head()
            except Disconnected:
                resp.close()
                if reused and not conn._got_bytes:
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


def build_head(
    method: str,
    target: str,
    host_line: bytes,
    fixed: bytes,
    forwarded: Mapping[str, str] | None,
    body_len: int,
) -> bytes:
    """Request line + Host + fixed headers + forwarded headers + Content-Length + CRLF."""
    prefix = head_prefix(method, target, host_line, fixed, forwarded)
    if body_len or method not in ("GET", "HEAD"):
        return prefix + b"Content-Length: %d\r\n\r\n" % body_len
    return prefix + b"\r\n"


def head_prefix(
    method: str,
    target: str,
    host_line: bytes,
    fixed: bytes,
    forwarded: Mapping[str, str] | None,
) -> bytes:
    """Request line + Host + fixed headers + forwarded headers (no Content-Length, no
    final CRLF): the part of a head that a client sends the same way every time."""
    parts = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1"), host_line, fixed]
    if forwarded:
        # aiohttp's server decodes header bytes as UTF-8 with surrogateescape: this
        # restores the client's exact bytes
        for k, v in forwarded.items():
            parts.append(f"{k}: {v}\r\n".encode("utf-8", "surrogateescape"))
    return b"".join(parts)
