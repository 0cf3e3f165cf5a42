"""Aggregate the raw measurements of tools/bench_gateway.sh into the final table and JSON.

    python aggregate.py table RAW.jsonl [--json OUT.json]
    python aggregate.py profile PYSPY_RAW.txt [--top 10]

``table``: RAW.jsonl has one JSON object per measurement (written by the shell script):

* ``{"kind": "meta", ...}``                                 machine, options
* ``{"kind": "wrk", "rep", "target", "test", "wrk": {...}, "proxy_cpu_ticks", "hz"}``
  test is ``c64`` (non-streaming, 64 connections), ``c1``, ``c16`` (latency runs) or
  ``s64`` (streaming, 64 connections); ``wrk`` is report.lua's JSON.
* ``{"kind": "mem", "target", "result": {...}}``              memprobe.py's JSON
* ``{"kind": "scaling", "rep", "workers", "wrk": {...}, "cpu_ticks", "hz"}``

Each figure is the median over the reps (reps interleave the targets).  Ratios compare
against nginx measured in the same run.

``profile``: reads py-spy's ``--format raw`` output (collapsed stacks: ``frame;frame;... N``)
and prints the top functions (line numbers folded) by own samples and by inclusive samples.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import Counter, defaultdict
from typing import Any

TARGETS = ("direct", "ollamamax", "nginx", "aiohttp", "baseline", "redis")
GOALS = {
    "throughput_x_nginx": 0.15,
    "throughput_x_nginx_stretch": 0.25,
    "added_p50_us_c1": 150.0,
    "added_p99_us_c1": 1000.0,
    "stream_per_core_x_nginx": 0.6,
    "idle_conn_kib": 20.0,
    "stream_kib": 64.0,
}


def _median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _fmt(x: float | None, spec: str = ".0f", unit: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{unit}"


def _errors(w: dict[str, Any]) -> int:
    return sum(w["errors"].values()) + int(w.get("bad", 0))


def derive(rows: list[dict[str, Any]]) -> dict[str, Any]:
    per: dict[str, dict[str, list[float | None]]] = defaultdict(lambda: defaultdict(list))
    errors: Counter[str] = Counter()
    lines_per_resp: dict[str, set[int]] = defaultdict(set)
    for r in rows:
        if r.get("kind") != "wrk":
            continue
        t, test, w = r["target"], r["test"], r["wrk"]
        secs = w["duration_us"] / 1e6
        cpu_s = r["proxy_cpu_ticks"] / r["hz"] if r.get("proxy_cpu_ticks") is not None else None
        errors[t] += _errors(w)
        m = per[t]
        if test == "c64":
            m["rps_c64"].append(w["requests"] / secs)
            m["cpu_us_per_req"].append(cpu_s * 1e6 / w["requests"] if cpu_s is not None and w["requests"] else None)
            m["p50_us_c64"].append(w["lat_us"]["p50"])
            m["p99_us_c64"].append(w["lat_us"]["p99"])
        elif test in ("c1", "c16"):
            m[f"p50_us_{test}"].append(w["lat_us"]["p50"])
            m[f"p99_us_{test}"].append(w["lat_us"]["p99"])
            m[f"rps_{test}"].append(w["requests"] / secs)
        elif test == "s64":
            m["chunks_per_s"].append(w["lines"] / secs)
            m["stream_rps"].append(w["responses"] / secs)
            m["chunks_per_cpu_core_s"].append(w["lines"] / cpu_s if cpu_s else None)
            m["cpu_us_per_chunk"].append(cpu_s * 1e6 / w["lines"] if cpu_s is not None and w["lines"] else None)
            lines_per_resp[t].update({w["min_lines"], w["max_lines"]})
    med = {t: {k: _median(v) for k, v in per[t].items()} for t in per}
    for t, m in med.items():
        m["errors"] = errors[t]
        m["reps"] = max((len(v) for v in per[t].values()), default=0)
        if lines_per_resp.get(t):
            m["lines_per_stream_min_max"] = [min(lines_per_resp[t]), max(lines_per_resp[t])]
    return med


def ratios(med: dict[str, Any], target: str) -> dict[str, float | None]:
    m, n, d = med.get(target, {}), med.get("nginx", {}), med.get("direct", {})

    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    def sub(a: float | None, b: float | None) -> float | None:
        return a - b if a is not None and b is not None else None

    return {
        "throughput_x_nginx": div(m.get("rps_c64"), n.get("rps_c64")),
        "cpu_per_req_x_nginx": div(m.get("cpu_us_per_req"), n.get("cpu_us_per_req")),
        "req_per_cpu_s_x_nginx": div(n.get("cpu_us_per_req"), m.get("cpu_us_per_req")),
        "added_p50_us_c1": sub(m.get("p50_us_c1"), d.get("p50_us_c1")),
        "added_p99_us_c1": sub(m.get("p99_us_c1"), d.get("p99_us_c1")),
        "added_p50_us_c16": sub(m.get("p50_us_c16"), d.get("p50_us_c16")),
        "stream_chunks_x_nginx": div(m.get("chunks_per_s"), n.get("chunks_per_s")),
        "stream_per_core_x_nginx": div(m.get("chunks_per_cpu_core_s"), n.get("chunks_per_cpu_core_s")),
    }


def goals(r: dict[str, float | None], mem: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    def ge(x: float | None, g: float) -> bool | None:
        return None if x is None else x >= g

    def le(x: float | None, g: float) -> bool | None:
        return None if x is None else x <= g

    idle = (mem.get("idle") or {}).get("kib_per_conn")
    stream = (mem.get("streams") or {}).get("kib_per_stream")
    tx = r.get("throughput_x_nginx")
    return [
        ("non-streaming throughput vs nginx", _fmt(tx, ".3f", "x"), ">= 0.15x", ge(tx, GOALS["throughput_x_nginx"])),
        ("  stretch", _fmt(tx, ".3f", "x"), ">= 0.25x", ge(tx, GOALS["throughput_x_nginx_stretch"])),
        ("added p50 at 1 connection over direct", _fmt(r.get("added_p50_us_c1"), ".0f", " us"), "<= 150 us",
         le(r.get("added_p50_us_c1"), GOALS["added_p50_us_c1"])),
        ("added p99 at 1 connection over direct", _fmt(r.get("added_p99_us_c1"), ".0f", " us"), "<= 1000 us",
         # a negative difference means direct's own tail was noisier (other load on the
         # machine): the comparison says nothing then
         None if (r.get("added_p99_us_c1") or 0) < 0 else le(r.get("added_p99_us_c1"), GOALS["added_p99_us_c1"])),
        ("streaming chunks/s per proxy core vs nginx", _fmt(r.get("stream_per_core_x_nginx"), ".3f", "x"),
         ">= 0.6x", ge(r.get("stream_per_core_x_nginx"), GOALS["stream_per_core_x_nginx"])),
        ("RSS per idle keep-alive upstream connection", _fmt(idle, ".1f", " KiB"), "<= 20 KiB",
         le(idle, GOALS["idle_conn_kib"])),
        ("RSS per in-flight stream", _fmt(stream, ".1f", " KiB"), "<= 64 KiB", le(stream, GOALS["stream_kib"])),
    ]


def scaling(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    by: dict[int, list[float]] = defaultdict(list)
    cpu: dict[int, list[float | None]] = defaultdict(list)
    errs = 0
    for r in rows:
        if r.get("kind") != "scaling":
            continue
        w = r["wrk"]
        secs = w["duration_us"] / 1e6
        by[r["workers"]].append(w["requests"] / secs)
        cpu[r["workers"]].append(r["cpu_ticks"] / r["hz"] * 1e6 / w["requests"] if w["requests"] else None)
        errs += _errors(w)
    if not by:
        return None
    out: dict[str, Any] = {f"rps_workers_{k}": _median(v) for k, v in sorted(by.items())}
    out.update({f"cpu_us_per_req_workers_{k}": _median(v) for k, v in sorted(cpu.items())})
    a, b = out.get("rps_workers_1"), out.get("rps_workers_2")
    out["ratio_2_over_1"] = b / a if a and b else None
    out["errors"] = errs
    return out


def table(path: str, json_out: str | None) -> int:
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    meta = next((r for r in rows if r.get("kind") == "meta"), {})
    med = derive(rows)
    mem = {r["result"]["mode"]: r["result"] for r in rows if r.get("kind") == "mem" and r.get("target") == "ollamamax"}
    out: dict[str, Any] = {"meta": meta, "targets": med, "ratios": {}, "memory": mem}
    p = print
    if med:
        p("")
        p(f"== gateway overhead: medians of {meta.get('reps', '?')} interleaved reps, {meta.get('duration', '?')} s "
          f"per measurement, backend {meta.get('backend', '?')} ==")
        hdr = (f"{'target':<10} {'req/s@64':>9} {'CPU us/req':>10} {'p50@1':>7} {'p99@1':>7} {'p50@16':>7} "
               f"{'p99@16':>7} {'chunks/s':>9} {'chunks/CPU-s':>12} {'errors':>6}")
        p(hdr)
        p("-" * len(hdr))
        for t in TARGETS:
            if t not in med:
                continue
            m = med[t]
            p(f"{t:<10} {_fmt(m.get('rps_c64')):>9} {_fmt(m.get('cpu_us_per_req'), '.1f'):>10} "
              f"{_fmt(m.get('p50_us_c1')):>7} {_fmt(m.get('p99_us_c1')):>7} {_fmt(m.get('p50_us_c16')):>7} "
              f"{_fmt(m.get('p99_us_c16')):>7} {_fmt(m.get('chunks_per_s')):>9} "
              f"{_fmt(m.get('chunks_per_cpu_core_s')):>12} {m.get('errors', 0):>6}")
        p("latencies in us (wrk, exact percentiles); CPU = proxy process(es) utime+stime over the run / requests;")
        p("chunks = NDJSON lines counted in every streamed response; chunks/CPU-s = chunks per second of proxy CPU")
        p("(= per core).  direct = wrk straight to backend 1 (no proxy, so no proxy CPU).")
        lpr = {t: med[t].get("lines_per_stream_min_max") for t in med if med[t].get("lines_per_stream_min_max")}
        if lpr:
            p("lines per streamed response (min,max): " + ", ".join(f"{t} {v[0]},{v[1]}" for t, v in lpr.items()))
        p("")
        p("ratios vs nginx (same run):")
        for t in ("ollamamax", "aiohttp", "baseline"):
            if t not in med:
                continue
            r = ratios(med, t)
            out["ratios"][t] = r
            p(f"  {t:<10} throughput {_fmt(r['throughput_x_nginx'], '.3f')}x nginx; CPU/req "
              f"{_fmt(r['cpu_per_req_x_nginx'], '.1f')}x nginx; added p50@1 {_fmt(r['added_p50_us_c1'])} us, "
              f"p99@1 {_fmt(r['added_p99_us_c1'])} us, p50@16 {_fmt(r['added_p50_us_c16'])} us over direct; "
              f"stream chunks/s {_fmt(r['stream_chunks_x_nginx'], '.3f')}x, per proxy core "
              f"{_fmt(r['stream_per_core_x_nginx'], '.3f')}x nginx")
        if "nginx" in med:
            r = ratios(med, "nginx")
            p(f"  {'nginx':<10} added p50@1 {_fmt(r['added_p50_us_c1'])} us, p99@1 {_fmt(r['added_p99_us_c1'])} us "
              f"over direct")
        if "baseline" in med and "ollamamax" in med:
            o, b = med["ollamamax"], med["baseline"]

            def rel(key: str) -> str:
                x, y = o.get(key), b.get(key)
                return f"{x / y:.3f}x" if x and y else "-"

            p(f"ollamamax vs baseline (--baseline, same run): CPU/req {rel('cpu_us_per_req')}, "
              f"stream chunks per proxy CPU-s {rel('chunks_per_cpu_core_s')}, req/s@64 {rel('rps_c64')}")
        if "redis" in med and "ollamamax" in med:
            o, rd = med["ollamamax"], med["redis"]
            cpu_o, cpu_r = o.get("cpu_us_per_req"), rd.get("cpu_us_per_req")
            added = f"{cpu_r - cpu_o:+.1f} us ({cpu_r / cpu_o:.3f}x)" if cpu_o and cpu_r else "-"
            p(f"with --redis vs without (same run): CPU/req {added}; added p50@1 "
              f"{_fmt((rd.get('p50_us_c1') or 0) - (o.get('p50_us_c1') or 0))} us")
    if mem:
        p("")
        p("memory (ollamamax, RSS of the gateway process):")
        i, s = mem.get("idle"), mem.get("streams")
        if i:
            p(f"  idle keep-alive upstream connections: {i['upstream_conns_after'] - i['upstream_conns_before']} "
              f"opened, RSS {i['rss0_kib']} -> {i['rss1_kib']} KiB = {_fmt(i['kib_per_conn'], '.1f')} KiB each")
        if s:
            p(f"  in-flight streams: {s['n']} held ({s['upstream_conns_during']} upstream connections), RSS "
              f"{s['rss0_kib']} -> {s['rss1_kib']} KiB = {_fmt(s['kib_per_stream'], '.1f')} KiB each")
    if "ollamamax" in med or mem:
        p("")
        p("goals (ollamamax):")
        g = goals(out["ratios"].get("ollamamax", {}), mem)
        out["goals"] = [{"goal": n, "value": v, "target": tgt, "met": ok} for n, v, tgt, ok in g]
        for n, v, tgt, ok in g:
            status = ("n/a" if v == "-" else "n/a (direct's tail noisier: rerun on a quiet machine)") if ok is None \
                else ("met" if ok else "MISSED")
            p(f"  {n:<46} {v:>12}  (goal {tgt:<10}) {status}")
        eff = out["ratios"].get("ollamamax", {}).get("req_per_cpu_s_x_nginx")
        if eff is not None:
            p(f"  (for reading the throughput ratio: requests per proxy CPU-second are {eff:.3f}x nginx's; when the")
            p("   backends' core is saturated, nginx's wall-clock req/s is capped by it and the wall ratio flatters)")
    sc = scaling(rows)
    if sc:
        out["workers_scaling"] = sc
        p("")
        p(f"--workers scaling (NOT pinned: backends, wrk and the workers share all {meta.get('cpus', '?')} cores; "
          f"medians of {meta.get('reps', '?')} reps):")
        p(f"  --workers 1: {_fmt(sc.get('rps_workers_1'))} req/s ({_fmt(sc.get('cpu_us_per_req_workers_1'), '.1f')} "
          f"CPU us/req); --workers 2: {_fmt(sc.get('rps_workers_2'))} req/s "
          f"({_fmt(sc.get('cpu_us_per_req_workers_2'), '.1f')} CPU us/req); ratio {_fmt(sc.get('ratio_2_over_1'), '.2f')}x"
          f"; errors {sc['errors']}")
    if json_out:
        with open(json_out, "w") as f:
            json.dump(out, f, indent=2, sort_keys=True)
            f.write("\n")
        p(f"\nJSON written to {json_out}")
    return 0


_LINE = re.compile(r":\d+\)$")


def _func(frame: str) -> str:
    """``name (file.py:123)`` -> ``name (file.py)``: one entry per function, not per line."""
    return _LINE.sub(")", frame.strip())


def profile(path: str, top: int) -> int:
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    with open(path) as fh:
        lines = fh.read().splitlines()
    for line in lines:
        if not line:
            continue
        stack, _, n = line.rpartition(" ")
        try:
            count = int(n)
        except ValueError:
            continue
        frames = [_func(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    if not total:
        print("profile: no samples", file=sys.stderr)
        return 1
    print(f"py-spy: {total} samples")
    print(f"top {top} by own time (the frame on top of the stack):")
    for f, c in own.most_common(top):
        print(f"  {100.0 * c / total:5.1f}%  {f}")
    files: Counter[str] = Counter()
    for f, c in own.items():
        files[f.rpartition(" (")[2].rstrip(")") or f] += c
    print("own time by file: " + ", ".join(f"{f} {100.0 * c / total:.0f}%" for f, c in files.most_common(8)))
    print(f"top {top} by inclusive time (frame anywhere on the stack; outer frames omitted when >= 90%):")
    shown = 0
    for f, c in incl.most_common():
        if c >= 0.9 * total:
            continue
        print(f"  {100.0 * c / total:5.1f}%  {f}")
        shown += 1
        if shown >= top:
            break
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table")
    t.add_argument("raw")
    t.add_argument("--json", default=None)
    pr = sub.add_parser("profile")
    pr.add_argument("raw")
    pr.add_argument("--top", type=int, default=10)
    a = ap.parse_args()
    if a.cmd == "table":
        return table(a.raw, a.json)
    return profile(a.raw, a.top)


if __name__ == "__main__":
    raise SystemExit(main())
