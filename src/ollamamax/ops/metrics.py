"""Observability for the gateway: ``/metrics`` (Prometheus) and the ``/ollamamax/`` status page.

``install_observability(app, dispatcher)`` adds to an aiohttp application:

* ``GET /metrics`` — Prometheus text format (OpenMetrics when the scraper asks for it),
  from a :class:`CollectorRegistry` of its own per dispatcher (never the global one);
* ``GET /ollamamax/`` — the HTML status page (``/ollamamax`` redirects there);
* ``GET /ollamamax/status`` — the page's JSON: ``Dispatcher.status()`` plus this
  process's GC pause summary and, under ``ollamamax serve``, the HTTP server's counters.

The collector reads the dispatcher's own counters and native LatencyHistograms at scrape
time (``Dispatcher.metrics_snapshot()``); nothing is counted twice.  Exported families
(prefix ``ollamamax_``)::

    requests_total{route,model,host,status}     counter  answers from an upstream host
    retries_total, retries_denied_total, request_faults_total,
    cache_hits_total, cache_misses_total                                counters
    host_ejections_total{host,cause}, host_ejections_prevented_total{host}  counters
    retry_budget, retries_in_progress                                   gauges
    host_in_flight{host}, host_capacity{host}, host_healthy{host}       gauges
    queue_depth, queue_capacity, cache_entries, info{version,strategy}  gauges
    model_queue_depth{model}                  gauge    requests waiting in the gateway per model
    model_loads_total{host,model}             counter  loads the fleet scheduler started
    scheduler_preloads_total, scheduler_evictions_total, scheduler_failed_loads_total,
    scheduler_switches_deferred_total, scheduler_loads_yielded_total     counters
    redis_up, redis_peers                     gauges   with --redis: reachable (1/0), other live replicas
    redis_failures_total, redis_reconnects_total, redis_claims_total{outcome}  counters
    redis_cache_total{outcome}                counter  the response cache's second level
    cache_bytes                               gauge    bytes held by the response cache
    queue_wait_seconds{host,model}            histogram  wait for a host slot
    upstream_connect_seconds{host,model}      histogram  new TCP connections only
    time_to_first_byte_seconds{host,model}    histogram
    request_duration_seconds{host,model}      histogram  request sent to that host -> last byte
    generation_tokens_per_second{host,model}  histogram  eval_count / eval_duration
    gc_pause_seconds{generation}              histogram  this process's cyclic GC pauses

and, when the app is served by ``fastpath.start_server`` (``ollamamax serve``), its HTTP
server's counters (read from the app's gateway, where ``start_server`` leaves them)::

    http_fast_path_requests_total             counter  requests the fast path served itself
    http_connections_total                    counter  connections accepted
    http_connections_handed_over_total        counter  connections given to aiohttp
    http_open_connections                     gauge    open connections on the fast path

Histogram buckets: the LatencyHistograms have ~1% relative-error buckets, too many to
export as series, and their set of non-empty buckets changes over time, which breaks
``rate()`` per ``le``.  So the exporter folds ``LatencyHistogram.buckets()`` into a fixed
set of bounds (``TIME_BOUNDS`` etc.): the count at ``le=b`` is the cumulative count of every
native bucket whose upper bound is <= b (exact for those; a native bucket straddling ``b``
is counted at the next bound, an error below the histogram's 1%).  ``_sum`` is the
histogram's exact sum, ``+Inf`` its count.  ``bucket_bounds=None`` exports the native
buckets unchanged.

Scrape cost: prometheus_client formats ~10 µs per line; 10 hosts x 5 models is ~5,300
lines, ~60 ms.  The handler copies the counters on the event loop (cheap) and formats on a
worker thread, so the loop keeps serving meanwhile (stalls of a GIL switch interval, not
of the whole scrape).  A ``generate_latest(registry_for(d))`` call of your own runs
synchronously where you call it.

prometheus_client is imported lazily: without it the status page still works and
``/metrics`` answers 503 naming the package to install.
"""

from __future__ import annotations

import asyncio
import bisect
import contextvars
import functools
import logging
import math
import operator
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from aiohttp import web

from ..frontends.aiohttp_app import GATEWAY_KEY
from .gcstats import GcPauseRecorder, default_recorder

__all__ = [
    "GC_BOUNDS",
    "TIME_BOUNDS",
    "TOKENS_BOUNDS",
    "Observability",
    "OBSERVABILITY_KEY",
    "install_observability",
    "make_collector",
    "registry_for",
]

log = logging.getLogger("ollamamax.metrics")

MISSING_PROMETHEUS = (
    "prometheus_client is not installed; /metrics needs it: pip install prometheus_client"
)

# Fixed Prometheus bucket bounds (see the module docstring).
TIME_BOUNDS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)
GC_BOUNDS: tuple[float, ...] = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)
TOKENS_BOUNDS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

# metrics_snapshot() histogram kind -> (family name, help, native unit -> exported unit, bounds)
_HISTOGRAMS: dict[str, tuple[str, str, float, tuple[float, ...]]] = {
    "queue_wait": ("queue_wait_seconds", "Time a request waited for a host slot (successful requests).",
                   1e-6, TIME_BOUNDS),
    "connect": ("upstream_connect_seconds", "Time to open a new upstream TCP connection.",
                1e-6, TIME_BOUNDS),
    "ttfb": ("time_to_first_byte_seconds", "Time from sending to the host that answered to its first response byte.",
             1e-6, TIME_BOUNDS),
    "total": ("request_duration_seconds", "Time from sending to the host that answered to its last response byte.",
              1e-6, TIME_BOUNDS),
    "tokens_per_s": ("generation_tokens_per_second", "Generation speed reported by the host "
                     "(eval_count / eval_duration).", 1.0, TOKENS_BOUNDS),
}


@functools.lru_cache(maxsize=1)
def _prometheus() -> Any:
    """The prometheus_client modules we use, imported on first need."""
    try:
        import prometheus_client.core as core
        import prometheus_client.exposition as exposition
        import prometheus_client.registry as registry
        import prometheus_client.utils as utils
    except ImportError as exc:
        raise ImportError(MISSING_PROMETHEUS) from exc
    return core, exposition, registry, utils


@functools.lru_cache(maxsize=16)
def _le_strings(bounds: tuple[float, ...], fmt: Callable[[float], str]) -> tuple[str, ...]:
    return tuple(fmt(b) for b in bounds)


_first = operator.itemgetter(0)


def _fold_buckets(native: Sequence[tuple[float, int]], scale: float, bounds: tuple[float, ...] | None,
                  fmt: Callable[[float], str]) -> list[tuple[str, float]]:
    """``LatencyHistogram.buckets()`` (native units, exclusive upper bounds, cumulative,
    ending with ``(inf, count)``) -> Prometheus buckets ``[(le, cumulative)]`` in exported
    units, ending with ``("+Inf", count)``.  O(len(bounds) * log(len(native)))."""
    if not native:
        return [*((le, 0) for le in _le_strings(bounds, fmt)), ("+Inf", 0)] if bounds else [("+Inf", 0)]
    total = native[-1][1]
    n = len(native) - 1 if math.isinf(native[-1][0]) else len(native)
    out: list[tuple[str, float]]
    if bounds is None:
        out = [(fmt(native[i][0] * scale), native[i][1]) for i in range(n)]
    else:
        out = []
        inv = (1.0 + 1e-12) / scale
        for b, le in zip(bounds, _le_strings(bounds, fmt)):
            i = bisect.bisect_right(native, b * inv, 0, n, key=_first)  # buckets with upper <= b
            out.append((le, native[i - 1][1] if i else 0))
    out.append(("+Inf", total))
    return out


# Set by the /metrics handler: {id(dispatcher): frame captured on the event loop}, so the
# exposition can be formatted on a worker thread without touching live dicts.
_FRAMES: contextvars.ContextVar[dict[int, dict[str, Any]] | None] = contextvars.ContextVar(
    "ollamamax_metrics_frames", default=None)


def _by_one_label(family: Any, name: str, doc: str, label: str, counts: dict[str, Any]) -> Any:
    """A metric family with one label, one sample per item of ``counts`` (sorted)."""
    fam = family(name, doc, labels=[label])
    for value, n in sorted(counts.items()):
        fam.add_metric([value], n)
    return fam


def _capture(d: Any) -> dict[str, Any]:
    """Everything collect() reads from the dispatcher, copied (histograms are thread-safe
    and read live).  Must run on the dispatcher's event loop thread."""
    frame = dict(d.metrics_snapshot())
    config = getattr(d, "config", None)
    cache = getattr(d, "cache", None)
    frame["queue_size"] = getattr(config, "queue_size", None)
    frame["strategy"] = getattr(config, "strategy", "")
    frame["cache_stats"] = dict(cache.stats()) if cache is not None else None
    return frame


class _CollectorMixin:
    """The collector's logic; combined with prometheus_client's ``Collector`` lazily."""

    def __init__(self, dispatcher: Any, *, gc_recorder: GcPauseRecorder | None = None,
                 prefix: str = "ollamamax", bucket_bounds: str | None = "fixed", weak: bool = False) -> None:
        if bucket_bounds not in ("fixed", None):
            raise ValueError("bucket_bounds must be 'fixed' or None (native buckets)")
        ref: Callable[[], Any] = lambda: dispatcher  # noqa: E731
        if weak:  # registry_for's cache must not keep the dispatcher alive
            ref = weakref.ref(dispatcher)
        self._dispatcher = ref
        self.gc_recorder = gc_recorder
        self.prefix = prefix
        self.fixed = bucket_bounds == "fixed"

    @property
    def dispatcher(self) -> Any:
        return self._dispatcher()

    def describe(self) -> list[Any]:
        return []  # no collect() at registration; names are not checked against others

    def collect(self) -> Iterator[Any]:
        core, _exposition, _registry, utils = _prometheus()
        p = self.prefix
        d = self.dispatcher
        if d is None:  # the dispatcher is gone
            return
        frames = _FRAMES.get()
        snap = frames.get(id(d)) if frames is not None else None
        if snap is None:
            snap = _capture(d)
        c = snap["counters"]
        hosts = snap["hosts"]

        req = core.CounterMetricFamily(
            f"{p}_requests", "Requests answered by an upstream host, by route, model, host and HTTP status "
            "(499: client went away mid-stream; cache hits and requests refused before reaching a host "
            "are not included).", labels=["route", "model", "host", "status"])
        for (route, model, host, status), n in sorted(c["requests"].items(), key=lambda kv: str(kv[0])):
            req.add_metric([str(route), str(model), str(host), str(status)], n)
        yield req

        yield core.CounterMetricFamily(f"{p}_retries", "Upstream attempts after the first one.",
                                       value=c["retries"])
        yield core.CounterMetricFamily(f"{p}_retries_denied", "Retries the retry budget refused.",
                                       value=c["retries_denied"])
        yield core.CounterMetricFamily(
            f"{p}_request_faults", "5xx answers two hosts gave alike for one request: the request's "
            "fault, passed to the client with no host charged.", value=c["request_faults"])
        yield core.GaugeMetricFamily(f"{p}_retry_budget", "Retries that may be in progress at once now "
                                     "(retry_budget_ratio x requests in progress, at least retry_budget_min).",
                                     value=snap["retry_budget"])
        yield core.GaugeMetricFamily(f"{p}_retries_in_progress", "Retries in progress.",
                                     value=snap["retries_in_progress"])
        ej = core.CounterMetricFamily(
            f"{p}_host_ejections", "Times a host was taken out of rotation, by cause (connect, timeout, "
            "reset, 5xx, failure_rate: outlier detection; unreachable: its probe failed).",
            labels=["host", "cause"])
        by_cause = c["ejections_by_cause"]
        for name in sorted(hosts):
            if not any(hn == name for hn, _ in by_cause):
                ej.add_metric([name, "connect"], 0)
        for (name, cause), n in sorted(by_cause.items()):
            ej.add_metric([name, cause], n)
        yield ej
        yield _by_one_label(core.CounterMetricFamily, f"{p}_host_ejections_prevented",
                            "Ejections skipped because max_ejection_percent of the hosts were ejected already.",
                            "host", c["ejections_prevented"])
        yield core.CounterMetricFamily(f"{p}_cache_hits", "Response cache hits.", value=c["cache_hits"])
        yield core.CounterMetricFamily(f"{p}_cache_misses", "Response cache misses.", value=c["cache_misses"])

        inflight = core.GaugeMetricFamily(f"{p}_host_in_flight", "Requests in flight on a host.",
                                          labels=["host"])
        cap = core.GaugeMetricFamily(f"{p}_host_capacity", "Concurrent request slots of a host.",
                                     labels=["host"])
        healthy = core.GaugeMetricFamily(f"{p}_host_healthy", "1 if the host is in rotation, 0 if ejected.",
                                         labels=["host"])
        for name, h in hosts.items():
            inflight.add_metric([name], h["in_flight"])
            cap.add_metric([name], h["capacity"])
            healthy.add_metric([name], 1 if h["healthy"] else 0)
        yield inflight
        yield cap
        yield healthy
        yield core.GaugeMetricFamily(f"{p}_queue_depth", "Requests waiting for a host slot.",
                                     value=snap["queue_depth"])
        if snap["queue_size"] is not None:
            yield core.GaugeMetricFamily(f"{p}_queue_capacity", "Capacity of the wait queue.",
                                         value=snap["queue_size"])
        stats = snap["cache_stats"]
        if stats is not None and "currsize" in stats:
            yield core.GaugeMetricFamily(f"{p}_cache_entries", "Entries in the response cache.",
                                         value=stats["currsize"])
        if stats is not None and "bytes" in stats:
            yield core.GaugeMetricFamily(
                f"{p}_cache_bytes",
                "Bytes held by the response cache (keys, values, overhead), at most its budget.",
                value=stats["bytes"])
        sched = snap.get("scheduler") or {}
        loads = core.CounterMetricFamily(
            f"{p}_model_loads", "Model loads the fleet scheduler started, by host and model "
            "(preloads included).", labels=["host", "model"])
        for (host, model), n in sorted((sched.get("loads") or {}).items()):
            loads.add_metric([host, model], n)
        yield loads
        sc = sched.get("counters") or {}
        for key, doc in (
                ("preloads", "Loads the scheduler started ahead of need (no request waiting)."),
                ("evictions", "Models the scheduler unloaded to make room for another."),
                ("failed_loads", "Loads that failed or that the host refused."),
                ("switches_deferred", "Times a cold model's requests waited for a switch the planner "
                                      "deferred (batching until they pay for an eviction; once per episode)."),
                ("loads_yielded", "Loads this gateway decided but another replica had claimed (joined or left).")):
            yield core.CounterMetricFamily(f"{p}_scheduler_{key}", doc, value=sc.get(key, 0))
        shared = snap.get("shared")
        if shared is not None:
            yield core.GaugeMetricFamily(f"{p}_redis_up", "1 while Redis answers (state shared with the other "
                                         "replicas), 0 while this gateway decides alone.",
                                         value=1 if shared["state"] == "up" else 0)
            yield core.GaugeMetricFamily(f"{p}_redis_peers", "Other live replicas seen at the last sync.",
                                         value=shared["peers"])
            yield core.CounterMetricFamily(f"{p}_redis_failures", "Calls to Redis that failed or timed out.",
                                           value=shared["failures"])
            yield core.CounterMetricFamily(f"{p}_redis_reconnects", "Times Redis came back after being down.",
                                           value=shared["reconnects"])
            yield _by_one_label(
                core.CounterMetricFamily, f"{p}_redis_claims", "Load claims by outcome: won (this gateway loads), "
                "joined (another replica loads the model), host_busy (another replica switches the host), unasked "
                "(Redis was down).", "outcome", shared["claims"])
            if shared.get("cache") is not None:
                yield _by_one_label(
                    core.CounterMetricFamily, f"{p}_redis_cache", "The response cache's second level in Redis, by "
                    "outcome: hits and misses of local misses, puts stored, dropped (Redis down or too many in "
                    "flight).", "outcome", shared["cache"])
        yield _by_one_label(core.GaugeMetricFamily, f"{p}_model_queue_depth",
                            "Requests waiting in the gateway, by model.", "model", snap.get("queue_by_model") or {})
        from .._version import __version__

        info = core.GaugeMetricFamily(f"{p}_info", "ollamamax version and balancing strategy.",
                                      labels=["version", "strategy"])
        info.add_metric([__version__, str(snap["strategy"] or "")], 1)
        yield info

        fmt = utils.floatToGoString
        for kind, (name, doc, scale, bounds) in _HISTOGRAMS.items():
            fam = core.HistogramMetricFamily(f"{p}_{name}", doc, labels=["host", "model"])
            for (host, model), hist in sorted(snap["histograms"].get(kind, {}).items()):
                fam.add_metric([host, model], _fold_buckets(hist.buckets(), scale, bounds if self.fixed else None,
                                                             fmt), hist.sum * scale)
            yield fam

        rec = self.gc_recorder
        if rec is not None:
            fam = core.HistogramMetricFamily(f"{p}_gc_pause_seconds",
                                             "Pauses of this process's cyclic garbage collector.",
                                             labels=["generation"])
            for gen, hist in sorted(rec.histograms().items()):
                fam.add_metric([str(gen)], _fold_buckets(hist.buckets(), 1e-6, GC_BOUNDS if self.fixed else None,
                                                         fmt), hist.sum * 1e-6)
            yield fam


@functools.lru_cache(maxsize=1)
def _collector_class() -> type:
    _core, _exposition, registry, _utils = _prometheus()

    class DispatcherCollector(_CollectorMixin, registry.Collector):  # type: ignore[name-defined]
        """prometheus_client collector reading a Dispatcher's counters and histograms."""

    return DispatcherCollector


@functools.lru_cache(maxsize=1)
def _http_collector_class() -> type:
    core, _exposition, registry, _utils = _prometheus()

    class HttpServerCollector(registry.Collector):  # type: ignore[name-defined]
        """The gateway HTTP server's counters (``fastpath.FastStats``), once a server
        serves the app (``stats()`` returns None until then)."""

        def __init__(self, prefix: str, stats: Callable[[], Any]) -> None:
            self.prefix = prefix
            self.stats = stats

        def describe(self) -> list[Any]:
            return []

        def collect(self) -> Iterator[Any]:
            p, s = self.prefix, self.stats()
            if s is None:
                return
            yield core.CounterMetricFamily(
                f"{p}_http_fast_path_requests", "Requests the HTTP fast path served itself.",
                value=s.fast_requests)
            yield core.CounterMetricFamily(
                f"{p}_http_connections", "HTTP connections accepted.", value=s.connections)
            yield core.CounterMetricFamily(
                f"{p}_http_connections_handed_over",
                "HTTP connections handed to the aiohttp application (request shapes the fast "
                "path leaves to it).", value=s.handed_over)
            yield core.CounterMetricFamily(
                f"{p}_http_connections_rejected",
                "HTTP connections refused because max_connections were open (503, or aborted "
                "at accept).", value=s.rejected)
            yield core.GaugeMetricFamily(
                f"{p}_http_open_connections", "Open HTTP connections on the fast path.",
                value=s.open_connections)

    return HttpServerCollector


def make_collector(dispatcher: Any, *, gc_recorder: GcPauseRecorder | None = None, prefix: str = "ollamamax",
                   bucket_bounds: str | None = "fixed", weak: bool = False) -> Any:
    """A ``prometheus_client.registry.Collector`` for ``dispatcher`` (ImportError without
    prometheus_client).  ``bucket_bounds``: ``"fixed"`` (default) or ``None`` (native).
    ``weak``: hold the dispatcher by weak reference (it then reports nothing once gone)."""
    return _collector_class()(dispatcher, gc_recorder=gc_recorder, prefix=prefix, bucket_bounds=bucket_bounds,
                              weak=weak)


_registries: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def registry_for(dispatcher: Any, *, gc_recorder: GcPauseRecorder | None = None) -> Any:
    """The dedicated ``CollectorRegistry`` of ``dispatcher`` (created on first call with
    its collector; ``gc_recorder`` only matters then).  ImportError without prometheus_client."""
    reg = _registries.get(dispatcher)
    if reg is None:
        _core, _exposition, registry, _utils = _prometheus()
        reg = registry.CollectorRegistry(auto_describe=False)
        reg.register(make_collector(dispatcher, gc_recorder=gc_recorder, weak=True))
        _registries[dispatcher] = reg
    return reg


class Observability:
    """The handlers behind :func:`install_observability`, usable on their own::

        obs = Observability(dispatcher)
        app.router.add_get("/metrics", obs.metrics)

    ``auth``: a callable ``(request, path) -> web.Response | None`` run first (None = allowed).
    """

    def __init__(self, dispatcher: Any, *, gc_recorder: GcPauseRecorder | None = None,
                 auth: Callable[[web.BaseRequest, str], web.StreamResponse | None] | None = None,
                 refresh_seconds: float = 2.0, http_stats: Callable[[], Any] | None = None) -> None:
        if not refresh_seconds > 0:
            raise ValueError("refresh_seconds must be > 0")
        self.dispatcher = dispatcher
        self.gc_recorder = gc_recorder
        self.auth = auth
        self.refresh_seconds = float(refresh_seconds)
        self._warned = False
        # the serving HTTP server's counters (``fastpath.FastStats``), or None
        self.http_stats: Callable[[], Any] = http_stats or (lambda: None)
        self._http_registered = False

    def registry(self) -> Any:
        reg = registry_for(self.dispatcher, gc_recorder=self.gc_recorder)
        if not self._http_registered:
            self._http_registered = True
            reg.register(_http_collector_class()("ollamamax", self.http_stats))
        return reg

    def _check(self, request: web.BaseRequest) -> web.StreamResponse | None:
        return self.auth(request, request.path) if self.auth is not None else None

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        refused = self._check(request)
        if refused is not None:
            return refused
        try:
            _core, exposition, _registry, _utils = _prometheus()
            reg = self.registry()
        except ImportError:
            if not self._warned:
                self._warned = True
                log.warning("%s", MISSING_PROMETHEUS)
            return web.Response(status=503, text=MISSING_PROMETHEUS + "\n",
                                headers={"Cache-Control": "no-store"})
        encoder, content_type = exposition.choose_encoder(request.headers.get("Accept", ""))
        # Copy what is not thread-safe here, on the loop; format on a worker thread, so a
        # big scrape never stalls the event loop for more than a GIL switch interval.
        ctx = contextvars.copy_context()
        d = self.dispatcher
        ctx.run(_FRAMES.set, {id(d): _capture(d)})
        body = await asyncio.get_running_loop().run_in_executor(None, ctx.run, encoder, reg)
        return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})

    def status(self) -> dict[str, Any]:
        """``Dispatcher.status()`` plus ``gc`` (pause summary in ms) and ``http`` (the HTTP
        server's counters) when known."""
        out: dict[str, Any] = self.dispatcher.status()
        rec = self.gc_recorder
        if rec is not None:
            s = rec.summary()["all"]
            out["gc"] = {"count": s["count"], "p50_ms": s["p50_us"] / 1000.0, "p99_ms": s["p99_us"] / 1000.0,
                         "max_ms": s["max_us"] / 1000.0, "total_ms": s["total_us"] / 1000.0}
        stats = self.http_stats()
        if stats is not None:
            out["http"] = stats.as_dict()
        return out

    async def status_json(self, request: web.Request) -> web.StreamResponse:
        refused = self._check(request)
        if refused is not None:
            return refused
        return web.json_response(self.status(), headers={"Cache-Control": "no-store"})

    async def status_page(self, request: web.Request) -> web.StreamResponse:
        refused = self._check(request)
        if refused is not None:
            return refused
        from .statuspage import PAGE_HEADERS, render_status_page  # noqa: PLC0415 - rarely used

        html = render_status_page(self.status(), refresh_seconds=self.refresh_seconds)
        return web.Response(body=html.encode(), headers=PAGE_HEADERS)

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        """``/ollamamax`` -> ``/ollamamax/`` (relative, so it works under a mount prefix); it
        needs a key like the page it leads to."""
        refused = self._check(request)
        if refused is not None:
            return refused
        raise web.HTTPFound("ollamamax/" + ("?" + request.query_string if request.query_string else ""))


OBSERVABILITY_KEY: web.AppKey[Observability] = web.AppKey("ollamamax_observability", Observability)


def _gateway_auth(app: web.Application) -> Callable[[web.BaseRequest, str], web.StreamResponse | None]:
    """The gateway's own key check (401/403) for ``app``, looked up at request time, so it
    applies whether ``install_observability`` ran before or after the gateway was set up."""

    def check(request: web.BaseRequest, path: str) -> web.StreamResponse | None:
        gw = app.get(GATEWAY_KEY)
        if gw is None or not gw.auth_enabled:
            return None
        return gw.precheck(request, path)  # type: ignore[no-any-return]

    return check


def install_observability(app: web.Application, dispatcher: Any, *, public: bool = False,
                          gc_recorder: GcPauseRecorder | None = None, record_gc: bool = True,
                          refresh_seconds: float = 2.0) -> Observability:
    """Add ``GET /metrics``, ``/ollamamax/``, ``/ollamamax`` and ``/ollamamax/status`` to ``app``.

    When ``app`` is a gateway from ``create_app`` with API keys, these routes need a key
    too, unless ``public=True`` (e.g. to let a browser open the status page and Prometheus
    scrape without a bearer token).  ``record_gc`` installs the process-wide
    :class:`GcPauseRecorder` (or ``gc_recorder``) while the app runs.  Returns the
    :class:`Observability` (also at ``app[OBSERVABILITY_KEY]``).

    Route order: aiohttp >= 3.10 resolves the most specific path prefix first, so these
    routes win over the gateway's catch-all whatever the order they were added in; on
    older aiohttp call this before adding the catch-all.
    """
    recorder = gc_recorder if gc_recorder is not None else (default_recorder() if record_gc else None)
    def http_stats() -> Any:
        gw = app.get(GATEWAY_KEY)
        return gw.http_stats if gw is not None else None

    obs = Observability(dispatcher, gc_recorder=recorder, auth=None if public else _gateway_auth(app),
                        refresh_seconds=refresh_seconds, http_stats=http_stats)
    app[OBSERVABILITY_KEY] = obs
    app.router.add_get("/metrics", obs.metrics)
    app.router.add_get("/ollamamax/", obs.status_page)
    app.router.add_get("/ollamamax", obs.redirect)
    app.router.add_get("/ollamamax/status", obs.status_json)
    if recorder is not None and record_gc:
        installed = [False]

        async def start_gc(_app: web.Application) -> None:
            if not installed[0]:
                recorder.install()
                installed[0] = True

        async def stop_gc(_app: web.Application) -> None:
            if installed[0]:
                installed[0] = False
                recorder.uninstall()

        app.on_startup.append(start_gc)
        app.on_cleanup.append(stop_gc)
    return obs
