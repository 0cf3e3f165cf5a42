"""Behaviour a mutation study found unguarded: each test here failed against a planted bug
that the rest of the suite let through.

* the response cache keys on the model (one embedding model's vectors never answer for another);
* a stream that ends with an in-band ``{"error": ...}`` line is a failure: not cached, not
  counted as a 200, and held against the host (repeated failures eject it);
* ``HostConfig.weight`` scales the share ``least-loaded`` and ``p2c`` give a host;
* a pull fanned out to several hosts succeeds only if every host succeeded.

All through public entry points (``Dispatcher.handle``, ``status()``,
``metrics_snapshot()``) against emulated hosts on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from test_gateway_common import wait_until

from ollamamax.dispatch import Dispatcher, HostConfig
from ollamamax.testing import FakeOllama

pytestmark = pytest.mark.timeout(60)

FAST: dict[str, Any] = dict(tokens_per_sec=0, load_delay=0.01, num_parallel=4, max_loaded_models=3, seed=11)
HOST = "X-Ollamamax-Host"
CACHE = "X-Ollamamax-Cache"


@contextlib.asynccontextmanager
async def hosts(*specs: dict[str, Any]) -> AsyncIterator[list[FakeOllama]]:
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for i, spec in enumerate(specs):
            out.append(await stack.enter_async_context(FakeOllama(**{**FAST, "host_id": f"h{i}", **spec})))
        yield out


def js(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def ndjson(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


# ----------------------------------------------------------------------------- cache key

EMBED_MODELS = ("nomic-embed-text", "granite-embedding")  # both 768-dimensional


def _embed_request(path: str, model: str, text: str) -> bytes:
    if path == "/api/embeddings":
        return js({"model": model, "prompt": text})
    return js({"model": model, "input": text})


def _vector(path: str, body: bytes) -> list[float]:
    doc = json.loads(body)
    if path == "/api/embed":
        return doc["embeddings"][0]
    if path == "/api/embeddings":
        return doc["embedding"]
    return doc["data"][0]["embedding"]


@pytest.mark.parametrize("path", ["/api/embed", "/api/embeddings", "/v1/embeddings"])
async def test_cache_key_includes_the_model(path: str) -> None:
    """Same input, two embedding models: the second model is a cache miss that reaches a
    host, and its vector is its own, not the first model's from the cache."""
    async with hosts({"models": EMBED_MODELS}) as (a,), Dispatcher([a.url]) as d:
        vectors: dict[str, list[float]] = {}
        for model in EMBED_MODELS:
            before = a.stats()["totals"]["served"]
            r = await d.handle("POST", path, _embed_request(path, model, "the same text"), {})
            assert r.status == 200, r.body
            assert r.headers[CACHE] == "miss", model
            assert r.headers[HOST] == d.hosts[0].name  # answered by the host, not the cache
            assert a.stats()["totals"]["served"] == before + 1
            vectors[model] = _vector(path, r.body)
            if path != "/api/embeddings":  # the legacy route does not echo the model
                assert json.loads(r.body)["model"] == model
            # the cache is in play: the same request again is a hit with the same vector
            again = await d.handle("POST", path, _embed_request(path, model, "the same text"), {})
            assert again.headers[CACHE] == "hit"
            assert _vector(path, again.body) == vectors[model]
        first, second = (vectors[m] for m in EMBED_MODELS)
        assert len(first) == len(second)
        assert first != second
        assert d.metrics_snapshot()["counters"]["cache_misses"] == 2


# ------------------------------------------------------- in-band error at the end of a stream


def _deterministic_generate(prompt: str = "tell me") -> bytes:
    return js({"model": "llama3.2", "prompt": prompt, "stream": True,
               "options": {"temperature": 0, "seed": 42}})


FAILING = {"preload": ["llama3.2"], "midstream_fail_rate": 1.0}


async def _failed_stream(d: Dispatcher, prompt: str = "tell me") -> tuple[dict[str, str], list[dict[str, Any]]]:
    r = await d.handle("POST", "/api/generate", _deterministic_generate(prompt), {})
    assert r.status == 200 and r.stream is not None  # the error comes after the first bytes
    lines = ndjson(await r.read())
    assert len(lines) >= 2 and "response" in lines[0]  # some tokens went out ...
    assert "error" in lines[-1]  # ... then the host's in-band error ended the stream
    return r.headers, lines


async def test_stream_ending_in_error_is_not_cached() -> None:
    async with hosts(FAILING) as (a,), Dispatcher(
            [a.url], cache_generate=True, eject_after_failures=100, refresh_interval=60) as d:
        for attempt in range(3):
            before = a.stats()["totals"]["failed"]
            headers, _ = await _failed_stream(d)
            assert headers[CACHE] == "miss", attempt
            assert headers[HOST] == d.hosts[0].name
            assert a.stats()["totals"]["failed"] == before + 1  # went to the host, not replayed
        assert d.metrics_snapshot()["counters"]["cache_hits"] == 0
        assert d.status()["cache"]["currsize"] == 0


async def test_stream_ending_in_error_is_not_counted_as_200() -> None:
    async with hosts(FAILING) as (a,), Dispatcher(
            [a.url], cache_generate=True, eject_after_failures=100, refresh_interval=60) as d:
        await _failed_stream(d)
        await _failed_stream(d)
        requests = d.metrics_snapshot()["counters"]["requests"]
        name = d.hosts[0].name
        assert {k: v for k, v in requests.items() if k[3] == 200} == {}
        assert sum(v for (path, _m, host, status), v in requests.items()
                   if path == "/api/generate" and host == name and status >= 500) == 2
        assert d.metrics_snapshot()["histograms"]["ttfb"] == {}  # no success was recorded


async def test_stream_ending_in_error_counts_against_the_host() -> None:
    """Each such stream is a failure of its host: while its peer succeeds, the failing host's
    share of failures stands out and outlier detection ejects it (visible in status() and
    the ejection counter)."""
    async with hosts(FAILING, {"seed": 5, "preload": ["llama3.2"]}) as (a, b), Dispatcher(
            [a.url, b.url], cache_generate=True, eject_cooldown=60, refresh_interval=60,
            panic_threshold=0, strategy="round-robin") as d:
        name = d.hosts[0].name
        for i in range(24):  # each failing stream reaches the client as it is: no retry
            r = await d.handle("POST", "/api/generate", _deterministic_generate(f"n{i}"), {})
            await r.read()
            if d.hosts[0].down:
                break
        st = d.status()["hosts"][0]
        assert st["healthy"] is False and st["ejected_until"] is not None
        assert d.metrics_snapshot()["counters"]["ejections"] == {name: 1}
        assert d.status()["hosts"][1]["healthy"] is True


# ----------------------------------------------------------------------------- weights

N_CONCURRENT = 16


@pytest.mark.parametrize("strategy", ["least-loaded", "p2c"])
async def test_weight_scales_the_share_of_concurrent_requests(strategy: str) -> None:
    """Hosts of weight 1 and 3 with the same capacity: of 16 requests in flight together,
    the heavier host takes three times as many (12 and 4; one either way for ties)."""
    slow = {"preload": ["llama3.2"], "tokens_per_sec": 100, "response_tokens": (10, 10),
            "num_parallel": N_CONCURRENT}
    async with hosts(slow, slow) as (a, b):
        cfg = [HostConfig(a.url, name="light", weight=1, max_concurrency=N_CONCURRENT, num_parallel=N_CONCURRENT),
               HostConfig(b.url, name="heavy", weight=3, max_concurrency=N_CONCURRENT, num_parallel=N_CONCURRENT)]
        async with Dispatcher(cfg, strategy=strategy, refresh_interval=60) as d:
            peak = {"light": 0, "heavy": 0}

            async def one(i: int) -> str:
                r = await d.handle("POST", "/api/generate",
                                   js({"model": "llama3.2", "prompt": f"p{i}", "stream": False}), {})
                for h in d.hosts:
                    peak[h.name] = max(peak[h.name], h.in_flight)
                assert r.status == 200, r.body
                return r.headers[HOST]

            counts = Counter(await asyncio.gather(*(one(i) for i in range(N_CONCURRENT))))
            assert sum(counts.values()) == N_CONCURRENT
            assert abs(counts["light"] - N_CONCURRENT // 4) <= 1, counts
            assert counts["heavy"] >= 2 * counts["light"], counts
            assert peak["heavy"] >= 2 * peak["light"] > 0, peak  # they really overlapped


def _hosts_with_weights(weights: list[float], capacity: int) -> list[Any]:
    from ollamamax.fleet.hosts import HostState

    out = []
    for i, w in enumerate(weights):
        url = f"http://10.0.0.{i + 1}:11434"
        h = HostState(index=i, config=HostConfig(url, weight=w), name=f"h{i}", url=url, capacity=capacity)
        h.down = h.unreachable = False
        out.append(h)
    return out


def _assign(strategy: Any, hs: list[Any], n: int) -> list[int]:
    """n requests that stay in flight, each to the first host of the strategy's order."""
    from ollamamax.placement.strategies import RoutingKey

    for _ in range(n):
        first = strategy.order(hs, RoutingKey("llama3.2:latest"))[0]
        first.in_flight += 1
    return [h.in_flight for h in hs]


def test_least_loaded_strategy_fills_hosts_in_proportion_to_weight() -> None:
    from ollamamax.placement.strategies import LeastLoadedStrategy

    got = _assign(LeastLoadedStrategy(), _hosts_with_weights([1, 3, 2], 100), 120)
    assert got == [20, 60, 40]


def test_p2c_strategy_favours_heavier_hosts() -> None:
    """Three candidates, weights 1, 1, 3 (seeded): with 200 requests in flight the heavy
    host holds about 3x each light one (bound: 2x..3.5x of their mean)."""
    from ollamamax.placement.strategies import P2CStrategy

    light1, light2, heavy = _assign(P2CStrategy(random.Random(1234)), _hosts_with_weights([1, 1, 3], 1000), 200)
    ratio = heavy / ((light1 + light2) / 2)
    assert 2.0 <= ratio <= 3.5, (light1, light2, heavy)


# ----------------------------------------------------------------------------- pull fan-out

LOCAL_ONLY = "nosuch-local-model"  # on host a only; the (fake) registry does not know it


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "no-stream"])
async def test_pull_is_not_a_success_when_one_host_fails(stream: bool) -> None:
    """Pulling a name only host a can serve (it has it locally; the registry does not know
    it, so host b fails): the fan-out must report the failure, naming host b."""
    async with hosts({"models": ["llama3.2", LOCAL_ONLY]}, {"models": ["llama3.2"]}) as (a, b):
        async with Dispatcher([HostConfig(a.url, name="a"), HostConfig(b.url, name="b")],
                              refresh_interval=60) as d:
            r = await d.handle("POST", "/api/pull", js({"model": LOCAL_ONLY, "stream": stream}), {})
            data = await r.read()
            if stream:
                assert r.status == 200  # progress streamed; the verdict is the last line
                lines = ndjson(data)
                assert lines[-1].keys() == {"error"}, lines
                # Ollama's own words, once, naming no host; which host failed is logged
                assert lines[-1]["error"] == "pull model manifest: file does not exist"
                assert {"status": "success"} not in lines
            else:
                assert r.status >= 400, data
                assert "file does not exist" in json.loads(data)["error"]
            with pytest.raises(Exception, match="file does not exist"):
                await d.pull(LOCAL_ONLY, stream=False)  # the embedded API raises too


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "no-stream"])
async def test_pull_is_not_a_success_when_a_host_dies_mid_pull(stream: bool) -> None:
    """Host b is killed while its pull is under way; host a's pull succeeds."""
    async with hosts({}, {"pull_delay": 2.0}) as (a, b):
        async with Dispatcher([HostConfig(a.url, name="a"), HostConfig(b.url, name="b")],
                              refresh_interval=60) as d:
            before = b.requests_total
            task = asyncio.create_task(
                d.handle("POST", "/api/pull", js({"model": "all-minilm", "stream": stream}), {}))
            if stream:
                r = await task  # the merged stream starts once both hosts answered
                assert r.status == 200
                reading = asyncio.create_task(r.read())
                assert await wait_until(lambda: a.lookup("all-minilm") is not None)
                await b.kill()
                lines = ndjson(await reading)
                assert lines[-1].keys() == {"error"}, lines
                assert lines[-1]["error"] == "connection lost"  # no host named in the stream
                assert d._broadcaster is not None
                assert [h["name"] for h in d._broadcaster.last_failures[-1]["hosts"]] == ["b"]
                assert {"status": "success"} not in lines
            else:
                assert await wait_until(lambda: b.requests_total > before and a.lookup("all-minilm") is not None)
                await b.kill()
                r = await task
                data = await r.read()
                assert r.status >= 400, data
                assert "b" in r.headers[HOST].split(",")
