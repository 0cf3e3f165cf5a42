"""Several gateways, one fleet: the scheduler's state shared through Redis (``--redis URL``).

Each gateway process (a replica behind an L4 balancer, or one of ``--workers N``) sees only
its own requests.  With a Redis URL configured, the replicas share what the fleet scheduler
decides on (``dispatch.scheduler``), through the maintained asyncio client (``redis.asyncio``)
and two Lua scripts where atomicity matters:

* **The load picture** (:data:`_SYNC`).  Every :data:`SYNC_INTERVAL` each replica stores its
  own state -- per host the models it holds, loads and unloads with its requests in flight
  there; per model its queued requests, their oldest wait and its arrival rate; what it
  learned of each host (room, load costs) -- under ``{prefix}:state:{id}`` with a TTL of
  :data:`STATE_TTL`, renews its entry in the live set ``{prefix}:replicas`` (a sorted set
  scored by expiry on Redis's own clock), drops the expired ones and reads every other live
  replica's state: one round trip.  A dead replica's numbers are gone within
  :data:`STATE_TTL` seconds.  The scheduler's planner sums them with its own
  (:meth:`SharedState.peers`).
* **Loads** (:data:`_CLAIM`).  Before a load starts, the replica claims both the model
  (``{prefix}:load:{model}``) and the host (``{prefix}:host:{host}``) in one script, only if
  neither is claimed, with a TTL of :data:`LEASE_TTL` that the loader renews while its load
  runs and deletes when it ends (:data:`_RENEW`, only if still its own).  The same script
  announces the claim on ``{prefix}:events`` (pub/sub): the other replicas hear of the
  switch within a millisecond, not at their next sync, and stop sending the evicted
  models' requests to that host at once (the host would load them again, evicting the
  model just loaded: the switch undone by a stale picture); they count the load as under
  way there (their waiters join it).  The release announces how the load ended, so the
  joined replicas hand the copy to their waiters at once too.  So exactly one
  replica starts a given load or switches a given host; another replica that decided the
  same load joins it instead (the host loads a model once, whoever asks), and a replica that
  dies mid-load blocks nothing for longer than the lease.

Nothing on a request's path touches Redis: the sync runs on its own timer and a claim
happens once per load, inside the load's own task.  Redis is a hint for better decisions,
never a dependency of correctness: when it is unreachable, slow (every call is bounded by
:data:`CALL_TIMEOUT`) or restarted, the replica decides alone, as a single gateway does;
it reconnects with a doubling backoff, logs the change of state once, and shows it in
``/metrics`` and ``/ollamamax/status`` (:meth:`SharedState.status`).

Hosts are named across replicas by their URL, so replicas must be given the same backends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import uuid
from collections.abc import Callable
from typing import Any

from ..upstream.client import timeout

log = logging.getLogger("ollamamax.shared")

__all__ = ["CALL_TIMEOUT", "LEASE_TTL", "STATE_TTL", "SYNC_INTERVAL", "SharedState", "redacted_url"]

SYNC_INTERVAL = 0.5  # seconds between two publications of a replica's state
STATE_TTL = 3.0  # a replica's published state lives this long unless renewed
LEASE_TTL = 9.0  # a load's claim lives this long unless its loader renews it ...
LEASE_RENEW = 3.0  # ... which it does this often while the load runs
CALL_TIMEOUT = 0.5  # no call to Redis may hold anything up longer than this
BACKOFF_MAX = 10.0  # seconds between reconnection attempts, at most

# KEYS[1] = live set, KEYS[2] = own state key, KEYS[3] = the response cache's generations;
# ARGV = id, ttl ms, state, state key prefix -> {the others' states, generations (flat)}
_SYNC = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ttl)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl * 4)
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if id ~= ARGV[1] then
    local v = redis.call('GET', ARGV[4] .. id)
    if v then out[#out + 1] = v end
  end
end
return {out, redis.call('HGETALL', KEYS[3])}
"""

# KEYS[1] = model claim, KEYS[2] = host claim, KEYS[3] = the decisions channel; ARGV = value,
# ttl ms -> {0, ''} claimed (and announced); {1, holder} the model is being loaded; {2,
# holder} the host is switching
_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then return {1, v} end
v = redis.call('GET', KEYS[2])
if v and v ~= ARGV[1] then return {2, v} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', KEYS[3], ARGV[1])
return {0, ''}
"""

# KEYS[1], KEYS[2] = the claims, KEYS[3] = events; ARGV = value, ttl ms (0: delete), the
# outcome to announce ('' none) -> how many were still ours
_RENEW = """
local n = 0
for i = 1, 2 do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[i], ARGV[2]) else redis.call('DEL', KEYS[i]) end
    n = n + 1
  end
end
if ARGV[3] ~= '' then redis.call('PUBLISH', KEYS[3], ARGV[3]) end
return n
"""


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def redacted_url(url: str) -> str:
    """The URL without its password (for logs and the status page)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


class Claim:
    """What :meth:`SharedState.claim` answered."""

    __slots__ = ("ok", "conflict", "holder", "token")

    def __init__(self, ok: bool, conflict: str = "", holder: dict[str, Any] | None = None, token: str = "") -> None:
        self.ok = ok  # the load is ours to start (also when Redis could not be asked)
        self.conflict = conflict  # "model" (another replica loads it) | "host" (switches that host)
        self.holder = holder or {}  # the other replica's claim: replica, host, model, evict
        self.token = token  # what renews and releases it ("" when Redis was not asked)


class SharedState:
    """One replica's link to the others (see the module docstring).  ``publish`` returns
    this replica's state (a JSON-able dict) each time it is published; ``on_peers`` is
    called after each successful sync."""

    def __init__(self, url: str, prefix: str = "ollamamax", *, replica: str | None = None,
                 publish: Callable[[], dict[str, Any]] = dict, on_peers: Callable[[], None] = lambda: None,
                 client: Any = None) -> None:
        self.url = url
        self.prefix = prefix
        self.replica = replica or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.publish = publish
        self.on_peers = on_peers
        self._client = client
        self._peers: list[dict[str, Any]] = []
        self.up = False
        self.state = "connecting"
        self.last_error = ""
        self.syncs = 0
        self.failures = 0  # calls that failed or timed out
        self.reconnects = 0  # times it came back after being down
        self.claims = {"won": 0, "joined": 0, "host_busy": 0, "unasked": 0}
        self._task: asyncio.Task[None] | None = None
        self._backoff = SYNC_INTERVAL
        self._sync_script: Any = None
        self._claim_script: Any = None
        self._renew_script: Any = None
        # the response cache's second level (dispatch.sharedcache) hears each sync's
        # generations of cached models here
        self.on_generations: Callable[[dict[str, int]], None] | None = None
        self.cache: Any = None  # that second level (its figures go into status())
        # another replica's claim, heard on the events channel: {replica, host, model, evict}
        self.on_event: Callable[[dict[str, Any]], None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self.events_heard = 0

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self._client is None:
            try:
                import redis.asyncio as aioredis  # optional dependency
            except ImportError:
                raise RuntimeError("--redis needs the Redis client: pip install 'ollamamax[redis]'") from None

            self._client = aioredis.from_url(self.url, socket_timeout=CALL_TIMEOUT,
                                             socket_connect_timeout=CALL_TIMEOUT, retry_on_timeout=False)
        c = self._client
        self._sync_script = c.register_script(_SYNC)
        self._claim_script = c.register_script(_CLAIM)
        self._renew_script = c.register_script(_RENEW)
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="ollamamax-shared")
        self._listener = loop.create_task(self._listen(), name="ollamamax-shared-events")

    async def close(self) -> None:
        for t in (self._task, self._listener):
            if t is not None:
                t.cancel()
                await asyncio.wait([t], timeout=1.0)
        if self._client is not None and self.up:
            try:  # leave at once rather than at the TTL
                async with timeout(CALL_TIMEOUT):
                    await self._client.zrem(self._key("replicas"), self.replica)
                    await self._client.delete(self._key("state", self.replica))
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        if self._client is not None:
            try:
                await self._client.aclose()
            except Exception:  # noqa: BLE001
                pass

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # -- the load picture ----------------------------------------------------------------
    def peers(self) -> list[dict[str, Any]]:
        """The other live replicas' states, as last read (empty while Redis is down)."""
        return self._peers if self.up else []

    async def _run(self) -> None:
        while True:
            ok = await self.sync()
            await asyncio.sleep(SYNC_INTERVAL if ok else self._backoff)
            if not ok:
                self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    async def sync(self) -> bool:
        """Publish this replica's state and read the others' (one round trip)."""
        try:
            blob = json.dumps(self.publish(), separators=(",", ":"))
            async with timeout(CALL_TIMEOUT):
                raw, flat = await self._sync_script(
                    keys=[self._key("replicas"), self._key("state", self.replica), self._key("cachegen")],
                    args=[self.replica, int(STATE_TTL * 1000), blob, self._key("state", "")])
            gens = {_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}
            peers = []
            for item in raw:
                try:
                    peers.append(json.loads(item))
                except ValueError:
                    continue  # another version's state: ignored
        except Exception as exc:  # noqa: BLE001 - any failure means "decide alone"
            self._failed(exc)
            return False
        self._peers = peers
        self.syncs += 1
        self._backoff = SYNC_INTERVAL
        if not self.up:
            if self.state == "down":
                self.reconnects += 1
                log.warning("redis %s reachable again: sharing state with %d other replica(s)",
                            redacted_url(self.url), len(peers))
            else:
                log.info("redis %s: sharing state with %d other replica(s)", redacted_url(self.url), len(peers))
            self.up = True
            self.state = "up"
            self.last_error = ""
        self.on_peers()
        if self.on_generations is not None:
            self.on_generations(gens)
        return True

    async def _listen(self) -> None:
        """Hear the other replicas' claims as they are made (pub/sub; reconnects with the
        same backoff as the sync when Redis goes away)."""
        backoff = SYNC_INTERVAL
        while True:
            pubsub = None
            try:
                pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(self._key("events"))
                backoff = SYNC_INTERVAL
                while True:
                    msg = await pubsub.get_message(timeout=CALL_TIMEOUT * 0.8)
                    if msg is not None and msg.get("type") == "message":
                        self._heard(msg.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the sync reports Redis's state; just retry
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            finally:
                if pubsub is not None:
                    try:
                        await pubsub.aclose()
                    except Exception:  # noqa: BLE001
                        pass

    def _heard(self, data: Any) -> None:
        try:
            event = json.loads(data)
        except (TypeError, ValueError):
            return
        if not isinstance(event, dict) or event.get("replica") == self.replica:
            return
        self.events_heard += 1
        if self.on_event is not None:
            self.on_event(event)

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self.up or self.state == "connecting":
            log.warning("redis %s unreachable (%s): deciding alone until it is back",
                        redacted_url(self.url), self.last_error)
        self.up = False
        self.state = "down"
        self._peers = []

    # -- loads ---------------------------------------------------------------------------
    async def claim(self, model: str, host: str, evict: tuple[str, ...]) -> Claim:
        """Claim the load of ``model`` on ``host`` (evicting ``evict``) for this replica."""
        if not self.up:
            self.claims["unasked"] += 1
            return Claim(True)
        token = json.dumps({"replica": self.replica, "host": host, "model": model, "evict": list(evict),
                            "n": uuid.uuid4().hex[:8]}, separators=(",", ":"))
        try:
            async with timeout(CALL_TIMEOUT):
                code, holder = await self._claim_script(
                    keys=[self._key("load", model), self._key("host", host), self._key("events")],
                    args=[token, int(LEASE_TTL * 1000)])
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)
            self.claims["unasked"] += 1
            return Claim(True)
        if int(code) == 0:
            self.claims["won"] += 1
            return Claim(True, token=token)
        try:
            who = json.loads(holder)
        except ValueError:
            who = {}
        if int(code) == 1:
            self.claims["joined"] += 1
            return Claim(False, "model", who)
        self.claims["host_busy"] += 1
        return Claim(False, "host", who)

    async def renew(self, claim: Claim, model: str, host: str, *, loaded: bool | None = None) -> None:
        """Extend a claim while its load runs, or give it up once the load ended (``loaded``:
        whether the model is loaded now), announcing the outcome on the events channel: the
        replicas that joined the load hand its copy to their waiters at once, not at their
        next sync."""
        if not claim.token or self._client is None:
            return
        done = "" if loaded is None else json.dumps(
            {"replica": self.replica, "host": host, "model": model, "loaded": loaded}, separators=(",", ":"))
        try:
            async with timeout(CALL_TIMEOUT):
                await self._renew_script(keys=[self._key("load", model), self._key("host", host), self._key("events")],
                                         args=[claim.token, 0 if loaded is not None else int(LEASE_TTL * 1000), done])
        except Exception as exc:  # noqa: BLE001 - the lease then expires by itself
            self._failed(exc)

    async def hold(self, claim: Claim, model: str, host: str) -> None:
        """Renew ``claim`` every :data:`LEASE_RENEW` seconds until cancelled."""
        while True:
            await asyncio.sleep(LEASE_RENEW)
            await self.renew(claim, model, host)

    # -- visible to operators --------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "url": redacted_url(self.url),
            "prefix": self.prefix,
            "replica": self.replica,
            "state": self.state,
            "peers": len(self.peers()),
            "last_error": self.last_error,
            "syncs": self.syncs,
            "failures": self.failures,
            "reconnects": self.reconnects,
            "claims": dict(self.claims),
            "events_heard": self.events_heard,
            "cache": self.cache.stats() if self.cache is not None else None,
        }
