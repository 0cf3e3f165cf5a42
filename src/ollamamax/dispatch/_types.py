"""Types shared by the dispatcher core and its front ends (gateway app, httpx transport).

The contract, in one paragraph: a front end turns an incoming HTTP request into
``await dispatcher.handle(method, path, body, headers, query=...)`` and writes the
returned :class:`DispatchResponse` back unchanged: ``status``, ``headers``, then either
``body`` (complete) or every chunk of ``stream`` as it arrives.  The core owns every
Ollama-level decision, including error bodies (Ollama's ``{"error": ...}`` on native
routes, OpenAI's ``{"error": {"message", "type", ...}}`` on ``/v1``), in-band error lines
when an upstream dies mid-stream, and the ``X-Ollamamax-*`` response headers.  A front
end owns transport concerns only: authentication, the body-size limit (413), and calling
``aclose()`` when the client goes away, which cancels the upstream request at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

__all__ = [
    "DispatchResponse",
    "HostConfig",
    "DispatcherConfig",
    "HEADER_HOST",
    "HEADER_COLD",
    "HEADER_QUEUE_MS",
    "HEADER_ATTEMPTS",
    "HEADER_CACHE",
    "HOP_BY_HOP",
]

# Headers that describe one hop's framing: a front end never copies them from a
# DispatchResponse (it frames the answer itself).  Lower case.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer",
     "upgrade", "proxy-connection"}
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


@dataclass(slots=True)
class HostConfig:
    """One Ollama host.  ``url`` is its base URL, e.g. ``http://gpu1:11434``."""

    url: str
    name: str | None = None  # defaults to host:port of the URL
    weight: float = 1.0
    max_concurrency: int | None = None  # None -> DispatcherConfig.max_in_flight_per_host
    headers: Mapping[str, str] = field(default_factory=dict)  # e.g. Authorization


@dataclass(slots=True)
class DispatcherConfig:
    """Every dispatcher knob, with its documented default.  TOML and CLI map onto it."""

    strategy: str = "least-loaded"  # least-loaded | p2c | round-robin | latency | affinity
    max_in_flight_per_host: int = 8
    queue_size: int = 1024  # gateway wait queue (AsyncRingQueue) capacity
    queue_timeout: float = 30.0  # seconds a request may wait for a slot before 503
    connect_timeout: float = 5.0
    first_byte_timeout: float = 300.0  # generous: a cold load takes tens of seconds
    idle_timeout: float = 120.0  # longest gap between two stream chunks
    max_attempts: int = 3
    retry_backoff: float = 0.05  # base of the jittered backoff, seconds
    refresh_interval: float = 5.0  # /api/tags + /api/ps poll period
    eject_after_failures: int = 3  # consecutive failures before a host is ejected
    eject_cooldown: float = 2.0  # first cooldown; doubles on repeated ejection
    eject_max_cooldown: float = 60.0
    cache_size: int = 4096  # response cache entries (embeddings by default)
    cache_ttl: float | None = 3600.0
    cache_generate: bool = False  # also cache chat/generate with temperature 0 + seed
    auto_pull: bool = False  # pull a model no host has to one host, then serve
    session_header: str = "X-Ollamamax-Session"  # affinity key when the client sends one
    affinity_overflow: float = 1.25  # bounded-load factor for the affinity ring
