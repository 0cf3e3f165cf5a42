"""Which loaded copy serves a request now, or whether it waits: the router.

A request runs only where its model is loaded (a :class:`~ollamamax.fleet.residency.Resident`
in state ``loaded``) and has a free slot; where to load a model, and when, is the
planner's decision (``planner.py``).  Among the copies with a free slot the router prefers:

1. **the copy that served this conversation's history** (prompt-cache affinity: Ollama keeps
   each slot's KV cache, so a continued conversation on the same host skips re-reading what
   it already read).  The key is the rolling hash of the chat's messages
   (:func:`~ollamamax.placement.strategies.chat_prefix_hashes`): the history a continued
   turn sends is the previous request's messages plus the reply, so the copy that answered
   the prefix two messages shorter is the one remembered;
2. then the strategy's order (``least-loaded`` by default: requests in flight over slots).

When every copy's slots are taken it returns no copy and the request waits in its model's
queue, except that one request may go **above** a copy's learned slots to learn whether
the host takes it alongside the others (a probe; see ``fleet.residency``).

Pure: no I/O, no clock (``now`` is a parameter); the affinity memory is the router's own
state, written by :meth:`Router.observe` after a success.  Admission takes the slot.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from ..fleet.hosts import HostState
from ..fleet.residency import Resident
from ..structures.lfu import LFUCache
from .strategies import RoutingKey, Strategy

__all__ = ["Choice", "Router"]


class Choice(NamedTuple):
    resident: Resident | None  # the copy to take a slot of (None: wait)
    probe: bool  # the slot is one above the copy's learned slots


_WAIT = Choice(None, False)


class Router:
    def __init__(self, strategy: Strategy, *, memory: int = 65536) -> None:
        self.strategy = strategy
        # conversation prefix hash -> host index that served it
        self.seen = LFUCache(memory)

    def _usable(self, r: Resident, h: HostState, panic: bool, exclude: frozenset[int]) -> bool:
        return (r.state == "loaded" and r.host not in exclude
                and (not h.down or (panic and not h.unreachable)))

    def choose(self, copies: Iterable[Resident], hosts: Sequence[HostState], key: RoutingKey, now: float,
               *, panic: bool = False, exclude: frozenset[int] = frozenset()) -> Choice:
        free: list[Resident] = []
        probe: Resident | None = None
        for r in copies:
            h = hosts[r.host]
            if not self._usable(r, h, panic, exclude) or h.in_flight >= h.capacity:
                continue
            if r.in_flight < r.slots:
                free.append(r)
            elif probe is None and r.may_probe(now):
                probe = r
        if not free:
            return _WAIT if probe is None else Choice(probe, True)
        if len(free) == 1:
            return Choice(free[0], False)
        if key.prefixes and len(key.prefixes) >= 3:
            remembered = self.seen.get(key.prefixes[-3])  # the history before the last reply and question
            if remembered is not None:
                for r in free:
                    if r.host == remembered:
                        return Choice(r, False)
        best = self.strategy.first([hosts[r.host] for r in free], key)
        for r in free:
            if r.host == best.index:
                return Choice(r, False)
        raise AssertionError("the strategy chose a host it was not given")  # pragma: no cover

    def observe(self, key: RoutingKey, host: HostState) -> None:
        """A request of this conversation was answered by ``host``: its KV cache is there."""
        if key.prefixes:
            self.seen.set(key.prefixes[-1], host.index)
        self.strategy.observe(key, host)
