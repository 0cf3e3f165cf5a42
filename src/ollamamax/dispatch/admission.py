"""Admission: per-host in-flight slots and a bounded FIFO of waiting requests.

Layout
    Each host has ``in_flight`` / ``capacity`` (``HostConfig.max_concurrency`` or
    ``DispatcherConfig.max_in_flight_per_host``, default 8) on its ``HostState``, and here
    a ring of waiters (``AsyncRingQueue``, used only through its non-blocking
    ``put_nowait`` / ``get_nowait``).  A request that finds every acceptable host full creates one
    :class:`Waiter` (a future plus nothing else) and pushes it into the ring of every
    host it would accept.  ``waiting`` counts live waiters across the dispatcher and
    ``HostState.queued`` the live waiters that would accept that host (it feeds the
    expected-wait estimate of the selection).

Invariants
    * ``0 <= in_flight``; a slot is taken only by ``try_acquire`` (when
      ``in_flight < capacity``) or handed over by ``release`` to a waiter (the count is
      not decremented then, the slot changes owner).
    * ``waiting <= queue_size``: a request arriving when the queue is full is refused
      at once (503 + Retry-After).
    * When a slot frees on host H, the oldest live waiter in H's ring gets it: FIFO
      among the waiters that accept H, which is "the head waiter whose candidates
      include H".  A waiter granted by another host, timed out or cancelled stays in
      the other rings as a stale entry (its future is done) and is skipped when met.
    * No ``await`` inside a bookkeeping step: ``try_acquire``, ``release`` and the
      waiter push are synchronous, so the event loop never sees a half-updated state.

Cost
    ``try_acquire`` O(1); ``release`` O(1) amortised (each stale entry is popped once);
    ``wait`` O(k) pushes for k acceptable hosts; a ring that fills with stale entries is
    compacted in O(ring size) (rare: only when a host frees no slot for a long time).

Cancellation
    A waiter that times out or is cancelled after it was granted a slot gives the slot
    back (``release``), so a slot is never lost.

Admission takes and hands over slots; which host a request should get is placement's
decision (``placement.router``), made before admission is asked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ..fleet.hosts import HostState
from ..structures.exceptions import QueueEmpty, QueueFull
from ..structures.ring import AsyncRingQueue
from ..upstream.client import timeout as _timeout

__all__ = ["Admission", "QueueFull"]


class Waiter:
    """One waiting request: its future, and whether it accepts an ejected host (a request
    in panic mode, see ``directory``)."""

    __slots__ = ("fut", "panic")

    def __init__(self, fut: asyncio.Future[HostState], panic: bool = False) -> None:
        self.fut = fut
        self.panic = panic


class Admission:
    def __init__(self, hosts: Sequence[HostState], queue_size: int) -> None:
        self.queue_size = max(int(queue_size), 0)
        self.waiting = 0
        self.closed = False
        self.hosts = list(hosts)
        ring_size = max(self.queue_size, 1)
        # host index -> its ring of waiters
        self._rings: list[AsyncRingQueue[Waiter]] = [AsyncRingQueue(ring_size) for _ in self.hosts]

    # -- slots -------------------------------------------------------------------------
    @staticmethod
    def try_acquire(h: HostState, panic: bool = False) -> bool:
        """Take a free slot on ``h`` (False when it has none or is down; in ``panic`` an
        ejected but reachable host serves too)."""
        if h.in_flight < h.capacity and (not h.down or (panic and not h.unreachable)):
            h.in_flight += 1
            return True
        return False

    def release(self, h: HostState) -> None:
        """Free one slot on ``h``; hand it to the oldest live waiter that accepts ``h``."""
        h.in_flight -= 1
        if h.queued:  # else no live waiter accepts h (stale entries wait for a later call)
            self.grant_free_slots(h)

    def grant_free_slots(self, h: HostState) -> None:
        """Hand free slots of ``h`` to waiters (also called when a host comes back).  An
        ejected host's slots go only to waiters in panic mode (the others keep their place
        in its ring for when it comes back)."""
        if h.down:
            if not h.unreachable:
                self._grant_panic_waiters(h)
            return
        q = self._rings[h.index]
        while h.in_flight < h.capacity and q.qsize():
            try:
                w = q.get_nowait()
            except QueueEmpty:  # pragma: no cover - qsize() said otherwise
                return
            if w.fut.done():
                continue  # stale: granted elsewhere, timed out or cancelled
            h.in_flight += 1
            w.fut.set_result(h)

    def _grant_panic_waiters(self, h: HostState) -> None:
        """O(ring): only while a model's hosts are mostly ejected (panic)."""
        q = self._rings[h.index]
        keep = []
        while q.qsize():
            try:
                w = q.get_nowait()
            except QueueEmpty:  # pragma: no cover
                break
            if w.fut.done():
                continue
            if w.panic and h.in_flight < h.capacity:
                h.in_flight += 1
                w.fut.set_result(h)
            else:
                keep.append(w)
        for w in keep:
            q.put_nowait(w)

    def ring_length(self, h: HostState) -> int:
        """Entries in ``h``'s ring, live and stale (compaction keeps it <= ``queue_size``)."""
        return self._rings[h.index].qsize()

    # -- waiting -----------------------------------------------------------------------
    def full(self) -> bool:
        return self.closed or self.waiting >= self.queue_size

    def close(self) -> None:
        """Refuse new waits and end every current one with ``QueueFull`` (the caller answers
        busy at once instead of waiting out its deadline while the dispatcher shuts down)."""
        self.closed = True
        for q in self._rings:
            while q.qsize():
                try:
                    w = q.get_nowait()
                except QueueEmpty:  # pragma: no cover - qsize() said otherwise
                    break
                if not w.fut.done():
                    w.fut.set_exception(QueueFull())

    async def wait(self, hosts: Sequence[HostState], timeout: float, panic: bool = False) -> HostState:
        """Wait up to ``timeout`` s for a slot on any of ``hosts`` (FIFO); ``panic``: an
        ejected (but reachable) host of ``hosts`` is acceptable too.

        Raises ``QueueFull`` when the wait queue is full and ``asyncio.TimeoutError``
        when no slot came in time.  Cancellation-safe.
        """
        if self.closed or self.waiting >= self.queue_size:
            raise QueueFull
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[HostState] = loop.create_future()
        w = Waiter(fut, panic)
        for h in hosts:
            self._push(h, w)
            h.queued += 1
        self.waiting += 1
        try:
            # A host may have a free slot already (e.g. freed between the caller's
            # check and now, or came back up); take it without waiting.
            for h in hosts:
                if not fut.done() and self.try_acquire(h, panic):
                    fut.set_result(h)
            async with _timeout(max(timeout, 0.0)):
                return await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(fut.result())  # granted while we were leaving: give it back
            else:
                fut.cancel()
            raise
        finally:
            self.waiting -= 1
            for h in hosts:
                h.queued -= 1

    def _push(self, h: HostState, w: Waiter) -> None:
        q = self._rings[h.index]
        try:
            q.put_nowait(w)
            return
        except QueueFull:
            pass
        # The ring is full of stale entries: compact it (keeps the order of live ones).
        live = []
        while q.qsize():
            try:
                x = q.get_nowait()
            except QueueEmpty:  # pragma: no cover
                break
            if not x.fut.done():
                live.append(x)
        for x in live:
            q.put_nowait(x)
        q.put_nowait(w)  # room exists: live waiters < queue_size (checked by wait())
