"""Placement policies on the fleet-scheduler issue's idealised physics (a reference, not the product).

    PYTHONPATH=src python tools/sim_ideal.py [--seeds 0,1,2]

The issue judged two simple policies with "a quick simulation": 4 hosts, room for 1 model
each, 2 slots, 1.5 s loads, every request holding its slot 0.2 s, nothing else (no prompt
evaluation, no HTTP, no refresh lag; the gateway knows every true arrival rate).  This
replays the issue's seeded trace (``ollamamax.testing.workload``, the same one the
simulator and ``tools/bench_fleet.py`` use) under exactly that physics, with a few lines
per policy, to show where each policy stands when nothing but placement matters:

* ``greedy``: any idle host switches to the cold model waiting longest (the issue: p99
  2.75 s, p50 1.1 s, 104 loads);
* ``pin2``: the two most requested models pinned, the other two hosts greedy (the issue:
  p99 3.3 s, p50 0.02 s, 61 loads);
* ``deadline``: the planner's just-in-time rule (``placement/planner.py``): an eviction
  waits until the cold model's oldest request has waited ``patience`` loads, then takes
  the least requested idle model, except one expecting ``protect`` requests per load.

The real simulator (``ollamamax simulate``, ``tools/sim_figures.py``) runs the product
itself against the emulator, whose physics is richer (a continued turn re-reads its
history); this tool only says what the policy is worth before that.  Deterministic.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
from collections.abc import Callable

from ollamamax.testing.workload import Scenario, TraceRequest, make_trace, model_shares, percentile

LOAD = 1.5
SERVICE = 0.2
FIRST_TOKEN = 0.012  # from slot start to the first token
SLOTS = 2
TICK = 0.05  # policies are also asked on this period (a deadline may fall between events)


class Host:
    def __init__(self, i: int) -> None:
        self.i = i
        self.model: str | None = None
        self.loading = False
        self.in_flight = 0
        self.last_busy = 0.0


Policy = Callable[[float, list[Host], dict[str, list[tuple[float, int]]], dict[str, float]], list[tuple[Host, str]]]


def run(trace: list[TraceRequest], policy: Policy, rates: dict[str, float], n_hosts: int = 4
        ) -> tuple[float, float, int]:
    """TTFT p50, p99 and the loads of ``policy`` on ``trace`` (every request is served)."""
    seq = itertools.count()
    events: list[tuple[float, int, str, int]] = [(r.at, next(seq), "arrive", k) for k, r in enumerate(trace)]
    end = trace[-1].at + 120.0
    events += [(k * TICK, next(seq), "tick", 0) for k in range(int(end / TICK))]
    heapq.heapify(events)
    hosts = [Host(i) for i in range(n_hosts)]
    queues: dict[str, list[tuple[float, int]]] = {}
    ttft: list[float | None] = [None] * len(trace)
    loads = 0

    def serve(now: float) -> None:
        for h in hosts:
            q = queues.get(h.model or "")
            while h.model and not h.loading and q and h.in_flight < SLOTS:
                at, k = q.pop(0)
                ttft[k] = now - at + FIRST_TOKEN
                h.in_flight += 1
                heapq.heappush(events, (now + SERVICE, next(seq), "done", h.i))

    while events:
        now, _, kind, x = heapq.heappop(events)
        if kind == "arrive":
            queues.setdefault(trace[x].model, []).append((now, x))
        elif kind == "done":
            hosts[x].in_flight -= 1
            hosts[x].last_busy = now
        elif kind == "loaded":
            hosts[x].loading = False
        serve(now)
        for h, m in policy(now, hosts, queues, rates):
            h.model, h.loading = m, True
            loads += 1
            heapq.heappush(events, (now + LOAD, next(seq), "loaded", h.i))
        serve(now)
    done = [t for t in ttft if t is not None]
    assert len(done) == len(trace), "a request was never served"
    return percentile(done, 0.5) or 0.0, percentile(done, 0.99) or 0.0, loads


def _cold(hosts: list[Host], queues: dict[str, list[tuple[float, int]]]) -> list[tuple[float, str]]:
    held = {h.model for h in hosts}
    return sorted((q[0][0], m) for m, q in queues.items() if q and m not in held)


def _idle(hosts: list[Host], queues: dict[str, list[tuple[float, int]]], taken: set[int]) -> list[Host]:
    return [h for h in hosts if h.i not in taken and not h.loading and not h.in_flight and not queues.get(h.model or "")]


def greedy(now: float, hosts: list[Host], queues: dict[str, list[tuple[float, int]]], rates: dict[str, float],
           pinned: frozenset[int] = frozenset()) -> list[tuple[Host, str]]:
    out: list[tuple[Host, str]] = []
    taken = set(pinned)
    for _, m in _cold(hosts, queues):
        free = sorted(_idle(hosts, queues, taken), key=lambda h: (h.model is not None, h.last_busy))
        if not free:
            break
        taken.add(free[0].i)
        out.append((free[0], m))
    return out


def pin2(models: tuple[str, ...]) -> Policy:
    def policy(now: float, hosts: list[Host], queues: dict[str, list[tuple[float, int]]], rates: dict[str, float]
               ) -> list[tuple[Host, str]]:
        first = [(hosts[i], models[i]) for i in range(2) if hosts[i].model is None]
        return first + greedy(now, hosts, queues, rates, frozenset({0, 1}))
    return policy


def deadline(patience: float = 0.85, protect: float = 4.0) -> Policy:
    def policy(now: float, hosts: list[Host], queues: dict[str, list[tuple[float, int]]], rates: dict[str, float]
               ) -> list[tuple[Host, str]]:
        out: list[tuple[Host, str]] = []
        taken: set[int] = set()
        room = any(h.model is None for h in hosts)
        for oldest, m in _cold(hosts, queues):
            if now - oldest < patience * LOAD and not room:
                continue  # the batch gathers; the residents serve on
            free = sorted(_idle(hosts, queues, taken),
                          key=lambda h: (h.model is not None, rates.get(h.model or "", 0.0), h.last_busy))
            if free and (free[0].model is None or rates[free[0].model] * LOAD < protect):
                taken.add(free[0].i)
                out.append((free[0], m))
        return out
    return policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2,3,4,5,6,7,8,9")
    args = ap.parse_args()
    print("| seed | policy | TTFT p50 | p99 | loads |")
    print("|---|---|---|---|---|")
    for seed in (int(s) for s in args.seeds.split(",")):
        sc = Scenario(seed=seed)
        trace = make_trace(sc)
        rates = {m: share * sc.rate for m, share in model_shares(sc).items()}
        for name, pol in (("greedy", greedy), ("pin2", pin2(sc.models)), ("deadline", deadline())):
            p50, p99, loads = run(trace, pol, rates)
            print(f"| {seed} | {name} | {p50:.3f} s | {p99:.2f} s | {loads} |", flush=True)


if __name__ == "__main__":
    main()
