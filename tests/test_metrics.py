"""``/metrics`` (Prometheus exporter over the dispatcher's own counters and LatencyHistograms),
the GC pause recorder and GC tuning.

End-to-end tests drive requests through ``create_app`` + ``install_observability`` to two
emulated hosts and check the parsed exposition against what was sent.
"""

from __future__ import annotations

import contextlib
import gc
import math
import sys
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from ollamamax import create_app
from ollamamax.dispatch import Dispatcher
from ollamamax.ops import gcstats, metrics
from ollamamax.ops.gcstats import (
    GcPauseRecorder,
    parse_gc_threshold,
    tune_gc,
    untune_gc,
)
from ollamamax.ops.metrics import (
    OBSERVABILITY_KEY,
    TIME_BOUNDS,
    Observability,
    _fold_buckets,
    install_observability,
    make_collector,
    registry_for,
)
from ollamamax.testing import FakeOllama

pytestmark = pytest.mark.timeout(60)

HOST_KW: dict[str, Any] = dict(load_delay=0, tokens_per_sec=0, num_parallel=4, seed=7)


def has_route(app: web.Application, path: str) -> bool:
    return any(getattr(r.resource, "canonical", None) == path for r in app.router.routes())


def gateway_app(d: Dispatcher, **kw: Any) -> web.Application:
    """The gateway as ``create_app`` builds it: observability is installed there."""
    pub = kw.pop("public", False)
    app = create_app(d, public_observability=pub, **kw)
    assert has_route(app, "/metrics")
    return app


class Stack:
    def __init__(self, hosts: list[FakeOllama], d: Dispatcher, server: TestServer) -> None:
        self.hosts = hosts
        self.d = d
        self.server = server
        self.url = str(server.make_url("")).rstrip("/")


@contextlib.asynccontextmanager
async def obs_stack(host_models: tuple[list[str], ...] = (["llama3.2", "nomic-embed-text"], ["llama3.2"]),
                    app_kw: dict[str, Any] | None = None, host_kw: list[dict[str, Any]] | None = None,
                    extra_urls: tuple[str, ...] = (), **dispatcher_kw: Any) -> AsyncIterator[Stack]:
    hosts = [FakeOllama(m, **{**HOST_KW, **((host_kw or [{}] * len(host_models))[i])})
             for i, m in enumerate(host_models)]
    async with contextlib.AsyncExitStack() as stack:
        for h in hosts:
            await stack.enter_async_context(h)
        d = await stack.enter_async_context(Dispatcher([h.url for h in hosts] + list(extra_urls), **dispatcher_kw))
        server = TestServer(gateway_app(d, **(app_kw or {})), host="127.0.0.1")
        await server.start_server()
        stack.push_async_callback(server.close)
        yield Stack(hosts, d, server)


def parse(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fam: Any, suffix: str = "") -> list[Any]:
    return [s for s in fam.samples if s.name == fam.name + suffix]


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url + "/metrics") as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/plain")
        return parse(await r.text())


def check_histogram(fam: Any) -> dict[tuple[tuple[str, str], ...], dict[str, float]]:
    """Buckets monotone, +Inf == _count, sum >= 0; returns {labels: {count, sum}}."""
    out: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for s in fam.samples:
        key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        e = out.setdefault(key, {"buckets": []})
        if s.name.endswith("_bucket"):
            e["buckets"].append((float(s.labels["le"]), s.value))
        elif s.name.endswith("_count"):
            e["count"] = s.value
        elif s.name.endswith("_sum"):
            e["sum"] = s.value
    for key, e in out.items():
        b = e["buckets"]
        assert b and math.isinf(b[-1][0]), key
        les = [x[0] for x in b]
        assert les == sorted(les), key
        vals = [x[1] for x in b]
        assert all(x <= y for x, y in zip(vals, vals[1:])), (key, vals)
        assert vals[-1] == e["count"], key
        assert e["sum"] >= 0
    return out


# -- unit: bucket folding ----------------------------------------------------------------

def test_fold_buckets_fixed_and_native(impl):
    h = impl.LatencyHistogram()
    values = [3, 400, 900, 1_000, 1_100, 20_000, 2_000_000, 7_000_000_000]  # microseconds
    for v in values:
        h.record(v)
    fmt = repr
    fixed = _fold_buckets(h.buckets(), 1e-6, TIME_BOUNDS, fmt)
    assert [le for le, _ in fixed] == [repr(b) for b in TIME_BOUNDS] + ["+Inf"]
    counts = [c for _, c in fixed]
    assert counts == sorted(counts) and counts[-1] == len(values)
    got = dict(fixed)
    assert got["0.0005"] == 2  # 3 us, 400 us
    assert 3 <= got["0.001"] <= 4 and got["0.0025"] == 5  # 1 ms boundary: within one bucket of error
    assert got["0.025"] == 6 and got["2.5"] == 7 and got["300.0"] == 7  # overflow counts at +Inf only
    native = _fold_buckets(h.buckets(), 1e-6, None, fmt)
    assert len(native) == len(h.buckets())
    assert native[-1] == ("+Inf", len(values))
    empty = _fold_buckets(impl.LatencyHistogram().buckets(), 1.0, (1.0, 2.0), fmt)
    assert empty == [("1.0", 0), ("2.0", 0), ("+Inf", 0)]


def test_make_collector_rejects_bad_bucket_mode():
    with pytest.raises(ValueError, match="bucket_bounds"):
        make_collector(object(), bucket_bounds="sparse")


def test_observability_rejects_bad_refresh():
    with pytest.raises(ValueError, match="refresh_seconds"):
        Observability(object(), refresh_seconds=0)


# -- end to end --------------------------------------------------------------------------

async def test_metrics_counts_match_requests_sent():
    async with obs_stack() as s, aiohttp.ClientSession() as session:
        served: Counter[tuple[str, str, str]] = Counter()  # (route, model, host)

        async def post(path: str, body: dict[str, Any]) -> None:
            async with session.post(s.url + path, json=body) as r:
                await r.read()
                assert r.status == 200
                served[(path, body["model"] if ":" in body["model"] else body["model"] + ":latest",
                        r.headers["X-Ollamamax-Host"])] += 1

        for i in range(6):
            await post("/api/chat", {"model": "llama3.2", "stream": i % 2 == 0,
                                     "messages": [{"role": "user", "content": f"hi {i}"}]})
        for i in range(3):
            await post("/api/generate", {"model": "llama3.2", "prompt": f"p{i}", "stream": False})
        await post("/api/embed", {"model": "nomic-embed-text", "input": "same"})
        # not answered by a host: neither in requests_total nor in the histograms
        async with session.post(s.url + "/api/chat", json={"model": "nosuch", "messages": []}) as r:
            assert r.status == 404

        fams = await scrape(session, s.url)
        req = fams["ollamamax_requests"]
        assert req.type == "counter"
        got = Counter()
        for smp in samples(req, "_total"):
            assert set(smp.labels) == {"route", "model", "host", "status"}
            assert smp.labels["status"] == "200"
            got[(smp.labels["route"], smp.labels["model"], smp.labels["host"])] += smp.value
        assert got == served

        per_host_model: Counter[tuple[str, str]] = Counter()
        for (_route, model, host), n in served.items():
            per_host_model[(host, model)] += n
        for name in ("ollamamax_time_to_first_byte_seconds", "ollamamax_request_duration_seconds",
                     "ollamamax_queue_wait_seconds"):
            fam = fams[name]
            assert fam.type == "histogram"
            series = check_histogram(fam)
            counts = {(dict(k)["host"], dict(k)["model"]): v["count"] for k, v in series.items()}
            assert counts == dict(per_host_model), name
            assert all(v["sum"] > 0 for v in series.values())
        # TTFB <= total for every series, in seconds (a loopback request takes well under 5 s)
        ttfb = check_histogram(fams["ollamamax_time_to_first_byte_seconds"])
        total = check_histogram(fams["ollamamax_request_duration_seconds"])
        for k in ttfb:
            assert 0 < ttfb[k]["sum"] <= total[k]["sum"] < 5 * total[k]["count"]
        tps = check_histogram(fams["ollamamax_generation_tokens_per_second"])
        generated = sum(n for (route, _m, _h), n in served.items() if route != "/api/embed")
        assert sum(v["count"] for v in tps.values()) == generated

        names = {h.name for h in s.d.hosts}
        for gauge, expect in (("ollamamax_host_capacity", 8.0), ("ollamamax_host_healthy", 1.0),
                              ("ollamamax_host_in_flight", 0.0)):
            fam = fams[gauge]
            assert fam.type == "gauge"
            assert {smp.labels["host"]: smp.value for smp in fam.samples} == dict.fromkeys(names, expect)
        assert fams["ollamamax_queue_depth"].samples[0].value == 0
        assert fams["ollamamax_queue_capacity"].samples[0].value == s.d.config.queue_size
        assert fams["ollamamax_retries"].samples[0].value == 0
        assert {smp.labels["host"]: smp.value for smp in fams["ollamamax_host_ejections"].samples} == \
            dict.fromkeys(names, 0.0)
        info = fams["ollamamax_info"].samples[0]
        assert info.labels["strategy"] == "least-loaded" and info.value == 1
        assert "ollamamax_gc_pause_seconds" in fams


async def test_metrics_cache_hits_and_misses():
    async with obs_stack() as s, aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.post(s.url + "/api/embed", json={"model": "nomic-embed-text", "input": "x"}) as r:
                assert r.status == 200
                await r.read()
        fams = await scrape(session, s.url)
        assert fams["ollamamax_cache_misses"].samples[0].value == 1
        assert fams["ollamamax_cache_hits"].samples[0].value == 2
        assert fams["ollamamax_cache_entries"].samples[0].value == 1
        # one embedding answer: its bytes (plus the entry's overhead), within the budget
        held = fams["ollamamax_cache_bytes"].samples[0].value
        assert held == s.d.cache.stats()["bytes"]
        assert 768 * 8 < held <= s.d.config.cache_bytes
        # a cache hit never reached a host: one request in requests_total
        assert sum(smp.value for smp in fams["ollamamax_requests"].samples if smp.name.endswith("_total")) == 1


async def test_metrics_retries_ejections_and_health():
    async with obs_stack((["llama3.2"], ["llama3.2"]), host_kw=[{}, {"preload": ["llama3.2"]}],
                         eject_after_failures=1, eject_cooldown=60.0, eject_max_cooldown=60.0,
                         retry_backoff=0.0, refresh_interval=60.0) as s, aiohttp.ClientSession() as session:
        bad = s.d.hosts[1].name
        await s.hosts[1].kill()  # refuses connections: a gateway-side failure, ejects at once
        for i in range(4):
            async with session.post(s.url + "/api/generate",
                                    json={"model": "llama3.2", "prompt": str(i), "stream": False}) as r:
                assert r.status == 200
                await r.read()
        fams = await scrape(session, s.url)
        ej = {(smp.labels["host"], smp.labels["cause"]): smp.value
              for smp in fams["ollamamax_host_ejections"].samples if smp.name.endswith("_total")}
        assert ej[(bad, "connect")] == 1
        healthy = {smp.labels["host"]: smp.value for smp in fams["ollamamax_host_healthy"].samples}
        assert healthy[bad] == 0 and healthy[s.d.hosts[0].name] == 1
        assert fams["ollamamax_retries"].samples[0].value >= 1


async def test_openmetrics_when_asked():
    async with obs_stack() as s, aiohttp.ClientSession() as session:
        async with session.get(s.url + "/metrics",
                               headers={"Accept": "application/openmetrics-text; version=1.0.0"}) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("application/openmetrics-text")
            assert (await r.text()).rstrip().endswith("# EOF")


async def test_native_bucket_mode_exports_histogram_buckets_unchanged():
    async with obs_stack() as s, aiohttp.ClientSession() as session:
        async with session.post(s.url + "/api/generate", json={"model": "llama3.2", "prompt": "x",
                                                              "stream": False}) as r:
            await r.read()
        from prometheus_client import CollectorRegistry, generate_latest

        reg = CollectorRegistry(auto_describe=False)
        reg.register(make_collector(s.d, bucket_bounds=None))
        fams = parse(generate_latest(reg).decode())
        assert "ollamamax_gc_pause_seconds" not in fams  # no recorder given
        (hist,) = s.d.metrics_snapshot()["histograms"]["ttfb"].values()
        les = [float(smp.labels["le"]) for smp in fams["ollamamax_time_to_first_byte_seconds"].samples
               if smp.name.endswith("_bucket")]
        assert les[:-1] == pytest.approx([u * 1e-6 for u, _ in hist.buckets()[:-1]])
        check_histogram(fams["ollamamax_time_to_first_byte_seconds"])


async def test_registry_is_dedicated_per_dispatcher():
    from prometheus_client import REGISTRY

    async with obs_stack() as s:
        reg = registry_for(s.d)
        assert reg is not REGISTRY and registry_for(s.d) is reg
        d2 = Dispatcher(["http://127.0.0.1:9"])
        assert registry_for(d2) is not reg
        assert REGISTRY.get_sample_value("ollamamax_retries_total") is None
        assert reg.get_sample_value("ollamamax_retries_total") == 0
        assert s.server.app[OBSERVABILITY_KEY].registry() is reg


async def test_routes_win_over_gateway_catch_all_and_gateway_still_works():
    async with obs_stack() as s, aiohttp.ClientSession() as session:
        assert has_route(s.server.app, "/{tail}") or any(
            "tail" in getattr(r.resource, "canonical", "") for r in s.server.app.router.routes())
        async with session.get(s.url + "/api/tags") as r:  # still the dispatcher
            assert r.status == 200 and "models" in await r.json()
        async with session.get(s.url + "/nosuch") as r:
            assert r.status == 404 and await r.text() == "404 page not found"
        async with session.post(s.url + "/metrics") as r:  # GET only; POST goes to the gateway
            assert r.status == 404


async def test_metrics_need_the_gateway_key_unless_public():
    async with obs_stack(app_kw={"api_keys": ["k1"]}) as s, aiohttp.ClientSession() as session:
        for path in ("/metrics", "/ollamamax/", "/ollamamax/status"):
            async with session.get(s.url + path) as r:
                assert r.status == 401, path
            async with session.get(s.url + path, headers={"Authorization": "Bearer k1"}) as r:
                assert r.status == 200, path
    async with obs_stack(app_kw={"api_keys": ["k1"], "public": True}) as s, aiohttp.ClientSession() as session:
        async with session.get(s.url + "/metrics") as r:
            assert r.status == 200
        async with session.get(s.url + "/api/tags") as r:  # the API itself still needs the key
            assert r.status == 401


async def test_mounted_as_subapp():
    async with FakeOllama(["llama3.2"], **HOST_KW) as h, Dispatcher([h.url]) as d:
        parent = web.Application()
        parent.add_subapp("/ollama", gateway_app(d))
        server = TestServer(parent, host="127.0.0.1")
        await server.start_server()
        try:
            base = str(server.make_url("/ollama"))
            async with aiohttp.ClientSession() as session:
                fams = await scrape(session, base)
                assert "ollamamax_requests" in fams
                async with session.get(base + "/ollamamax", allow_redirects=False) as r:
                    assert r.status == 302
                    assert r.url.join(URL(r.headers["Location"])).path == "/ollama/ollamamax/"
                async with session.get(base + "/ollamamax") as r:
                    assert r.status == 200 and h.url.split("//")[1] in await r.text()
        finally:
            await server.close()


async def test_metrics_503_without_prometheus_client(monkeypatch):
    for name in [m for m in sys.modules if m == "prometheus_client" or m.startswith("prometheus_client.")]:
        monkeypatch.setitem(sys.modules, name, None)
    metrics._prometheus.cache_clear()
    metrics._collector_class.cache_clear()
    try:
        with pytest.raises(ImportError, match="pip install prometheus_client"):
            make_collector(object())
        async with FakeOllama(["llama3.2"], **HOST_KW) as h, Dispatcher([h.url]) as d:
            app = gateway_app(d)  # installing works without prometheus_client
            server = TestServer(app, host="127.0.0.1")
            await server.start_server()
            try:
                async with aiohttp.ClientSession() as session:
                    async with session.get(server.make_url("/metrics")) as r:
                        assert r.status == 503
                        assert "prometheus_client is not installed" in await r.text()
                    async with session.get(server.make_url("/ollamamax/")) as r:
                        assert r.status == 200  # the status page does not need it
            finally:
                await server.close()
    finally:
        monkeypatch.undo()
        metrics._prometheus.cache_clear()
        metrics._collector_class.cache_clear()


# -- GC pause recorder -------------------------------------------------------------------

@pytest.fixture
def recorder(impl, monkeypatch):
    """A fresh recorder over the native or the pure histogram."""
    monkeypatch.setattr(gcstats, "_new_hist", lambda: impl.LatencyHistogram(lowest=1, highest=6e8))
    r = GcPauseRecorder()
    yield r
    while r.installed:
        r.uninstall()


def test_gc_recorder_records_each_generation(recorder):
    with recorder:
        assert recorder.installed and recorder._callback in gc.callbacks
        gc.collect(0)
        gc.collect(1)
        gc.collect(2)
        junk = [[i] for i in range(1000)]
        for x in junk:
            x.append(x)  # cycles for the collector to find
        del junk, x
        gc.collect()
    assert not recorder.installed and recorder._callback not in gc.callbacks
    hists = recorder.histograms()
    assert hists[0].count >= 1 and hists[1].count >= 1 and hists[2].count >= 2
    assert recorder.collected[2] >= 1000
    s = recorder.summary()
    assert s["all"]["count"] == sum(s[f"gen{g}"]["count"] for g in range(3))
    assert 0 < s["gen2"]["p50_us"] <= s["gen2"]["max_us"] * 1.01
    assert s["all"]["total_us"] > 0
    n = hists[2].count
    gc.collect()  # uninstalled: nothing more recorded
    assert recorder.histograms()[2].count == n
    recorder.reset()
    assert recorder.summary()["all"]["count"] == 0 and recorder.collected == [0, 0, 0]


def test_gc_recorder_install_is_reference_counted(recorder):
    recorder.install()
    recorder.install()
    assert gc.callbacks.count(recorder._callback) == 1
    recorder.uninstall()
    assert recorder.installed
    gc.collect()
    recorder.uninstall()
    assert not recorder.installed and recorder._callback not in gc.callbacks
    with pytest.raises(RuntimeError, match="not installed"):
        recorder.uninstall()


def test_gc_recorder_never_blocks_and_counts_what_it_drops(recorder):
    ring = GcPauseRecorder.RING
    with recorder:
        with recorder._lock:  # a reader holds the lock: the callback must not wait on it
            for _ in range(ring // 2 + 10):
                gc.collect(0)
        assert recorder.histograms()[0].count == ring // 2 + 10  # drained by the reader
        for _ in range(ring + 5):  # drained by the callback itself at half full
            gc.collect(0)
        assert recorder.dropped == 0
        assert recorder.histograms()[0].count == ring // 2 + 10 + ring + 5
        with recorder._lock:
            for _ in range(ring + 7):
                gc.collect(0)
        assert recorder.dropped >= 7
        assert recorder.histograms()[0].count == ring // 2 + 10 + ring + 5 + ring


def test_gc_recorder_ignores_a_stop_without_start(recorder):
    recorder._callback("stop", {"generation": 0, "collected": 0, "uncollectable": 0})
    recorder._callback("start", {"generation": 7})
    recorder._callback("stop", {"generation": 7, "collected": 1, "uncollectable": 0})  # unknown -> gen 2
    assert recorder.histograms()[0].count == 0 and recorder.histograms()[2].count == 1


async def test_gc_pauses_in_metrics():
    async with obs_stack() as s, aiohttp.ClientSession() as session:
        gc.collect()
        gc.collect(0)
        fams = await scrape(session, s.url)
        series = check_histogram(fams["ollamamax_gc_pause_seconds"])
        by_gen = {dict(k)["generation"]: v for k, v in series.items()}
        assert set(by_gen) == {"0", "1", "2"}
        assert by_gen["2"]["count"] >= 1 and by_gen["0"]["count"] >= 1
        assert 0 < by_gen["2"]["sum"] < 60


def test_default_recorder_is_process_wide():
    assert gcstats.default_recorder() is gcstats.default_recorder()


# -- GC tuning ---------------------------------------------------------------------------

def test_tune_gc_sets_thresholds_and_freezes():
    before = gc.get_threshold()
    t = tune_gc(freeze=True, thresholds=(50_000, 20, 20))
    try:
        assert gc.get_threshold() == (50_000, 20, 20)
        assert t.previous_thresholds == before and t.thresholds == (50_000, 20, 20)
        assert t.frozen > 1000 and gc.get_freeze_count() == t.frozen
    finally:
        untune_gc(t)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    t2 = tune_gc(freeze=False, thresholds=None)
    assert t2.thresholds == before and t2.frozen == 0
    t3 = tune_gc(freeze=False, thresholds=[1000])
    try:
        assert gc.get_threshold()[0] == 1000
    finally:
        untune_gc(t3)
    assert gc.get_threshold() == before


@pytest.mark.parametrize(
    ("thresholds", "exc", "match"),
    [
        ((), ValueError, "1 to 3"),
        ((1, 2, 3, 4), ValueError, "1 to 3"),
        ((-1,), ValueError, ">= 0"),
        ((1.5,), TypeError, "ints"),
        ((True,), TypeError, "ints"),
        ("700", TypeError, "tuple"),
        (700, TypeError, "tuple"),
    ],
)
def test_tune_gc_rejects_bad_thresholds(thresholds, exc, match):
    before = gc.get_threshold()
    with pytest.raises(exc, match=match):
        tune_gc(freeze=False, thresholds=thresholds)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_parse_gc_threshold():
    assert parse_gc_threshold("50000,20,20") == (50_000, 20, 20)
    assert parse_gc_threshold(" 700 ") == (700,)
    for bad in ("", "a,b", "1,,2", "1,2,3,4", "-5"):
        with pytest.raises(ValueError):
            parse_gc_threshold(bad)


def test_gc_pauses_tool_runs_both_configurations():
    import json
    import subprocess
    from pathlib import Path

    tool = Path(__file__).resolve().parent.parent / "tools" / "gc_pauses.py"
    out = subprocess.run([sys.executable, str(tool), "--requests", "40", "--warmup", "0", "--concurrency", "4",
                          "--resident", "1000", "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    default, tuned = json.loads(out.stdout)
    assert default["config"] == "default" and tuned["config"] == "tuned"
    assert tuned["thresholds"] == [50_000, 20, 20] and tuned["frozen"] > 1000 and default["frozen"] == 0
    for r in (default, tuned):
        assert r["requests"] == 40 and r["req_per_s"] > 0
        assert set(r["gc"]) == {"gen0", "gen1", "gen2", "all"}
        assert r["gc"]["all"]["count"] == sum(r["gc"][f"gen{g}"]["count"] for g in range(3))
    bad = subprocess.run([sys.executable, str(tool), "--requests", "0"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert bad.returncode == 2 and "--requests" in bad.stderr


def test_registry_cache_does_not_keep_a_dispatcher_alive():
    import weakref

    d = Dispatcher(["http://127.0.0.1:9"])
    reg = registry_for(d)
    ref = weakref.ref(d)
    del d
    gc.collect()
    assert ref() is None
    assert list(reg.collect()) == []  # nothing to report any more


async def test_auth_applies_when_installed_before_the_gateway_catch_all():
    """The order the lead may use in create_app: observability routes first."""
    from ollamamax.frontends.aiohttp_app import GATEWAY_KEY, Gateway

    async with FakeOllama(["llama3.2"], **HOST_KW) as h, Dispatcher([h.url]) as d:
        app = web.Application()
        install_observability(app, d)
        gw = Gateway(d, api_keys=["k1"])
        app[GATEWAY_KEY] = gw
        app.router.add_route("*", "/{tail:.*}", gw.handle)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(server.make_url("/metrics")) as r:
                    assert r.status == 401
                async with session.get(server.make_url("/metrics"), headers={"Authorization": "Bearer k1"}) as r:
                    assert r.status == 200 and "ollamamax_requests" in await r.text()
                async with session.get(server.make_url("/api/version"),
                                       headers={"Authorization": "Bearer k1"}) as r:
                    assert r.status == 200
        finally:
            await server.close()


async def test_scheduler_loads_and_queue_per_model_are_exported():
    """Bug caught: the fleet scheduler's loads, evictions and deferred switches invisible to
    Prometheus, or counted against the wrong host or model."""
    # one host, room for one model: the second model's requests wait for a switch
    async with obs_stack((["llama3.2", "qwen3:0.6b"],), host_kw=[{"max_loaded_models": 1, "load_delay": 0.05}],
                         ) as s, aiohttp.ClientSession() as session:
        for model in ("llama3.2", "qwen3:0.6b"):
            async with session.post(s.url + "/api/chat", json={
                    "model": model, "stream": False, "messages": [{"role": "user", "content": "hi"}]}) as r:
                assert r.status == 200, await r.text()
        fams = await scrape(session, s.url)
        host = s.d.hosts[0].name
        loads = {(smp.labels["host"], smp.labels["model"]): smp.value
                 for smp in samples(fams["ollamamax_model_loads"], "_total")}
        assert loads == {(host, "llama3.2:latest"): 1.0, (host, "qwen3:0.6b"): 1.0}
        assert samples(fams["ollamamax_scheduler_evictions"], "_total")[0].value == 1.0
        assert samples(fams["ollamamax_scheduler_failed_loads"], "_total")[0].value == 0.0
        assert "ollamamax_scheduler_switches_deferred" in fams and "ollamamax_scheduler_preloads" in fams
        assert fams["ollamamax_model_queue_depth"].type == "gauge"
        assert fams["ollamamax_model_queue_depth"].samples == []  # nothing waits now
