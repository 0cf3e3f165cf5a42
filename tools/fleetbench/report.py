"""Figures and markdown tables of a fleet benchmark run.

Owns :func:`target_figures` (one target's outcomes and its hosts' ``/_mock/stats`` -> the
figures the issue asks for) and the markdown tables :func:`main_table`,
:func:`model_table` and :func:`spread_table`. Latency figures cover successful requests
only; errors are counted beside them. It measures nothing and starts nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from ollamamax.testing.workload import percentile

from .replay import Outcome


def dist(values: Sequence[float]) -> dict[str, Any]:
    r: dict[str, Any] = {"n": len(values)}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        x = percentile(values, q)
        r[name] = None if x is None else round(x, 4)
    r["max"] = round(max(values), 4) if values else None
    r["mean"] = round(sum(values) / len(values), 4) if values else None
    return r


def _host_counter(stats: dict[str, Any] | None, key: str) -> int | None:
    """A count from one host's ``/_mock/stats``: the total, else the sum over its models;
    None when the emulator does not report it (e.g. evictions on an older emulator)."""
    if not stats:
        return None
    tot = stats.get("totals") or {}
    if key in tot:
        return int(tot[key])
    rows = [row for row in (stats.get("models") or {}).values() if key in row]
    return sum(int(row[key]) for row in rows) if rows else None


def target_figures(outcomes: Sequence[Outcome], host_stats: Sequence[dict[str, Any] | None],
                   host_ids: Sequence[str]) -> dict[str, Any]:
    ok = [o for o in outcomes if o.ok]
    errs = Counter(o.error for o in outcomes if not o.ok)
    samples: dict[str, str] = {}
    for o in outcomes:
        if o.error and o.error not in samples:
            samples[o.error] = o.detail
    per_model: dict[str, Any] = {}
    for m in dict.fromkeys(o.model for o in outcomes):
        mine = [o for o in outcomes if o.model == m]
        good = [o.ttft for o in mine if o.ok and o.ttft is not None]
        per_model[m] = {"requests": len(mine), "errors": sum(1 for o in mine if not o.ok), "ttft": dist(good)}
    loads = [_host_counter(s, "loads") for s in host_stats]
    evictions = [_host_counter(s, "evictions") for s in host_stats]
    loads_per_model: Counter[str] = Counter()
    for s in host_stats:
        for name, row in ((s or {}).get("models") or {}).items():
            loads_per_model[name] += int(row.get("loads", 0))
    served = Counter(o.host for o in outcomes if o.host)
    by_host: dict[str, Counter[str]] = {}
    for o in outcomes:
        if o.host:
            by_host.setdefault(o.host, Counter())[o.model] += 1
    held = [o.held for o in outcomes if o.held > 0.0005]
    pe = [o.prompt_eval_duration for o in ok if o.turn > 0 and o.prompt_eval_duration is not None]
    return {
        "requests": len(outcomes),
        "ok": len(ok),
        "errors": sum(errs.values()),
        "error_kinds": dict(errs),
        "error_samples": samples,
        "ttft": dist([o.ttft for o in ok if o.ttft is not None]),
        "total": dist([o.total for o in ok if o.total is not None]),
        "first_turns": {"requests": sum(1 for o in outcomes if o.turn == 0),
                        "ttft": dist([o.ttft for o in ok if o.turn == 0 and o.ttft is not None])},
        "continued_turns": {"requests": sum(1 for o in outcomes if o.turn > 0),
                            "ttft": dist([o.ttft for o in ok if o.turn > 0 and o.ttft is not None]),
                            "prompt_eval_s": dist(pe)},
        "per_model": per_model,
        "model_loads": sum(x for x in loads if x is not None) if any(x is not None for x in loads) else None,
        "model_loads_per_host": dict(zip(host_ids, loads)),
        "model_loads_per_model": dict(loads_per_model),
        "evictions": sum(x for x in evictions if x is not None) if any(x is not None for x in evictions) else None,
        "served_per_host": {h: served.get(h, 0) for h in host_ids} | {
            h: n for h, n in served.items() if h not in host_ids},
        "models_per_host": {h: dict(c.most_common()) for h, c in sorted(by_host.items())},
        "overlapped": sum(1 for o in outcomes if o.overlapped),
        "held": {"requests": len(held), "max_s": round(max(held), 3) if held else 0.0},
        "driver_lag_max_s": round(max((o.lag for o in outcomes), default=0.0), 4),
    }


# ------------------------------------------------------------------------------ tables


def secs(x: float | None) -> str:
    if x is None:
        return "-"
    if x < 0.1:
        return f"{x * 1000:.0f} ms"
    return f"{x:.2f} s" if x < 10 else f"{x:.1f} s"


def _pair(d: dict[str, Any]) -> str:
    return f"{secs(d.get('p50'))} / {secs(d.get('p99'))}"


def main_table(results: dict[str, dict[str, Any]]) -> list[str]:
    evict = any(f.get("evictions") is not None for f in results.values())
    head = ["target", "TTFT p50", "TTFT p90", "TTFT p99", "total p50", "total p99", "errors", "model loads"]
    head += ["evictions"] if evict else []
    head += ["first turns TTFT p50 / p99", "continued TTFT p50 / p99", "early / held turns", "proxy CPU"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, f in results.items():
        t = f["ttft"]
        row = [name, secs(t["p50"]), secs(t["p90"]), secs(t["p99"]), secs(f["total"]["p50"]),
               secs(f["total"]["p99"]), str(f["errors"]), "-" if f["model_loads"] is None else str(f["model_loads"])]
        if evict:
            row.append("-" if f.get("evictions") is None else str(f["evictions"]))
        row += [_pair(f["first_turns"]["ttft"]), _pair(f["continued_turns"]["ttft"]), f"{f['overlapped']} / {f['held']['requests']}",
                f"{f['proxy_cpu_s']:.1f} s" if f.get("proxy_cpu_s") is not None else "-"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def model_table(results: dict[str, dict[str, Any]], models: Sequence[str]) -> list[str]:
    names = list(results)
    head = ["model", "requests"] + [f"{n} TTFT p50 / p99" for n in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in models:
        first = next(iter(results.values()))
        n = first["per_model"].get(m, {}).get("requests", 0)
        row = [m, str(n)] + [_pair(results[t]["per_model"].get(m, {}).get("ttft", {})) for t in names]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def spread_table(results: dict[str, dict[str, Any]], host_ids: Sequence[str]) -> list[str]:
    head = ["target"] + [f"{h} served / loads" for h in host_ids]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, f in results.items():
        row = [name] + [f"{f['served_per_host'].get(h, 0)} / {f['model_loads_per_host'].get(h) if f['model_loads_per_host'].get(h) is not None else '-'}"
                        for h in host_ids]
        lines.append("| " + " | ".join(row) + " |")
    return lines
