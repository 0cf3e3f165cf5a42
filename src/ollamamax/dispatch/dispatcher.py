"""The Dispatcher: one object that answers every Ollama / OpenAI-compatible route.

It owns the lifecycle (start: one upstream client per host, the first refresh of every
host, the refresh loops; close: queued requests answered busy, streams and pools closed)
and the route switch of :meth:`Dispatcher.handle`.  It composes the parts that do the
work; each lives in its own module:

* ``directory``: which healthy hosts have a model (with a refresh or pull on a miss);
* ``placement.router``: which host serves a request now, or which ones it waits for;
* ``admission``: per-host slots and the bounded FIFO of waiting requests;
* ``forward``: attempts, retries before the first byte, pass-through streams;
* ``accounting``: counters, histograms and learned costs;
* ``cache``, ``broadcast`` (pull, create, copy, delete, blobs, unload), ``merged`` (tags,
  ps, version, /v1/models), ``status``, and ``client_api`` (``chat()``, ``generate()``...).

Request path for an inference route (``/api/chat`` ...)::

    parse (Go-like 400s)  ->  cache lookup (only for a model the snapshot lists; the key
    carries its digest, its generation and the tenant)  ->  candidates (healthy hosts that
    have the model, from the immutable snapshot)  ->  placement (take a free slot, or wait)  ->
    admission  ->  upstream attempt (TTFB timeout)  ->  retry on another host while
    nothing went to the client  ->  response (body or pass-through stream with idle
    timeout; aclose() cancels upstream at once)  ->  accounting.

The original request bytes are forwarded unchanged.  The client's own headers are not
(only Content-Type/Accept/User-Agent plus the host's configured headers).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..fleet.config import HostConfig, host_name_from_url
from ..fleet.health import Health, HealthPolicy
from ..fleet.hosts import HostState
from ..fleet.learning import Demand, Ewma
from ..fleet.residency import Residency
from ..fleet.snapshot import HostView, Snapshot, SnapshotStore
from ..placement.planner import PlannerPolicy
from ..placement.router import Router
from ..placement.strategies import (
    STRATEGIES,
    RoutingKey,
    chat_prefix_hashes,
    make_strategy,
)
from ..upstream.client import Upstream, header_get
from ..wire.names import normalize_model
from ..wire.ollama import NOT_FOUND_PAGE
from ..wire.response import DispatchResponse
from ..wire.routes import Route, lookup
from ..wire.validate import BadRequest, is_unload, model_of, parse_body
from . import replies
from .accounting import Accounting
from .admission import Admission
from .broadcast import Broadcaster
from .cache import ResponseCache
from .client_api import EmbeddedClient
from .config import DispatcherConfig
from .directory import HostDirectory
from .forward import Forwarder, Request
from .merged import Merger
from .refresh import Refresher
from .scheduler import FleetScheduler
from .shared import SharedState
from .sharedcache import SharedCache
from .status import status_document

__all__ = ["Dispatcher"]

log = logging.getLogger("ollamamax.dispatch")

_URL = re.compile(r"^https?://[^/\s]+$")


def _make_upstream(h: HostState, cfg: DispatcherConfig) -> Upstream:
    return Upstream(h.url, headers=h.config.headers, capacity=h.capacity, connect_timeout=cfg.connect_timeout)


class Dispatcher(EmbeddedClient):
    """Dispatch Ollama API requests over many Ollama hosts.

    ``hosts`` are base URLs or :class:`HostConfig`.  ``strategy`` (default from the
    config, ``least-loaded``) is one of ``least-loaded``, ``p2c``, ``round-robin``,
    ``latency``, ``affinity``.  Keyword ``overrides`` replace fields of ``config``.
    Use as ``async with Dispatcher([...]) as d:``; the initial refresh of every host
    completes (bounded by the connect timeout) before the block starts; hosts that are
    down are marked unhealthy and probed again later.
    """

    def __init__(
        self,
        hosts: Sequence[str | HostConfig] | str | HostConfig,
        *,
        strategy: str | None = None,
        config: DispatcherConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        upstream_factory: Callable[[HostState, DispatcherConfig], Upstream] | None = None,
        policy: PlannerPolicy | None = None,
        **overrides: Any,
    ) -> None:
        cfg = config if config is not None else DispatcherConfig()
        if strategy is not None:
            overrides["strategy"] = strategy
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        if cfg.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {cfg.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if cfg.max_in_flight_per_host < 1:
            raise ValueError("max_in_flight_per_host must be >= 1")
        if cfg.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.config = cfg
        specs = [hosts] if isinstance(hosts, (str, HostConfig)) else list(hosts)
        if not specs:
            raise ValueError("at least one host is required")
        self.hosts: list[HostState] = []
        names: set[str] = set()
        for i, spec in enumerate(specs):
            hc = HostConfig(url=spec) if isinstance(spec, str) else spec
            url = hc.url.strip().rstrip("/")
            if not _URL.match(url):
                raise ValueError(f"invalid host URL {hc.url!r} (expected http://host:port)")
            name = hc.name or host_name_from_url(url)
            base, k = name, 2
            while name in names:
                name = f"{base}#{k}"
                k += 1
            names.add(name)
            cap = hc.max_concurrency if hc.max_concurrency is not None else cfg.max_in_flight_per_host
            if cap < 1:
                raise ValueError(f"max_concurrency of {url} must be >= 1")
            if hc.weight <= 0:
                raise ValueError(f"weight of {url} must be > 0")
            self.hosts.append(HostState(index=i, config=hc, name=name, url=url, capacity=int(cap)))
        self.store = SnapshotStore(HostView(h.index, h.name, h.url) for h in self.hosts)
        self.health = Health(
            self.hosts,
            clock=clock,
            policy=HealthPolicy(
                eject_after_failures=cfg.eject_after_failures,
                eject_cooldown=cfg.eject_cooldown,
                eject_max_cooldown=cfg.eject_max_cooldown,
                max_ejection_percent=cfg.max_ejection_percent,
            ),
            on_down=self._on_down,
        )
        self.cache = ResponseCache(
            cfg.cache_size, cfg.cache_ttl, cache_generate=cfg.cache_generate, max_bytes=cfg.cache_bytes,
            scope=cfg.cache_scope,
        )
        self.clock = clock  # every time the dispatcher reads (a virtual one in the simulator)
        self.wall = wall  # POSIX time, for the status document's timestamps
        self._upstream_factory = upstream_factory or _make_upstream
        self.policy = policy if policy is not None else PlannerPolicy()
        self.demand = Demand()
        self.service: dict[str, Ewma] = {}  # model -> seconds a request holds a slot
        self.residency = Residency(
            len(self.hosts),
            room=[h.config.max_loaded_models for h in self.hosts],
            slots=[h.config.num_parallel for h in self.hosts],
        )
        self.router = Router(make_strategy(cfg.strategy, self.hosts, overflow=cfg.affinity_overflow))
        self.accounting = Accounting(on_residency_change=self._refresh_soon)
        self._streams: set[Any] = set()
        self._upstreams: list[Upstream] = []
        # built by start(): they need a running loop
        self.refresher: Refresher | None = None
        self.directory: HostDirectory | None = None
        self.admission: Admission | None = None
        self.scheduler: FleetScheduler | None = None
        self.shared: SharedState | None = None  # with Redis: the other gateways' state
        self._shared_cache: SharedCache | None = None  # ... and the cache's second level
        self._forwarder: Forwarder | None = None
        self._broadcaster: Broadcaster | None = None
        self._merger: Merger | None = None
        self._outliers: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------
    async def __aenter__(self) -> Dispatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        cfg = self.config
        hosts = self.hosts
        self._upstreams = [self._upstream_factory(h, cfg) for h in hosts]
        self.admission = admission = Admission(hosts, self.residency, cfg.queue_size, on_queue=self._on_queue,
                                                  clock=self.clock)
        self.scheduler = scheduler = FleetScheduler(
            hosts, self.residency, admission, self.store, self._upstreams, self.demand, self.service,
            clock=self.clock, wall=self.wall, policy=self.policy, health=self.health,
        )
        self.refresher = refresher = Refresher(
            hosts,
            self._upstreams,
            self.store,
            self.health,
            probe_timeout=cfg.connect_timeout,
            interval=cfg.refresh_interval,
            on_up=self._on_up,
            on_refreshed=scheduler.reconcile,
            clock=self.clock,
        )
        self.directory = directory = HostDirectory(
            hosts, self.store, self._upstreams, refresher, auto_pull=cfg.auto_pull,
            panic_threshold=cfg.panic_threshold, clock=self.clock, health_epoch=lambda: self.health.epoch,
        )
        self._forwarder = Forwarder(
            cfg, hosts, self.store, self._upstreams, self.router, admission, self.health, self.accounting,
            self.cache, self._streams, self._refresh_soon, self.residency, self.service, self.clock,
        )
        self._broadcaster = Broadcaster(cfg, directory, self._streams, self.residency,
                                        on_model_changed=self.cache.invalidate_model)
        self._merger = Merger(cfg, directory, self._broadcaster)
        try:
            await refresher.start()
        except BaseException:
            await self.close()
            raise
        scheduler.start()
        if cfg.redis_url:  # several gateways: share the scheduler's state (dispatch.shared)
            self.shared = SharedState(cfg.redis_url, cfg.redis_prefix, publish=scheduler.shared_state,
                                      on_peers=scheduler.absorb)
            scheduler.shared = self.shared
            self.shared.on_event = scheduler.heard
            if self.cache.enabled:  # the response cache's second level (dispatch.sharedcache)
                self._shared_cache = SharedCache(self.shared, self.cache)
            self.shared.start()
        self._outliers = asyncio.create_task(self._detect_outliers(), name="ollamamax-outliers")

    def _on_queue(self, model: str) -> None:
        """Requests of ``model`` are waiting: the scheduler may have a copy to load."""
        if self.scheduler is not None:
            self.scheduler.nudge()

    def _on_up(self, h: HostState) -> None:
        """``h`` came back: its copies may take waiting requests again."""
        if self.admission is not None:
            self.admission.grant_host(h.index)
        if self.scheduler is not None:
            self.scheduler.nudge()

    async def _detect_outliers(self) -> None:
        """Every detection interval, eject hosts whose failure share stands out."""
        health = self.health
        while True:
            await asyncio.sleep(health.policy.interval)
            health.evaluate()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.admission is not None:  # queued requests get 503 now, not at their deadline
            self.admission.close()
        if self._outliers is not None:
            self._outliers.cancel()
        if self.scheduler is not None:
            await self.scheduler.close()
        if self._shared_cache is not None:
            await self._shared_cache.close()
        if self.shared is not None:
            await self.shared.close()
        if self.refresher is not None:
            await self.refresher.stop()
        if self.directory is not None:
            await self.directory.close()
        for s in list(self._streams):
            await s.aclose()
        for up in self._upstreams:
            await up.close()
        # let the aborted upstream transports finish closing (avoids ResourceWarnings)
        await asyncio.sleep(0)

    def _on_down(self, h: HostState) -> None:
        """``h`` was ejected or failed its probe: reschedule its probe, and move the
        requests still waiting for its first byte to other hosts."""
        if self.refresher is not None:
            self.refresher.refresh_soon(h)
        if self.scheduler is not None:
            self.scheduler.host_down(h)
        if self._forwarder is not None:
            moved = self._forwarder.abandon_waiting(h)
            if moved:
                log.warning("host %s is down: %d request(s) waiting for its first byte move elsewhere", h.name, moved)

    def _refresh_soon(self, h: HostState) -> None:
        if self.refresher is not None:
            self.refresher.refresh_soon(h)

    @property
    def snapshot(self) -> Snapshot:
        """What every host reported at its last refresh (immutable)."""
        return self.store.current

    def upstream(self, h: HostState) -> Upstream:
        """The HTTP client of host ``h`` (after ``start()``)."""
        return self._upstreams[h.index]

    @property
    def open_streams(self) -> int:
        """Streams handed out and not yet finished or closed."""
        return len(self._streams)

    # -- public entry point ------------------------------------------------------------
    async def handle(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        query: str = "",
        tenant: str | None = None,
    ) -> DispatchResponse:
        """Answer one HTTP request (see ``wire.response`` for the contract).  ``tenant``
        names who is asking (a front end with API keys passes one per key); with
        ``cache_scope="tenant"`` cached answers are never shared across tenants."""
        if self._forwarder is None or self._closed:
            raise RuntimeError("Dispatcher is not running: use 'async with Dispatcher(...)' or await start()")
        method = method.upper()
        route = lookup(method, path)
        if route is None:
            return replies.plain(404, NOT_FOUND_PAGE)
        kind = route.kind
        if kind == "model":
            return await self._inference(route, method, path, body or b"", headers, query, tenant)
        if kind == "root":
            return replies.plain(200, b"Ollama is running")
        merger = self._merger
        assert merger is not None and self._broadcaster is not None
        if kind == "tags":
            return await merger.tags()
        if kind == "ps":
            return await merger.ps()
        if kind == "version":
            return merger.version()
        if kind == "status":
            return replies.json_reply(200, self.status())
        if kind == "v1_models":
            return await merger.v1_models()
        if kind == "v1_model":
            return await merger.v1_model(path[len("/v1/models/") :], headers)
        if kind == "blobs":
            return await self._broadcaster.blobs(method, path, body or b"", headers)
        try:
            obj = parse_body(route, body or b"")
        except BadRequest as exc:
            return replies.error(route, exc.status, exc.message)
        return await self._broadcaster.manage(route, obj, model_of(route, obj), method, path, body or b"", headers)

    # -- inference routes --------------------------------------------------------------
    async def _inference(
        self,
        route: Route,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str] | None,
        query: str,
        tenant: str | None,
    ) -> DispatchResponse:
        cache = self.cache
        cache_header = cache.cacheable_route(route)
        cache_tag = "miss" if cache_header else None  # the X-Ollamamax-Cache header, if any
        try:
            obj = parse_body(route, body)
        except BadRequest as exc:
            return replies.error(route, exc.status, exc.message, cache=cache_tag)
        name = model_of(route, obj)
        if not name.strip():
            if route.empty_model == "notfound":
                return replies.error(route, 404, f"model '{name}' not found", cache=cache_tag)
            return replies.error(route, 400, "model is required", cache=cache_tag)
        model = normalize_model(name)
        fwd = self._forwarder
        assert fwd is not None and self.directory is not None
        if "keep_alive" in obj and is_unload(route, obj):
            assert self._broadcaster is not None
            return await self._broadcaster.unload(
                route, name, model, method, path, body, headers, lambda: fwd.no_healthy(route, name, model)
            )
        req = Request(route, method, path, body, headers, query, self.clock())
        req.obj = obj
        req.name = name
        req.model = model
        req.cache_header = cache_header
        snap = self.store.current
        # Only a model the snapshot lists can be answered from the cache: after a delete
        # (and the refresh it triggers) the request gets the host's 404, not a replay.
        # The key carries the digest the hosts report, so a new build of the model misses.
        known = model in snap.by_model
        if cache_header and known:
            req.cache_key = key = cache.key_for(route, model, obj, tenant=tenant, digest=snap.digests.get(model, ""))
            if key is not None:
                hit = cache.get(key)
                if hit is None and self._shared_cache is not None:  # another gateway's answer?
                    hit = await self._shared_cache.get(key)
                    if hit is not None:
                        cache.keep(key, hit)
                if hit is not None:
                    return replies.replay(hit)
        directory = self.directory
        cands, panic = directory.lookup(model)
        if cands is None:  # not in the snapshot: refresh (and maybe pull) first
            await directory.candidates_or_fetch(model)
            cands, panic = directory.lookup(model)
        if cands is None:
            if route.path == "/api/push" and self._broadcaster is not None:
                # Ollama streams an in-band error here, not a 404 (Broadcaster.push_missing)
                return await self._broadcaster.push_missing(route, obj, path, body, headers)
            return replies.error(route, 404, replies.notfound_message(route, name), cache=cache_tag)
        if not cands:
            return fwd.no_healthy(route, name, model, cache=cache_tag)
        if cache_header and not known:  # found by the refresh: the answer is keyed by its digest
            req.cache_key = cache.key_for(
                route, model, obj, tenant=tenant, digest=self.store.current.digests.get(model, "")
            )
        req.cands = cands
        req.panic = panic  # the directory returned ejected hosts: too few healthy ones
        self.demand.hit(model, self.clock())  # only models some host has: bounded
        req.key = self._routing_key(req)
        return await fwd.forward(req)

    def _routing_key(self, req: Request) -> RoutingKey:
        if self.config.strategy != "affinity":
            # prompt-cache affinity (placement.router): with more than one copy of the
            # model, a continued chat prefers the copy that served its history
            held = self.residency.by_model.get(req.model)
            if held is not None and len(held) > 1:
                msgs = req.obj.get("messages")
                if isinstance(msgs, list) and msgs:
                    return RoutingKey(req.model, prefixes=chat_prefix_hashes(req.model, msgs))
            return RoutingKey(req.model)
        session = header_get(req.headers, self.config.session_header)
        if session:
            return RoutingKey(req.model, session=session)
        obj = req.obj
        msgs = obj.get("messages")
        if isinstance(msgs, list) and msgs:
            return RoutingKey(req.model, prefixes=chat_prefix_hashes(req.model, msgs))
        prompt = obj.get("prompt")
        if isinstance(prompt, str):
            return RoutingKey(req.model, prompt_key=(req.model + "\x00" + prompt).encode())
        return RoutingKey(req.model)

    # -- status and metrics ------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The ``/ollamamax/status`` document (see ``dispatch.status``)."""
        adm = self.admission
        now = self.clock()
        return status_document(
            strategy=self.config.strategy,
            hosts=self.hosts,
            snapshot=self.store.current,
            residency=self.residency,
            queue_depth=adm.waiting if adm is not None else 0,
            queue_size=self.config.queue_size,
            queue_by_model=adm.by_model(now) if adm is not None else {},
            scheduler=self.scheduler.stats() if self.scheduler is not None else {},
            shared=self.shared.status() if self.shared is not None else None,
            cache_stats=self.cache.stats(),
            fanout_failures=self._broadcaster.last_failures if self._broadcaster is not None else (),
            metrics=self.metrics_snapshot(),
            now_mono=now,
            now_wall=self.wall(),
        )

    def metrics_snapshot(self) -> dict[str, Any]:
        """Histograms (LatencyHistogram objects, microseconds; tokens_per_s in tokens/s)
        keyed by (host, model), and counters.  For the metrics exporter."""
        adm = self.admission
        fwd = self._forwarder
        health = self.health
        sched = self.scheduler
        snap = self.accounting.snapshot(
            self.hosts,
            adm.waiting if adm is not None else 0,
            self.cache.hits,
            self.cache.misses,
            ejections=dict(health.ejections),
            ejections_prevented=dict(health.skipped),
            retry_budget=fwd.retry_budget() if fwd is not None else 0,
            retries_in_progress=fwd.active_retries if fwd is not None else 0,
        )
        # the fleet scheduler: loads it started per (host, model), its other counts, and
        # the requests waiting per model
        snap["scheduler"] = {
            "loads": dict(sched.loads_by) if sched is not None else {},
            "counters": dict(sched.counters) if sched is not None else {},
        }
        snap["shared"] = self.shared.status() if self.shared is not None else None
        snap["queue_by_model"] = {m: q["waiting"] for m, q in adm.by_model(self.clock()).items()} if adm else {}
        return snap
