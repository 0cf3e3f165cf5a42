"""The fleet simulator: a seeded trace through a router and emulated hosts, in virtual time.

``simulate(Scenario(hosts=4, rate=10), "ollamamax")`` replays the scenario's trace
(:mod:`~ollamamax.testing.workload`) on a :class:`~._virtualtime.VirtualTimeLoop`: 60 s
of traffic on 4 hosts takes a fraction of a second.  The hosts are the emulator itself
(:class:`~._simhost.SimHost`: the same engine, scheduler, load and keep-alive model and
route handlers as ``ollamamax mock``), reached without sockets.  Routers:

* ``ollamamax``: the real :class:`~ollamamax.dispatch.dispatcher.Dispatcher` (fleet
  scheduler, router, admission, forwarding, refresh), its clock the loop's;
* ``round-robin``: each request to the next host, as nginx's default upstream;
* ``hash``: each model to one host by consistent hashing (ketama, as nginx's ``hash
  $http_x_model consistent``; the ring's points are salted with the scenario's seed, as
  real addresses would be, so seeds also vary which models share a host);
* ``clairvoyant``: the gateway with a planner that knows every future arrival
  (:mod:`._clairvoyant`; ``margin`` trades loads for latency): the reference an online
  policy is measured against;
* ``floor``: no load cost and no residency limit (every host holds every model from the
  start, round-robin): the bound that no router reaches when models outnumber the room.

Each request is a streaming ``/api/chat`` sent at its time whatever the others do (open
loop); a continued turn carries its conversation's history as far as it got answers, as
``tools/bench_fleet.py`` sends it.  TTFT is from sending to the first NDJSON line.  Loads
and evictions are the hosts' own counts.  :class:`SimResult` has every outcome and
:meth:`SimResult.summary` the figures the fleet benchmark prints.

This is also a capacity-planning tool (``ollamamax simulate``): how many hosts does this
traffic need, what does one more resident model per host buy.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..dispatch.dispatcher import Dispatcher
from ..fleet.config import HostConfig
from ..placement.planner import PlannerPolicy
from ..wire.names import normalize_model
from ._clairvoyant import clairvoyant_planner
from ._simhost import SimHost, SimUpstream
from ._virtualtime import run_virtual
from .workload import Scenario, TraceRequest, make_trace, percentile

__all__ = ["ROUTERS", "SimOutcome", "SimResult", "percentile", "simulate"]

ROUTERS = ("ollamamax", "round-robin", "hash", "floor", "clairvoyant")
DRAIN = 600.0  # virtual seconds the replay may run past the trace's end before it gives up


@dataclass
class SimOutcome:
    at: float
    model: str
    conversation: int
    turn: int
    ttft: float | None = None  # seconds from sending to the first line
    total: float | None = None
    status: int = 0
    error: str = ""
    host: str = ""
    cold: bool = False  # the gateway says it waited for a load (ollamamax only)
    queued: float = 0.0  # seconds it waited in the gateway's queue (ollamamax only)

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass
class SimResult:
    scenario: Scenario
    router: str
    outcomes: list[SimOutcome]
    loads: int
    evictions: int
    per_host: dict[str, dict[str, int]]
    virtual_seconds: float
    wall_seconds: float
    scheduler: dict[str, Any] = field(default_factory=dict)

    def ttfts(self, pred: Callable[[SimOutcome], bool] = lambda o: True) -> list[float]:
        return [o.ttft for o in self.outcomes if o.ok and o.ttft is not None and pred(o)]

    def summary(self) -> dict[str, Any]:
        """TTFT p50/p90/p99 (all, first turns, continued turns, per model), errors, loads."""
        t = self.ttfts()
        by_model: dict[str, Any] = {}
        for m in self.scenario.models:
            mt = self.ttfts(lambda o, m=m: o.model == m)  # type: ignore[misc]
            by_model[m] = {"requests": sum(1 for o in self.outcomes if o.model == m),
                           "p50": percentile(mt, 0.5), "p99": percentile(mt, 0.99)}
        first = self.ttfts(lambda o: o.turn == 0)
        cont = self.ttfts(lambda o: o.turn > 0)
        return {
            "router": self.router,
            "requests": len(self.outcomes),
            "errors": sum(1 for o in self.outcomes if not o.ok),
            "ttft_p50": percentile(t, 0.5),
            "ttft_p90": percentile(t, 0.9),
            "ttft_p99": percentile(t, 0.99),
            "ttft_max": max(t) if t else None,
            "first_p50": percentile(first, 0.5),
            "continued_p50": percentile(cont, 0.5),
            "loads": self.loads,
            "evictions": self.evictions,
            "by_model": by_model,
            "per_host": self.per_host,
            "virtual_s": round(self.virtual_seconds, 3),
            "wall_s": round(self.wall_seconds, 3),
        }


# -- the baselines' routing -------------------------------------------------------------
class _Ketama:
    """nginx's ``hash ... consistent``: 160 points per server on a crc32 ring."""

    def __init__(self, names: Sequence[str], salt: int) -> None:
        points: list[tuple[int, int]] = []
        for i, name in enumerate(names):
            base = zlib.crc32(f"{name}:{salt}".encode())
            prev = 0
            for _ in range(160):
                prev = zlib.crc32(prev.to_bytes(4, "little"), base)
                points.append((prev, i))
        points.sort()
        self.hashes = [p for p, _ in points]
        self.owners = [i for _, i in points]

    def host(self, key: str) -> int:
        h = zlib.crc32(key.encode())
        i = bisect_left(self.hashes, h)
        return self.owners[i % len(self.owners)]


def _host_knobs(s: Scenario, floor: bool) -> dict[str, Any]:
    return {
        "tokens_per_sec": s.tokens_per_sec,
        "load_delay": 0.0 if floor else s.load_delay,
        "num_parallel": s.num_parallel,
        "max_loaded_models": len(s.models) if floor else s.max_loaded_models,
        "response_tokens": (s.response_tokens, s.response_tokens),
        "prompt_eval_tps": s.prompt_eval_tps,
        "vram": 0 if floor else s.vram,
        "seed": s.seed,
        "preload": tuple(s.models) if floor else (),
        "keep_alive": "5m",
    }


class _Direct:
    """A baseline proxy: picks a host per request and sends it straight there (the host
    queues what it cannot serve yet, as behind nginx)."""

    def __init__(self, ups: Sequence[SimUpstream], pick: Callable[[str], int]) -> None:
        self.ups = ups
        self.pick = pick

    async def chat(self, model: str, body: bytes) -> tuple[int, str, Any, bool]:
        up = self.ups[self.pick(model)]
        resp = await up.send("POST", "/api/chat", body, {"Content-Type": "application/json"})
        return resp.status, up.host.name, resp, False


def _reply_text(stream: bytes) -> tuple[str, bool]:
    """The assistant's text of an NDJSON chat stream, and whether it ended with an error."""
    parts = []
    error = False
    for line in stream.split(b"\n"):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            error = True
            continue
        if "error" in obj:
            error = True
        msg = obj.get("message")
        if isinstance(msg, dict):
            parts.append(str(msg.get("content") or ""))
    return "".join(parts), error


async def _replay(scenario: Scenario, router: str, trace: Sequence[TraceRequest], policy: PlannerPolicy | None,
                  dispatcher_options: Mapping[str, Any], configure_hosts: bool, margin: float) -> SimResult:
    loop = asyncio.get_running_loop()
    floor = router == "floor"
    names = [f"sim{i}" for i in range(scenario.hosts)]
    hosts = [SimHost(n, list(scenario.models), **_host_knobs(scenario, floor)) for n in names]
    ups = [SimUpstream(h) for h in hosts]
    dispatcher: Dispatcher | None = None
    if router in ("ollamamax", "clairvoyant"):
        cfgs = [HostConfig(url=f"http://{n}:11434", num_parallel=scenario.num_parallel if configure_hosts else None,
                           max_loaded_models=scenario.max_loaded_models if configure_hosts else None)
                for n in names]
        opts = dict(dispatcher_options)
        dispatcher = Dispatcher(cfgs, clock=loop.time, wall=loop.time, upstream_factory=lambda h, cfg: ups[h.index], policy=policy,
                                **opts)
        await dispatcher.start()
    elif router in ("round-robin", "floor"):
        counter = [0]

        def rr(model: str) -> int:
            counter[0] += 1
            return (counter[0] - 1) % len(ups)

        direct = _Direct(ups, rr)
    elif router == "hash":
        ring = _Ketama(names, scenario.seed)
        direct = _Direct(ups, ring.host)
    else:
        raise ValueError(f"unknown router {router!r}; choose one of {', '.join(ROUTERS)}")

    t_start = loop.time()
    if dispatcher is not None and dispatcher.scheduler is not None and router == "clairvoyant":
        times: dict[str, list[float]] = {}
        for r in trace:
            times.setdefault(normalize_model(r.model), []).append(t_start + r.at)
        dispatcher.scheduler.planner = clairvoyant_planner(times, scenario.load_delay, margin)
    histories: dict[int, list[dict[str, str]]] = {}
    outcomes = [SimOutcome(r.at, r.model, r.conversation, r.turn) for r in trace]

    async def one(i: int, req: TraceRequest) -> None:
        await asyncio.sleep(max(0.0, t_start + req.at - loop.time()))
        out = outcomes[i]
        hist = histories.setdefault(req.conversation, [])
        messages = [*hist, {"role": "user", "content": req.user}]
        body = json.dumps({"model": req.model, "messages": messages, "stream": True}).encode()
        t0 = loop.time()
        try:
            if dispatcher is not None:
                r = await dispatcher.handle("POST", "/api/chat", body, {"Content-Type": "application/json"})
                out.status = r.status
                out.host = r.headers.get("X-Ollamamax-Host", "")
                out.cold = r.headers.get("X-Ollamamax-Cold-Load") == "1"
                out.queued = int(r.headers.get("X-Ollamamax-Queue-Ms", "0") or 0) / 1000.0
                if r.stream is None:
                    out.error = f"http {r.status}" if r.status != 200 else "no stream"
                    return
                it = r.stream.__aiter__()
                chunks = []
                try:
                    first = await it.__anext__()
                    out.ttft = loop.time() - t0
                    chunks.append(first)
                    async for c in it:
                        chunks.append(c)
                finally:
                    await r.aclose()
                data = b"".join(chunks)
            else:
                status, host, resp, _ = await direct.chat(req.model, body)
                out.status, out.host = status, host
                if status != 200:
                    out.error = f"http {status}"
                    resp.close()
                    return
                first = await resp.readany()
                out.ttft = loop.time() - t0
                rest = [first]
                while True:
                    c = await resp.readany()
                    if not c:
                        break
                    rest.append(c)
                resp.release()
                data = b"".join(rest)
        except StopAsyncIteration:
            out.error = "empty stream"
            return
        except Exception as exc:  # noqa: BLE001 - recorded, not raised: one failure is a figure
            out.error = f"{type(exc).__name__}: {exc}"
            return
        out.total = loop.time() - t0
        text, failed = _reply_text(data)
        if failed:
            out.error = "in-band error"
            return
        # the history grows by this turn once it is answered (a later turn sent meanwhile
        # carries the history as far as it got)
        hist.extend([{"role": "user", "content": req.user}, {"role": "assistant", "content": text}])

    wall0 = time.perf_counter()
    tasks = [asyncio.ensure_future(one(i, r)) for i, r in enumerate(trace)]
    try:
        end = (trace[-1].at if trace else 0.0) + DRAIN
        done, pending = await asyncio.wait(tasks, timeout=end)
        for t in pending:
            t.cancel()
        for i, t in enumerate(tasks):
            if t in pending:
                outcomes[i].error = outcomes[i].error or "unfinished"
        virtual = loop.time() - t_start
        sched = dispatcher.scheduler.stats() if dispatcher is not None and dispatcher.scheduler is not None else {}
    finally:
        if dispatcher is not None:
            await dispatcher.close()
    per_host = {}
    loads = evictions = 0
    for h in hosts:
        st = h.stats()["totals"]
        per_host[h.name] = {"requests": st["served"] + st["failed"], "loads": st["loads"], "evictions": st["evictions"]}
        loads += st["loads"]
        evictions += st["evictions"]
    if floor:
        loads = 0  # the preloads of the floor are not part of the traffic
    return SimResult(scenario, router, outcomes, loads, evictions, per_host, virtual, time.perf_counter() - wall0, sched)


def simulate(scenario: Scenario, router: str = "ollamamax", *, policy: PlannerPolicy | None = None,
             dispatcher_options: Mapping[str, Any] | None = None, configure_hosts: bool = False,
             trace: Sequence[TraceRequest] | None = None, margin: float = 0.0) -> SimResult:
    """Replay ``scenario``'s trace through ``router`` (see :data:`ROUTERS`) on fresh, cold
    emulated hosts in virtual time.  ``configure_hosts`` tells the gateway each host's
    ``num_parallel`` and ``max_loaded_models`` (else it learns them); ``policy`` replaces the
    planner's; ``dispatcher_options`` go to the :class:`Dispatcher`."""
    if router not in ROUTERS:
        raise ValueError(f"unknown router {router!r}; choose one of {', '.join(ROUTERS)}")
    tr = list(trace) if trace is not None else make_trace(scenario)
    return run_virtual(_replay(scenario, router, tr, policy, dispatcher_options or {}, configure_hosts, margin))


def compare(scenario: Scenario, routers: Sequence[str] = ("ollamamax", "hash", "round-robin"), **kw: Any) -> list[SimResult]:
    """The same trace through each router."""
    tr = make_trace(scenario)
    return [simulate(scenario, r, trace=tr, **kw) for r in routers]

