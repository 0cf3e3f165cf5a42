"""Answers the dispatcher builds itself: plain text, JSON, errors in the route's dialect,
busy (503 + Retry-After), "no healthy host", and cache replays.

Every answer carries the ``X-Ollamamax-*`` headers (:func:`base_headers`).  Pure builders:
the numbers they print (Retry-After, which host) are computed by the caller.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..fleet.hosts import HostState
from ..upstream.streams import Replay
from ..wire.errors import JSON_CONTENT_TYPE, TEXT_CONTENT_TYPE, error_body
from ..wire.names import display_name
from ..wire.ollama import BUSY_MESSAGE
from ..wire.response import (
    HEADER_ATTEMPTS,
    HEADER_CACHE,
    HEADER_COLD,
    HEADER_HOST,
    HEADER_QUEUE_MS,
    DispatchResponse,
)
from ..wire.routes import Route
from .cache import CachedResponse

__all__ = [
    "base_headers",
    "busy",
    "error",
    "json_reply",
    "no_healthy",
    "no_healthy_retry",
    "notfound_message",
    "plain",
    "replay",
    "retry_after",
    "small_int",
]

json_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_SMALL_INTS = tuple(str(i) for i in range(16))


def small_int(n: int) -> str:
    return _SMALL_INTS[n] if 0 <= n < 16 else str(n)


def base_headers(
    host: str = "-", cold: bool = False, queue_s: float = 0.0, attempts: int = 0, cache: str | None = None
) -> dict[str, str]:
    h = {
        HEADER_HOST: host,
        HEADER_COLD: "1" if cold else "0",
        HEADER_QUEUE_MS: f"{queue_s * 1000.0:.0f}" if queue_s else "0",
        HEADER_ATTEMPTS: small_int(attempts),
    }
    if cache is not None:
        h[HEADER_CACHE] = cache
    return h


def plain(status: int, body: bytes, **kw: Any) -> DispatchResponse:
    h = base_headers(**kw)
    h["Content-Type"] = TEXT_CONTENT_TYPE
    return DispatchResponse(status, h, body=body)


def json_reply(status: int, obj: Any, **kw: Any) -> DispatchResponse:
    h = base_headers(**kw)
    h["Content-Type"] = JSON_CONTENT_TYPE
    return DispatchResponse(status, h, body=json_dumps(obj).encode())


def error(
    route: Route | None, status: int, message: str, *, extra: Mapping[str, str] | None = None, **kw: Any
) -> DispatchResponse:
    """An error in the route's dialect (OpenAI's on ``/v1``, else Ollama's)."""
    h = base_headers(**kw)
    h["Content-Type"] = JSON_CONTENT_TYPE
    if extra:
        h.update(extra)
    return DispatchResponse(status, h, body=error_body(route is not None and route.openai, status, message))


def busy(route: Route | None, retry_after: int, **kw: Any) -> DispatchResponse:
    """Ollama's 503 busy, with ``Retry-After``."""
    return error(route, 503, BUSY_MESSAGE, extra={"Retry-After": str(retry_after)}, **kw)


def no_healthy(route: Route, name: str, retry_after: int, **kw: Any) -> DispatchResponse:
    """Every host that has the model is down (ejected or unreachable)."""
    return error(
        route, 503, f"no healthy host has model '{display_name(name)}'", extra={"Retry-After": str(retry_after)}, **kw
    )


def notfound_message(route: Route, name: str) -> str:
    """"model not found" as Ollama words it on this route."""
    if route.notfound == "double":
        return f'model "{name}" not found, try pulling it first'
    if route.notfound == "show":
        return f"model '{display_name(name)}' not found"
    return f"model '{name}' not found"


def replay(hit: CachedResponse) -> DispatchResponse:
    """A cache hit as an answer (a stream is replayed chunk by chunk)."""
    h = dict(hit.headers)
    h.update(base_headers(cache="hit"))
    if hit.chunks is not None:
        rp = Replay(hit.chunks)
        return DispatchResponse(hit.status, h, stream=rp, _close=rp.aclose)
    return DispatchResponse(hit.status, h, body=hit.body)


def retry_after(hosts: Sequence[HostState], waiting: int) -> int:
    """Seconds a busy client should wait: the queue ahead of it over the healthy capacity,
    times the mean observed service time (1 to 30)."""
    cap = sum(h.capacity for h in hosts if not h.down) or 1
    svc = [h.service.value for h in hosts if h.service.value is not None]
    mean = sum(svc) / len(svc) if svc else 1.0
    return int(min(30, max(1, math.ceil((waiting + 1) / cap * mean))))


def no_healthy_retry(hosts: Sequence[HostState], holders: Sequence[int], now: float) -> int:
    """Seconds until the first of ``holders`` (host indices) is probed again (1 to 60)."""
    waits = [hosts[i].ejected_until - now for i in holders if hosts[i].ejected_until > now]
    return int(min(60, max(1, math.ceil(min(waits))))) if waits else 1
