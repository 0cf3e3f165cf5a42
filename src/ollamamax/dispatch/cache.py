"""Response cache for deterministic requests (an ``LFUCache`` with TTL).

What is cached (the route table's ``cache`` column says which routes can be)
    * always (unless ``cache_size == 0``): ``cache="embed"`` routes (``/api/embed``,
      ``/api/embeddings``, ``/v1/embeddings``) — embeddings are a pure function of model
      and input;
    * with ``cache_generate=True``: ``cache="gen"`` routes (``/api/generate``,
      ``/api/chat``, ``/v1/completions``, ``/v1/chat/completions``) when the sampling is
      deterministic, i.e. ``options.temperature == 0`` and ``options.seed`` set (native)
      or ``temperature == 0`` and ``seed`` set (``/v1``).  A streamed answer is cached as
      its full byte stream and replayed chunk by chunk.

Only complete 200 answers are stored.  The key is ``(path, normalised model,
blake2b(canonical body))`` where the canonical body is the parsed request re-encoded
with sorted keys, minus ``keep_alive`` (which changes residency, not the answer).  The
model string as sent stays in the canonical body, because the answer echoes it.
This module decides keys and keeps entries; it never talks to a host.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..structures.lfu import LFUCache
from ..wire.routes import Route

__all__ = ["MAX_CACHED_BYTES", "CachedResponse", "ResponseCache"]

MAX_CACHED_BYTES = 4 * 1024 * 1024  # larger answers are not cached


class CachedResponse:
    """A complete answer kept by the cache: a body, or a stream's chunks."""

    __slots__ = ("status", "headers", "body", "chunks")

    def __init__(
        self, status: int, headers: dict[str, str], body: bytes | None, chunks: tuple[bytes, ...] | None
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.chunks = chunks


def _deterministic(openai: bool, obj: dict[str, Any]) -> bool:
    if openai:
        temp, seed = obj.get("temperature"), obj.get("seed")
    else:
        opts = obj.get("options")
        if not isinstance(opts, dict):
            return False
        temp, seed = opts.get("temperature"), opts.get("seed")
    return (
        isinstance(temp, (int, float))
        and not isinstance(temp, bool)
        and temp == 0
        and isinstance(seed, int)
        and not isinstance(seed, bool)
    )


class ResponseCache:
    def __init__(self, size: int, ttl: float | None, *, cache_generate: bool = False) -> None:
        self.enabled = size > 0
        self.cache_generate = cache_generate
        self.hits = 0
        self.misses = 0
        self._lfu: Any = LFUCache(size, ttl=ttl) if self.enabled else None

    def cacheable_route(self, route: Route) -> bool:
        """Routes that carry the X-Ollamamax-Cache header (whether or not cached)."""
        c = route.cache
        return self.enabled and (c == "embed" or (c == "gen" and self.cache_generate))

    def key_for(
        self, route: Route, model: str, obj: dict[str, Any], *, tenant: str | None = None
    ) -> tuple[str, str, bytes] | None:
        """Cache key, or None when this request must not be cached."""
        if not self.enabled:
            return None
        if route.cache != "embed":
            if not (route.cache == "gen" and self.cache_generate and _deterministic(route.openai, obj)):
                return None
        if "keep_alive" in obj:
            obj = {k: v for k, v in obj.items() if k != "keep_alive"}
        try:
            canon = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
        except (TypeError, ValueError):  # pragma: no cover - came from json.loads
            return None
        return (route.path, model, hashlib.blake2b(canon, digest_size=16).digest())

    def invalidate_model(self, model: str) -> None:
        """Forget every answer of ``model`` (normalised name): it was pulled, created,
        copied over or deleted, so what its name means may have changed."""
        # not yet: the key does not carry the model's identity (see the hardening issue)
        return None

    def get(self, key: tuple[str, str, bytes]) -> CachedResponse | None:
        hit: CachedResponse | None = self._lfu.get(key)
        if hit is None:
            self.misses += 1
        else:
            self.hits += 1
        return hit

    def put(self, key: tuple[str, str, bytes], value: CachedResponse) -> None:
        size = len(value.body) if value.body is not None else sum(map(len, value.chunks or ()))
        if size <= MAX_CACHED_BYTES:
            self._lfu.set(key, value)

    def clear(self) -> None:
        if self._lfu is not None:
            self._lfu.clear()

    def stats(self) -> dict[str, int]:
        out = {"hits": self.hits, "misses": self.misses}
        if self._lfu is not None:
            h, m, ev, maxsize, cur = self._lfu.stats()
            out.update(evictions=ev, maxsize=maxsize, currsize=cur)
        return out
