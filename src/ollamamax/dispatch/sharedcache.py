"""The response cache's second level: answers kept in Redis, shared by every gateway.

With ``--redis``, each gateway's :class:`~.cache.ResponseCache` (the native W-TinyLFU, first
level) is backed by Redis (second level), through the client :class:`~.shared.SharedState`
already holds:

* **get**: a local miss asks Redis once (:data:`_GET`, one round trip, bounded by
  :data:`GET_TIMEOUT`); a hit is kept locally and replayed.  A local hit never touches Redis.
* **put**: an answer the local cache accepted (complete, small enough) is copied to Redis in
  the background with the local TTL (:data:`_PUT`), never on the answer's path; at most
  :data:`MAX_PENDING` copies are in flight (more are dropped: a slow Redis costs no memory).
* **invalidate**: a pull, create, copy or delete through any gateway bumps the model's
  **generation** in Redis (``{prefix}:cachegen``, one ``HINCRBY``; while Redis is down,
  once it is back).  Shared keys carry the
  generation (``{prefix}:cache:{gen}:{path}:{model}:{digest}``), and both scripts compare
  the caller's generation with Redis's atomically, so once a bump lands no gateway reads or
  writes an answer of before it.  The other gateways drop their local entries of the model
  when they learn the new generation: at their next state sync (``SharedState``, every
  0.5 s) or at once when a get finds a newer one.  Entries of old generations are never
  read again and expire with their TTL.

The key is the local key's shared part (model digest from ``/api/tags``, tenant, canonical
body; :meth:`~.cache.ResponseCache.key_for`), so every gateway of the fleet names an answer
the same way.  Redis down or slow: gets answer "miss" at once (the state is known from the
sync), puts and bumps are dropped, and the gateways serve from their own caches.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ..upstream.client import timeout
from .cache import SHARED_KEY_BYTES, CachedResponse, CacheKey, ResponseCache
from .shared import CALL_TIMEOUT, SharedState

__all__ = ["GET_TIMEOUT", "MAX_PENDING", "SharedCache", "decode", "encode"]

GET_TIMEOUT = 0.1  # seconds a local miss may wait for Redis before it goes to a host
MAX_PENDING = 256  # background puts and bumps in flight, at most
NO_TTL_SECONDS = 86400  # what an answer lives in Redis when the local cache keeps it forever
_MAGIC = b"OMC1"

# KEYS[1] = generations hash; ARGV = model, the caller's generation, key head, key tail
# -> {generation, value or false}
_GET = """
local g = redis.call('HGET', KEYS[1], ARGV[1]) or '0'
if g ~= ARGV[2] then return {g, false} end
return {g, redis.call('GET', ARGV[3] .. g .. ARGV[4])}
"""

# KEYS[1] = generations hash; ARGV = model, the caller's generation, key head, key tail,
# value, ttl ms -> 1 stored, 0 the model changed since the answer was asked for
_PUT = """
local g = redis.call('HGET', KEYS[1], ARGV[1]) or '0'
if g ~= ARGV[2] then return 0 end
redis.call('SET', ARGV[3] .. g .. ARGV[4], ARGV[5], 'PX', ARGV[6])
return 1
"""


def encode(value: CachedResponse) -> bytes:
    """A cached answer as bytes: magic, a JSON line (status, headers, chunk sizes), payload."""
    head: dict[str, Any] = {"s": value.status, "h": value.headers}
    if value.chunks is not None:
        head["c"] = [len(c) for c in value.chunks]
        payload = b"".join(value.chunks)
    else:
        payload = value.body or b""
    return _MAGIC + json.dumps(head, separators=(",", ":")).encode() + b"\n" + payload


def decode(data: bytes) -> CachedResponse | None:
    """The answer :func:`encode` wrote, or None for anything else (another version's
    format, a truncated value)."""
    if not data.startswith(_MAGIC):
        return None
    nl = data.find(b"\n")
    if nl < 0:
        return None
    try:
        head = json.loads(data[len(_MAGIC):nl])
    except ValueError:
        return None
    if not isinstance(head, dict):
        return None
    status, headers, sizes = head.get("s"), head.get("h"), head.get("c")
    if not isinstance(status, int) or not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        return None
    payload = data[nl + 1:]
    if sizes is None:
        return CachedResponse(status, headers, payload, None)
    if not isinstance(sizes, list) or not all(isinstance(n, int) and n >= 0 for n in sizes) or sum(sizes) != len(payload):
        return None
    chunks = []
    at = 0
    for n in sizes:
        chunks.append(payload[at:at + n])
        at += n
    return CachedResponse(status, headers, None, tuple(chunks))


def _generation_of(key: CacheKey) -> int | None:
    """The model generation a local key was built at (None: not shareable, e.g. after the
    local generation table was reset)."""
    epoch, _, gen = key[2][SHARED_KEY_BYTES:].partition(b".")
    if epoch != b"0":
        return None
    return int(gen)


class SharedCache:
    """The second level of ``cache`` in the Redis that ``shared`` talks to."""

    def __init__(self, shared: SharedState, cache: ResponseCache) -> None:
        self.shared = shared
        self.cache = cache
        self.hits = 0
        self.misses = 0
        self.puts = 0
        self.dropped = 0  # puts and bumps not sent (Redis down, or too many in flight)
        self._pending: set[asyncio.Task[Any]] = set()
        self._bumping: dict[str, int] = {}  # models whose bump is on its way -> how many
        self._owed: set[str] = set()  # models changed while Redis was down: bumped once it is back
        self._get_script: Any = None
        self._put_script: Any = None
        self._gens_key = shared._key("cachegen")
        self._head = shared._key("cache", "")
        cache.shared = self
        shared.on_generations = self._synced
        shared.cache = self

    def _scripts(self) -> bool:
        client = self.shared._client
        if client is None:
            return False
        if self._get_script is None:
            self._get_script = client.register_script(_GET)
            self._put_script = client.register_script(_PUT)
        return True

    @staticmethod
    def _tail(key: CacheKey) -> str:
        return f":{key[0]}:{key[1]}:{key[2][:SHARED_KEY_BYTES].hex()}"

    # -- the request's path -------------------------------------------------------------------
    async def get(self, key: CacheKey) -> CachedResponse | None:
        """The answer another gateway (or this one) kept for ``key``; None on a miss or
        when Redis cannot answer within :data:`GET_TIMEOUT`."""
        gen = _generation_of(key)
        if gen is None or not self.shared.up or not self._scripts():
            return None
        try:
            async with timeout(GET_TIMEOUT):
                current, raw = await self._get_script(keys=[self._gens_key],
                                                      args=[key[1], gen, self._head, self._tail(key)])
        except Exception as exc:  # noqa: BLE001 - a miss: the host answers
            self.shared._failed(exc)
            return None
        current = int(current)
        if current != gen:  # another gateway changed the model: forget ours now
            self.adopt({key[1]: current})
        value = decode(raw) if raw else None
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        return value

    # -- in the background -------------------------------------------------------------------
    def put(self, key: CacheKey, value: CachedResponse) -> None:
        """Copy an answer the local cache accepted to Redis (in the background)."""
        gen = _generation_of(key)
        if gen is None:
            return
        ttl = self.cache.ttl if self.cache.ttl is not None else NO_TTL_SECONDS
        self._spawn(self._put(key, gen, encode(value), max(1, int(ttl * 1000))))

    async def _put(self, key: CacheKey, gen: int, blob: bytes, ttl_ms: int) -> None:
        async with timeout(CALL_TIMEOUT):
            stored = await self._put_script(keys=[self._gens_key],
                                            args=[key[1], gen, self._head, self._tail(key), blob, ttl_ms])
        if int(stored):
            self.puts += 1

    def invalidate(self, model: str) -> None:
        """``model`` changed through this gateway: bump its generation for every gateway."""
        if self._spawn(self._bump(model)):
            self._bumping[model] = self._bumping.get(model, 0) + 1
        else:
            self._owed.add(model)

    async def _bump(self, model: str) -> None:
        try:
            async with timeout(CALL_TIMEOUT):
                gen = await self.shared._client.hincrby(self._gens_key, model, 1)
        finally:
            n = self._bumping.pop(model, 1) - 1
            if n > 0:
                self._bumping[model] = n
        self.cache.adopt_generation(model, int(gen))

    def adopt(self, generations: dict[str, int]) -> None:
        """Generations read from Redis: drop the local answers of every model that changed
        (except one whose own bump is on its way: Redis does not say it yet)."""
        for model, gen in generations.items():
            if model not in self._bumping and model not in self._owed:
                self.cache.adopt_generation(model, gen)

    def _synced(self, generations: dict[str, int]) -> None:
        """A sync read every generation Redis holds; a model it does not list is at 0
        (e.g. after Redis was flushed or restarted empty).  Bumps owed from while it was
        down go out first."""
        owed, self._owed = self._owed, set()
        for model in owed:
            self.invalidate(model)
        self.adopt({**{m: 0 for m in self.cache.generations()}, **generations})

    def _spawn(self, coro: Any) -> bool:
        if not self.shared.up or len(self._pending) >= MAX_PENDING or not self._scripts():
            coro.close()
            self.dropped += 1
            return False
        t = asyncio.get_running_loop().create_task(self._guard(coro))
        self._pending.add(t)
        t.add_done_callback(self._pending.discard)
        return True

    async def _guard(self, coro: Any) -> None:
        try:
            await coro
        except Exception as exc:  # noqa: BLE001 - the local cache still has it
            self.dropped += 1
            self.shared._failed(exc)

    async def close(self) -> None:
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=1.0)

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "puts": self.puts, "dropped": self.dropped}
