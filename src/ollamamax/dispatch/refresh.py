"""Background refresh of what each host has, doubling as the active health probe.

One task per host.  A healthy host is refreshed every ``refresh_interval`` seconds, and
at once when poked (``HostState.wake``: after a cold load, a pull, a delete...).  A
down host (ejected, or unreachable at its last refresh) is probed when its cooldown
ends.  A refresh is ``GET /api/tags`` and ``GET /api/ps`` (plus ``/api/version`` while
the version is unknown), each bounded by ``probe_timeout``.  Success builds a new
:class:`HostView` and swaps in a new snapshot (the request path never locks);
failure marks the host down with a doubling cooldown (see health.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from .hosts import HostState, HostView, normalize_model
from .upstream import UPSTREAM_ERRORS, timeout

if TYPE_CHECKING:
    from .core import Dispatcher

__all__ = ["Refresher"]


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
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.d = dispatcher
        self._tasks: list[asyncio.Task[None]] = []
        c = dispatcher.config
        self.probe_timeout = max(float(c.connect_timeout), 0.2)

    async def refresh_host(self, h: HostState) -> bool:
        """Refresh one host now; returns True on success."""
        d = self.d
        up = h.upstream
        assert up is not None
        old = d._snapshot.hosts[h.index]
        started = time.monotonic()
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
        except (*UPSTREAM_ERRORS, ValueError) as exc:  # type: ignore[misc]
            d._set_view(
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
            d.health.probe_failed(h)
            return False
        d._set_view(
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
        # forget "warm" hints that this refresh supersedes
        if h.warm:
            for m in [m for m, t in h.warm.items() if t < started]:
                del h.warm[m]
        if d.health.reinstate(h):
            d.admission.kick(h)
        return True

    async def _host_loop(self, h: HostState) -> None:
        interval = max(float(self.d.config.refresh_interval), 0.05)
        next_at = time.monotonic() + interval
        while True:
            now = time.monotonic()
            due = max(h.ejected_until, now) if h.down else next_at
            if not h.wake.is_set() and due > now:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel
                with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                    async with timeout(due - now):
                        await h.wake.wait()
            h.wake.clear()
            if h.down and time.monotonic() < h.ejected_until:
                continue  # woken early (ejection changed the schedule): recompute
            await self.refresh_host(h)
            next_at = time.monotonic() + interval

    async def start(self) -> None:
        """Initial refresh of every host (bounded by the probe timeout), then the loops."""
        hosts = self.d.hosts
        await asyncio.gather(*(self.refresh_host(h) for h in hosts))
        for h in hosts:
            h.wake.clear()
            self._tasks.append(asyncio.create_task(self._host_loop(h), name=f"ollamamax-refresh-{h.name}"))

    def poke(self, h: HostState) -> None:
        h.wake.set()

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        if tasks:
            # bounded: a close must never hang on a refresh
            await asyncio.wait(tasks, timeout=max(self.probe_timeout, 1.0))
