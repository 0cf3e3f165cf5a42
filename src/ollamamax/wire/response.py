"""The contract between the dispatcher and its front ends (gateway, httpx transport).

In one paragraph: a front end turns an incoming HTTP request into
``await dispatcher.handle(method, path, body, headers, query=...)`` and writes the
returned :class:`DispatchResponse` back unchanged: ``status``, ``headers``, then either
``body`` (complete) or every chunk of ``stream`` as it arrives.  The core owns every
Ollama-level decision, including error bodies (Ollama's ``{"error": ...}`` on native
routes, OpenAI's ``{"error": {"message", "type", ...}}`` on ``/v1``), in-band error lines
when an upstream dies mid-stream, and the ``X-Ollamamax-*`` response headers.  A front
end owns transport concerns only: authentication, the body-size limit (413), and calling
``aclose()`` when the client goes away, which cancels the upstream request at once.
This module holds that contract (:class:`DispatchResponse`, the ``X-Ollamamax-*`` header
names, the hop-by-hop header set) and no behaviour.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

__all__ = [
    "DispatchResponse",
    "HEADER_HOST",
    "HEADER_COLD",
    "HEADER_QUEUE_MS",
    "HEADER_ATTEMPTS",
    "HEADER_CACHE",
    "HOP_BY_HOP",
    "NOT_FORWARDED",
]

# Headers that describe one hop's framing: a front end never copies them from a
# DispatchResponse (it frames the answer itself).  Lower case.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer",
     "upgrade", "proxy-connection"}
)

# Upstream response headers the dispatcher does not pass on: the hop-by-hop ones, and those
# the front end sets itself for its own hop (Date, Server) or that describe an encoding the
# gateway does not keep (it never asks for one), plus proxy credentials.
NOT_FORWARDED = HOP_BY_HOP | frozenset(
    {"content-encoding", "date", "server", "proxy-authenticate", "proxy-authorization"}
)

# Response headers the dispatcher adds to every response it produces.
HEADER_HOST = "X-Ollamamax-Host"  # name of the host that served it ("-" if none)
HEADER_COLD = "X-Ollamamax-Cold-Load"  # "1" if the host had to load the model, else "0"
HEADER_QUEUE_MS = "X-Ollamamax-Queue-Ms"  # time spent in the gateway's wait queue
HEADER_ATTEMPTS = "X-Ollamamax-Attempts"  # upstream attempts it took (0 for cache hits)
HEADER_CACHE = "X-Ollamamax-Cache"  # "hit" or "miss" on cacheable routes


@dataclass(slots=True)
class DispatchResponse:
    """What the dispatcher answers.  Exactly one of ``body`` / ``stream`` is set."""

    status: int
    headers: dict[str, str]
    body: bytes | None = None
    # Raw bytes as the upstream sent them (NDJSON or SSE), passed through unchanged.
    stream: AsyncIterator[bytes] | None = None
    # Called by the front end when it is done with the response or the client is gone.
    _close: object | None = field(default=None, repr=False)

    async def aclose(self) -> None:
        """Release the upstream connection; cancels the upstream request if unfinished."""
        closer, self._close = self._close, None
        if closer is not None:
            await closer()  # type: ignore[operator]

    async def read(self) -> bytes:
        """The whole body (joins a stream)."""
        if self.body is not None:
            return self.body
        parts = []
        try:
            assert self.stream is not None
            async for chunk in self.stream:
                parts.append(chunk)
        finally:
            await self.aclose()
        return b"".join(parts)
