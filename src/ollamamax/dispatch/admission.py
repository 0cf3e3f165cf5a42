"""Admission: slots per (host, model), a FIFO queue per model, and the bounded wait.

Layout
    A request runs on a :class:`~ollamamax.fleet.residency.Resident` (a model loaded on a
    host) and holds one of its **slots** (the host's parallelism for that model, learned or
    configured), within the host's own cap (``HostState.capacity``, the gateway's in-flight
    limit per host).  A request that finds no free slot on a loaded copy of its model waits
    in its **model's queue** (a deque of :class:`Waiter`, oldest first); ``waiting`` counts
    the waiters of every model and never exceeds ``queue_size`` (one more is refused at once:
    503 + Retry-After), and each waiter has a deadline (the caller's timeout).  Requests are
    held here, in the gateway, rather than pushed into a host beyond its slots, so each can
    still go to whichever copy frees a slot first, or to a copy the scheduler loads for it.

Invariants
    * ``0 <= Resident.in_flight``; a slot is taken only by :meth:`Admission.try_take` (when
      the resident is loaded, has a free slot and its host is under its cap), or handed by
      :meth:`Admission.release` / :meth:`Admission.grant` to a waiter (then the count is not
      decremented: the slot changes owner).
    * ``waiting <= queue_size``.
    * When a slot frees on (host, model), the oldest live waiter of that model that accepts
      the host gets it; then, if the host's cap was the limit, the oldest waiters of the
      host's other models.  A waiter that timed out or was cancelled is skipped.
    * At most one request per copy holds a slot above its learned slots (a **probe**,
      ``Resident.probing``): taken by an arriving request (:meth:`Admission.take_probe`),
      or handed to the oldest waiter left when every slot is taken (a copy just loaded for
      a batch learns its parallelism from that batch, not from the next arrival).
    * No ``await`` inside a bookkeeping step, so the event loop never sees half an update.

Cost
    ``try_take`` and ``release`` O(1) plus the waiters skipped; ``wait`` O(1).

Admission takes and hands over slots; which copy a request should run on is placement's
decision (``placement.router``), and which host loads what is the scheduler's
(``dispatch.scheduler``): ``on_queue`` tells it a model has waiters no copy can serve, or
that a copy went idle while requests wait.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from ..fleet.hosts import HostState
from ..fleet.residency import UNLOADING, Residency, Resident
from ..structures.exceptions import QueueFull
from ..upstream.client import timeout as _timeout

__all__ = ["Admission", "Grant", "LoadFailed", "QueueFull", "Waiter"]


class Grant(NamedTuple):
    """A slot a waiter got: the copy, and whether the slot is one above its learned slots
    (a probe: the waiter's first byte tells whether the host runs one more)."""

    resident: Resident
    probe: bool


class LoadFailed(Exception):
    """The load a request was waiting for failed without an answer from the host (it
    refused the connection, reset it, or timed out): the request counts it as an attempt on
    that host and tries elsewhere."""

    def __init__(self, host: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.host = host
        self.kind = kind
        self.message = message


class Waiter:
    """One waiting request: its future (resolved with the copy whose slot it got, and
    whether that slot is a probe), when it began to wait, and the hosts it does not accept
    (tried already)."""

    __slots__ = ("fut", "since", "exclude", "panic")

    def __init__(self, fut: asyncio.Future[Grant], since: float, exclude: frozenset[int], panic: bool) -> None:
        self.fut = fut
        self.since = since
        self.exclude = exclude
        self.panic = panic

    def accepts(self, r: Resident, h: HostState) -> bool:
        return r.host not in self.exclude and (not h.down or (self.panic and not h.unreachable))


_NONE: frozenset[int] = frozenset()


def _next_for(q: deque[Waiter], r: Resident, h: HostState, skipped: list[Waiter]) -> Waiter | None:
    """Pop the oldest live waiter in ``q`` that accepts ``r`` on ``h``; the live ones that
    do not are put in ``skipped``, the timed-out or cancelled dropped."""
    while q:
        w = q.popleft()
        if w.fut.done():
            continue
        if not w.accepts(r, h):
            skipped.append(w)
            continue
        return w
    return None


class Admission:
    def __init__(self, hosts: Sequence[HostState], residency: Residency, queue_size: int,
                 *, on_queue: Callable[[str], None] = lambda model: None,
                 clock: Callable[[], float] | None = None) -> None:
        self.queue_size = max(int(queue_size), 0)
        self.waiting = 0
        self.closed = False
        self.hosts = list(hosts)
        self.residency = residency
        self.on_queue = on_queue
        self.clock = clock  # None: waiters are never handed a probe
        self.queues: dict[str, deque[Waiter]] = {}

    # -- slots -------------------------------------------------------------------------
    def try_take(self, r: Resident, panic: bool = False) -> bool:
        """Take a free slot of ``r`` (False when it has none, is not loaded, or its host is
        at its cap or down; in ``panic`` an ejected but reachable host serves too)."""
        h = self.hosts[r.host]
        if (r.in_flight < r.slots and h.in_flight < h.capacity and r.state == "loaded"
                and (not h.down or (panic and not h.unreachable))):
            r.in_flight += 1
            h.in_flight += 1
            return True
        return False

    def take_probe(self, r: Resident) -> None:
        """One request above ``r.slots``, to learn whether the host runs it alongside."""
        r.probing = True
        r.probe_mark = r.served
        r.in_flight += 1
        self.hosts[r.host].in_flight += 1

    def release(self, r: Resident, now: float) -> None:
        """Free one slot of ``r``; hand it to the oldest waiter of its model that accepts it."""
        h = self.hosts[r.host]
        r.in_flight -= 1
        h.in_flight -= 1
        r.last_used = now
        q = self.queues.get(r.model)
        if q:
            self._grant(r, q)
        if h.in_flight < h.capacity and len(self.residency.by_host[r.host]) > 1:
            self.grant_host(r.host)  # the host's cap may have held other models' waiters
        if r.in_flight == 0 and self.waiting:
            self.on_queue(r.model)  # an idle copy may now make room for a waiting model

    def grant(self, model: str) -> None:
        """Hand free slots of every loaded copy of ``model`` to its waiters (a load finished,
        a host came back, slots grew)."""
        q = self.queues.get(model)
        if not q:
            return
        for r in list(self.residency.holders(model)):
            if not q:
                return
            self._grant(r, q)

    def grant_host(self, host: int) -> None:
        """Hand free slots on ``host`` to waiters of any model it holds."""
        for r in list(self.residency.by_host[host].values()):
            q = self.queues.get(r.model)
            if q:
                self._grant(r, q)

    def _grant(self, r: Resident, q: deque[Waiter]) -> None:
        h = self.hosts[r.host]
        if r.state != "loaded" or h.unreachable:
            return
        skipped: list[Waiter] = []  # tried there already: they keep their place for another copy
        while r.in_flight < r.slots and h.in_flight < h.capacity:
            w = _next_for(q, r, h, skipped)
            if w is None:
                break
            r.in_flight += 1
            h.in_flight += 1
            w.fut.set_result(Grant(r, False))
        if q and h.in_flight < h.capacity and self.clock is not None and r.may_probe(self.clock()):
            # every slot taken and waiters left: one of them may learn if the host takes one
            # more (a copy just loaded for a batch learns its slots from that batch).  The
            # oldest goes, as it would to a free slot: on the simulator's fleets, handing
            # the probe to the newest waiter instead, or only to a copy that has answered
            # nothing yet, measured no better (p99 and p50 within noise over 4 seeds, more
            # of the 54 sweep cells above hash's)
            w = _next_for(q, r, h, skipped)
            if w is not None:
                self.take_probe(r)
                w.fut.set_result(Grant(r, True))
        if skipped:
            q.extendleft(reversed(skipped))

    # -- waiting -----------------------------------------------------------------------
    def full(self) -> bool:
        return self.closed or self.waiting >= self.queue_size

    def queued(self, model: str) -> int:
        """Live waiters of ``model`` (stale ones not counted)."""
        q = self.queues.get(model)
        return sum(1 for w in q if not w.fut.done()) if q else 0

    def oldest(self, model: str) -> float | None:
        """When the oldest live waiter of ``model`` began to wait."""
        q = self.queues.get(model)
        if q:
            for w in q:
                if not w.fut.done():
                    return w.since
        return None

    def _stranded(self, model: str) -> list[Waiter]:
        """Live waiters of ``model`` that no copy can serve: each copy (loaded or loading) is
        on a host the waiter tried already, or on a host that is down."""
        q = self.queues.get(model)
        if not q:
            return []
        copies = [r for r in self.residency.holders(model) if r.state != UNLOADING]
        return [w for w in q if not w.fut.done() and not any(w.accepts(r, self.hosts[r.host]) for r in copies)]

    def stranded(self, model: str) -> int:
        """How many waiters of ``model`` only a new copy elsewhere can serve (the planner
        treats them as a cold model's)."""
        return len(self._stranded(model))

    def by_model(self, now: float) -> dict[str, dict[str, Any]]:
        """Per model with live waiters: how many, and how long the oldest has waited."""
        out: dict[str, dict[str, Any]] = {}
        for m in self.waiting_models():
            oldest = self.oldest(m)
            out[m] = {"waiting": self.queued(m),
                      "oldest_s": round(max(now - oldest, 0.0), 3) if oldest is not None else 0.0}
        return out

    def panicking(self) -> bool:
        """Whether a live waiter is in panic (it accepts ejected but reachable hosts)."""
        return any(w.panic and not w.fut.done() for q in self.queues.values() for w in q)

    def waiting_models(self) -> list[str]:
        return [m for m, q in self.queues.items() if any(not w.fut.done() for w in q)]

    def refuse(self, model: str, error: Callable[[Waiter], BaseException | None]) -> int:
        """End the wait of every stranded waiter of ``model`` (see :meth:`stranded`) with the
        exception ``error(waiter)`` returns (None: it keeps waiting).  Used when the load it
        waited for failed, or no host can load it now.  Returns how many were ended."""
        n = 0
        for w in self._stranded(model):
            exc = error(w)
            if exc is not None:
                w.fut.set_exception(exc)
                n += 1
        return n

    def close(self) -> None:
        """Refuse new waits and end every current one with ``QueueFull`` (the caller answers
        busy at once instead of waiting out its deadline while the dispatcher shuts down)."""
        self.closed = True
        for q in self.queues.values():
            while q:
                w = q.popleft()
                if not w.fut.done():
                    w.fut.set_exception(QueueFull())

    async def wait(self, model: str, timeout: float, now: float, *, exclude: frozenset[int] = _NONE,
                   panic: bool = False) -> Grant:
        """Wait up to ``timeout`` s for a slot on a loaded copy of ``model`` (FIFO); the
        copy comes back with ``probe`` True when the slot is one above its learned slots.

        Raises ``QueueFull`` when the wait queue is full and ``asyncio.TimeoutError`` when no
        slot came in time.  Cancellation-safe.
        """
        if self.closed or self.waiting >= self.queue_size:
            raise QueueFull
        fut: asyncio.Future[Grant] = asyncio.get_running_loop().create_future()
        w = Waiter(fut, now, exclude, panic)
        q = self.queues.get(model)
        if q is None:
            q = self.queues[model] = deque()
        q.append(w)
        self.waiting += 1
        try:
            # a copy may have a free slot already (freed between the caller's check and now)
            served = False  # some copy, loaded or loading, will take this waiter in time
            for r in list(self.residency.holders(model)):
                h = self.hosts[r.host]
                if r.state == UNLOADING or not w.accepts(r, h):
                    continue
                served = True
                if self.try_take(r, panic):
                    fut.set_result(Grant(r, False))
                    break
            if not served:
                # only a new copy serves it: plan now.  A waiter queued behind busy copies
                # does not (that is every request of a saturated fleet, and a planning pass
                # walks the whole fleet): the scheduler's tick weighs replicating them.
                self.on_queue(model)
            async with _timeout(max(timeout, 0.0)):
                return await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                got = fut.result()  # granted while we were leaving: give it back
                if got.probe:
                    got.resident.probing = False
                self.release(got.resident, now)
            else:
                fut.cancel()
            raise
        finally:
            self.waiting -= 1
            if q and q[0].fut.done():  # keep stale heads from piling up
                while q and q[0].fut.done():
                    q.popleft()
            if not q and self.queues.get(model) is q:
                # only this model's current queue: a waiter that left an older, emptied
                # queue must not drop a newer one (it would orphan the waiters in it, who
                # then sit out their deadline beside free slots)
                del self.queues[model]
