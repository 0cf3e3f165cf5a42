"""The fleet scheduler: carries out the planner's loads and keeps the residency model true.

It runs the pure planner (``placement.planner``) whenever something changed that may call
for a load (a model's requests started waiting, a load finished, a slot freed on an idle
host) and on a short tick, over a :class:`~ollamamax.placement.planner.FleetView` it builds
from the fleet's state; and it executes each decision:

* **evict** the chosen idle models first, each with Ollama's unload (an empty generate with
  ``keep_alive: 0``), so the host evicts exactly what the planner chose;
* **load** with an empty generate (``keep_alive: -1``: a planned model stays loaded while
  idle; the clients' own ``keep_alive`` values are never changed), or an empty embed for
  a model that only embeds.  The load is the scheduler's own request: it survives the
  client that triggered it going away.  Its round trip is the model's load cost on that
  host, learned for the next decisions;
* then hand the new copy's slots to the model's waiting requests (all of them, as slots
  free: one switch serves the whole batch).

The residency model changes the moment a decision is taken (the planner's next pass and
the router see the copy as loading, the victims as unloading), and every refresh of a host
reconciles it with ``/api/ps`` (:meth:`FleetScheduler.reconcile`).  The last decisions,
with their reasons, are kept for the status page; loads, evictions and preloads are
counted for ``/metrics``.

With Redis (``dispatch.shared``) several gateways plan as one: the view sums the other
replicas' requests in flight, queued requests and arrival rates with this one's, and
counts their loads and unloads under way; what they learned of a host (room, load costs)
warms this one up; and a load starts only once this replica has claimed it.  A replica
that finds the load already claimed joins it (its requests wait for the other's load);
one that finds the host claimed for another model leaves that host alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

from ..fleet.health import CONNECT, RESET, TIMEOUT, Health
from ..fleet.hosts import HostState
from ..fleet.learning import Demand as Rates
from ..fleet.learning import DEFAULT_LOAD_COST, Ewma
from ..fleet.residency import FOUND, LOADED, LOADING, UNLOADING, Residency, Resident
from ..fleet.snapshot import HostView, SnapshotStore
from ..placement.planner import Demand, FleetView, HostPlan, Load, PlannerPolicy, ResidentView, next_deadline, plan
from ..upstream.client import UPSTREAM_ERRORS, Upstream, describe_error, timeout
from ..upstream.http1 import ConnectFailed, LocalResourceError
from ..wire.names import normalize_model
from ..structures.exceptions import QueueFull
from .admission import Admission, LoadFailed
from .shared import STATE_TTL, LEASE_TTL, Claim, SharedState

__all__ = ["FleetScheduler"]

log = logging.getLogger("ollamamax.dispatch")

TICK = 0.25  # seconds between planning passes when nothing else calls for one
HEARSAY_GRACE = 2 * STATE_TTL  # a model seen leaving a host is not taken back on another replica's word this soon
LOAD_TIMEOUT = 600.0  # a load taking longer than this has failed (Ollama's own is 5 min)
DECISIONS_KEPT = 50
LOAD_BACKOFF = 1.0  # seconds before a failed load of a model is tried on that host again (doubling)
LOCAL_BACKOFF = 0.2  # ... when the gateway itself could not send it (out of descriptors)


class FleetScheduler:
    def __init__(
        self,
        hosts: Sequence[HostState],
        residency: Residency,
        admission: Admission,
        store: SnapshotStore,
        upstreams: Sequence[Upstream],
        rates: Rates,
        service: dict[str, Ewma],
        *,
        clock: Callable[[], float],
        wall: Callable[[], float],
        policy: PlannerPolicy = PlannerPolicy(),
        health: Health | None = None,
    ) -> None:
        self.hosts = list(hosts)
        self.residency = residency
        self.admission = admission
        self.store = store
        self.upstreams = upstreams
        self.rates = rates
        self.service = service
        self.clock = clock
        self.wall = wall
        self.policy = policy
        self.health = health
        # (host, model) -> (not before, next backoff): a failed load is not retried at once
        self._backoff: dict[tuple[int, str], tuple[float, float]] = {}
        # (host, model) -> (kind, message) of its last load that got no answer
        self._failed: dict[tuple[int, str], tuple[str, str]] = {}
        # the pure decision function (the simulator swaps in a clairvoyant one for its bound)
        self.planner: Callable[[FleetView, PlannerPolicy], list[Load]] = plan
        self.decisions: deque[dict[str, Any]] = deque(maxlen=DECISIONS_KEPT)
        # loads, preloads, evictions, failed_loads, switches_deferred
        self.counters: Counter[str] = Counter()
        self._deferred: set[str] = set()  # cold models whose switch is deferred (batching) now
        self.loads_by: Counter[tuple[str, str]] = Counter()  # (host, model) -> loads started
        self._pending = False
        self._wake: asyncio.TimerHandle | None = None  # a pass at the next cold model's deadline
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tick: asyncio.Task[None] | None = None
        self._embed_only: set[str] = set()  # models whose load is an empty embed
        self._size_cache: dict[int, tuple[Any, dict[str, int]]] = {}
        self._any_load = Ewma()  # seconds of any load on any host
        # several gateways (dispatch.shared): set by the dispatcher when Redis is configured
        self.shared: SharedState | None = None
        self._url_index = {h.url: h.index for h in self.hosts}
        # (host, model) -> (resident, given up at): a load another replica runs, joined
        self._joined: dict[tuple[int, str], tuple[Resident, float, float]] = {}
        # host -> (model another replica switches it to, until): a claim seen taken
        self._claimed_host: dict[int, tuple[str, float]] = {}
        self._remote = _Remote([])  # the other replicas' states, summed once per sync (absorb)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._tick = asyncio.get_running_loop().create_task(self._ticker(), name="ollamamax-scheduler")

    async def close(self) -> None:
        if self._wake is not None:
            self._wake.cancel()
        tasks = [t for t in (self._tick, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.plan_now()

    def nudge(self) -> None:
        """Plan again soon (coalesced: one pass per turn of the event loop)."""
        if not self._pending:
            self._pending = True
            asyncio.get_running_loop().call_soon(self.plan_now)

    # -- planning ----------------------------------------------------------------------
    def view(self, now: float) -> FleetView:
        res = self.residency
        adm = self.admission
        snap = self.store.current
        # in panic (too few hosts healthy) an ejected host that still answers may load too
        panic = adm.panicking() if any(h.down for h in self.hosts) else False
        # the other replicas' picture, as of the last sync (none while Redis is down)
        remote = self._remote if self.shared is not None and self.shared.peers() else None
        hosts = []
        for h in self.hosts:
            i = h.index
            v = snap.hosts[i]
            sizes = self._sizes(v)
            residents = tuple(
                ResidentView(r.model, r.state, r.in_flight, r.slots,
                             0.0 if r.in_flight else max(0.0, now - r.last_used), max(0.0, now - r.since),
                             sizes.get(r.model, 0))
                for r in res.by_host[i].values()
            )
            if remote is not None or self._claimed_host:
                residents = self._with_others(i, h.url, residents, remote, sizes, now)
            costs = {m: e.get(0.0) for m, e in h.load_cost.items() if e.value is not None}
            present = v.present
            if self._backoff:
                barred = {m for (hi, m), (until, _) in self._backoff.items() if hi == i and until > now}
                if barred:
                    present = present - barred
            hosts.append(HostPlan(i, not h.down or (panic and not h.unreachable), res.room[i], residents, present, costs,
                                  default_load_cost=self._default_load_cost(),
                                  room_known=res.room_known[i], vram=h.config.vram, sizes=sizes))
        demand: dict[str, Demand] = {}
        waiting = set(adm.waiting_models())
        models = set(self.rates.rates) | waiting
        if remote is not None:
            models |= remote.queued.keys() | remote.rates.keys()
        for m in models:
            queued = adm.queued(m) if m in waiting else 0
            oldest = adm.oldest(m) if queued else None
            wait = 0.0 if oldest is None else max(0.0, now - oldest)
            rate = self.rates.rate(m, now)
            if remote is not None:  # the other replicas' requests count as this one's
                q, w = remote.queued.get(m, (0, 0.0))
                queued += q
                wait = max(wait, w)
                rate += remote.rates.get(m, 0.0)
            svc = self.service.get(m)
            demand[m] = Demand(m, queued, wait, rate, svc.get(1.0) if svc is not None else 1.0,
                               adm.stranded(m) if m in waiting else 0)
        return FleetView(now, tuple(hosts), demand)

    def _sizes(self, v: HostView) -> dict[str, int]:
        """Model -> bytes from a host's ``/api/tags`` (kept per snapshot entry)."""
        cached = self._size_cache.get(v.index)
        if cached is not None and cached[0] is v.tags:
            return cached[1]
        sizes: dict[str, int] = {}
        for e in v.tags:
            name = e.get("name") or e.get("model")
            size = e.get("size")
            if isinstance(name, str) and isinstance(size, int):
                sizes[normalize_model(name)] = size
        self._size_cache[v.index] = (v.tags, sizes)
        return sizes

    def _default_load_cost(self) -> float:
        """Before a host's first load of a model: what loads took anywhere (else 10 s)."""
        return self._any_load.get(DEFAULT_LOAD_COST)

    def plan_now(self) -> None:
        self._pending = False
        if self.admission.closed:
            return
        now = self.clock()
        if self._joined:
            self._drop_joined(now)
        view = self.view(now)
        loads = self.planner(view, self.policy)
        for a in loads:
            self._execute(a, now)
        self._count_deferred(view, {a.model for a in loads})
        if self._failed:
            self._fail_fast(view, now)
        self._wake_at_deadline(view)

    def _wake_at_deadline(self, view: FleetView) -> None:
        """A deferred switch is due at its model's deadline: plan again exactly then (the
        tick alone would decide up to ``TICK`` late, and that lateness is the tail's)."""
        due = next_deadline(view, self.policy)
        if due is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        at = now + due + 1e-3
        if self._wake is not None:
            if not self._wake.cancelled() and now < self._wake.when() <= at:
                return  # an earlier pass is already set
            self._wake.cancel()
        self._wake = loop.call_at(at, self.nudge)

    def _count_deferred(self, view: FleetView, loading: set[str]) -> None:
        """Count each episode of a cold model with waiting requests and no load decided
        for it: a switch deferred (its requests batch until they pay for an eviction, or
        no host can take it).  Once per episode, not per planning pass."""
        held = self.residency.by_model
        cold = {m for m, d in view.demand.items() if d.queued and m not in loading and m not in held}
        self.counters["switches_deferred"] += len(cold - self._deferred)
        self._deferred = cold

    def _fail_fast(self, view: FleetView, now: float) -> None:
        """Waiters with no copy to wait for, whose every host is backing off after a load
        that got no answer (or is down, or tried by them already), are told now: each
        counts that failure as its attempt there and tries elsewhere, or gives up with it
        (instead of waiting out the backoff, or their deadline, for a host that refused)."""
        adm = self.admission
        snap = self.store.current
        for m in adm.waiting_models():
            barred = [(i, f) for (i, mm), f in self._failed.items()
                      if mm == m and self._backoff.get((i, m), (0.0, 0.0))[0] > now]
            if not barred:
                continue
            open_hosts = {p.index for p in view.hosts if p.up and m in p.present}

            def error(w: Any, m: str = m, barred: list[tuple[int, tuple[str, str]]] = barred,
                      open_hosts: set[int] = open_hosts) -> BaseException | None:
                if open_hosts - w.exclude:
                    return None  # a host may still load it for this waiter
                for i, (kind, message) in barred:
                    if i not in w.exclude and m in snap.hosts[i].present:
                        return LoadFailed(i, kind, message)
                return None

            adm.refuse(m, error)

    # -- carrying out ------------------------------------------------------------------
    def _execute(self, a: Load, now: float) -> None:
        res = self.residency
        h = self.hosts[a.host]
        victims = []
        for v in a.evict:
            r = res.get(a.host, v)
            if r is not None and r.state == LOADED and r.in_flight == 0:
                res.start_unload(r, now)
                victims.append(r)
        r = res.start_load(a.host, a.model, now, h.expected_load_cost(a.model))
        self.counters["preloads" if a.preload else "loads"] += 1
        self.counters["evictions"] += len(victims)
        self.loads_by[(h.name, a.model)] += 1
        self.decisions.appendleft({"at": self.wall(), "host": h.name, "model": a.model,
                                   "evict": list(a.evict), "reason": a.reason, "preload": a.preload,
                                   "explore": a.explore})
        log.info("load %s on %s: %s", a.model, h.name, a.reason)
        t = asyncio.get_running_loop().create_task(self._load(h, r, victims, a.explore))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _call(self, h: HostState, path: str, payload: dict[str, Any], limit: float) -> tuple[int, bytes]:
        body = json.dumps(payload, separators=(",", ":")).encode()
        async with timeout(limit):
            resp = await self.upstreams[h.index].send("POST", path, body)
            try:
                data = await resp.read()
            finally:
                resp.release()
        return resp.status, data

    async def _unload(self, h: HostState, r: Resident) -> None:
        try:
            path = "/api/embed" if r.model in self._embed_only else "/api/generate"
            payload: dict[str, Any] = {"model": r.model, "keep_alive": 0}
            if path == "/api/embed":
                payload["input"] = []
            await self._call(h, path, payload, 60.0)
        except UPSTREAM_ERRORS as exc:
            log.debug("unload of %s on %s failed: %s", r.model, h.name, exc)
        if r.state != LOADED:  # a request made it loaded again meanwhile? then keep it
            self.residency.forget(r, self.clock())

    async def _load(self, h: HostState, r: Resident, victims: list[Resident], explore: bool = False) -> None:
        shared = self.shared
        if shared is None:
            await self._load_now(h, r, victims, explore)
            return
        claim = await shared.claim(r.model, h.url, tuple(v.model for v in victims))
        if not claim.ok:
            self._yield(h, r, victims, claim)
            return
        holder = asyncio.get_running_loop().create_task(shared.hold(claim, r.model, h.url))
        try:
            await self._load_now(h, r, victims, explore)
        finally:
            holder.cancel()
            loaded = r.state == LOADED and self.residency.get(h.index, r.model) is r
            await shared.renew(claim, r.model, h.url, loaded=loaded)

    def _join(self, where: int, model: str, now: float) -> None:
        """Another replica loads ``model`` on host ``where``: this replica counts it as a
        load under way there (its waiters get that copy when the loader announces the end, or
        the syncs show it loaded)."""
        cost = self.hosts[where].expected_load_cost(model)
        joined = self.residency.start_load(where, model, now, cost, hearsay=True)
        self._joined[(where, model)] = (joined, now, now + LEASE_TTL + cost)

    def _joined_ended(self, where: int, model: str, loaded: bool, now: float) -> None:
        """The replica whose load this one joined says how it ended: its copy goes to this
        replica's waiters at once, or (failed) they are planned for again."""
        entry = self._joined.pop((where, model), None)
        if entry is None:
            return
        r = entry[0]
        if self.residency.get(where, model) is not r or r.state != LOADING:
            return
        if loaded:
            self.residency.loaded(r, now)
            self.admission.grant(model)
        else:
            self.residency.forget(r)
        self.nudge()

    def _drop_joined(self, now: float) -> None:
        """Joined loads this replica can no longer hear of (Redis is down: no end will be
        announced, no sync will show it) or that outlived their lease: forgotten, so their
        waiters are planned for as a single gateway would (a load of the same model the
        host is still running is merged there)."""
        alone = self.shared is not None and not self.shared.up
        for key, (r, _, give_up) in list(self._joined.items()):
            if alone or now > give_up:
                del self._joined[key]
                if self.residency.get(*key) is r and r.state == LOADING:
                    self.residency.forget(r)

    def _yield(self, h: HostState, r: Resident, victims: list[Resident], claim: Claim) -> None:
        """Another replica claimed this load (or this host) first: undo the decision; when
        it loads the same model, join its load (this replica's requests wait for it)."""
        now = self.clock()
        res = self.residency
        for v in victims:
            if v.state == UNLOADING and res.get(h.index, v.model) is v:
                v.state = LOADED  # never unloaded: it stays as it was
        if r.state == LOADING and res.get(h.index, r.model) is r:
            res.forget(r)
        self.counters["loads"] -= 1
        self.counters["evictions"] -= len(victims)
        self.counters["loads_yielded"] += 1
        other = claim.holder
        where = self._url_index.get(str(other.get("host", "")))
        if claim.conflict == "model" and where is not None:
            j = self.hosts[where]
            mine = res.get(where, r.model)
            if mine is None or mine.state == UNLOADING:
                self._join(where, r.model, now)
            for e in other.get("evict") or ():
                x = res.get(where, str(e))
                if x is not None and x.state == LOADED and x.in_flight == 0:
                    res.start_unload(x, now, hearsay=True)
            what = f"joined replica {other.get('replica', '?')}'s load of {r.model} on {j.name}"
        else:
            if where is not None:
                self._claimed_host[where] = (str(other.get("model", "")), now + 2 * STATE_TTL)
            what = f"left {h.name} to replica {other.get('replica', '?')} (switching it to {other.get('model', '?')})"
        self.decisions.appendleft({"at": self.wall(), "host": h.name, "model": r.model, "evict": [],
                                   "reason": what, "preload": False})
        log.info("%s", what)
        self.nudge()

    async def _load_now(self, h: HostState, r: Resident, victims: list[Resident], explore: bool = False) -> None:
        if not explore:
            for v in victims:
                await self._unload(h, v)
        t0 = self.clock()
        ok = False
        answered = False  # the host answered the load (even with an error)
        local = False  # the gateway itself could not send it (out of descriptors)
        kind, failure = RESET, ""
        try:
            path = "/api/embed" if r.model in self._embed_only else "/api/generate"
            for _ in range(2):
                payload: dict[str, Any] = {"model": r.model, "keep_alive": -1}
                if path == "/api/embed":
                    payload["input"] = []
                status, data = await self._call(h, path, payload, LOAD_TIMEOUT)
                if status == 400 and path == "/api/generate" and b"does not support generate" in data:
                    self._embed_only.add(r.model)
                    path = "/api/embed"
                    continue
                break
            ok = status == 200
            answered = True
            if not ok:
                log.warning("load of %s on %s failed: %s %s", r.model, h.name, status, data[:200])
        except LocalResourceError as exc:  # the gateway is out of descriptors: not the host's fault
            log.warning("load of %s on %s not sent: %s", r.model, h.name, describe_error(exc))
            local = True
        except UPSTREAM_ERRORS as exc:
            failure = describe_error(exc)
            log.warning("load of %s on %s failed: %s", r.model, h.name, failure)
            kind = CONNECT if isinstance(exc, ConnectFailed) else TIMEOUT if isinstance(exc, TimeoutError) else RESET
            if self.health is not None:
                self.health.record_failure(h, kind, failure)
        now = self.clock()
        key = (h.index, r.model)
        if ok:
            self._backoff.pop(key, None)
            self._failed.pop(key, None)
        elif local:  # not the host's fault: a short pause (no busy loop), no doubling
            self._backoff[key] = (now + LOCAL_BACKOFF, self._backoff.get(key, (0.0, LOAD_BACKOFF / 2))[1])
        else:  # not again on this host for a while (doubling, up to a minute)
            wait = self._backoff.get(key, (0.0, LOAD_BACKOFF / 2))[1] * 2
            self._backoff[key] = (now + wait, min(wait, 60.0))
        if ok and self.residency.get(h.index, r.model) is r:
            took = max(now - t0, 0.0)
            cost = h.load_cost.get(r.model)
            if cost is None:
                cost = h.load_cost[r.model] = Ewma()
            cost.add(took)
            self._any_load.add(took)
            self.residency.loaded(r, now)
            self.admission.grant(r.model)
        elif answered and self.residency.get(h.index, r.model) is r:
            # The host refused the load with an answer (out of memory, busy, a server that
            # loads on first use...): the waiting requests go there anyway and get the
            # host's own answer, which the forwarder judges (retry elsewhere, or the error
            # to the client) -- not a 503 after their whole deadline.  The next refresh
            # says whether the model is really loaded.
            self.counters["failed_loads"] += 1
            self.residency.loaded(r, now)
            self.admission.grant(r.model)
        else:
            self.counters["failed_loads"] += 1
            self.residency.forget(r)
            # The waiters no other copy can serve learn it now, not at their deadline: out
            # of descriptors, they answer 503 busy + Retry-After; else the load counts as
            # their attempt on this host and they try elsewhere (as a request that could
            # not connect would).
            if local:
                self.admission.refuse(r.model, lambda w: QueueFull())
            else:
                self._failed[key] = (kind, failure)
                self.admission.refuse(r.model, lambda w: LoadFailed(h.index, kind, failure))
        if explore and victims:
            await self._explored(h, victims)
        self.nudge()

    async def _explored(self, h: HostState, victims: list[Resident]) -> None:
        """After a load sent without unloading first: did the host keep the others?"""
        try:
            ps = await self.upstreams[h.index].get_json("/api/ps", 5.0)
            listed = {normalize_model(str(m.get("name") or m.get("model") or ""))
                      for m in ps.get("models") or () if isinstance(m, dict)}
        except (*UPSTREAM_ERRORS, ValueError, AttributeError) as exc:  # type: ignore[misc]
            log.debug("could not see what %s kept: %s", h.name, exc)
            for v in victims:
                self.residency.forget(v)
            return
        now = self.clock()
        res = self.residency
        held = [x for x in res.by_host[h.index].values() if x.state == LOADED]
        missing = [x for x in (*victims, *held) if x.model not in listed and x.in_flight == 0]
        before = res.room[h.index]
        res.room_explored(h.index, len(listed))
        for x in missing:
            res.forget(x)
        for v in victims:
            if v not in missing and res.get(h.index, v.model) is v:
                res.loaded(v, now)
                self.admission.grant(v.model)
        if res.room[h.index] > before:
            log.info("%s holds %s beside the new model: room for %d", h.name,
                     ", ".join(v.model for v in victims), res.room[h.index])

    # -- what a refresh saw ---------------------------------------------------------------
    def reconcile(self, h: HostState, loaded: frozenset[str], refreshed_at: float) -> None:
        """``/api/ps`` of ``h`` listed ``loaded`` in a refresh that began at ``refreshed_at``."""
        now = self.clock()
        res = self.residency
        before = {m for m, r in res.by_host[h.index].items() if r.state == LOADED}
        gone = res.reconcile(h.index, loaded, refreshed_at, now)
        if gone:
            log.debug("%s no longer holds %s", h.name, ", ".join(gone))
        for m in loaded - before:
            self.admission.grant(m)
        if gone or loaded - before:
            self.nudge()

    def host_down(self, h: HostState) -> None:
        """A host went down.  Ejected (it failed requests), its copies stay: it still holds
        them.  Unreachable (its probe failed: the process died, or hangs), its idle copies
        are forgotten: a restarted Ollama holds nothing, and the first refresh that reaches
        it again says what it does hold (found loaded, it is taken back as is)."""
        if h.unreachable:
            res = self.residency
            for r in list(res.by_host[h.index].values()):
                if r.state == LOADED and r.in_flight == 0:
                    res.forget(r)
        self.nudge()

    # -- several gateways (dispatch.shared) ------------------------------------------------
    def _with_others(self, i: int, url: str, mine: tuple[ResidentView, ...], remote: _Remote | None,
                     sizes: dict[str, int], now: float) -> tuple[ResidentView, ...]:
        """Host ``i``'s residents with the other replicas' requests in flight on them, and
        the loads and unloads they have under way there."""
        theirs = remote.hosts.get(url, {}) if remote is not None else {}
        out = []
        for r in mine:
            flying = theirs.get(r.model, ("", 0))[1]
            if flying:
                r = ResidentView(r.model, r.state, r.in_flight + flying, r.slots, 0.0, r.age, r.size)
            out.append(r)
        known = {r.model for r in mine}
        for m, (state, flying) in theirs.items():
            if m not in known and state in (LOADING, UNLOADING):
                out.append(ResidentView(m, state, flying, 1, 0.0, 0.0, sizes.get(m, 0)))
                known.add(m)
        claimed = self._claimed_host.get(i)
        if claimed is not None:
            if claimed[1] <= now:
                del self._claimed_host[i]
            elif claimed[0] not in known:  # another replica switches this host: hands off
                out.append(ResidentView(claimed[0], LOADING, 0, 1, 0.0, 0.0, sizes.get(claimed[0], 0)))
        return tuple(out)

    def heard(self, event: dict[str, Any]) -> None:
        """Another replica claimed a switch, or ended a load it claimed (``dispatch.shared``
        heard it on the events channel).  A claim: its victims stop taking this replica's
        requests now (the host would load them again over the new model), and this replica
        joins the load (its waiters wait for that copy, its planner plans no other).  An
        end: the joined copy is handed to the waiters, or, failed, planned for again."""
        where = self._url_index.get(str(event.get("host", "")))
        model = event.get("model")
        if where is None or not isinstance(model, str):
            return
        now = self.clock()
        res = self.residency
        if "loaded" in event:  # the end of a load it claimed
            self._joined_ended(where, model, event["loaded"] is True, now)
            return
        for e in event.get("evict") or ():
            x = res.get(where, str(e))
            if x is not None and x.state == LOADED:  # even with requests of ours running there:
                res.start_unload(x, now, hearsay=True)  # they finish, but no more go (they would reload it)
        mine = res.get(where, model)
        if mine is None or mine.state == UNLOADING:
            # this replica's requests of the model join that load, as if it had yielded to
            # it: its planner must not load the model again elsewhere for them meanwhile
            self._join(where, model, now)
        self.nudge()

    def shared_state(self) -> dict[str, Any]:
        """What this replica publishes to the others (``dispatch.shared``)."""
        now = self.clock()
        res = self.residency
        adm = self.admission
        hosts: dict[str, Any] = {}
        for h in self.hosts:
            i = h.index
            # its own actions and what its refreshes saw; what it only heard from the others
            # goes back out only as requests in flight (they do run there)
            entry: dict[str, Any] = {"models": {m: [LOADED if r.hearsay else r.state, r.in_flight]
                                                for m, r in res.by_host[i].items()
                                                if not r.hearsay or r.in_flight}}
            costs = {m: round(e.value, 3) for m, e in h.load_cost.items() if e.value is not None}
            if costs:
                entry["costs"] = costs
            if res.room_known[i] and not res.room_fixed[i]:
                entry["room"] = res.room[i]
            hosts[h.url] = entry
        queued: dict[str, list[float]] = {}
        for m in adm.waiting_models():
            q = adm.queued(m)
            oldest = adm.oldest(m)
            if q:
                queued[m] = [q, round(0.0 if oldest is None else max(0.0, now - oldest), 3)]
        rates = {m: round(r, 4) for m in self.rates.rates if (r := self.rates.rate(m, now)) > 1e-3}
        return {"hosts": hosts, "queued": queued, "rates": rates}

    def absorb(self) -> None:
        """After a sync with the other replicas: take what they learned, and what they
        loaded or evicted, into this replica's picture."""
        shared = self.shared
        peers = shared.peers() if shared is not None else []
        now = self.clock()
        res = self.residency
        remote = self._remote = _Remote(peers)
        changed = False
        for h in self.hosts:
            i = h.index
            for p in peers:
                entry = (p.get("hosts") or {}).get(h.url)
                if not isinstance(entry, dict):
                    continue
                for m, cost in (entry.get("costs") or {}).items():
                    if m not in h.load_cost and isinstance(cost, (int, float)) and cost > 0:
                        e = h.load_cost[m] = Ewma()  # a new replica starts warm
                        e.add(float(cost))
                room = entry.get("room")
                if isinstance(room, int) and room > 0 and not res.room_fixed[i] and not res.room_known[i]:
                    res.room[i] = room
                    res.room_known[i] = True
            left = res.left[i]
            claimed = self._claimed_host.get(i)
            for m, (state, _) in remote.hosts.get(h.url, {}).items():
                mine = res.get(i, m)
                if state == LOADED and mine is None:
                    # a model this replica saw leave lately is not back on another's word
                    # (its picture may predate the unload), unless this replica yielded
                    # that host to it (``_claimed_host``); nor
                    # is one it unloads, or heard is unloaded (the other's picture predates
                    # the switch: taken back, its requests would reload it over the model
                    # loaded in its place; a refresh tells if the unload never came)
                    if now - left.get(m, FOUND) < HEARSAY_GRACE and (claimed is None or claimed[0] != m):
                        continue
                    x = res.add(i, m, LOADED, now)  # loaded by another replica
                    x.since = FOUND
                    x.hearsay = True
                    self.admission.grant(m)
                    changed = True
                elif state == UNLOADING and mine is not None and mine.state == LOADED and mine.in_flight == 0:
                    res.start_unload(mine, now, hearsay=True)  # another replica evicts it: route nothing there
        for (i, m), (r, since, give_up) in list(self._joined.items()):
            state = remote.hosts.get(self.hosts[i].url, {}).get(m, ("", 0))[0]
            if res.get(i, m) is not r or r.state != LOADING:
                del self._joined[(i, m)]  # loaded (a refresh saw it, or just above), or gone
            elif state == LOADED:
                res.loaded(r, now)
                self.admission.grant(m)
                del self._joined[(i, m)]
                changed = True
            elif state != LOADING and now > since + STATE_TTL:
                res.forget(r)  # the other replica's load is not seen any more: plan again
                del self._joined[(i, m)]
                changed = True
        if changed:
            self.nudge()

    def stats(self) -> dict[str, Any]:
        return {
            "loads": self.counters["loads"],
            "preloads": self.counters["preloads"],
            "evictions": self.counters["evictions"],
            "failed_loads": self.counters["failed_loads"],
            "switches_deferred": self.counters["switches_deferred"],
            "loads_yielded": self.counters["loads_yielded"],
            "decisions": list(self.decisions),
        }


class _Remote:
    """The other replicas' published states, summed (see ``dispatch.shared``)."""

    __slots__ = ("hosts", "queued", "rates")

    def __init__(self, peers: list[dict[str, Any]]) -> None:
        # host url -> model -> (state: a load or unload under way wins, requests in flight)
        self.hosts: dict[str, dict[str, tuple[str, int]]] = {}
        self.queued: dict[str, tuple[int, float]] = {}  # model -> (requests queued, oldest wait)
        self.rates: dict[str, float] = {}
        for p in peers:
            for url, entry in (p.get("hosts") or {}).items():
                if not isinstance(entry, dict):
                    continue
                models = self.hosts.setdefault(url, {})
                for m, item in (entry.get("models") or {}).items():
                    try:
                        state, flying = str(item[0]), int(item[1])
                    except (TypeError, ValueError, IndexError):
                        continue
                    old_state, old_flying = models.get(m, ("", 0))
                    if old_state in (LOADING, UNLOADING):
                        state = old_state
                    models[m] = (state, old_flying + max(0, flying))
            for m, item in (p.get("queued") or {}).items():
                try:
                    q, w = int(item[0]), float(item[1])
                except (TypeError, ValueError, IndexError):
                    continue
                old_q, old_w = self.queued.get(m, (0, 0.0))
                self.queued[m] = (old_q + q, max(old_w, w))
            for m, r in (p.get("rates") or {}).items():
                if isinstance(r, (int, float)):
                    self.rates[m] = self.rates.get(m, 0.0) + float(r)
