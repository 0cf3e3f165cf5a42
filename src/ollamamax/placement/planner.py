"""The placement planner: which host loads which model, when, and what it evicts.

It reads one immutable :class:`FleetView` -- per host its room (models it holds at once,
and a memory budget when known), residents (loading, loaded, being unloaded; requests in
flight, slots, how long idle, size) and the models on its disk; per model the requests
waiting in the gateway, the oldest wait, the arrival rate and the service time -- and
returns :class:`Load` decisions, each with the reason a person can read on the status
page.  Times that scale with the fleet's hardware are counted in **loads** (the learned
seconds a load takes on that host), so one policy fits fast and slow fleets.  The rules:

* **A model's worth** is its arrival rate (requests/s, decayed), plus its waiting requests
  spread over ``horizon`` seconds; a model with another loaded copy is worth ``other_copy``
  of that where it would be evicted.
* **Never evict a busy model**: one with requests in flight or waiting, or loaded less
  than ``dwell`` loads ago.  Evict the least worth first (then the longest idle).
* **A cold model with waiting requests** (no copy loaded or loading, or none that its
  waiting requests can use: they failed there, or its host is down) is loaded on the host
  where that costs least: free room first (no cost), else the cheapest eviction.  An
  eviction is **just in time**: it waits for the model's **deadline**, when its oldest
  request has waited ``patience`` loads, unless the model's **pressure** (its worth plus
  one request/s per load its oldest request has waited) exceeds ``hysteresis`` times what
  it evicts (then at once).  Until the deadline the resident serves on and the cold
  model's requests gather, so one load serves them all and the switch takes the host from
  its resident as late as it can; at the deadline the cheapest idle resident goes
  (Belady's rule, online: the least requested is the one needed again last).  So a cold
  request waits about ``patience + 1`` loads while some host can be freed, and the fleet
  switches no more often than that budget forces it to.
* **Protect a model in steady use**: one expecting ``protect`` requests or more per load
  (its next request comes long before a reload could finish, so evicting it only makes
  the next switch) is not evicted at another model's deadline, only once that model's
  pressure exceeds ``hysteresis`` times its worth (so nothing waits forever).
  Hysteresis and protection keep models of similar demand from swapping back and forth.
* **Replicate** a model whose waiting requests would wait longer on its loaded copies than
  ``scale_out`` loads and whose demand keeps its slots busy more than ``utilization`` of
  the time, when its worth pays for what it evicts.
* **Preload** ahead of need: free room loads the most requested model nobody holds; an
  idle host switches ahead of need for a model nobody holds worth ``preload_ratio`` times
  its resident.  Free room left after that takes a copy more of the models whose slots are
  busiest (more than ``fill_load`` of the time): it costs no eviction, and an idle extra
  copy is the first to go when room is needed.
* One load at a time per host; no decision on a host that is down.  :func:`next_deadline`
  tells the caller when the next deferred switch falls due, to plan again right then.
* **Exploring room**: on a host whose room is not known (neither configured nor seen as a
  limit), a switch is sent without unloading first (``Load.explore``): if the host keeps
  both models, it has room for one more (the scheduler learns it from ``/api/ps``).

Pure: no I/O, no clock (``view.now``), no side effects; the dispatcher carries the
decisions out (``dispatch.scheduler``), the simulator replays traffic through the same code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Demand", "FleetView", "HostPlan", "Load", "PlannerPolicy", "ResidentView", "next_deadline", "plan"]


@dataclass(frozen=True, slots=True)
class ResidentView:
    model: str
    state: str  # "loading" | "loaded" | "unloading"
    in_flight: int
    slots: int
    idle_for: float  # seconds since its last request ended (0 while one is in flight)
    age: float  # seconds in its current state
    size: int = 0  # bytes it holds (0: unknown)


@dataclass(frozen=True, slots=True)
class HostPlan:
    index: int
    up: bool
    room: int  # models it can hold at once
    residents: tuple[ResidentView, ...]
    present: frozenset[str]  # models on its disk: what it can load
    load_cost: Mapping[str, float] = field(default_factory=dict)  # learned seconds per model
    default_load_cost: float = 10.0
    room_known: bool = True  # False: it may hold one more than ``room`` (explore)
    vram: int | None = None  # bytes its models may hold (None: no memory limit known)
    sizes: Mapping[str, int] = field(default_factory=dict)  # model -> bytes

    def cost_of(self, model: str) -> float:
        return self.load_cost.get(model, self.default_load_cost)

    def switching(self) -> bool:
        return any(r.state != "loaded" for r in self.residents)

    def held(self) -> tuple[ResidentView, ...]:
        return tuple(r for r in self.residents if r.state != "unloading")

    def holds(self, model: str) -> bool:
        return any(r.model == model and r.state != "unloading" for r in self.residents)

    def fits(self, model: str, without: tuple[str, ...] = ()) -> bool:
        """Whether ``model`` fits beside what it holds, once ``without`` are gone."""
        keep = [r for r in self.held() if r.model not in without]
        if len(keep) >= self.room:
            return False
        if self.vram is None:
            return True
        need = self.sizes.get(model, 0)
        used = sum(r.size or self.sizes.get(r.model, 0) for r in keep)
        return used + need <= self.vram or not keep  # a model too big for it loads alone


@dataclass(frozen=True, slots=True)
class Demand:
    model: str
    queued: int = 0
    oldest_wait: float = 0.0
    rate: float = 0.0  # arrivals per second, decayed
    service: float = 1.0  # seconds one request holds a slot
    stranded: int = 0  # waiting requests no copy can serve (each tried there, or it is down)


@dataclass(frozen=True, slots=True)
class FleetView:
    now: float
    hosts: tuple[HostPlan, ...]
    demand: Mapping[str, Demand]


@dataclass(frozen=True, slots=True)
class Load:
    model: str
    host: int
    evict: tuple[str, ...]
    reason: str
    preload: bool = False  # nobody waits for it yet
    explore: bool = False  # room unknown: load without unloading ``evict`` first, see if both stay


@dataclass(frozen=True, slots=True)
class PlannerPolicy:
    hysteresis: float = 3.0  # a switch before the deadline must bring this much more than it evicts
    patience: float = 0.85  # loads a cold model's oldest request waits before its deadline
    protect: float = 4.0  # a model expecting this many requests per load is not evicted at a deadline
    dwell: float = 0.0  # a model just loaded stays at least this many loads
    horizon: float = 10.0  # waiting requests count as demand spread over this many seconds
    other_copy: float = 0.0  # worth of a copy when the others carry the model's demand
    utilization: float = 0.7  # ... that is, keep its slots busy at most this share of the time
    scale_out: float = 1.0  # replicate when the wait on the copies exceeds this many loads
    preload_ratio: float = 3.0  # an idle host switches ahead of need for this much more demand
    preload: bool = True
    fill_load: float = 0.5  # a model whose slots are this busy gets a copy more in free room


@dataclass(slots=True)
class _Candidate:
    host: int
    evict: tuple[str, ...]
    cost: float  # worth of what it evicts
    load: float  # seconds the load takes
    idle: float  # how long the evicted have been idle (longest first on ties)
    explore: bool = False


class _Fleet:
    """The planner's working state over one view: copies and slots per model as decided."""

    def __init__(self, view: FleetView, policy: PlannerPolicy) -> None:
        self.view = view
        self.policy = policy
        self.busy: set[int] = {h.index for h in view.hosts if not h.up or h.switching()}
        self.copies: dict[str, int] = {}  # loaded or loading copies
        self.capacity: dict[str, int] = {}  # their slots
        self.loading: set[str] = set()  # models with a copy loading
        for h in view.hosts:
            if not h.up:
                continue
            for r in h.held():
                self.copies[r.model] = self.copies.get(r.model, 0) + 1
                self.capacity[r.model] = self.capacity.get(r.model, 0) + r.slots
                if r.state == "loading":
                    self.loading.add(r.model)

    def worth(self, model: str, evicting: ResidentView | None = None) -> float:
        """Requests/s the model brings (its waiting ones spread over the horizon); for a
        copy about to be evicted (``evicting``) while others remain that carry its demand
        comfortably, ``other_copy`` of that."""
        d = self.view.demand.get(model)
        if d is None:
            return 0.0
        w = d.rate + d.queued / self.policy.horizon
        if evicting is not None and self.copies.get(model, 0) > 1:
            rest = self.capacity.get(model, 0) - evicting.slots
            if d.rate * d.service < self.policy.utilization * rest:
                w *= self.policy.other_copy
        return w

    def _evictable(self, h: HostPlan) -> list[ResidentView]:
        pol = self.policy
        out = []
        for r in h.residents:
            if r.state != "loaded" or r.in_flight or r.age < pol.dwell * h.cost_of(r.model):
                continue
            d = self.view.demand.get(r.model)
            if d is not None and d.queued:
                continue
            out.append(r)
        out.sort(key=lambda r: (self.worth(r.model, r), -r.idle_for, r.model))
        return out

    def candidate(self, model: str) -> _Candidate | None:
        """The cheapest host to load ``model`` on now (None: nowhere)."""
        best: _Candidate | None = None
        for h in self.view.hosts:
            if h.index in self.busy or model not in h.present or h.holds(model):
                continue
            load = h.cost_of(model)
            if h.fits(model):
                cand = _Candidate(h.index, (), 0.0, load, 0.0)
            else:
                victims: list[str] = []
                cost = 0.0
                idle = 0.0
                for r in self._evictable(h):
                    victims.append(r.model)
                    cost += self.worth(r.model, r)
                    idle = max(idle, r.idle_for)
                    if h.fits(model, tuple(victims)):
                        break
                else:
                    continue  # not enough may go
                explore = not h.room_known and len(victims) == 1 and h.vram is None
                cand = _Candidate(h.index, tuple(victims), cost, load, idle, explore)
            key = (cand.cost, bool(cand.evict), cand.load, -cand.idle, cand.host)
            if best is None or key < (best.cost, bool(best.evict), best.load, -best.idle, best.host):
                best = cand
        return best

    def take(self, model: str, cand: _Candidate, reason: str, *, preload: bool = False) -> Load:
        self.busy.add(cand.host)
        self.copies[model] = self.copies.get(model, 0) + 1
        self.capacity[model] = self.capacity.get(model, 0) + 1
        self.loading.add(model)
        for e in cand.evict:
            self.copies[e] -= 1
        if cand.evict:
            reason += f"; evicts idle {', '.join(cand.evict)}"
        return Load(model, cand.host, cand.evict, reason, preload, cand.explore)


def plan(view: FleetView, policy: PlannerPolicy = PlannerPolicy()) -> list[Load]:
    """The loads to start now (see the module docstring for the rules)."""
    f = _Fleet(view, policy)
    out: list[Load] = []
    waiting = sorted((d for d in view.demand.values() if d.queued), key=lambda d: (-d.oldest_wait, d.model))
    for d in waiting:
        m = d.model
        cap = 0 if d.stranded else f.capacity.get(m, 0)
        if cap and m in f.loading:
            continue  # a copy is on its way: it will take the batch
        cand = f.candidate(m)
        if cand is None:
            continue
        base = f.worth(m)
        if cap:
            # it runs somewhere: a copy more only if its queue would wait longer than a load
            wait = d.queued * d.service / cap
            if wait <= policy.scale_out * cand.load or d.rate * d.service <= policy.utilization * cap:
                continue  # a passing queue (e.g. the batch a load just took) is not demand
            if cand.evict and base <= policy.hysteresis * cand.cost:
                continue
            out.append(f.take(m, cand, f"{d.queued} waiting ~{wait:.1f} s for {cap} slot(s) > a {cand.load:.1f} s load"))
            continue
        why = "no copy loaded"
        # its pressure: what it is worth, plus one request/s for each load its oldest has waited
        pressure = base + d.oldest_wait / max(cand.load, 1e-9)
        if cand.evict and pressure <= policy.hysteresis * cand.cost:
            if d.oldest_wait < policy.patience * cand.load:
                continue  # batch: its requests gather, the resident serves on, until the deadline
            if cand.cost * cand.load >= policy.protect:
                continue  # what it would evict is in steady use: wait for another host
            why = f"due after {policy.patience * cand.load:.1f} s"
        out.append(f.take(m, cand, f"{d.queued} waiting (oldest {d.oldest_wait:.1f} s), {why}"))
    if not policy.preload:
        return out
    # ahead of need: the most requested models nobody holds, on free room or idle hosts
    for d in sorted(view.demand.values(), key=lambda d: (-d.rate, d.model)):
        if d.rate <= 0 or d.queued or f.copies.get(d.model, 0):
            continue
        cand = f.candidate(d.model)
        if cand is None:
            continue
        if cand.evict:
            h = view.hosts[cand.host]
            if any(r.in_flight for r in h.residents) or d.rate < policy.preload_ratio * cand.cost:
                continue
        out.append(f.take(d.model, cand, f"preload: {d.rate:.2f} req/s and no copy", preload=True))
    # free room is worth filling: a copy more of the busiest models (per slot), where it
    # fits without evicting anything (an idle extra copy is the first to go when room is
    # needed: see ``other_copy``)
    busiest = sorted(((d.rate * d.service / max(f.capacity.get(d.model, 0), 1), d.model)
                      for d in view.demand.values() if d.rate > 0 and f.copies.get(d.model, 0)), reverse=True)
    for load, m in busiest:
        if load < policy.fill_load:
            break
        if m in f.loading:
            continue
        cand = f.candidate(m)
        if cand is None or cand.evict:
            continue
        out.append(f.take(m, cand, f"free room: {load:.2f} of each of its slots busy", preload=True))
    return out


def next_deadline(view: FleetView, policy: PlannerPolicy = PlannerPolicy()) -> float | None:
    """Seconds from ``view.now`` until the next waiting cold model reaches its deadline
    (``patience`` loads on the host that loads it fastest), so the caller can plan again
    at that moment rather than at its next tick; None when no such deadline lies ahead."""
    held = {r.model for h in view.hosts if h.up for r in h.held()}
    best: float | None = None
    for d in view.demand.values():
        if not d.queued or (d.model in held and not d.stranded):
            continue
        loads = [h.cost_of(d.model) for h in view.hosts if h.up and d.model in h.present]
        if not loads:
            continue
        due = policy.patience * min(loads) - d.oldest_wait
        if due > 0 and (best is None or due < best):
            best = due
    return best
