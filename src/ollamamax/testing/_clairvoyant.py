"""A clairvoyant planner: the simulator's reference that knows every future arrival.

Owns :func:`clairvoyant_planner`, which builds a planner with the signature of
:func:`ollamamax.placement.planner.plan` from a trace's arrival times.  No online policy
can know when each model's next request comes; this one does, and uses it the way
Belady's optimal cache eviction does:

* a model that has requests waiting, or whose next request comes within one load, is
  wanted; the most urgent first (waiting ones by their oldest wait, then by arrival);
* it goes to free room if any; else it evicts, among idle residents (nothing in flight or
  waiting), the one whose next request is farthest away, and only if that request is at
  least ``margin`` seconds later than the wanted model's own next need (``margin`` trades
  loads for latency: a curve of its values is the reference frontier);
* one load at a time per host, as the real scheduler.

It is a strong heuristic, not a proven optimum (exact offline placement with load times
is a hard scheduling problem); the fleet benchmark reports it as the clairvoyant
reference.  Pure, as the planner it stands in for.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence

from ..placement.planner import FleetView, Load, PlannerPolicy

__all__ = ["clairvoyant_planner"]

INF = float("inf")


def clairvoyant_planner(arrivals: Mapping[str, Sequence[float]], lookahead: float, margin: float = 0.0
                        ) -> Callable[[FleetView, PlannerPolicy], list[Load]]:
    """``arrivals``: per normalised model name, its requests' times on the planner's clock
    (sorted); ``lookahead``: how far ahead a coming request makes its model wanted (a
    load's time)."""

    def next_at(model: str, now: float) -> float:
        times = arrivals.get(model)
        if not times:
            return INF
        i = bisect_right(times, now)
        return times[i] if i < len(times) else INF

    def planner(view: FleetView, policy: PlannerPolicy) -> list[Load]:
        now = view.now
        busy = {h.index for h in view.hosts if not h.up or h.switching()}
        held: dict[str, int] = {}
        for h in view.hosts:
            if h.up:
                for r in h.held():
                    held[r.model] = held.get(r.model, 0) + 1
        wanted: list[tuple[float, str, float]] = []  # (urgency key, model, when needed)
        for m, d in view.demand.items():
            if d.queued and not held.get(m):
                wanted.append((-d.oldest_wait, m, now))
        for m in arrivals:
            if held.get(m) or any(w[1] == m for w in wanted):
                continue
            t = next_at(m, now)
            if t - now <= lookahead:
                wanted.append((t - now, m, t))
        wanted.sort()
        out: list[Load] = []
        for _, m, need in wanted:
            best: tuple[float, int, tuple[str, ...]] | None = None
            for h in view.hosts:
                if h.index in busy or m not in h.present or h.holds(m):
                    continue
                key: tuple[float, int, tuple[str, ...]]
                if h.fits(m):
                    key = (INF, h.index, ())
                else:
                    victims = []
                    for r in h.residents:
                        if r.state != "loaded" or r.in_flight:
                            continue
                        dem = view.demand.get(r.model)
                        if dem is not None and dem.queued:
                            continue
                        victims.append((next_at(r.model, now), r.model))
                    if not victims:
                        continue
                    far, v = max(victims)
                    if not h.fits(m, (v,)) or far - need < margin:
                        continue
                    key = (far, h.index, (v,))
                if best is None or key[0] > best[0]:
                    best = key
            if best is None:
                continue
            busy.add(best[1])
            held[m] = 1
            out.append(Load(m, best[1], best[2], "clairvoyant", preload=need > now))
        return out

    return planner
