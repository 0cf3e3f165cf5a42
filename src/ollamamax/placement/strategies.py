"""Balancing strategies behind one small protocol.

A strategy only *orders* hosts; the router (``router.py``) decides the rest: a request
runs only on a loaded copy of its model with a free slot (the fleet scheduler decides
which host loads which model), and among several such copies the router prefers the one
holding the conversation's prompt cache, then the strategy's order; the dispatcher's
admission then takes that slot.  Strategies do no I/O; ``round-robin`` and ``p2c`` keep
their own rotation / random state, ``affinity`` remembers which host served a
conversation (``observe``).

Protocol::

    class Strategy:
        name: str
        def order(self, cands: list[HostState], pick: RoutingKey) -> list[HostState]: ...
        def first(self, cands: list[HostState], pick: RoutingKey) -> HostState: ...  # order()[0]
        def observe(self, pick: RoutingKey, host: HostState) -> None: ...   # after a success

Strategies
    ``least-loaded``  in-flight / capacity, ties broken by EWMA time to first byte.
    ``p2c``           power of two choices: two random candidates, the less loaded first.
    ``round-robin``   rotate through the candidates.
    ``latency``       EWMA of time to first byte (from the same samples that feed the
                      TTFB histograms), scaled by load; unmeasured hosts go first.
    ``affinity``      consistent hashing with bounded load on a conversation key: the
                      session header when sent, otherwise the longest already-seen prefix
                      of the chat (a rolling blake2b hash at each message boundary).  A
                      host over ``affinity_overflow`` x mean load overflows to the next
                      host on the ring.  The ring depends only on host URLs and weights
                      (blake2b), so every process computes the same ring.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import random
from collections.abc import Sequence
from typing import Any, Protocol

from ..fleet.hosts import HostState
from ..structures.lfu import LFUCache

__all__ = [
    "STRATEGIES",
    "AffinityStrategy",
    "HashRing",
    "LatencyStrategy",
    "LeastLoadedStrategy",
    "P2CStrategy",
    "RoutingKey",
    "RoundRobinStrategy",
    "Strategy",
    "make_strategy",
    "stable_hash",
]


def stable_hash(data: bytes) -> int:
    """64-bit hash that is the same in every process (unlike ``hash()``)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class RoutingKey:
    """What a strategy may look at for one request: the model and the conversation keys."""

    __slots__ = ("model", "session", "prefixes", "prompt_key")

    def __init__(
        self,
        model: str,
        *,
        session: str | None = None,
        prefixes: Sequence[bytes] = (),
        prompt_key: bytes | None = None,
    ) -> None:
        self.model = model
        self.session = session  # value of config.session_header, if sent
        self.prefixes = prefixes  # rolling hashes after each chat message (chat only)
        self.prompt_key = prompt_key  # fallback key (e.g. the generate prompt)


def chat_prefix_hashes(model: str, messages: Any) -> list[bytes]:
    """Rolling hash of the conversation at each message boundary.

    ``out[i]`` identifies the first ``i + 1`` messages.  Each message is reduced to role
    and content (what determines the host's prompt cache), fed to one running BLAKE2b
    (with lengths, so no two conversations encode alike) whose state is read after each
    message; an image counts by its length and its first and last 256 characters
    (hashing a 13 MiB image took 45 ms of the event loop, and a collision only misplaces
    a routing hint).  About 0.7 us a message.
    """
    out: list[bytes] = []
    if not isinstance(messages, list):
        return out
    h = hashlib.blake2b(model.encode(), digest_size=16)
    for m in messages:
        if isinstance(m, dict):
            role, content, images = m.get("role"), m.get("content"), m.get("images")
            fields = [role if isinstance(role, str) else repr(role),
                      content if isinstance(content, str) else json.dumps(content, sort_keys=True, default=str)]
            if images:
                fields.extend(f"{len(i)}:{i[:256]}:{i[-256:]}" if isinstance(i, str) else repr(i)
                              for i in (images if isinstance(images, list) else [images]))
        else:
            fields = [json.dumps(m, sort_keys=True, default=str)]
        for f in fields:
            b = f.encode("utf-8", "surrogatepass")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
        h.update(b"\xff" * 8)  # end of message
        out.append(h.copy().digest())
    return out


class Strategy(Protocol):
    name: str

    def order(self, cands: list[HostState], pick: RoutingKey) -> list[HostState]: ...

    def first(self, cands: list[HostState], pick: RoutingKey) -> HostState: ...

    def observe(self, pick: RoutingKey, host: HostState) -> None: ...


class _Base:
    name = "base"

    def order(self, cands: list[HostState], pick: RoutingKey) -> list[HostState]:  # pragma: no cover
        raise NotImplementedError

    def first(self, cands: list[HostState], pick: RoutingKey) -> HostState:
        """``order(cands, pick)[0]`` (``cands`` not empty); a strategy overrides it when
        it can pick the first without ordering them all."""
        return self.order(cands, pick)[0]

    def observe(self, pick: RoutingKey, host: HostState) -> None:
        return None


def _load_key(h: HostState) -> tuple[float, float]:
    return (h.in_flight / (h.capacity * h.config.weight), h.ttfb.get(0.0))


class LeastLoadedStrategy(_Base):
    name = "least-loaded"

    def order(self, cands: list[HostState], pick: RoutingKey) -> list[HostState]:
        if len(cands) <= 1:
            return cands
        return sorted(cands, key=_load_key)

    def first(self, cands: list[HostState], pick: RoutingKey) -> HostState:
        return min(cands, key=_load_key)  # the first of the sorted order (min is stable too)


class P2CStrategy(_Base):
    name = "p2c"

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def order(self, cands: list[HostState], pick: RoutingKey) -> list[HostState]:
        n = len(cands)
        if n <= 1:
            return cands
        i, j = self.rng.sample(range(n), 2)
        a, b = cands[i], cands[j]
        first, second = (a, b) if _load_key(a) <= _load_key(b) else (b, a)
        rest = sorted((c for k, c in enumerate(cands) if k != i and k != j), key=_load_key)
        return [first, second, *rest]

    def first(self, cands: list[HostState], pick: RoutingKey) -> HostState:
        if len(cands) <= 1:
            return cands[0]
        i, j = self.rng.sample(range(len(cands)), 2)
        a, b = cands[i], cands[j]
        return a if _load_key(a) <= _load_key(b) else b


class RoundRobinStrategy(_Base):
    name = "round-robin"

    def __init__(self) -> None:
        self._next = 0

    def order(self, cands: list[HostState], pick: RoutingKey) -> list[HostState]:
        n = len(cands)
        if n <= 1:
            return cands
        # Rotate by a global counter; hosts keep their configured order within the list.
        k = self._next % n
        self._next += 1
        return cands[k:] + cands[:k]


class LatencyStrategy(_Base):
    name = "latency"

    def order(self, cands: list[HostState], pick: RoutingKey) -> list[HostState]:
        if len(cands) <= 1:
            return cands

        def key(h: HostState) -> tuple[int, float]:
            v = h.ttfb.value
            if v is None:
                return (0, h.load_ratio())  # explore unmeasured hosts first
            return (1, v * (1.0 + h.load_ratio()))

        return sorted(cands, key=key)


class HashRing:
    """Consistent hash ring over host URLs (``vnodes`` points per unit of weight)."""

    def __init__(self, hosts: Sequence[HostState], vnodes: int = 64) -> None:
        points: list[tuple[int, int]] = []
        for h in hosts:
            n = max(1, int(round(vnodes * h.config.weight)))
            url = h.url.rstrip("/").encode()
            for i in range(n):
                points.append((stable_hash(url + b"#" + str(i).encode()), h.index))
        points.sort()
        self._keys = [p[0] for p in points]
        self._owners = [p[1] for p in points]
        self.size = len({p[1] for p in points})

    def walk(self, key: bytes) -> list[int]:
        """Distinct host indices in ring order starting at ``key``'s position."""
        if not self._keys:
            return []
        start = bisect.bisect(self._keys, stable_hash(key))
        seen: list[int] = []
        n = len(self._keys)
        for k in range(n):
            owner = self._owners[(start + k) % n]
            if owner not in seen:
                seen.append(owner)
                if len(seen) == self.size:
                    break
        return seen


class AffinityStrategy(_Base):
    """Consistent hashing with bounded load, keyed on the conversation."""

    name = "affinity"

    def __init__(self, hosts: Sequence[HostState], *, overflow: float = 1.25, memory: int = 65536) -> None:
        self.ring = HashRing(hosts)
        self.overflow = max(float(overflow), 1.0)
        # conversation prefix hash -> host index that served it
        self.seen = LFUCache(memory)

    def _key(self, pick: RoutingKey) -> tuple[bytes, int | None]:
        """Ring key and the remembered host for this request (if any)."""
        if pick.session:
            return b"s:" + pick.session.encode(), None
        remembered = None
        for h in reversed(pick.prefixes):  # longest prefix first
            remembered = self.seen.get(h)
            if remembered is not None:
                break
        if pick.prefixes:
            return pick.prefixes[0], remembered
        return pick.prompt_key or pick.model.encode(), remembered

    def order(self, cands: list[HostState], pick: RoutingKey) -> list[HostState]:
        if not cands:
            return cands
        key, remembered = self._key(pick)
        by_index = {h.index: h for h in cands}
        ordered = [by_index[i] for i in self.ring.walk(key) if i in by_index]
        if remembered is not None and remembered in by_index:
            first = by_index[remembered]
            ordered.remove(first)
            ordered.insert(0, first)
        # Bounded load (Mirrokni et al.): with m requests in flight over the candidates,
        # host h may hold ceil(overflow * (m + 1) * cap_h / total_cap); a host at its
        # bound is passed over in favour of the next one on the ring.
        m = sum(h.in_flight for h in cands)
        total_cap = sum(h.capacity for h in cands)
        within: list[HostState] = []
        over: list[HostState] = []
        for h in ordered:
            allowed = math.ceil(self.overflow * (m + 1) * h.capacity / total_cap)
            (within if h.in_flight < allowed else over).append(h)
        return within + over

    def observe(self, pick: RoutingKey, host: HostState) -> None:
        if pick.prefixes:
            self.seen.set(pick.prefixes[-1], host.index)


STRATEGIES = ("least-loaded", "p2c", "round-robin", "latency", "affinity")


def make_strategy(name: str, hosts: Sequence[HostState], *, overflow: float = 1.25) -> Strategy:
    if name == "least-loaded":
        return LeastLoadedStrategy()
    if name == "p2c":
        return P2CStrategy()
    if name == "round-robin":
        return RoundRobinStrategy()
    if name == "latency":
        return LatencyStrategy()
    if name == "affinity":
        return AffinityStrategy(hosts, overflow=overflow)
    raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
