"""Every dispatcher knob, with its documented default: :class:`DispatcherConfig`.

TOML, environment and command line map onto it (ops.config); the dispatcher hands
each part the few values it needs, so the layers below never see this class.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DispatcherConfig"]


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
    # retries in progress may be at most this share of the requests in progress, plus
    # retry_budget_min (Envoy's retry budget): an outage cannot multiply the load
    retry_budget_ratio: float = 0.2
    retry_budget_min: int = 3
    refresh_interval: float = 5.0  # /api/tags + /api/ps poll period
    eject_after_failures: int = 3  # consecutive host-side failures before a host is ejected
    eject_cooldown: float = 2.0  # first cooldown; doubles on repeated ejection
    eject_max_cooldown: float = 60.0
    max_ejection_percent: float = 50.0  # never eject more than this share of the hosts (at least one)
    # when fewer than this percentage of a model's hosts are healthy, route to all of them
    panic_threshold: float = 50.0
    cache_size: int = 4096  # response cache entries (embeddings by default)
    cache_bytes: int = 256 * 1024 * 1024  # response cache budget: key and value bytes
    cache_ttl: float | None = 3600.0
    cache_generate: bool = False  # also cache chat/generate with temperature 0 + seed
    # "tenant": with API keys, one key's answers are never another key's hits; "shared"
    cache_scope: str = "tenant"
    auto_pull: bool = False  # pull a model no host has to one host, then serve
    session_header: str = "X-Ollamamax-Session"  # affinity key when the client sends one
    affinity_overflow: float = 1.25  # bounded-load factor for the affinity ring
    # several gateways: redis://, rediss:// or unix:// URL ("" = each process on its own)
    # and the prefix of every key, so that two fleets can share one Redis
    redis_url: str = ""
    redis_prefix: str = "ollamamax"
