"""The ``/ollamamax/`` status page: one self-contained HTML document (inline CSS and JS).

It shows the status document (``Dispatcher.status()``, built by ``dispatch.status``, plus
the GC pause summary and the HTTP server's counters that ``metrics.Observability`` adds);
``GET /ollamamax/status`` serves that document as JSON.  :func:`render_status_page` renders the whole page on the server, so it shows real data
without JavaScript (and refreshes with ``<meta http-equiv=refresh>`` then); with
JavaScript it fetches ``status`` (relative, so the page works under a mount prefix) every
``refresh_seconds`` and redraws the same markup.  No external assets, and the
Content-Security-Policy in :data:`PAGE_HEADERS` forbids loading any.
"""

from __future__ import annotations

import html
import time
from typing import Any

__all__ = ["PAGE_HEADERS", "render_status_page"]

PAGE_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'"
    ),
}


# -- server-side rendering (mirrors render() in the page's script) ---------------------------
def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _ms(v: Any) -> str:
    if v is None:
        return "–"
    v = float(v)
    if v >= 1000:
        return f"{v / 1000:.2f} s"
    if v >= 100:
        return f"{v:.0f} ms"
    if v >= 10:
        return f"{v:.1f} ms"
    return f"{v:.2f} ms"


def _health(h: dict[str, Any]) -> tuple[str, str]:
    if not h.get("healthy"):
        return "bad", "ejected"
    if h.get("error"):
        return "warn", "degraded"
    return "ok", "healthy"


def _host_row(h: dict[str, Any]) -> str:
    cls, label = _health(h)
    cap = max(int(h.get("capacity") or 0), 1)
    infl = int(h.get("in_flight") or 0)
    pct = min(100, round(100 * infl / cap))
    chips = "".join(_chip(m, r) for m, r in _models(h)) or '<span class="none">no models</span>'
    err = f'<div class="err" title="{_e(h["error"])}">{_e(h["error"])}</div>' if h.get("error") else ""
    req = h.get("requests") or {}
    ttfb = h.get("ttfb") or {}
    total = h.get("total") or {}
    errors = int(req.get("errors") or 0)
    errs = f' <span class="errn">/ {errors} err</span>' if errors else ""
    return (
        f'<tr data-host="{_e(h.get("name"))}">'
        f'<td><div class="name">{_e(h.get("name"))}</div><div class="sub">{_e(h.get("url", ""))}</div></td>'
        f'<td><span class="badge {cls}">{label}</span>{err}</td>'
        f'<td><div class="load"><div class="bar"><span class="{"full" if infl >= cap else ""}" '
        f'style="width:{pct}%"></span></div><span class="num">{infl} / {cap}</span></div></td>'
        f'<td class="r">{_ms(ttfb.get("p50_ms"))}</td><td class="r">{_ms(ttfb.get("p99_ms"))}</td>'
        f'<td class="r">{_ms(total.get("p99_ms"))}</td>'
        f'<td class="r">{int(req.get("ok") or 0)}{errs}</td>'
        f'<td class="models">{chips}</td></tr>'
    )


def _models(h: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
    """Every model of a host, with its resident entry (state, slots) when it holds it."""
    res: dict[str, dict[str, Any]] = {str(r.get("model")): r for r in h.get("residents") or ()
                                      if isinstance(r, dict)}
    for m in h.get("loaded") or ():
        res.setdefault(m, {"model": m, "state": "loaded"})
    return [(m, res.get(m)) for m in sorted(set(h.get("models") or ()) | set(res))]


def _chip(m: str, r: dict[str, Any] | None) -> str:
    """A model chip: present, or resident (loaded with its slots in use, loading with its
    progress, unloading)."""
    if r is None:
        return f'<span class="chip" title="present">{_e(m)}</span>'
    state = str(r.get("state") or "loaded")
    extra = ""
    if state == "loaded" and r.get("slots"):
        extra = f' <b title="slots in use">{int(r.get("in_flight") or 0)}/{int(r["slots"])}</b>'
    elif state == "loading":
        extra = f" <b>{round(100 * float(r.get('progress') or 0))}%</b>"
    return f'<span class="chip {_e(state)}" title="{_e(state)}">{_e(m)}{extra}</span>'


def _scheduler(st: dict[str, Any]) -> str:
    """The fleet scheduler's card: the queue per model and the last decisions."""
    q = (st.get("queue") or {}).get("by_model") or {}
    waits = "".join(
        f'<span class="chip loading">{_e(m)} <b>{int(v.get("waiting") or 0)} waiting, '
        f'oldest {float(v.get("oldest_s") or 0):.1f} s</b></span>'
        for m, v in sorted(q.items()) if isinstance(v, dict)) or '<span class="none">no request waits</span>'
    sched = st.get("scheduler") or {}
    rows = "".join(
        f'<tr><td>{_e(_clock(d.get("at")))}</td><td>{_e(d.get("host"))}</td><td>{_e(d.get("model"))}</td>'
        f'<td>{_e(d.get("reason"))}</td></tr>'
        for d in (sched.get("decisions") or ())[:10] if isinstance(d, dict)
    ) or '<tr><td colspan="4" class="none">no load decided yet</td></tr>'
    counts = " · ".join(f"{k.replace('_', ' ')} <b>{int(sched.get(k) or 0)}</b>"
                        for k in ("loads", "preloads", "evictions", "failed_loads", "switches_deferred"))
    sh = st.get("shared")
    shared = ""
    if isinstance(sh, dict):  # several gateways through Redis
        claims = sh.get("claims") or {}
        shared = (f'<div class="sub">replicas · Redis <b>{_e(sh.get("state"))}</b> · '
                  f'{int(sh.get("peers") or 0)} other replica(s) · loads claimed <b>{int(claims.get("won") or 0)}</b>'
                  f' · joined <b>{int(claims.get("joined") or 0)}</b>'
                  + (f' · {_e(sh.get("last_error"))}' if sh.get("state") != "up" and sh.get("last_error") else "")
                  + "</div>")
    return (f'{shared}<div class="sub">waiting per model</div><div class="models">{waits}</div>'
            f'<div class="sub">last load decisions · {counts}</div>'
            f'<table><thead><tr><th>At</th><th>Host</th><th>Model</th><th>Why</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>")


def _tiles(st: dict[str, Any]) -> str:
    hosts = st.get("hosts") or []
    healthy = sum(1 for h in hosts if h.get("healthy"))
    infl = sum(int(h.get("in_flight") or 0) for h in hosts)
    cap = sum(int(h.get("capacity") or 0) for h in hosts)
    q = st.get("queue") or {}
    ok = sum(int((h.get("requests") or {}).get("ok") or 0) for h in hosts)
    errs = sum(int((h.get("requests") or {}).get("errors") or 0) for h in hosts)
    cache = st.get("cache") or {}
    hits, misses = int(cache.get("hits") or 0), int(cache.get("misses") or 0)
    rate = f"{100 * hits / (hits + misses):.0f}%" if hits + misses else "–"
    gc = st.get("gc")
    tiles = [
        ("Hosts healthy", f"{healthy} / {len(hosts)}", "bad" if healthy < len(hosts) else ""),
        ("In flight", f"{infl} / {cap}", ""),
        ("Queued", f"{int(q.get('depth') or 0)} / {int(q.get('size') or 0)}", ""),
        ("Requests", f"{ok}", ""),
        ("Errors", f"{errs}", "bad" if errs else ""),
        ("Cache hit rate", f"{rate}", ""),
        ("GC pause p99", _ms(gc.get("p99_ms")) if gc and gc.get("count") else "–", ""),
    ]
    http = st.get("http")
    if http:  # served by `ollamamax serve`: its HTTP server's client connections
        tiles.append(("Client connections", f"{int(http.get('open_connections') or 0)}", ""))
    return "".join(
        f'<div class="tile {cls}"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div></div>'
        for k, v, cls in tiles
    )


def _footer(st: dict[str, Any]) -> str:
    return (f'strategy <b>{_e(st.get("strategy", ""))}</b> · ollamamax {_e(st.get("version", ""))} · '
            f'retries {int(st.get("retries") or 0)}')


def _clock(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else ""


def render_status_page(status: dict[str, Any], *, refresh_seconds: float = 2.0) -> str:
    """The complete HTML page for ``status`` (``Observability.status()``)."""
    rows = "".join(_host_row(h) for h in status.get("hosts") or ())
    repl = {
        "{{REFRESH_MS}}": str(int(refresh_seconds * 1000)),
        "{{META_REFRESH}}": str(max(1, round(refresh_seconds * 2.5))),
        "{{TILES}}": _tiles(status),
        "{{ROWS}}": rows or '<tr><td colspan="8" class="none">no hosts configured</td></tr>',
        "{{FOOTER}}": _footer(status),
        "{{SCHEDULER}}": _scheduler(status),
        "{{UPDATED}}": _e(_clock(status.get("generated_at"))),
    }
    out = PAGE_TEMPLATE
    for k, v in repl.items():
        out = out.replace(k, v)
    return out


PAGE_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ollamamax · status</title>
<noscript><meta http-equiv="refresh" content="{{META_REFRESH}}"></noscript>
<style>
:root{--bg:#f6f7f9;--card:#fff;--ink:#1d2430;--mute:#6b7484;--line:#e3e6eb;--ok:#1f9d55;
--okbg:#e4f6ec;--bad:#d64545;--badbg:#fdeaea;--warn:#b7791f;--warnbg:#fdf3e1;--acc:#3467d6}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header{display:flex;align-items:center;justify-content:space-between;padding:18px 28px;
background:var(--card);border-bottom:1px solid var(--line)}
h1{margin:0;font-size:20px;font-weight:650;letter-spacing:-.01em}
h1 small{font-weight:400;color:var(--mute);font-size:14px;margin-left:8px}
.live{color:var(--mute);font-size:13px;display:flex;align-items:center;gap:8px}
.dot{width:9px;height:9px;border-radius:50%;background:#b8bec9;display:inline-block}
.dot.on{background:var(--ok)}.dot.stale{background:var(--bad)}
main{padding:22px 28px;max-width:1400px}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(140px,1fr));gap:12px;margin-bottom:22px}
.tile{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px}
.tile .k{color:var(--mute);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.tile .v{font-size:22px;font-weight:600;margin-top:2px;font-variant-numeric:tabular-nums}
.tile.bad .v{color:var(--bad)}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;overflow:hidden}
table{width:100%;border-collapse:collapse}
th{text-align:left;font-size:12px;font-weight:600;color:var(--mute);text-transform:uppercase;
letter-spacing:.04em;padding:10px 14px;border-bottom:1px solid var(--line);background:#fafbfc}
td{padding:12px 14px;border-bottom:1px solid var(--line);vertical-align:top}
tr:last-child td{border-bottom:0}
.r,th.r{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.name{font-weight:600}.sub{color:var(--mute);font-size:12px}
.badge{display:inline-block;padding:2px 9px;border-radius:999px;font-size:12px;font-weight:600}
.badge.ok{color:var(--ok);background:var(--okbg)}.badge.bad{color:var(--bad);background:var(--badbg)}
.badge.warn{color:var(--warn);background:var(--warnbg)}
.err{color:var(--bad);font-size:12px;margin-top:4px;max-width:260px;word-break:break-word;
display:-webkit-box;-webkit-line-clamp:2;-webkit-box-orient:vertical;overflow:hidden}
.load{display:flex;align-items:center;gap:10px;min-width:150px}
.bar{flex:1;height:8px;background:#edf0f4;border-radius:4px;overflow:hidden;min-width:80px}
.bar span{display:block;height:100%;background:var(--acc);border-radius:4px}
.bar span.full{background:var(--warn)}
.num{font-variant-numeric:tabular-nums;white-space:nowrap;color:var(--mute)}
.errn{color:var(--bad)}
.models{max-width:420px}
.chip{display:inline-block;margin:0 6px 6px 0;padding:1px 8px;border-radius:6px;font-size:12px;
border:1px solid var(--line);color:var(--mute);background:#fff;font-family:ui-monospace,Menlo,Consolas,monospace}
.chip.loaded{border-color:#b9e3c9;background:var(--okbg);color:#17683b}
.chip.loaded::before{content:"\\25CF  ";font-size:9px;vertical-align:1px}
.chip.loading{border-color:#f0d9a8;background:var(--warnbg);color:var(--warn)}
.chip.unloading{color:var(--mute);text-decoration:line-through}
.card.sched{margin-top:14px;padding:10px 14px}
.card.sched .sub{margin:6px 0 4px}
.none{color:var(--mute)}
footer{color:var(--mute);font-size:12px;margin-top:14px}
footer a{color:var(--acc)}
</style>
</head>
<body>
<header>
<h1>ollamamax<small>gateway status</small></h1>
<div class="live"><span class="dot" id="dot"></span><span id="updated">updated {{UPDATED}}</span></div>
</header>
<main>
<section class="tiles" id="tiles">{{TILES}}</section>
<div class="card">
<table>
<thead><tr><th>Host</th><th>Health</th><th>In flight</th><th class="r">TTFB p50</th><th class="r">TTFB p99</th>
<th class="r">Total p99</th><th class="r">Requests</th><th>Models (&#9679; loaded)</th></tr></thead>
<tbody id="hosts">{{ROWS}}</tbody>
</table>
</div>
<div class="card sched" id="sched">{{SCHEDULER}}</div>
<footer><span id="foot">{{FOOTER}}</span> · <a href="status">status JSON</a> ·
<a href="../metrics">metrics</a> · <span id="mode">refreshes every {{META_REFRESH}} s (no JavaScript)</span></footer>
</main>
<script>
(function () {
  "use strict";
  var REFRESH = {{REFRESH_MS}};
  function e(x) {
    return String(x).replace(/[&<>"']/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;"}[c];
    });
  }
  function ms(v) {
    if (v === null || v === undefined) return "\\u2013";
    v = Number(v);
    if (v >= 1000) return (v / 1000).toFixed(2) + " s";
    if (v >= 100) return v.toFixed(0) + " ms";
    if (v >= 10) return v.toFixed(1) + " ms";
    return v.toFixed(2) + " ms";
  }
  function health(h) {
    if (!h.healthy) return ["bad", "ejected"];
    if (h.error) return ["warn", "degraded"];
    return ["ok", "healthy"];
  }
  function row(h) {
    var hc = health(h), cap = Math.max(h.capacity || 0, 1), infl = h.in_flight || 0;
    var pct = Math.min(100, Math.round(100 * infl / cap));
    var res = {}, all = {};
    (h.residents || []).forEach(function (r) { res[r.model] = r; all[r.model] = 1; });
    (h.loaded || []).forEach(function (m) { if (!res[m]) res[m] = {model: m, state: "loaded"}; all[m] = 1; });
    (h.models || []).forEach(function (m) { all[m] = 1; });
    var chips = Object.keys(all).sort().map(function (m) { return chip(m, res[m]); }).join("") ||
      '<span class="none">no models</span>';
    var req = h.requests || {}, ttfb = h.ttfb || {}, total = h.total || {}, errs = req.errors || 0;
    return '<tr data-host="' + e(h.name) + '">' +
      '<td><div class="name">' + e(h.name) + '</div><div class="sub">' + e(h.url || "") + "</div></td>" +
      '<td><span class="badge ' + hc[0] + '">' + hc[1] + "</span>" +
      (h.error ? '<div class="err" title="' + e(h.error) + '">' + e(h.error) + "</div>" : "") + "</td>" +
      '<td><div class="load"><div class="bar"><span class="' + (infl >= cap ? "full" : "") +
      '" style="width:' + pct + '%"></span></div><span class="num">' + infl + " / " + cap + "</span></div></td>" +
      '<td class="r">' + ms(ttfb.p50_ms) + '</td><td class="r">' + ms(ttfb.p99_ms) + "</td>" +
      '<td class="r">' + ms(total.p99_ms) + "</td>" +
      '<td class="r">' + (req.ok || 0) + (errs ? ' <span class="errn">/ ' + errs + " err</span>" : "") + "</td>" +
      '<td class="models">' + chips + "</td></tr>";
  }
  function chip(m, r) {
    if (!r) return '<span class="chip" title="present">' + e(m) + "</span>";
    var st = r.state || "loaded", extra = "";
    if (st === "loaded" && r.slots) extra = ' <b title="slots in use">' + (r.in_flight || 0) + "/" + r.slots + "</b>";
    else if (st === "loading") extra = " <b>" + Math.round(100 * (r.progress || 0)) + "%</b>";
    return '<span class="chip ' + e(st) + '" title="' + e(st) + '">' + e(m) + extra + "</span>";
  }
  function sched(st) {
    var q = (st.queue || {}).by_model || {}, s = st.scheduler || {};
    var waits = Object.keys(q).sort().map(function (m) {
      return '<span class="chip loading">' + e(m) + " <b>" + (q[m].waiting || 0) + " waiting, oldest " +
        Number(q[m].oldest_s || 0).toFixed(1) + " s</b></span>";
    }).join("") || '<span class="none">no request waits</span>';
    var rows = (s.decisions || []).slice(0, 10).map(function (d) {
      return "<tr><td>" + e(clock(d.at)) + "</td><td>" + e(d.host) + "</td><td>" + e(d.model) + "</td><td>" +
        e(d.reason) + "</td></tr>";
    }).join("") || '<tr><td colspan="4" class="none">no load decided yet</td></tr>';
    var counts = ["loads", "preloads", "evictions", "failed_loads", "switches_deferred"].map(function (k) {
      return k.replace("_", " ") + " <b>" + (s[k] || 0) + "</b>";
    }).join(" \u00b7 ");
    var sh = st.shared, shared = "";
    if (sh) {
      var c = sh.claims || {};
      shared = '<div class="sub">replicas \u00b7 Redis <b>' + e(sh.state) + "</b> \u00b7 " + (sh.peers || 0) +
        " other replica(s) \u00b7 loads claimed <b>" + (c.won || 0) + "</b> \u00b7 joined <b>" + (c.joined || 0) + "</b>" +
        (sh.state !== "up" && sh.last_error ? " \u00b7 " + e(sh.last_error) : "") + "</div>";
    }
    return shared + '<div class="sub">waiting per model</div><div class="models">' + waits + "</div>" +
      '<div class="sub">last load decisions \u00b7 ' + counts + "</div>" +
      "<table><thead><tr><th>At</th><th>Host</th><th>Model</th><th>Why</th></tr></thead><tbody>" + rows +
      "</tbody></table>";
  }
  function tiles(st) {
    var hosts = st.hosts || [], healthy = 0, infl = 0, cap = 0, ok = 0, errs = 0;
    hosts.forEach(function (h) {
      if (h.healthy) healthy++;
      infl += h.in_flight || 0; cap += h.capacity || 0;
      ok += (h.requests || {}).ok || 0; errs += (h.requests || {}).errors || 0;
    });
    var q = st.queue || {}, c = st.cache || {}, hits = c.hits || 0, misses = c.misses || 0;
    var rate = hits + misses ? Math.round(100 * hits / (hits + misses)) + "%" : "\\u2013";
    var gc = st.gc && st.gc.count ? ms(st.gc.p99_ms) : "\\u2013";
    var t = [["Hosts healthy", healthy + " / " + hosts.length, healthy < hosts.length ? "bad" : ""],
             ["In flight", infl + " / " + cap, ""], ["Queued", (q.depth || 0) + " / " + (q.size || 0), ""],
             ["Requests", String(ok), ""], ["Errors", String(errs), errs ? "bad" : ""],
             ["Cache hit rate", rate, ""], ["GC pause p99", gc, ""]];
    if (st.http) t.push(["Client connections", String(st.http.open_connections || 0), ""]);
    return t.map(function (x) {
      return '<div class="tile ' + x[2] + '"><div class="k">' + e(x[0]) + '</div><div class="v">' + e(x[1]) +
        "</div></div>";
    }).join("");
  }
  function clock(ts) {
    var d = new Date(ts * 1000);
    function p(n) { return (n < 10 ? "0" : "") + n; }
    return p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
  }
  function render(st) {
    document.getElementById("tiles").innerHTML = tiles(st);
    document.getElementById("sched").innerHTML = sched(st);
    var rows = (st.hosts || []).map(row).join("");
    document.getElementById("hosts").innerHTML =
      rows || '<tr><td colspan="8" class="none">no hosts configured</td></tr>';
    document.getElementById("foot").innerHTML = "strategy <b>" + e(st.strategy || "") + "</b> \\u00b7 ollamamax " +
      e(st.version || "") + " \\u00b7 retries " + (st.retries || 0);
    document.getElementById("updated").textContent = "updated " + clock(st.generated_at);
    document.documentElement.setAttribute("data-rendered", "js");
  }
  var dot = document.getElementById("dot");
  document.getElementById("mode").textContent = "live, every " + (REFRESH / 1000) + " s";
  function tick() {
    fetch("status", {cache: "no-store", credentials: "same-origin"}).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    }).then(function (st) {
      render(st);
      dot.className = "dot on";
    }).catch(function (err) {
      dot.className = "dot stale";
      document.getElementById("updated").textContent = "stale: " + err.message;
    }).then(function () { setTimeout(tick, REFRESH); });
  }
  tick();
})();
</script>
</body>
</html>
"""
