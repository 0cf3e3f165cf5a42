"""The status document (``GET /ollamamax/status``, the status page, ``Dispatcher.status()``).

One producer: :func:`status_document` turns the dispatcher's state into plain JSON data:
the strategy, the wait queue (depth, size), the cache's stats, retries and ejections, and
per host its name, URL, health (``ejected_until`` as POSIX time while down), models
present and loaded, slots in flight against capacity, waiters, version, the error of its
last failed refresh, request counts (``ok``: 2xx, ``errors``: other answers), and time to
first byte / total time percentiles (ms, all models merged, and ``by_model``).  Pure: it
reads what it is given (times included) and builds a dict.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._version import __version__
from ..fleet.hosts import HostState
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
    queue_depth: int,
    queue_size: int,
    cache_stats: dict[str, int],
    metrics: dict[str, Any],
    now_mono: float,
    now_wall: float,
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
                "loaded": sorted(m for m in v.present | frozenset(h.sent_models) if h.is_loaded(m, v)),
                "in_flight": h.in_flight,
                "capacity": h.capacity,
                "queued": h.queued,
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
        "queue": {"depth": queue_depth, "size": queue_size},
        "hosts": out_hosts,
        "cache": cache_stats,
        "retries": counters["retries"],
        "retries_denied": counters["retries_denied"],
        "request_faults": counters["request_faults"],
        "ejections": dict(counters["ejections"]),
        "version": __version__,
        "generated_at": now_wall,
    }
