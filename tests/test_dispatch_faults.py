"""Dispatcher fault handling against emulated hosts: one test per fault."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from test_gateway_common import wait_until

from ollamamax.dispatch import Dispatcher, HostConfig
from ollamamax.testing import FakeOllama
from ollamamax.wire.ollama import BUSY_MESSAGE
from ollamamax.wire.response import HEADER_ATTEMPTS, HEADER_HOST, HEADER_QUEUE_MS

pytestmark = pytest.mark.timeout(60)

FAST = dict(tokens_per_sec=0, load_delay=0.02, num_parallel=4, max_loaded_models=2)
OUR_HEADERS = ("X-Ollamamax-Host", "X-Ollamamax-Cold-Load", "X-Ollamamax-Queue-Ms", "X-Ollamamax-Attempts")


@contextlib.asynccontextmanager
async def fleet(*specs: dict[str, Any]) -> AsyncIterator[list[FakeOllama]]:
    async with contextlib.AsyncExitStack() as stack:
        hosts = []
        for i, spec in enumerate(specs):
            kw = {**FAST, "host_id": "abcdefgh"[i], **spec}
            hosts.append(await stack.enter_async_context(FakeOllama(**kw)))
        yield hosts


def chat_body(model: str = "llama3.2", content: str = "hi", stream: bool = False) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served(host: FakeOllama, model: str = "llama3.2:latest") -> int:
    return host.stats()["models"].get(model, {}).get("served", 0)


until = wait_until  # poll a condition, bounded (returns whether it came true)


async def test_host_down_at_start_is_not_fatal() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with fleet({"preload": ["llama3.2"]}) as (b,):
        t0 = time.monotonic()
        async with Dispatcher([dead, b.url], connect_timeout=1.0) as d:
            assert time.monotonic() - t0 < 2.0
            st = d.status()
            assert [h["healthy"] for h in st["hosts"]] == [False, True]
            assert st["hosts"][0]["error"]
            for i in range(3):
                r = await d.handle("POST", "/api/chat", chat_body(content=str(i)), {})
                assert r.status == 200 and r.headers[HEADER_HOST] == d.hosts[1].name


async def test_host_killed_under_load() -> None:
    slow = {"preload": ["llama3.2"], "tokens_per_sec": 40, "response_tokens": (12, 12)}
    async with fleet(slow, slow) as (a, b):
        async with Dispatcher([a.url, b.url], retry_backoff=0.01) as d:

            async def one(i: int, stream: bool) -> tuple[int, bytes, str]:
                r = await d.handle("POST", "/api/chat", chat_body(content=f"m{i}", stream=stream), {})
                return r.status, await r.read(), r.headers[HEADER_HOST]

            tasks = [asyncio.create_task(one(i, stream=i % 3 == 0)) for i in range(18)]
            await asyncio.sleep(0.12)  # streams are under way, A holds requests
            await a.kill()
            results = await asyncio.gather(*tasks)
            completed = 0
            broken_streams = 0
            for i, (status, data, _host) in enumerate(results):
                lines = [json.loads(x) for x in data.splitlines()]
                assert status == 200
                if i % 3 == 0:  # stream: either complete, or ends with one in-band error
                    assert lines
                    if "error" in lines[-1]:
                        broken_streams += 1
                        assert not any(x.get("done") for x in lines)
                        assert sum("error" in x for x in lines) == 1
                    else:
                        assert lines[-1]["done"] is True
                        completed += 1
                else:  # non-streaming: always succeeds through retry
                    assert len(lines) == 1 and lines[0]["done"] is True
                    completed += 1
            assert broken_streams >= 1
            # no request served twice: every completion was counted by exactly one host
            assert served(a) + served(b) == completed
            assert d.metrics_snapshot()["counters"]["retries"] >= 1


async def test_host_hangs_ttfb_timeout_retries_elsewhere() -> None:
    async with fleet({"preload": ["llama3.2"]}, {"models": ["llama3.2"]}) as (a, b):
        async with Dispatcher([a.url, b.url], first_byte_timeout=0.4, refresh_interval=30) as d:
            a.hanging = True
            t0 = time.monotonic()
            r = await d.handle("POST", "/api/chat", chat_body(), {})
            assert r.status == 200
            assert r.headers[HEADER_HOST] == d.hosts[1].name
            assert r.headers[HEADER_ATTEMPTS] == "2"
            assert 0.3 < time.monotonic() - t0 < 5
            # streaming too: the first byte never came from A, so it is retried
            r = await d.handle("POST", "/api/chat", chat_body(stream=True), {})
            assert r.status == 200 and r.headers[HEADER_HOST] == d.hosts[1].name
            assert json.loads((await r.read()).splitlines()[-1])["done"] is True
            a.hanging = False


async def test_host_flaps_ejected_then_back_via_probes() -> None:
    pre = {"preload": ["llama3.2"]}
    async with fleet(pre, pre) as (a, b):
        async with Dispatcher(
            [a.url, b.url], eject_after_failures=1, eject_cooldown=0.1, refresh_interval=0.2, retry_backoff=0.01
        ) as d:
            ha = d.hosts[0]
            for _ in range(2):
                await a.kill()
                # requests keep succeeding through B while A is out
                for i in range(4):
                    r = await d.handle("POST", "/api/chat", chat_body(content=str(i)), {})
                    assert r.status == 200
                assert await until(lambda: ha.down)
                assert d.status()["hosts"][0]["healthy"] is False
                await a.restart()
                assert await until(lambda: not ha.down, 5.0)
                assert d.status()["hosts"][0]["healthy"] is True
            assert d.metrics_snapshot()["counters"]["ejections"].get(ha.name, 0) >= 1
            before = served(a)
            for i in range(6):
                await d.handle("POST", "/api/chat", chat_body(content=f"after {i}"), {})
            assert served(a) > before  # back in rotation


async def test_host_busy_503_retried_elsewhere() -> None:
    pre = {"preload": ["llama3.2"]}
    async with fleet(pre, {"models": ["llama3.2"]}) as (a, b):
        async with Dispatcher([a.url, b.url], retry_backoff=0.01) as d:
            a.busy = True
            r = await d.handle("POST", "/api/chat", chat_body(), {})
            assert r.status == 200
            assert r.headers[HEADER_HOST] == d.hosts[1].name
            assert r.headers[HEADER_ATTEMPTS] == "2"
            # every host busy: Ollama's own 503 body and a Retry-After
            b.busy = True
            r = await d.handle("POST", "/api/chat", chat_body(), {})
            assert r.status == 503
            assert json.loads(r.body) == {"error": BUSY_MESSAGE}
            assert int(r.headers["Retry-After"]) >= 1
            assert r.headers[HEADER_ATTEMPTS] == "3"
            assert not d.hosts[0].down  # busy is not a health failure


async def test_gateway_queue_full_and_queue_timeout() -> None:
    slow = {"preload": ["llama3.2"], "tokens_per_sec": 20, "response_tokens": (20, 20)}
    async with fleet(slow) as (a,):
        async with Dispatcher([HostConfig(a.url, max_concurrency=1)], queue_size=1, queue_timeout=0.3) as d:
            held = await d.handle("POST", "/api/chat", chat_body(stream=True), {})
            waiter = asyncio.create_task(d.handle("POST", "/api/chat", chat_body(content="w"), {}))
            await until(lambda: d.admission.waiting == 1)
            t0 = time.monotonic()
            r = await d.handle("POST", "/api/chat", chat_body(content="third"), {})
            assert time.monotonic() - t0 < 0.2  # refused at once
            assert r.status == 503 and json.loads(r.body) == {"error": BUSY_MESSAGE}
            assert "Retry-After" in r.headers
            for h in OUR_HEADERS:
                assert h in r.headers
            # the waiter times out after queue_timeout
            rw = await waiter
            assert rw.status == 503 and "Retry-After" in rw.headers
            assert float(rw.headers[HEADER_QUEUE_MS]) >= 250
            await held.aclose()
            # the slot came back: a new request is served
            r = await d.handle("POST", "/api/chat", chat_body(content="later"), {})
            assert r.status == 200
            assert d.hosts[0].in_flight == 0 and d.admission.waiting == 0


async def test_close_answers_queued_requests_busy_at_once() -> None:
    slow = {"preload": ["llama3.2"], "tokens_per_sec": 20, "response_tokens": (200, 200)}
    async with fleet(slow) as (a,):
        d = Dispatcher([HostConfig(a.url, max_concurrency=1)], queue_size=4, queue_timeout=30)
        await d.start()
        try:
            held = await d.handle("POST", "/api/chat", chat_body(stream=True), {})
            waiters = [asyncio.create_task(d.handle("POST", "/api/chat", chat_body(content=str(i)), {}))
                       for i in range(3)]
            assert await until(lambda: d.admission.waiting == 3)
            t0 = time.monotonic()
            closing = asyncio.create_task(d.close())
            answers = await asyncio.wait_for(asyncio.gather(*waiters), 5)
            assert time.monotonic() - t0 < 2  # not their 30 s deadline
            assert [r.status for r in answers] == [503, 503, 503]
            assert all(json.loads(r.body) == {"error": BUSY_MESSAGE} for r in answers)
            await closing
            await held.aclose()
            assert d.admission.waiting == 0
            with pytest.raises(RuntimeError, match="not running"):  # as before
                await d.handle("POST", "/api/chat", chat_body(content="late"), {})
        finally:
            await d.close()


async def test_waiter_gets_slot_in_fifo_order() -> None:
    slow = {"preload": ["llama3.2"], "tokens_per_sec": 100, "response_tokens": (5, 5)}
    async with fleet(slow) as (a,):
        async with Dispatcher([HostConfig(a.url, max_concurrency=1)]) as d:
            order: list[int] = []

            async def one(i: int) -> None:
                r = await d.handle("POST", "/api/chat", chat_body(content=str(i)), {})
                assert r.status == 200
                order.append(i)

            tasks = []
            for i in range(5):
                tasks.append(asyncio.create_task(one(i)))
                await asyncio.sleep(0.01)
            await asyncio.gather(*tasks)
            assert order == [0, 1, 2, 3, 4]


async def test_consumer_aclose_mid_stream_frees_host_slot() -> None:
    slow = {"preload": ["llama3.2"], "tokens_per_sec": 20, "response_tokens": (40, 40)}
    async with fleet(slow) as (a,):
        async with Dispatcher([a.url]) as d:
            r = await d.handle("POST", "/api/chat", chat_body(stream=True), {})
            assert r.stream is not None
            first = await r.stream.__anext__()
            assert json.loads(first.splitlines()[0])["done"] is False
            assert a.stats()["models"]["llama3.2:latest"]["in_flight"] == 1
            await r.aclose()
            await r.aclose()  # idempotent
            assert d.hosts[0].in_flight == 0
            assert await until(lambda: a.stats()["models"]["llama3.2:latest"]["in_flight"] == 0, 2.0)
            assert served(a) == 0


async def test_consumer_task_cancelled_mid_stream() -> None:
    slow = {"preload": ["llama3.2"], "tokens_per_sec": 20, "response_tokens": (40, 40)}
    async with fleet(slow) as (a,):
        async with Dispatcher([a.url]) as d:
            got = asyncio.Event()

            async def consume() -> None:
                r = await d.handle("POST", "/api/chat", chat_body(stream=True), {})
                try:
                    assert r.stream is not None
                    async for _ in r.stream:
                        got.set()
                finally:
                    await r.aclose()

            t = asyncio.create_task(consume())
            await got.wait()
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            assert d.hosts[0].in_flight == 0
            assert await until(lambda: a.stats()["models"]["llama3.2:latest"]["in_flight"] == 0, 2.0)


async def test_midstream_failure_from_host_passes_through_once() -> None:
    async with fleet({"preload": ["llama3.2"], "response_tokens": (30, 30)}) as (a,):
        async with Dispatcher([a.url], eject_after_failures=100) as d:
            a.midstream_fail_rate = 1.0
            r = await d.handle("POST", "/api/chat", chat_body(stream=True), {})
            lines = [json.loads(x) for x in (await r.read()).splitlines()]
            assert "error" in lines[-1] and sum("error" in x for x in lines) == 1


async def test_host_500_retried_then_passed_through() -> None:
    pre = {"preload": ["llama3.2"]}
    async with fleet(pre, pre) as (a, b):
        async with Dispatcher([a.url, b.url], retry_backoff=0.01, eject_after_failures=100) as d:
            a.fail_rate = 1.0
            for i in range(4):
                r = await d.handle("POST", "/api/chat", chat_body(content=str(i)), {})
                assert r.status == 200 and r.headers[HEADER_HOST] == d.hosts[1].name
            b.fail_rate = 1.0
            r = await d.handle("POST", "/api/chat", chat_body(), {})
            assert r.status == 500
            assert "error" in json.loads(r.body)


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/api/chat", b"", 400, "missing request body"),
        ("/api/chat", b"{", 400, "unexpected EOF"),
        ("/api/chat", b'{"model": "llama3.2",', 400, "unexpected EOF"),
        ("/api/chat", b"{x}", 400, "invalid character 'x' looking for beginning of object key string"),
        ("/api/generate", b"nope", 400, "invalid character 'o' in literal null (expecting 'u')"),
        ("/api/chat", b"[1]", 400, "json: cannot unmarshal array into Go value of type api.ChatRequest"),
        (
            "/api/chat",
            b'{"model": 7}',
            400,
            "json: cannot unmarshal number into Go struct field ChatRequest.model of type string",
        ),
        (
            "/api/generate",
            b'{"model": "llama3.2", "stream": "yes"}',
            400,
            "json: cannot unmarshal string into Go struct field GenerateRequest.stream of type bool",
        ),
        (
            "/api/chat",
            b'{"model": "llama3.2", "messages": {}}',
            400,
            "json: cannot unmarshal object into Go struct field ChatRequest.messages of type []api.Message",
        ),
        ("/api/chat", b'{"messages": []}', 400, "model is required"),
        ("/api/generate", b'{"prompt": "x"}', 404, "model '' not found"),
        ("/api/generate", b'{"model": "nosuch"}', 404, "model 'nosuch' not found"),
        ("/api/chat", b'{"model": "NoSuch:7b"}', 404, "model 'NoSuch:7b' not found"),
        ("/api/embed", b'{"model": "nosuch", "input": "x"}', 404, 'model "nosuch" not found, try pulling it first'),
        (
            "/api/embeddings",
            b'{"model": "nosuch", "prompt": "x"}',
            404,
            'model "nosuch" not found, try pulling it first',
        ),
        ("/api/show", b'{"model": "nosuch"}', 404, "model 'nosuch:latest' not found"),
    ],
)
async def test_bad_requests_get_ollama_errors_and_dispatcher_keeps_serving(
    path: str, body: bytes, status: int, message: str
) -> None:
    async with fleet({"preload": ["llama3.2"]}) as (a,):
        async with Dispatcher([a.url]) as d:
            r = await d.handle("POST", path, body, {})
            assert r.status == status
            assert r.headers["Content-Type"] == "application/json; charset=utf-8"
            assert json.loads(r.body) == {"error": message}
            for h in OUR_HEADERS:
                assert h in r.headers
            ok = await d.handle("POST", "/api/chat", chat_body(), {})
            assert ok.status == 200
            assert d.hosts[0].in_flight == 0


async def test_openai_errors_use_openai_shape() -> None:
    async with fleet({"preload": ["llama3.2"]}) as (a,):
        async with Dispatcher([a.url]) as d:
            r = await d.handle("POST", "/v1/chat/completions", b'{"model": "nosuch", "messages": []}', {})
            assert r.status == 404
            err = json.loads(r.body)["error"]
            assert err["type"] == "not_found_error" and "nosuch" in err["message"]
            r = await d.handle("POST", "/v1/chat/completions", b"{bad", {})
            assert r.status == 400 and json.loads(r.body)["error"]["type"] == "invalid_request_error"


async def test_trailing_data_after_json_is_ignored_like_go() -> None:
    async with fleet({"preload": ["llama3.2"]}) as (a,):
        async with Dispatcher([a.url]) as d:
            body = chat_body() + b" trailing"
            r = await d.handle("POST", "/api/chat", body, {})
            # the original bytes are forwarded unchanged; the host, like Go's decoder, reads
            # the first JSON value and ignores the tail: a normal answer
            assert r.status == 200, r.body
            reply = json.loads(r.body)
            assert reply["done"] is True and reply["message"]["role"] == "assistant"
            assert reply["message"]["content"]
            assert r.headers[HEADER_HOST] == d.hosts[0].name


async def test_stream_closed_after_final_object_counts_as_success() -> None:
    async with fleet({"preload": ["llama3.2"]}) as (a,):
        async with Dispatcher([a.url]) as d:
            r = await d.handle("POST", "/api/chat", chat_body(stream=True), {})
            assert r.stream is not None
            buf = b""
            async for chunk in r.stream:
                buf += chunk
                if b'"done":true' in buf:
                    break
            await r.aclose()
            reqs = d.metrics_snapshot()["counters"]["requests"]
            assert reqs == {("/api/chat", "llama3.2:latest", d.hosts[0].name, 200): 1}
            assert d.hosts[0].in_flight == 0


async def test_chaos_no_slot_leaks() -> None:
    """Random failures, mid-stream errors, early closes and a kill: every slot comes back."""
    import random

    rng = random.Random(5)
    spec = {"preload": ["llama3.2"], "tokens_per_sec": 400, "response_tokens": (4, 12), "num_parallel": 3}
    async with fleet(spec, spec, spec) as hosts:
        for h in hosts:
            h.fail_rate = 0.15
            h.midstream_fail_rate = 0.1
        async with Dispatcher(
            [HostConfig(h.url, max_concurrency=3, num_parallel=3) for h in hosts],
            retry_backoff=0.005,
            eject_cooldown=0.05,
            refresh_interval=0.2,
            queue_size=128,  # every request may wait: the 503s left come from the faults
            queue_timeout=5,
        ) as d:
            statuses: list[int] = []

            async def one(i: int) -> None:
                stream = rng.random() < 0.5
                r = await d.handle("POST", "/api/chat", chat_body(content=f"c{i}", stream=stream), {})
                statuses.append(r.status)
                if r.stream is not None and rng.random() < 0.3:
                    await r.stream.__anext__()
                    await r.aclose()
                else:
                    await r.read()

            tasks = [asyncio.create_task(one(i)) for i in range(120)]
            await asyncio.sleep(0.2)
            await hosts[0].kill()
            await asyncio.gather(*tasks)
            await hosts[0].restart()
            assert all(s in (200, 500, 502, 503) for s in statuses)
            assert statuses.count(200) > 60, sorted(statuses)
            assert all(h.in_flight == 0 for h in d.hosts)
            assert d.admission.waiting == 0
            assert not d._streams


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_soak_mixed_faults_invariants() -> None:
    """Long run (``-m slow``): 2000 mixed requests with faults, kills and restarts."""
    import random

    rng = random.Random(11)
    spec = {"preload": ["llama3.2"], "tokens_per_sec": 800, "response_tokens": (2, 10), "num_parallel": 4}
    async with fleet(spec, spec, spec, spec) as hosts:
        for h in hosts:
            h.fail_rate = 0.05
            h.midstream_fail_rate = 0.05
        async with Dispatcher(
            [HostConfig(h.url, max_concurrency=4) for h in hosts],
            retry_backoff=0.002,
            eject_cooldown=0.05,
            refresh_interval=0.1,
            queue_size=256,
            queue_timeout=10,
            strategy="p2c",
        ) as d:
            sem = asyncio.Semaphore(48)
            ok = 0

            async def one(i: int) -> None:
                nonlocal ok
                async with sem:
                    r = await d.handle("POST", "/api/chat", chat_body(content=f"s{i}", stream=i % 2 == 0), {})
                    if r.stream is not None and rng.random() < 0.2:
                        await r.stream.__anext__()
                        await r.aclose()
                        return
                    await r.read()
                    ok += r.status == 200

            async def chaos() -> None:
                for _ in range(6):
                    await asyncio.sleep(0.3)
                    victim = rng.choice(hosts)
                    await victim.kill()
                    await asyncio.sleep(0.2)
                    await victim.restart()

            await asyncio.gather(chaos(), *(one(i) for i in range(2000)))
            assert ok > 1200
            assert all(h.in_flight == 0 for h in d.hosts)
            assert d.admission.waiting == 0 and not d._streams


async def test_v1_stream_that_ends_without_done_counts_as_a_host_failure() -> None:
    """Ollama's OpenAI layer ends a failed /v1 stream with an empty delta and no ``[DONE]``
    (no error line): the gateway passes it through as is, but counts the host's failure
    (a 500 in ``requests_total``), not a success."""
    async with fleet({"preload": ["llama3.2"], "response_tokens": (30, 30)}) as (a,):
        async with Dispatcher([a.url], eject_after_failures=100) as d:
            a.midstream_fail_rate = 1.0
            body = json.dumps({"model": "llama3.2", "stream": True,
                               "messages": [{"role": "user", "content": "hi"}]}).encode()
            r = await d.handle("POST", "/v1/chat/completions", body, {})
            data = await r.read()
            assert r.status == 200 and b"[DONE]" not in data and b'"error"' not in data
            counts = {k[3]: n for k, n in d.accounting.requests.items() if k[0] == "/v1/chat/completions"}
            assert counts == {500: 1}
