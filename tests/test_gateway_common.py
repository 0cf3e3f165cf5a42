"""Shared pieces of the front-end tests (no tests here).

``stack()`` starts emulated hosts, a real :class:`Dispatcher` over them and the gateway app
on loopback; ``ThreadedStack`` does the same on a background thread (for synchronous
clients).  ``ollama_scenarios`` / ``openai_scenarios`` drive the official clients through a
list of operations and return their results with the volatile fields (timestamps,
durations, ids) removed, so a run through the gateway (or the httpx transport) can be
compared with a run against a single host.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

from aiohttp import web

from ollamamax import create_app
from ollamamax.dispatch import Dispatcher, DispatcherConfig
from ollamamax.frontends.fastpath import start_server
from ollamamax.testing import FakeOllama

MODELS = ("llama3.2", "qwen3:8b", "nomic-embed-text")
HOST_KW: dict[str, Any] = dict(models=MODELS, load_delay=0.02, tokens_per_sec=0, num_parallel=4,
                               max_loaded_models=3, seed=7)
DISPATCH_KW: dict[str, Any] = dict(refresh_interval=0.5, connect_timeout=1.0)

VOLATILE = frozenset({
    "created_at", "total_duration", "load_duration", "prompt_eval_duration", "eval_duration",
    "expires_at", "modified_at", "created", "id",
})


def scrub(obj: Any) -> Any:
    """Drop fields that legitimately differ between two runs (times, durations, ids)."""
    if isinstance(obj, dict):
        return {k: scrub(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [scrub(v) for v in obj]
    return obj


def new_host(i: int = 0, **kw: Any) -> FakeOllama:
    return FakeOllama(**{**HOST_KW, "host_id": f"h{i}", **kw})


async def serve_app(app: web.Application, front: str = "fast",
                    **runner_kw: Any) -> tuple[Any, str]:
    """Serve a gateway app on a free loopback port: ``(async close(), base url)``.

    ``front="fast"``: :func:`~ollamamax.dispatch.fastpath.start_server` (what ``ollamamax
    serve`` runs); ``"aiohttp"``: the app alone on an ``AppRunner`` (as when mounted)."""
    if front == "fast":
        server = await start_server(app, "127.0.0.1", 0, **runner_kw)
        return server.close, f"http://127.0.0.1:{server.port}"
    assert front == "aiohttp", front
    runner = web.AppRunner(app, **runner_kw)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner.cleanup, f"http://127.0.0.1:{runner.addresses[0][1]}"


@asynccontextmanager
async def stack(n: int = 2, *, app_kw: dict[str, Any] | None = None,
                dispatch_kw: dict[str, Any] | None = None,
                runner_kw: dict[str, Any] | None = None,
                front: str = "fast",
                **host_kw: Any) -> AsyncIterator[SimpleNamespace]:
    """n emulated hosts + Dispatcher + gateway app; yields (hosts, d, url)."""
    hosts = [new_host(i, **host_kw) for i in range(n)]
    started = []
    try:
        for h in hosts:
            await h.start()
            started.append(h)
        cfg = DispatcherConfig(**{**DISPATCH_KW, **(dispatch_kw or {})})
        async with Dispatcher([h.url for h in hosts], config=cfg) as d:
            close, url = await serve_app(
                create_app(d, **(app_kw or {})), front,
                **{"handler_cancellation": True, "access_log": None, **(runner_kw or {})})
            try:
                yield SimpleNamespace(hosts=hosts, d=d, url=url)
            finally:
                await close()
    finally:
        for h in started:
            await h.stop()


class ThreadedStack:
    """``with ThreadedStack() as s: s.url`` -- the stack on a background event loop."""

    def __init__(self, **kw: Any) -> None:
        self._kw = kw
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self.ns: SimpleNamespace | None = None

    @property
    def url(self) -> str:
        assert self.ns is not None
        return self.ns.url

    async def _main(self, ready: concurrent.futures.Future[SimpleNamespace]) -> None:
        self._stop = asyncio.Event()
        try:
            async with stack(**self._kw) as ns:
                ready.set_result(ns)
                await self._stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def __enter__(self) -> ThreadedStack:
        ready: concurrent.futures.Future[SimpleNamespace] = concurrent.futures.Future()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._main(ready))
            except BaseException:
                pass

        self._thread = threading.Thread(target=run, name="gateway-stack", daemon=True)
        self._thread.start()
        self.ns = ready.result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self._loop.close()


async def wait_until(pred: Any, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``pred()`` until true (bounded)."""
    for _ in range(int(timeout / interval)):
        if pred():
            return True
        await asyncio.sleep(interval)
    return bool(pred())


# --------------------------------------------------------------------- the scenarios


async def ollama_scenarios(client: Any) -> dict[str, Any]:
    """Drive an ``ollama.AsyncClient`` through the compatibility checklist."""
    import ollama

    out: dict[str, Any] = {}
    msgs = [{"role": "user", "content": "why is the sky blue?"}]
    out["chat"] = scrub((await client.chat(model="llama3.2", messages=msgs)).model_dump())
    out["chat_stream"] = [scrub(p.model_dump()) async for p in
                          await client.chat(model="llama3.2", messages=msgs, stream=True)]
    out["chat_think"] = scrub((await client.chat(model="qwen3:8b", messages=msgs)).model_dump())
    out["generate"] = scrub((await client.generate(model="llama3.2", prompt="hello")).model_dump())
    out["generate_stream"] = [scrub(p.model_dump()) async for p in
                              await client.generate(model="llama3.2", prompt="hi", stream=True)]
    out["embed"] = scrub((await client.embed(model="nomic-embed-text",
                                             input=["a", "b c"])).model_dump())
    out["embeddings"] = scrub((await client.embeddings(model="nomic-embed-text",
                                                       prompt="x")).model_dump())
    out["list"] = sorted(m.model for m in (await client.list()).models)
    out["ps"] = sorted(m.model for m in (await client.ps()).models)
    show = (await client.show("llama3.2")).model_dump()
    out["show"] = scrub({k: show[k] for k in ("details", "capabilities", "modelinfo", "template")})
    out["pull"] = (await client.pull("all-minilm")).status
    statuses = [p.status async for p in await client.pull("all-minilm", stream=True)]
    out["pull_stream_last"] = statuses[-1]
    out["list_after_pull"] = sorted(m.model for m in (await client.list()).models)
    errors = {}
    for name, call in {
        "chat_unknown": lambda: client.chat(model="nosuch", messages=msgs),
        "generate_unknown": lambda: client.generate(model="nosuch", prompt="x"),
        "embed_unknown": lambda: client.embed(model="nosuch", input="x"),
        "show_unknown": lambda: client.show("nosuch"),
        "chat_embedding_model": lambda: client.chat(model="nomic-embed-text", messages=msgs),
        "think_unsupported": lambda: client.chat(model="llama3.2", messages=msgs, think=True),
        "pull_unknown": lambda: client.pull("nosuch-model-xyz"),
    }.items():
        try:
            await call()
        except ollama.ResponseError as exc:
            errors[name] = (exc.status_code, exc.error)
        else:  # pragma: no cover - a failure shows in the comparison
            errors[name] = "no error"
    try:
        async for _ in await client.chat(model="nosuch", messages=msgs, stream=True):
            pass
    except ollama.ResponseError as exc:
        errors["chat_stream_unknown"] = (exc.status_code, exc.error)
    out["errors"] = errors
    return out


async def openai_scenarios(client: Any) -> dict[str, Any]:
    """Drive an ``openai.AsyncOpenAI`` (max_retries=0) through chat, embeddings, models, errors."""
    import numpy as np
    import openai

    out: dict[str, Any] = {}
    msgs = [{"role": "user", "content": "why is the sky blue?"}]
    chat = await client.chat.completions.create(model="llama3.2", messages=msgs)
    out["chat"] = scrub(chat.model_dump())
    stream = await client.chat.completions.create(
        model="llama3.2", messages=msgs, stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    out["stream_text"] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    out["stream_finish"] = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    out["stream_usage"] = chunks[-1].usage.model_dump() if chunks[-1].usage else None
    comp = await client.completions.create(model="llama3.2", prompt="hello")
    out["completion"] = scrub(comp.model_dump())
    emb = await client.embeddings.create(model="nomic-embed-text", input=["a", "b c"])
    out["embeddings_b64"] = [np.round(d.embedding, 6).tolist() for d in emb.data]
    emb = await client.embeddings.create(model="nomic-embed-text", input="a",
                                         encoding_format="float")
    out["embeddings_float"] = [np.round(d.embedding, 6).tolist() for d in emb.data]
    out["models"] = sorted(m.id for m in (await client.models.list()).data)
    out["model"] = scrub((await client.models.retrieve("llama3.2")).model_dump())
    errors = {}
    try:
        await client.chat.completions.create(model="nosuch", messages=msgs)
    except openai.APIStatusError as exc:
        errors["chat_unknown"] = (exc.status_code, exc.body)
    try:
        await client.embeddings.create(model="nosuch", input="x")
    except openai.APIStatusError as exc:
        errors["embed_unknown"] = (exc.status_code, exc.body)
    out["errors"] = errors
    return out


def b64_floats(s: str) -> list[float]:  # pragma: no cover - debugging aid
    import numpy as np

    return np.frombuffer(base64.b64decode(s), dtype="<f4").tolist()
