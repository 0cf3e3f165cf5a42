"""Pull, push and create fanned out over several emulated hosts answer as one Ollama would.

Realistic bugs each test catches: a status line repeated once per host; a layer's
``completed`` starting again from 0 when the next host reports it (a progress bar that
jumps back); one success line per host, or a success although a host failed; an error
that lists every host with its address (``127.0.0.1:port: ...; ...``) instead of
Ollama's own text; a ``stream: false`` answer that is not Ollama's JSON; a push of an
unknown model answered 404 where Ollama streams an in-band error; an unload that misses
a host the gateway did not know had the model loaded; ``/api/version`` claiming a
version when no host is reachable.
"""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

import aiohttp
import pytest

from ollamamax.dispatch import Dispatcher

from test_dispatch_routes import fleet, js  # the same emulated fleet and body helper

pytestmark = pytest.mark.timeout(60)

NOT_IN_REGISTRY = "pull model manifest: file does not exist"


def ndjson(data: bytes) -> list[dict[str, Any]]:
    assert b"\n\n" not in data and data.endswith(b"\n"), data  # the Python client chokes on blank lines
    return [json.loads(x) for x in data.splitlines()]


async def direct(url: str, path: str, obj: dict[str, Any]) -> bytes:
    async with aiohttp.ClientSession() as s:
        async with s.post(url + path, json=obj) as r:
            return await r.read()


def fanout_failures(d: Dispatcher) -> list[dict[str, Any]]:
    bc = d._broadcaster  # until the dispatcher passes them to the status document (see below)
    assert bc is not None
    return bc.last_failures


def is_layer(x: dict[str, Any]) -> bool:
    return "digest" in x and ("total" in x or "completed" in x)


def assert_coherent(lines: list[dict[str, Any]], n_hosts: int, single: list[dict[str, Any]]) -> None:
    """One stream as one Ollama would send it (``single`` is what one host sends)."""
    assert lines[-1] == {"status": "success"} and lines.count({"status": "success"}) == 1, lines
    assert not any("error" in x for x in lines)
    others = [x["status"] for x in lines if not is_layer(x)]
    assert len(others) == len(set(others)), others  # each status once
    assert others == [x["status"] for x in single if not is_layer(x)]  # in Ollama's order
    per_digest: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for x in lines:
        if is_layer(x):
            per_digest.setdefault((x["status"], x["digest"]), []).append(x)
    single_total = {(x["status"], x["digest"]): x["total"] for x in single if is_layer(x)}
    assert per_digest.keys() == single_total.keys()
    for key, seq in per_digest.items():
        done = [x.get("completed", 0) for x in seq]
        totals = [x.get("total", 0) for x in seq]
        assert done == sorted(done) and totals == sorted(totals), (key, seq)  # never backwards
        assert all(d <= t for d, t in zip(done, totals)), seq
        # summed over the hosts, and it ends complete
        assert totals[-1] == done[-1] == n_hosts * single_total[key], (key, seq)
    # not one line per host per update: about one host's worth (old code: n times that)
    assert len(lines) <= len(single) + len(single_total), (len(lines), len(single))
    assert all(x != y for x, y in zip(lines, lines[1:])), lines  # nothing sent twice in a row


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("delay", [0.0, 0.3], ids=["burst", "paced"])
async def test_pull_fanout_is_one_coherent_stream(n: int, delay: float) -> None:
    async with fleet(*[{"pull_delay": delay * (1 + i / 3)} for i in range(n)]) as hosts:
        async with Dispatcher([h.url for h in hosts], refresh_interval=60) as d:
            r = await d.handle("POST", "/api/pull", js({"model": "gemma3"}), {})
            assert r.status == 200 and r.headers["Content-Type"] == "application/x-ndjson"
            data = await r.read()
            assert all("gemma3:latest" in h["models"] for h in d.status()["hosts"])
            assert fanout_failures(d) == []
        single = ndjson(await direct(hosts[0].url, "/api/pull", {"model": "gemma3"}))
    assert b"127.0.0.1" not in data
    assert_coherent(ndjson(data), n, single)


async def test_pull_fanout_through_the_embedded_client() -> None:
    async with fleet({}, {}) as hosts:
        async with Dispatcher([h.url for h in hosts], refresh_interval=60) as d:
            parts = [p async for p in await d.pull("phi3", stream=True)]
            single = ndjson(await direct(hosts[0].url, "/api/pull", {"model": "phi3"}))
    assert_coherent(parts, 2, single)


async def test_failed_pull_gives_ollamas_error_once_without_addresses(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ollamamax.dispatch.broadcast")
    async with fleet({}, {}, {}) as hosts:
        async with Dispatcher([h.url for h in hosts], refresh_interval=60) as d:
            r = await d.handle("POST", "/api/pull", js({"model": "nosuchmodel-xyz"}), {})
            assert r.status == 200
            data = await r.read()
            assert ndjson(data) == [{"status": "pulling manifest"}, {"error": NOT_IN_REGISTRY}]
            assert b"127.0.0.1" not in data
            # which hosts failed: in the log and on the status page
            (rec,) = fanout_failures(d)
            assert rec["route"] == "/api/pull" and rec["model"] == "nosuchmodel-xyz" and rec["error"] == NOT_IN_REGISTRY
            assert sorted(x["url"] for x in rec["hosts"]) == sorted(h.url for h in hosts)
            assert all(x["error"] == NOT_IN_REGISTRY for x in rec["hosts"])
            with pytest.raises(Exception, match="^" + NOT_IN_REGISTRY):
                async for _ in await d.pull("nosuchmodel-xyz", stream=True):
                    pass
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert all(h.url in logged for h in hosts), logged


async def test_pull_failing_on_one_host_only() -> None:
    """Host a has the model locally, the registry does not know it: b fails.  The stream
    carries a's progress once, then b's error in Ollama's words, no success."""
    local = "nosuch-local-model"
    async with fleet({"models": [local]}, {}) as (a, b):
        async with Dispatcher([a.url, b.url], refresh_interval=60) as d:
            r = await d.handle("POST", "/api/pull", js({"model": local}), {})
            lines = ndjson(await r.read())
            assert lines[-1] == {"error": NOT_IN_REGISTRY}
            assert sum("error" in x for x in lines) == 1 and {"status": "success"} not in lines
            assert [x["status"] for x in lines if "status" in x].count("pulling manifest") == 1
            (rec,) = fanout_failures(d)
            assert [x["url"] for x in rec["hosts"]] == [b.url]


async def test_pull_stream_false_is_one_ollama_answer() -> None:
    async with fleet({}, {}, {}) as hosts:
        async with Dispatcher([h.url for h in hosts], refresh_interval=60) as d:
            r = await d.handle("POST", "/api/pull", js({"model": "nosuchmodel-xyz", "stream": False}), {})
            assert (r.status, json.loads(r.body)) == (500, {"error": NOT_IN_REGISTRY})
            r = await d.handle("POST", "/api/pull", js({"model": "qwen3:8b", "stream": False}), {})
            assert (r.status, json.loads(r.body)) == (200, {"status": "success"})
            with pytest.raises(Exception, match="^" + NOT_IN_REGISTRY):
                await d.pull("nosuchmodel-xyz")
            # a host that went away since the last refresh: our words, not its address
            for stream, dead in ((False, hosts[1]), (True, hosts[2])):
                await dead.kill()
                r = await d.handle("POST", "/api/pull", js({"model": "phi3", "stream": stream}), {})
                data = await r.read()
                assert b"127.0.0.1" not in data and b"localhost" not in data, data
                err = (json.loads(data) if not stream else ndjson(data)[-1])["error"]
                assert err == "connection refused" and r.status == (200 if stream else 502), (r.status, data)
                assert [x["url"] for x in fanout_failures(d)[-1]["hosts"]] == [dead.url]


async def test_create_fanout_error_and_success() -> None:
    async with fleet({"models": ["gemma3"]}, {"models": ["gemma3"]}, {"models": ["gemma3"]}) as hosts:
        async with Dispatcher([h.url for h in hosts], refresh_interval=60) as d:
            # a source no host has: every host fails the same way; Ollama's text once
            body = {"model": "mine", "from": "nosuch"}
            single = ndjson(await direct(hosts[0].url, "/api/create", body))
            r = await d.handle("POST", "/api/create", js(body), {})
            data = await r.read()
            assert r.status == 200 and ndjson(data) == single, data
            assert "127.0.0.1" not in single[-1]["error"]
            r = await d.handle("POST", "/api/create", js({**body, "stream": False}), {})
            assert (r.status, json.loads(r.body)) == (500, {"error": "model 'nosuch' not found"})
            assert [x["route"] for x in fanout_failures(d)] == ["/api/create"] * 2
            # success: each status once, one success
            body = {"model": "mine", "from": "gemma3", "system": "be brief"}
            r = await d.handle("POST", "/api/create", js(body), {})
            lines = ndjson(await r.read())
            assert lines == ndjson(await direct(hosts[0].url, "/api/create", {**body, "model": "mine2"}))
            assert all("mine:latest" in h["models"] for h in d.status()["hosts"])


async def test_push_of_an_unknown_model_answers_as_ollama() -> None:
    """Ollama streams ``retrieving manifest`` and an in-band error (200), or answers 500
    with ``stream: false``; it never answers 404 on push."""
    async with fleet({"models": ["llama3.2"]}, {}) as (a, b):
        async with Dispatcher([a.url, b.url], refresh_interval=60) as d:
            want = ndjson(await direct(a.url, "/api/push", {"model": "nosuch"}))
            r = await d.handle("POST", "/api/push", js({"model": "nosuch"}), {})
            data = await r.read()
            assert (r.status, ndjson(data)) == (200, want)
            r = await d.handle("POST", "/api/push", js({"model": "nosuch", "stream": False}), {})
            assert r.status == 500 and json.loads(r.body) == {"error": want[-1]["error"]}


async def test_unload_reaches_a_host_the_gateway_did_not_know_had_it_loaded() -> None:
    async with fleet({"models": ["llama3.2"]}, {"models": ["llama3.2"]}) as (a, b):
        async with Dispatcher([a.url, b.url], refresh_interval=60) as d:
            # loaded on b behind the gateway's back (a client talking to b directly)
            await direct(b.url, "/api/generate", {"model": "llama3.2", "prompt": "", "keep_alive": -1})
            assert b.loaded_models()
            r = await d.handle("POST", "/api/generate", js({"model": "llama3.2", "keep_alive": 0}), {})
            assert r.status == 200 and json.loads(r.body)["done_reason"] == "unload"
            assert not b.loaded_models() and not a.loaded_models()


async def test_version_with_no_reachable_host_is_a_503() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: refused
        async with Dispatcher([dead], refresh_interval=60) as d:
            r = await d.handle("GET", "/api/version", b"", {})
            assert r.status == 503 and json.loads(r.body) == {"error": "no healthy host available"}
            assert "Retry-After" in r.headers
    async with fleet({}) as (a,):
        async with Dispatcher([a.url], refresh_interval=60) as d:
            r = await d.handle("GET", "/api/version", b"", {})
            assert r.status == 200 and json.loads(r.body)["version"] == (await a_version(a.url))


async def a_version(url: str) -> str:
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/api/version") as r:
            return str((await r.json())["version"])


def test_verdict_prefers_the_hosts_most_common_error() -> None:
    from ollamamax.dispatch.broadcast import Failure, verdict

    class H:
        name, url = "h", "http://127.0.0.1:1"

    h: Any = H()
    fs = [Failure(h, "x", from_host=False), Failure(h, "b", 500), Failure(h, "a", 500), Failure(h, "a", 500)]
    assert verdict(fs).message == "a"  # the hosts' own words, the most common
    assert verdict(fs[:3]).message == "b"  # a tie: the first
    assert verdict(fs[:1]).message == "x"  # only a transport failure


async def test_status_page_shows_fanout_failures() -> None:
    async with fleet({}, {}) as hosts:
        async with Dispatcher([h.url for h in hosts], refresh_interval=60) as d:
            r = await d.handle("POST", "/api/pull", js({"model": "nosuchmodel-xyz", "stream": False}), {})
            assert r.status == 500
            (rec,) = d.status()["last_fanout_failures"]
            assert sorted(x["url"] for x in rec["hosts"]) == sorted(h.url for h in hosts)
