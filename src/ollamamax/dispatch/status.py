"""The status document (``GET /ollamamax/status``, the status page, ``Dispatcher.status()``).

One producer: :func:`status_document` turns the dispatcher's state into plain JSON data:
the strategy, the wait queue (depth, size), the cache's stats, retries and ejections, and
per host its name, URL, health (``ejected_until`` as POSIX time while down), models
present and loaded, its **residents** as the gateway's residency model sees them (per
model: state ``loading``/``loaded``/``unloading``, slots in use against the host's slots
for it, and for a load its expected progress), its room (models it holds at once, and
whether that was configured, seen as its limit, or is still being explored), requests
in flight against the gateway's cap, version, the error of its last failed refresh,
request counts (``ok``: 2xx, ``errors``: other answers), and time to first byte / total
time percentiles (ms, all models merged, and ``by_model``); the gateway's queue per model
(waiting requests, the oldest wait); the scheduler's counts and its last decisions with
their reasons; ``last_fanout_failures``: the latest pulls, pushes, creates, copies,
deletes, blob uploads and unloads that failed on some host (route, model, when, what the
client was told, and per host its name, URL and error; see ``Broadcaster.last_failures``).
Pure: it reads what it is given (times included) and builds a dict.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._version import __version__
from ..fleet.hosts import HostState
from ..fleet.residency import LOADING, Residency
from ..fleet.snapshot import Snapshot

__all__ = ["status_document"]


def _pct(hist: Any | None) -> dict[str, float | int | None]:
    """p50/p99 in milliseconds of a microsecond histogram (None when empty)."""
    if hist is None or hist.count == 0:
        return {"count": 0, "p50_ms": None, "p99_ms": None}
    p50, p99 = hist.quantiles([0.5, 0.99])
    return {"count": hist.count, "p50_ms": round(p50 / 1000.0, 3), "p99_ms": round(p99 / 1000.0, 3)}


def _merge(hists: list[Any]) -> Any | None:
    if not hists:
        return None
    out = hists[0].__copy__()
    for h in hists[1:]:
        out.merge(h)
    return out


def status_document(
    *,
    strategy: str,
    hosts: Sequence[HostState],
    snapshot: Snapshot,
    residency: Residency,
    queue_depth: int,
    queue_size: int,
    queue_by_model: dict[str, dict[str, Any]],
    scheduler: dict[str, Any],
    cache_stats: dict[str, int],
    metrics: dict[str, Any],
    now_mono: float,
    now_wall: float,
    fanout_failures: Sequence[dict[str, Any]] = (),
    shared: dict[str, Any] | None = None,
) -> dict[str, Any]:
    hists = metrics["histograms"]
    counters = metrics["counters"]
    ok: dict[str, int] = {}
    err: dict[str, int] = {}
    for (_route, _model, host, status), n in counters["requests"].items():
        bucket = ok if 200 <= int(status) < 300 else err
        bucket[host] = bucket.get(host, 0) + n
    out_hosts = []
    for h in hosts:
        v = snapshot.hosts[h.index]
        name = h.name
        residents = []
        for r in sorted(residency.by_host[h.index].values(), key=lambda r: r.model):
            doc: dict[str, Any] = {"model": r.model, "state": r.state, "in_flight": r.in_flight,
                                   "slots": r.slots, "served": r.served}
            if r.state == LOADING:
                span = max(r.ready_at - r.since, 1e-9)
                doc["progress"] = round(min(max((now_mono - r.since) / span, 0.0), 0.99), 2)
                doc["loading_for_s"] = round(max(now_mono - r.since, 0.0), 3)
            residents.append(doc)
        i = h.index
        room_source = "configured" if residency.room_fixed[i] else ("seen" if residency.room_known[i] else "exploring")
        ttfb = {m: x for (hn, m), x in hists.get("ttfb", {}).items() if hn == name}
        total = {m: x for (hn, m), x in hists.get("total", {}).items() if hn == name}
        out_hosts.append(
            {
                "name": name,
                "url": h.url,
                "healthy": not h.down,
                "down_cause": h.down_cause or None,
                "ejected_until": (now_wall + (h.ejected_until - now_mono)) if h.down and h.ejected_until else None,
                "models": sorted(v.present),
                "loaded": sorted(r["model"] for r in residents if r["state"] == "loaded"),
                "residents": residents,
                "room": {"models": residency.room[i], "source": room_source},
                "in_flight": h.in_flight,
                "capacity": h.capacity,
                "version": v.version,
                "error": v.error,
                "requests": {"ok": ok.get(name, 0), "errors": err.get(name, 0)},
                "ttfb": _pct(_merge(list(ttfb.values()))),
                "total": _pct(_merge(list(total.values()))),
                "by_model": {
                    m: {"ttfb": _pct(ttfb.get(m)), "total": _pct(total.get(m))} for m in sorted(set(ttfb) | set(total))
                },
            }
        )
    return {
        "strategy": strategy,
        "queue": {"depth": queue_depth, "size": queue_size, "by_model": queue_by_model},
        "scheduler": scheduler,
        "hosts": out_hosts,
        "cache": cache_stats,
        "retries": counters["retries"],
        "retries_denied": counters["retries_denied"],
        "request_faults": counters["request_faults"],
        "ejections": dict(counters["ejections"]),
        "last_fanout_failures": [dict(f, hosts=[dict(h) for h in f.get("hosts", ())]) for f in fanout_failures],
        # several gateways through Redis (dispatch.shared): None without --redis
        "shared": shared,
        "version": __version__,
        "generated_at": now_wall,
    }
