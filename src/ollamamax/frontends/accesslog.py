"""The gateway's access log: one logfmt line per request on the ``ollamamax.access`` logger.

:func:`format_access` is the line, a pure function both front ends call (the fast path with
what it wrote, the aiohttp app through :class:`GatewayAccessLogger`, an aiohttp
``AbstractAccessLogger``).  Fields, always all present and always in this order::

    method=POST path=/api/chat status=200 model=llama3.2 host=gpu1 attempts=1 queue_ms=0
    cold=0 cache=- ttfb_ms=12.345 duration_ms=830.112 bytes=5120 client=10.0.0.7:51234

``host``, ``attempts``, ``queue_ms``, ``cold`` and ``cache`` come from the dispatcher's
``X-Ollamamax-*`` response headers; ``ttfb_ms`` is the time from the request's start to its
status line (``-`` when none was sent), ``duration_ms`` to its last byte, ``bytes`` what was
written to the client, headers included.  A value that is unknown is ``-``; one with a space,
``=``, a quote, a backslash or a control character is quoted (``"..."`` with ``\\"``,
``\\\\``, ``\\n``, ``\\xNN`` escapes), so a line is always one line and always parses.
:func:`model_from_body` finds the model a request names without parsing its JSON (bounded
cost, whatever the body's size).  No I/O here but the logger call in
:class:`GatewayAccessLogger` and :class:`BufferedLineHandler`, the handler ``ollamamax serve``
puts on that logger: like nginx's ``access_log ... buffer=64k flush=1s`` it writes lines in
batches (at 64 KiB, or 1 s after the first line waiting), so a line costs a list append, not
a write system call (a line per request written at once cost ~60 us of gateway CPU per
request; see the README).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Mapping
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from ..wire.response import HEADER_ATTEMPTS, HEADER_CACHE, HEADER_COLD, HEADER_HOST, HEADER_QUEUE_MS

__all__ = [
    "ACCESS_LOGGER",
    "AccessLineFormatter",
    "BufferedLineHandler",
    "GatewayAccessLogger",
    "format_access",
    "format_peer",
    "log_line",
    "logfmt_value",
    "model_from_body",
]

ACCESS_LOGGER = "ollamamax.access"


def request_key(name: str) -> Any:
    """A key for a request's storage: ``web.RequestKey`` where aiohttp has it (>= 3.13, which
    warns about plain strings), else the name."""
    from aiohttp import web

    factory = getattr(web, "RequestKey", None)
    return name if factory is None else factory(name)


# request keys the aiohttp app fills for the access log
MODEL_KEY = request_key("ollamamax_model")
PREPARED_KEY = request_key("ollamamax_prepared_at")  # loop.time() when the status line went out

_PLAIN = re.compile(r"[^\s\"=\\\x00-\x1f\x7f]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def logfmt_value(value: object) -> str:
    """One logfmt value: ``-`` for None, as is when plain, else quoted and escaped."""
    if value is None:
        return "-"
    s = str(value)
    if s and _PLAIN.fullmatch(s):
        return s
    out = []
    for ch in s:
        esc = _ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ch < " " or ch == "\x7f":
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _header(headers: Mapping[str, str] | None, name: str) -> str:
    # the dispatcher's own headers, in its spelling (a CIMultiDict finds any spelling)
    value = headers.get(name) if headers else None
    return "-" if value is None else value


def format_peer(peer: Any) -> str | None:
    """``"10.0.0.7:51234"`` / ``"[::1]:51234"`` from a socket's peername (a tuple), or the
    value itself when it is a string; None when unknown."""
    if isinstance(peer, (tuple, list)) and len(peer) >= 2:
        host, port = str(peer[0]), peer[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(peer, str) and peer:
        return peer
    return None


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{max(seconds, 0.0) * 1000.0:.3f}"


def format_access(method: str, path: str, status: int, headers_out: Mapping[str, str] | None,
                  ttfb_s: float | None, duration_s: float, bytes_sent: int | None,
                  peer: Any, model: str | None) -> str:
    """The access-log line of one request (logfmt; see the module docstring).

    ``path`` without its query string; ``headers_out``: the response headers as sent (the
    ``X-Ollamamax-*`` ones are read); ``ttfb_s`` / ``duration_s``: seconds from the request's
    start to its status line / its last byte (``ttfb_s`` None: nothing was sent);
    ``bytes_sent``: bytes written to the client, headers included; ``peer``: the client's
    address (a peername tuple or a string); ``model``: the model the request named (None:
    none or unknown)."""
    h = headers_out
    return (f"method={logfmt_value(method)} path={logfmt_value(path)} status={int(status)} "
            f"model={logfmt_value(model or None)} host={logfmt_value(_header(h, HEADER_HOST))} "
            f"attempts={_header(h, HEADER_ATTEMPTS)} queue_ms={_header(h, HEADER_QUEUE_MS)} "
            f"cold={_header(h, HEADER_COLD)} cache={_header(h, HEADER_CACHE)} ttfb_ms={_ms(ttfb_s)} "
            f"duration_ms={_ms(duration_s)} bytes={'-' if bytes_sent is None else int(bytes_sent)} "
            f"client={logfmt_value(format_peer(peer))}")


# "model": "name" as a top-level-looking key.  Inside a JSON string a quote is escaped, so
# this never matches text in a prompt; it could match a nested "model" key, which the
# routes the gateway serves do not have before the top-level one.
_MODEL_RE = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.){0,512})"')
_WINDOW = 64 * 1024


def model_from_body(body: bytes | bytearray | memoryview | None) -> str | None:
    """The ``model`` a JSON request body names, found in its first and last 64 KiB (clients
    put it first, as ollama-python does, or after the messages, as the openai SDK does);
    None when not found.  Costs the same for a 1 KiB and a 1 GiB body."""
    if not body:
        return None
    head = bytes(memoryview(body)[:4096])  # where clients put it, almost always
    at = head.find(b'"model"')
    if at >= 0:
        m = _MODEL_RE.match(head, at)
        if m is not None:
            return _model_text(m.group(1))
    view = memoryview(body)
    n = len(view)
    windows = [view[:_WINDOW]] if n <= 2 * _WINDOW else [view[:_WINDOW], view[n - _WINDOW:]]
    for w in windows:
        m = _MODEL_RE.search(w)  # type: ignore[call-overload]
        if m is not None:
            return _model_text(m.group(1))
    return None


def _model_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8") if b"\\" not in raw else raw.decode("unicode_escape")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace")


def log_line(logger: logging.Logger, line: str) -> None:
    """``logger.info(line)`` without what an access line does not need.  When the logger's
    only destination is a :class:`BufferedLineHandler` (as ``ollamamax serve`` sets it up:
    no filters, no propagation), the line goes straight into its buffer, formatted as that
    handler's :class:`AccessLineFormatter` would; otherwise a record is made without the
    search of the call stack ``Logger.info`` does for every record."""
    handlers = logger.handlers
    if len(handlers) == 1 and not logger.propagate and not logger.filters and not logger.disabled:
        handler = handlers[0]
        if type(handler) is BufferedLineHandler and not handler.filters and \
                type(handler.formatter) is AccessLineFormatter and logger.isEnabledFor(logging.INFO):
            handler.add(handler.formatter.prefix() + line)
            return
    if logger.isEnabledFor(logging.INFO):
        logger.handle(logger.makeRecord(logger.name, logging.INFO, "", 0, line, (), None))


class GatewayAccessLogger(AbstractAccessLogger):
    """aiohttp's access logger writing :func:`format_access` lines (pass it as
    ``access_log_class`` to the runner, with ``access_log=logging.getLogger(ACCESS_LOGGER)``).
    The app made by ``build_app`` records when each answer's status line went out and the
    model each request named."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:  # pragma: no cover - aiohttp always logs on its loop
            now = None
        prepared = request.get(PREPARED_KEY)
        ttfb = None
        if prepared is not None and now is not None:
            ttfb = max(time - (now - prepared), 0.0)
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        log_line(self.logger, format_access(
            request.method, request.raw_path.split("?", 1)[0], response.status, response.headers,
            ttfb, time, response.body_length, peer if peer else request.remote,
            request.get(MODEL_KEY),
        ))

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


class AccessLineFormatter(logging.Formatter):
    """``time=<ISO 8601> pid=<pid> <line>``; the timestamp is formatted once per second."""

    def __init__(self) -> None:
        super().__init__("time=%(asctime)s pid=%(process)d %(message)s", datefmt="%Y-%m-%dT%H:%M:%S%z")
        self._sec = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return self._time(int(record.created))

    def _time(self, sec: int) -> str:
        if sec != self._sec:
            self._sec = sec
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(sec))
        return self._stamp

    def prefix(self) -> str:
        """What :meth:`format` puts before a message now: ``time=... pid=... ``."""
        return f"time={self._time(int(time.time()))} pid={os.getpid()} "


class BufferedLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes its lines in batches: when ``buffer_bytes`` are waiting,
    or ``flush_after`` seconds after the first waiting line (a timer on the running event
    loop; with no loop running, at once).  ``flush()`` and ``close()`` write what waits, so
    nothing is lost at exit (``logging.shutdown`` closes handlers)."""

    def __init__(self, stream: Any = None, buffer_bytes: int = 64 * 1024, flush_after: float = 1.0) -> None:
        super().__init__(stream)
        self.buffer_bytes = buffer_bytes
        self.flush_after = flush_after
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - logging's own policy
            self.handleError(record)
            return
        self.add(line)

    def add(self, line: str) -> None:
        """Queue one formatted line (what :meth:`emit` does after formatting a record)."""
        self._lines.append(line)
        self._size += len(line) + 1
        if self._size >= self.buffer_bytes:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(self.flush_after, self._flush_timed)

    def _flush_timed(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            if self._lines:
                lines, self._lines, self._size = self._lines, [], 0
                self.stream.write("\n".join(lines) + "\n")
            super().flush()
        finally:
            self.release()

    def close(self) -> None:
        self.flush()
        super().close()
