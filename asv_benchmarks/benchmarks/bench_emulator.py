"""asv benchmarks for the Ollama host emulator (``ollamamax.testing.FakeOllama``).

Client and emulator share one event loop (aiohttp client over loopback), so the figures
are the cost of one request round trip on one core. ``reference`` is a bare aiohttp
low-level server answering a constant body: the ratio emulator/reference is the
emulator's own overhead. Generation is unpaced (``tokens_per_sec=0``), the model is
preloaded and every answer has 16 tokens.
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

try:
    from ollamamax.testing import FakeOllama
except ImportError:  # a commit from before the emulator: asv shows n/a, not failed
    FakeOllama = None  # type: ignore[assignment,misc]
try:  # private helpers: guarded on their own, they may move while FakeOllama stays
    from ollamamax.testing._generation import plan_generation
    from ollamamax.testing._goformat import go_dumps
except ImportError:
    try:  # commits from before _models.py was split
        from ollamamax.testing._models import go_dumps, plan_generation
    except ImportError:
        go_dumps = plan_generation = None  # type: ignore[assignment]

N_REQUESTS = 100
USER = [{"role": "user", "content": "Why is the sky blue?"}]
BODIES = {
    "reference": ("/api/chat", {"model": "llama3.2", "messages": USER, "stream": False}),
    "chat": ("/api/chat", {"model": "llama3.2", "messages": USER, "stream": False}),
    "chat_stream": ("/api/chat", {"model": "llama3.2", "messages": USER}),
    "generate_stream": ("/api/generate", {"model": "llama3.2", "prompt": "Why is the sky blue?"}),
    "embed": ("/api/embed", {"model": "nomic-embed-text", "input": "Why is the sky blue?"}),
    "v1_chat_stream": ("/v1/chat/completions", {"model": "llama3.2", "messages": USER, "stream": True}),
}
REFERENCE_BODY = b'{"model":"llama3.2","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant","content":"x"},"done":true}'


async def _reference_handler(request: web.BaseRequest) -> web.Response:
    await request.read()
    return web.Response(body=REFERENCE_BODY, headers={"Content-Type": "application/json; charset=utf-8"})


class EmulatorRoundTrip:
    """``N_REQUESTS`` requests with ``concurrency`` in flight, reply read to the end."""

    params = [list(BODIES), [1, 16]]
    param_names = ["route", "concurrency"]
    timeout = 120

    def setup(self, route: str, concurrency: int) -> None:
        if FakeOllama is None:
            raise NotImplementedError("ollamamax.testing is not in this commit")  # asv skips
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._start(route))

    async def _start(self, route: str) -> None:
        if route == "reference":
            self.server = web.Server(_reference_handler, access_log=None)
            self.runner = web.ServerRunner(self.server)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.url = f"http://127.0.0.1:{site.port}"
            self.host = None
        else:
            self.host = FakeOllama(
                ["llama3.2", "nomic-embed-text"],
                tokens_per_sec=0,
                load_delay=0,
                num_parallel=16,
                max_loaded_models=2,
                preload=["llama3.2", "nomic-embed-text"],
                response_tokens=(16, 16),
                seed=1,
            )
            await self.host.start()
            self.url = self.host.url
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))

    def teardown(self, route: str, concurrency: int) -> None:
        if getattr(self, "loop", None) is None:  # setup skipped (NotImplementedError)
            return
        self.loop.run_until_complete(self._stop())
        self.loop.close()

    async def _stop(self) -> None:
        await self.session.close()
        if self.host is not None:
            await self.host.stop()
        else:
            await self.runner.cleanup()

    async def _drive(self, route: str, concurrency: int) -> None:
        path, body = BODIES[route]
        url = self.url + path
        session = self.session
        remaining = N_REQUESTS

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                async with session.post(url, json=body) as r:
                    await r.read()

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    def time_requests(self, route: str, concurrency: int) -> None:
        self.loop.run_until_complete(self._drive(route, concurrency))


class EmulatorPureParts:
    """The per-request pure work: planning an answer and encoding the final object."""

    def setup(self) -> None:
        if go_dumps is None or plan_generation is None:
            raise NotImplementedError("the emulator's planning helpers are not in this commit")  # asv skips
        self.final = {
            "model": "llama3.2",
            "created_at": "2026-01-01T00:00:00.123456789Z",
            "message": {"role": "assistant", "content": "the model answer is a quick test"},
            "done": True,
            "done_reason": "stop",
            "total_duration": 123456789,
            "load_duration": 1234,
            "prompt_eval_count": 12,
            "prompt_eval_duration": 12345,
            "eval_count": 16,
            "eval_duration": 1234567,
        }

    def time_plan_generation(self) -> None:
        plan_generation(
            seed=1,
            model_key="registry.ollama.ai/library/llama3.2:latest",
            text="Why is the sky blue?",
            last_user="Why is the sky blue?",
            last_role="user",
            think=False,
            fmt=None,
            tools=None,
            num_predict=None,
            stop=None,
            response_tokens=(16, 16),
        )

    def time_go_dumps_final(self) -> None:
        go_dumps(self.final)
