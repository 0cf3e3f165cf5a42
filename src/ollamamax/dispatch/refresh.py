"""Background refresh of what each host has, doubling as the active health probe.

One task per host.  A healthy host is refreshed every ``interval`` seconds, and at once
when asked (:meth:`Refresher.refresh_soon`: after a cold load, a pull, a delete...).  A
down host (ejected, or unreachable at its last refresh) is probed when its cooldown ends.
A refresh is ``GET /api/tags`` and ``GET /api/ps`` (plus ``/api/version`` while the version
is unknown), each bounded by ``probe_timeout``.  Success publishes a new
:class:`~ollamamax.fleet.snapshot.HostView` to the snapshot store (the request path never
locks) and reinstates the host; failure marks it down with a doubling cooldown (see
``fleet.health``).  The refresher writes only to the store and to health; ``on_up(host)``
tells the owner a host came back (admission hands it waiting requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..fleet.health import Health
from ..fleet.hosts import HostState
from ..fleet.snapshot import HostView, SnapshotStore
from ..upstream.client import UPSTREAM_ERRORS, Upstream, timeout
from ..upstream.http1 import LocalResourceError
from ..wire.names import normalize_model

__all__ = ["Refresher"]

log = logging.getLogger("ollamamax.dispatch")


def _names(entries: Any) -> tuple[tuple[dict[str, Any], ...], frozenset[str]]:
    if not isinstance(entries, dict):
        raise ValueError("not a JSON object")
    models = entries.get("models") or []
    if not isinstance(models, list):
        raise ValueError("models is not a list")
    keep = tuple(m for m in models if isinstance(m, dict))
    names = frozenset(
        normalize_model(str(m.get("name") or m.get("model") or "")) for m in keep if m.get("name") or m.get("model")
    )
    return keep, names


class Refresher:
    def __init__(
        self,
        hosts: Sequence[HostState],
        upstreams: Sequence[Upstream],
        store: SnapshotStore,
        health: Health,
        *,
        probe_timeout: float,
        interval: float,
        on_up: Callable[[HostState], None],
        on_refreshed: Callable[[HostState, frozenset[str], float], None] = lambda h, loaded, started: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hosts = list(hosts)
        self.upstreams = upstreams
        self.store = store
        self.health = health
        self.probe_timeout = max(float(probe_timeout), 0.2)
        self.interval = max(float(interval), 0.05)
        self.on_up = on_up
        self.on_refreshed = on_refreshed
        self.clock = clock
        self._wake: list[asyncio.Event] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def refresh_host(self, h: HostState) -> bool:
        """Refresh one host now; returns True on success."""
        up = self.upstreams[h.index]
        old = self.store.current.hosts[h.index]
        started = self.clock()
        try:
            want_version = old.version is None
            coros = [up.get_json("/api/tags", self.probe_timeout), up.get_json("/api/ps", self.probe_timeout)]
            if want_version:
                coros.append(up.get_json("/api/version", self.probe_timeout))
            results = await asyncio.gather(*coros)
            tags, present = _names(results[0])
            ps, loaded = _names(results[1])
            version = old.version
            if want_version and isinstance(results[2], dict):
                version = str(results[2].get("version") or "") or None
        except LocalResourceError as exc:
            # the gateway is out of descriptors or memory: not the host's fault; keep what
            # we knew and try again at the next period
            log.warning("refresh of %s skipped: %s", h.name, exc)
            return False
        except (*UPSTREAM_ERRORS, ValueError) as exc:  # type: ignore[misc]
            self.store.publish(
                HostView(
                    h.index,
                    h.name,
                    h.url,
                    healthy=False,
                    present=old.present,
                    loaded=frozenset(),
                    tags=old.tags,
                    ps=(),
                    version=old.version,
                    refreshed_at=old.refreshed_at,
                    error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                )
            )
            self.health.probe_failed(h, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            return False
        self.store.publish(
            HostView(
                h.index,
                h.name,
                h.url,
                healthy=True,
                present=present,
                loaded=loaded,
                tags=tags,
                ps=ps,
                version=version,
                refreshed_at=started,
            )
        )
        was_down = self.health.reinstate(h)
        self.on_refreshed(h, loaded, started)  # the residency model learns what the host holds now
        if was_down:
            self.on_up(h)
        return True

    async def _host_loop(self, h: HostState, wake: asyncio.Event) -> None:
        interval = self.interval
        clock = self.clock
        next_at = clock() + interval
        while True:
            now = clock()
            due = max(h.ejected_until, now) if h.down else next_at
            if not wake.is_set() and due > now:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel
                with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                    async with timeout(due - now):
                        await wake.wait()
            wake.clear()
            if h.down and clock() < h.ejected_until:
                continue  # woken early (ejection changed the schedule): recompute
            await self.refresh_host(h)
            next_at = clock() + interval

    async def start(self) -> None:
        """Initial refresh of every host (bounded by the probe timeout), then the loops."""
        self._wake = [asyncio.Event() for _ in self.hosts]
        await asyncio.gather(*(self.refresh_host(h) for h in self.hosts))
        for h, wake in zip(self.hosts, self._wake):
            wake.clear()
            self._tasks.append(asyncio.create_task(self._host_loop(h, wake), name=f"ollamamax-refresh-{h.name}"))

    def refresh_soon(self, h: HostState) -> None:
        """Refresh ``h`` now rather than at its next period (or reschedule its probe)."""
        if self._wake:
            self._wake[h.index].set()

    async def refresh_all(self, hosts: Sequence[HostState]) -> None:
        await asyncio.gather(*(self.refresh_host(h) for h in hosts))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        if tasks:
            # bounded: a close must never hang on a refresh
            await asyncio.wait(tasks, timeout=max(self.probe_timeout, 1.0))
