"""Which hosts have a model: the candidates of a request, with a refresh (and optionally a
pull) when the snapshot does not know the model yet.

:class:`HostDirectory` owns the host list, the snapshot store and one upstream client per
host, and answers "which healthy hosts have model M" from the current snapshot in O(hosts
that have M).  When no host has M it refreshes every healthy host (at most once a second,
shared by concurrent misses, and waited on for at most a second) and, with ``auto_pull``,
pulls M to the least-loaded host.  It does not choose among candidates: that is placement's.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence

from ..fleet.hosts import HostState
from ..fleet.snapshot import SnapshotStore
from ..upstream.client import UPSTREAM_ERRORS, Upstream, timeout
from .refresh import Refresher

__all__ = ["MISS_REFRESH_WAIT", "PULL_TIMEOUT", "HostDirectory"]

MISS_REFRESH_WAIT = 1.0  # how long an unknown-model request waits for the refresh it triggered
PULL_TIMEOUT = 3600.0  # a non-streamed pull (auto-pull, pull/create with stream false) may take this long
_NO_HOSTS: list[HostState] = []


class HostDirectory:
    def __init__(
        self,
        hosts: Sequence[HostState],
        store: SnapshotStore,
        upstreams: Sequence[Upstream],
        refresher: Refresher,
        *,
        auto_pull: bool = False,
        panic_threshold: float = 50.0,
        clock: Callable[[], float] = time.monotonic,
        health_epoch: Callable[[], int] = lambda: 0,
    ) -> None:
        self.hosts = list(hosts)
        self.by_name = {h.name: h for h in self.hosts}
        self.store = store
        self.upstreams = upstreams
        self.refresher = refresher
        self.auto_pull = auto_pull
        self.panic_threshold = panic_threshold
        self.clock = clock
        self._miss_refresh: asyncio.Task[None] | None = None
        self._miss_refresh_at = 0.0
        self._auto_pulls: dict[str, asyncio.Task[bool]] = {}
        # model -> (candidates, panic), valid for one snapshot and one health epoch: the
        # request path then costs the same with 2 hosts or 256
        self.health_epoch = health_epoch
        self._cands: dict[str, tuple[list[HostState] | None, bool]] = {}
        self._cands_at: tuple[object, int] | None = None

    def up(self) -> list[HostState]:
        return [h for h in self.hosts if not h.down]

    def find(self, spec: str) -> HostState | None:
        """A host by its name or its URL."""
        h = self.by_name.get(spec)
        if h is None:
            url = spec.rstrip("/")
            h = next((x for x in self.hosts if x.url == url), None)
        return h

    def holders(self, model: str) -> list[HostState]:
        """Healthy hosts whose snapshot lists ``model`` (normalised)."""
        hosts = self.hosts
        return [hosts[i] for i in self.store.current.by_model.get(model, ()) if not hosts[i].down]

    def lookup(self, model: str) -> tuple[list[HostState] | None, bool]:
        """:meth:`candidates` and whether they include ejected hosts (panic), cached until
        the snapshot or a host's health changes."""
        at = (self.store.current, self.health_epoch())
        if self._cands_at is None or self._cands_at[0] is not at[0] or self._cands_at[1] != at[1]:
            self._cands.clear()
            self._cands_at = at
        hit = self._cands.get(model)
        if hit is None:
            cands = self.candidates(model)
            hit = (cands, cands is not None and any(h.down for h in cands))
            if cands is not None:  # only models some host has: bounded
                self._cands[model] = hit
        return hit

    def candidates(self, model: str) -> list[HostState] | None:
        """Healthy hosts that have ``model``; [] when only down hosts have it; None when no
        host is known to have it.

        Panic (Envoy's panic threshold): when fewer than ``panic_threshold`` percent of the
        model's hosts are healthy, the reachable ones that outlier detection ejected are
        candidates too (a request that finds an ejected host among its candidates is in
        panic mode): better a host that failed recently than "no healthy host"."""
        idx = self.store.current.by_model.get(model)
        if not idx:
            return None
        hosts = self.hosts
        if len(idx) == 1:
            h = hosts[idx[0]]
            if not h.down:
                return [h]
            return [h] if self.panic_threshold > 0 and not h.unreachable else _NO_HOSTS
        up = [hosts[i] for i in idx if not hosts[i].down]
        if len(up) * 100.0 >= self.panic_threshold * len(idx):
            return up
        return [hosts[i] for i in idx if not hosts[i].unreachable]

    async def candidates_or_fetch(self, model: str) -> list[HostState] | None:
        cands = self.candidates(model)
        if cands is not None:
            return cands
        # Not in the snapshot: it may have been pulled since the last refresh.
        await self.refresh_on_miss()
        cands = self.candidates(model)
        if cands is None and self.auto_pull:
            if await self._pull_once(model):
                cands = self.candidates(model)
        return cands

    async def refresh_on_miss(self) -> None:
        """Refresh all healthy hosts, at most once a second, shared by concurrent misses."""
        t = self._miss_refresh
        if t is None or t.done():
            if self.clock() - self._miss_refresh_at < 1.0:
                return
            self._miss_refresh_at = self.clock()
            t = self._miss_refresh = asyncio.create_task(self.refresher.refresh_all(self.up()))
        # bounded: one hanging host must not make every unknown-model 404 slow
        await asyncio.wait({t}, timeout=MISS_REFRESH_WAIT)

    async def _pull_once(self, model: str) -> bool:
        t = self._auto_pulls.get(model)
        if t is None:
            t = self._auto_pulls[model] = asyncio.create_task(self._pull(model))
            t.add_done_callback(lambda _t: self._auto_pulls.pop(model, None))
        return await asyncio.shield(t)

    async def _pull(self, model: str) -> bool:
        hosts = sorted(self.up(), key=lambda h: h.load_ratio())
        if not hosts:
            return False
        h = hosts[0]
        body = json.dumps({"model": model, "stream": False}, separators=(",", ":")).encode()
        try:
            async with timeout(PULL_TIMEOUT):
                resp = await self.upstreams[h.index].send("POST", "/api/pull", body)
                try:
                    await resp.read()
                    ok = resp.status == 200
                finally:
                    resp.release()
        except UPSTREAM_ERRORS:
            return False
        if ok:
            await self.refresher.refresh_host(h)
        return ok

    async def close(self) -> None:
        pending = [t for t in (*self._auto_pulls.values(), self._miss_refresh) if t is not None and not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
