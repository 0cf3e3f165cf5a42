"""Which host serves a request now, or which hosts it should wait for: the router.

For a request's candidates (healthy hosts that have the model) the router returns a
:class:`Decision`:

* ``take``: the host whose free slot the request should take now, or None;
* ``wait_on``: when no slot is free, the hosts whose next free slot the request accepts;
* ``widen_after``: seconds after which it should accept any candidate (a cold load
  elsewhere would then be faster than waiting), or None.

The rule is model-aware expected time to first token: hosts with the model resident come
first (ordered by the strategy), even if that means a short wait for one of their slots;
the model is loaded elsewhere only when the expected wait exceeds the expected load cost
(learned from the ``load_duration`` Ollama reports), and then on the host whose resident
models are least in demand, so hot models do not thrash between hosts.

Pure: no I/O, no clock (``now`` is a parameter), no side effect on the fleet.  The
dispatcher's admission takes the slot afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from ..fleet.hosts import HostState
from ..fleet.learning import Demand
from ..fleet.snapshot import HostView, Snapshot
from .strategies import RoutingKey, Strategy

__all__ = ["Decision", "Router", "expected_ttft"]

_NONE: list[HostState] = []  # never mutated


def _free(h: HostState) -> bool:
    return h.in_flight < h.capacity and not h.down


class Decision(NamedTuple):
    take: HostState | None
    wait_on: list[HostState]
    widen_after: float | None


def expected_ttft(h: HostState, model: str, loaded: bool) -> float:
    """Expected seconds to the first token of a new ``model`` request on ``h``: the wait
    for a gateway slot (in-flight beyond capacity x observed service time), plus the
    learned load cost (EWMA of load_duration, default 10 s) if the model is not resident,
    plus the host's EWMA time to first byte."""
    t = h.expected_wait() + h.ttfb.get(0.0)
    if not loaded:
        t += h.expected_load_cost(model)
    return t


class Router:
    """Ranks candidates with a strategy; ``spread_cold`` orders cold hosts by the demand
    for what they hold (off for ``affinity``, whose ring order must stay stable)."""

    def __init__(self, strategy: Strategy, demand: Demand, *, spread_cold: bool = True) -> None:
        self.strategy = strategy
        self.demand = demand
        self.spread_cold = spread_cold

    def resident_demand(self, h: HostState, view: HostView, now: float) -> float:
        rate = self.demand.rate
        return sum(rate(m, now) for m in view.loaded | frozenset(h.sent_models))

    def order_cold(self, cold: list[HostState], key: RoutingKey, snap: Snapshot, now: float) -> list[HostState]:
        ordered = self.strategy.order(cold, key)
        if len(ordered) <= 1 or not self.spread_cold:
            return ordered
        # least in-demand resident models first, so hot models do not thrash
        return sorted(ordered, key=lambda h: round(self.resident_demand(h, snap.hosts[h.index], now), 3))

    def choose(
        self, pool: list[HostState], key: RoutingKey, snap: Snapshot, now: float, panic: bool = False
    ) -> Decision:
        """``panic``: the pool holds ejected hosts on purpose (too few healthy ones); they
        may then take the request like the others."""
        if panic:
            return self._choose(pool, key, snap, now, lambda h: h.in_flight < h.capacity and not h.unreachable)
        if len(pool) == 1:
            # one candidate: loaded or not, it is the one to take or wait for
            h = pool[0]
            return Decision(h if h.in_flight < h.capacity and not h.down else None, pool, None)
        return self._choose(pool, key, snap, now, _free)

    def _choose(
        self, pool: list[HostState], key: RoutingKey, snap: Snapshot, now: float, free: Callable[[HostState], bool]
    ) -> Decision:
        model = key.model
        loaded: list[HostState] = []
        cold: list[HostState] = []
        views = snap.hosts
        for h in pool:
            (loaded if h.is_loaded(model, views[h.index]) else cold).append(h)
        order = self.strategy.order
        if not loaded:
            for h in self.order_cold(pool, key, snap, now):
                if free(h):
                    return Decision(h, _NONE, None)
            return Decision(None, pool, None)
        for h in order(loaded, key):
            if free(h):
                return Decision(h, _NONE, None)
        if not cold:
            return Decision(None, loaded, None)
        # expected time to first token: wait for a slot (+ load if cold) + EWMA TTFB
        wait_est = min(expected_ttft(h, model, True) for h in loaded)
        cost = min(expected_ttft(h, model, False) for h in cold)
        if wait_est > cost:
            for h in self.order_cold(cold, key, snap, now):
                if free(h):
                    return Decision(h, _NONE, None)
            return Decision(None, pool, None)
        return Decision(None, loaded, max(cost - wait_est, 0.05))
