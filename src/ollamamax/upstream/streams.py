"""Streams handed to a front end: :class:`PassThrough` (an upstream answer, unbuffered) and
:class:`Replay` (a cached answer, chunk by chunk).

A pass-through stream yields the host's bytes exactly as they arrive, bounds each gap
between chunks, and turns a failure after the first byte into one in-band error line in
the stream's dialect, so output is never duplicated by a retry.  It reports how it ended
to its owner through ``on_finish``; what to learn from that is the owner's business.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..wire.errors import stream_error_line
from .client import UPSTREAM_ERRORS, describe_error
from .connection import RawResponse

__all__ = ["MAX_COLLECT_BYTES", "TAIL_BYTES", "PassThrough", "Replay"]

TAIL_BYTES = 2048  # how much of a stream's end is kept (final object, error line)
MAX_COLLECT_BYTES = 4 * 1024 * 1024  # a longer stream is not kept for the cache


class PassThrough:
    """Pass-through of one upstream stream: unbuffered, idle timeout, in-band errors.

    Yields the upstream's bytes exactly as they arrive (``readany``: what is buffered, as
    soon as there is something), the first one already read by the caller.  Each later read is bounded by
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
        "_tail_len",
        "_tail_parts",
        "chunks",
        "content_type",
        "ctx",
    )

    def __init__(
        self,
        resp: RawResponse,
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
        # the last chunks, joined and cut to TAIL_BYTES only when they exceed twice that
        # (or when ``tail`` is read): no copy of the tail per chunk
        self._tail_parts: list[bytes] = []
        self._tail_len = 0
        self.chunks: list[bytes] | None = [] if collect else None
        ct = getattr(resp, "content_type", None)
        self.content_type = ct if ct is not None else resp.headers.get("Content-Type", "")
        self.ctx = ctx

    def __aiter__(self) -> PassThrough:
        return self

    @property
    def tail(self) -> bytes:
        """The last ``TAIL_BYTES`` of what was passed through."""
        parts = self._tail_parts
        if not parts:
            return b""
        t = parts[0] if len(parts) == 1 else b"".join(parts)
        if len(t) > TAIL_BYTES:
            t = t[-TAIL_BYTES:]
        self._tail_parts = [t]
        self._tail_len = len(t)
        return t

    def _note(self, chunk: bytes) -> None:
        if len(chunk) >= TAIL_BYTES:
            self._tail_parts = [chunk[-TAIL_BYTES:]]
            self._tail_len = TAIL_BYTES
        else:
            parts = self._tail_parts
            parts.append(chunk)
            n = self._tail_len + len(chunk)
            if n > 2 * TAIL_BYTES:
                t = b"".join(parts)[-TAIL_BYTES:]
                self._tail_parts = [t]
                n = len(t)
            self._tail_len = n
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
        resp = self._resp
        try:
            # fast path: bytes already buffered need no timer
            chunk = resp.read_nowait()
            if not chunk and not resp.at_eof():
                chunk = await resp.readany(self._idle)
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

    def at_eof(self) -> bool:
        """True when the chunk last returned was the final one (the upstream response is
        complete and nothing is left): a front end can send it with the end marker."""
        return not self._done and self._first is None and self._resp.at_eof()

    @property
    def sse(self) -> bool:
        """Whether this is an OpenAI-style SSE stream (``/v1``)."""
        return self._sse

    def _error_chunk(self, message: str) -> bytes:
        return stream_error_line(self._sse, message, self.tail)

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

    __slots__ = ("_chunks", "_pos")

    def __init__(self, chunks: Sequence[bytes]) -> None:
        self._chunks = chunks
        self._pos = 0

    def __aiter__(self) -> Replay:
        return self

    async def __anext__(self) -> bytes:
        pos = self._pos
        if pos >= len(self._chunks):
            raise StopAsyncIteration
        self._pos = pos + 1
        return self._chunks[pos]

    def at_eof(self) -> bool:
        """True when the chunk last returned was the final one."""
        return self._pos >= len(self._chunks)

    async def aclose(self) -> None:
        self._pos = len(self._chunks)
