"""Response cache for deterministic requests: an ``LFUCache`` with a TTL and a byte budget.

What is cached (the route table's ``cache`` column says which routes can be)
    * always (unless ``cache_size == 0`` or ``cache_bytes == 0``): ``cache="embed"`` routes
      (``/api/embed``, ``/api/embeddings``, ``/v1/embeddings``) — embeddings are a pure
      function of the model and the input;
    * with ``cache_generate=True``: ``cache="gen"`` routes (``/api/generate``,
      ``/api/chat``, ``/v1/completions``, ``/v1/chat/completions``) when the sampling is
      deterministic, i.e. ``options.temperature == 0`` and ``options.seed`` set (native)
      or ``temperature == 0`` and ``seed`` set (``/v1``).  A streamed answer is cached as
      its full byte stream and replayed chunk by chunk.

Only complete, successful answers are stored: a 200 whose body is not an error object,
or a stream that ended with its final object (NDJSON: a last line with ``"done": true``;
SSE: ``data: [DONE]`` after a non-error event).  A failed, truncated or abandoned stream
never reaches :meth:`ResponseCache.put` (``forward`` passes only streams that ended
cleanly) and would be refused by it.

Bounds.  ``cache_size`` entries and ``cache_bytes`` bytes (the ``LFUCache`` weight
budget): an entry weighs its key and value bytes (body or chunks, headers) plus a fixed
allowance for the Python objects around them.  An answer heavier than 1/16 of the
budget (and in any case than ``MAX_CACHED_BYTES``) is not cached; a heavy answer enters
only by winning W-TinyLFU's admission contest against the entries it would displace.

Identity.  The key is ``(path, normalised model, blake2b(scope + canonical body))``.
The scope is the model's digest as ``/api/tags`` reports it (passed in by the
dispatcher from its snapshot: a re-pulled or re-created model with a new digest misses),
a generation number per model that :meth:`ResponseCache.invalidate_model` bumps (a pull,
create, copy destination or delete through the gateway makes the model's entries
unreachable at once; they are also dropped, to free their bytes), and, with
``scope="tenant"``, the tenant the front end names (one API key's answers are never
another key's hits).  The canonical body is the parsed request re-encoded with sorted
keys, minus ``keep_alive`` (which changes residency, not the answer); the model string
as sent stays in it, because the answer echoes it.

Second level.  With Redis (``--redis``), answers are also kept there, shared by every
gateway of the fleet (``dispatch.sharedcache``): a local miss asks Redis once, a local put
is copied there, and an invalidation reaches the other gateways (see that module).  The
shared key is this key's first part (digest, tenant and body: everything but the local
generation), so two gateways build the same one.

This module decides keys and keeps entries; it never talks to a host and never reads
the snapshot itself (the dispatcher passes the digest in).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..structures.lfu import LFUCache
from ..wire.routes import Route

__all__ = ["CACHE_SCOPES", "ENTRY_FRACTION", "MAX_CACHED_BYTES", "CachedResponse", "ResponseCache"]

MAX_CACHED_BYTES = 4 * 1024 * 1024  # larger answers are never cached
ENTRY_FRACTION = 16  # nor answers heavier than 1/ENTRY_FRACTION of the byte budget
CACHE_SCOPES = ("tenant", "shared")
# rough CPython sizes of what an entry keeps besides its payload bytes: the LFU node and
# dict slot, the key tuple and its strings, the CachedResponse and its headers dict
ENTRY_OVERHEAD = 512
HEADER_OVERHEAD = 64  # per header: two str objects and a dict slot
CHUNK_OVERHEAD = 40  # per stream chunk: a bytes object and its tuple slot
_MAX_GENERATIONS = 4096  # models with a generation number; beyond, every entry is dropped
_TAIL = 4096  # how much of a stream's end is checked for its final object
SHARED_KEY_BYTES = 16  # a key's digest part: the same in every gateway (see key_for)

CacheKey = tuple[str, str, bytes]


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

    def payload_bytes(self) -> int:
        if self.body is not None:
            return len(self.body)
        return sum(map(len, self.chunks or ()))


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


def _stream_complete(chunks: tuple[bytes, ...], content_type: str) -> bool:
    """Whether a stream's bytes end with its final object (and not with an error)."""
    tail = b""
    for c in reversed(chunks):  # the last few KiB are enough
        tail = c + tail
        if len(tail) >= _TAIL:
            break
    if content_type.startswith("text/event-stream"):
        events = [e.strip() for e in tail.replace(b"\r\n", b"\n").split(b"\n\n") if e.strip()]
        return (
            len(events) >= 2
            and events[-1] == b"data: [DONE]"
            and not events[-2].startswith(b'data: {"error"')
        )
    lines = tail.rstrip().rsplit(b"\n", 1)
    try:
        final = json.loads(lines[-1])
    except ValueError:
        return False
    return isinstance(final, dict) and final.get("done") is True and "error" not in final


def entry_weight(key: CacheKey, value: CachedResponse) -> int:
    """What an entry costs the byte budget: key and value bytes plus object overheads."""
    n = ENTRY_OVERHEAD + len(key[0]) + len(key[1]) + len(key[2]) + value.payload_bytes()
    for k, v in value.headers.items():
        n += len(k) + len(v) + HEADER_OVERHEAD
    if value.chunks is not None:
        n += CHUNK_OVERHEAD * len(value.chunks)
    return n


class ResponseCache:
    """``ResponseCache(size, ttl, *, cache_generate=False, max_bytes=256 MiB, scope="tenant")``:
    at most ``size`` entries and ``max_bytes`` bytes, each kept for ``ttl`` seconds."""

    def __init__(
        self,
        size: int,
        ttl: float | None,
        *,
        cache_generate: bool = False,
        max_bytes: int = 256 * 1024 * 1024,
        scope: str = "tenant",
    ) -> None:
        if scope not in CACHE_SCOPES:
            raise ValueError(f"cache scope must be one of {', '.join(CACHE_SCOPES)}, got {scope!r}")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"cache bytes must be an int >= 0, got {max_bytes!r}")
        self.enabled = size > 0 and max_bytes > 0
        self.cache_generate = cache_generate
        self.scope = scope
        self.max_bytes = max_bytes if self.enabled else 0
        self.max_entry_bytes = min(MAX_CACHED_BYTES, max_bytes // ENTRY_FRACTION)
        self.hits = 0
        self.misses = 0
        self._lfu: Any = LFUCache(size, ttl=ttl, maxweight=max_bytes) if self.enabled else None
        self._size = size
        self._epoch = 0  # bumped when the generation table is reset
        self._generation: dict[str, int] = {}  # model -> times it changed (absent: 0)
        self._keys: dict[CacheKey, None] = {}  # keys put, some since evicted (pruned as it grows)
        self.ttl = ttl
        self.shared: Any = None  # the second level in Redis (dispatch.sharedcache), if any

    def cacheable_route(self, route: Route) -> bool:
        """Routes that carry the X-Ollamamax-Cache header (whether or not cached)."""
        c = route.cache
        return self.enabled and (c == "embed" or (c == "gen" and self.cache_generate))

    def key_for(
        self,
        route: Route,
        model: str,
        obj: dict[str, Any],
        *,
        tenant: str | None = None,
        digest: str = "",
    ) -> CacheKey | None:
        """Cache key, or None when this request must not be cached.  ``digest``: the
        model's digest(s) in the current snapshot; ``tenant``: who asks (ignored with
        ``scope="shared"``)."""
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
        scope = [digest, tenant if self.scope == "tenant" else None]
        h = hashlib.blake2b(digest_size=SHARED_KEY_BYTES)
        h.update(json.dumps(scope, separators=(",", ":")).encode())
        h.update(b"\n")
        h.update(canon)
        # the first SHARED_KEY_BYTES name the answer everywhere; the rest is this process's
        # generation of the model (bumped by invalidate_model)
        return (route.path, model, h.digest() + b"%d.%d" % (self._epoch, self._generation.get(model, 0)))

    def invalidate_model(self, model: str) -> None:
        """Forget every answer of ``model`` (normalised name): it was pulled, created,
        copied over or deleted, so what its name means may have changed.  Its keys change
        at once (a new generation); its entries are dropped to free their bytes; with a
        second level, the other gateways forget them too."""
        if not self.enabled:
            return
        gen = self._generation
        if model not in gen and len(gen) >= _MAX_GENERATIONS:
            self._epoch += 1  # a new epoch: no key of before can be built again
            gen.clear()
            self._keys.clear()
            self._lfu.clear()
        gen[model] = gen.get(model, 0) + 1
        self._drop(model)
        if self.shared is not None:
            self.shared.invalidate(model)

    def adopt_generation(self, model: str, gen: int) -> None:
        """The fleet's generation of ``model`` (read from the second level): when it is not
        this process's, the model changed elsewhere: drop its entries and take it."""
        if not self.enabled or self._generation.get(model, 0) == gen:
            return
        self._generation[model] = gen
        self._drop(model)

    def generations(self) -> dict[str, int]:
        return dict(self._generation)

    def _drop(self, model: str) -> None:
        lfu = self._lfu
        gone = [k for k in self._keys if k[1] == model]
        for k in gone:
            del self._keys[k]
            lfu.pop(k, None)

    def get(self, key: CacheKey) -> CachedResponse | None:
        hit: CachedResponse | None = self._lfu.get(key)
        if hit is None:
            self.misses += 1
        else:
            self.hits += 1
        return hit

    def put(self, key: CacheKey, value: CachedResponse) -> None:
        """Keep a complete answer (anything else is refused) if it is small enough."""
        if value.status != 200:
            return
        if value.chunks is not None:
            if not value.chunks or not _stream_complete(value.chunks, value.headers.get("Content-Type", "")):
                return
        elif value.body is None or value.body[:64].lstrip().startswith(b'{"error"'):
            return
        if value.payload_bytes() > self.max_entry_bytes:
            return
        self.keep(key, value)
        if self.shared is not None:
            self.shared.put(key, value)

    def keep(self, key: CacheKey, value: CachedResponse) -> None:
        """Store an answer already judged complete (:meth:`put`'s checks passed here or in
        the gateway that put it in the second level)."""
        self._lfu.set(key, value, weight=entry_weight(key, value))
        keys = self._keys
        keys[key] = None
        if len(keys) > 2 * self._size + 64:  # forget keys evicted since (amortised O(1))
            lfu = self._lfu
            self._keys = {k: None for k in keys if k in lfu}

    def clear(self) -> None:
        if self._lfu is not None:
            self._lfu.clear()
        self._keys.clear()

    def stats(self) -> dict[str, int]:
        out = {"hits": self.hits, "misses": self.misses}
        if self._lfu is not None:
            s = self._lfu.stats()
            out.update(evictions=s.evictions, maxsize=s.maxsize, currsize=s.currsize,
                       bytes=s.currweight, max_bytes=self.max_bytes)
        return out
