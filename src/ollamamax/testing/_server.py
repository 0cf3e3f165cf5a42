"""The server: :class:`FakeOllama`, one emulated ``ollama serve`` listening on loopback.

Owns: the aiohttp low-level server and its lifecycle (start, graceful stop, kill with
connection resets, restart on the same port as a fresh process), the routing table (one
dict lookup per request; ``/api/blobs/<digest>`` and ``/v1/models/<name>`` by prefix),
turning an :class:`HttpError` into Ollama's or OpenAI's error body, the ``hanging``
switch, the request counter and :meth:`FakeOllama.stats` (also ``GET /_mock/stats``).
Everything a request does once routed lives below it: the route modules (``_native``,
``_openai``) get this object as their :class:`~._httphost.HttpHost` and must never import
this module; this module must not answer any Ollama endpoint itself.

The facts the emulator reproduces are in ``/work/shared/ollama-api.md``: error texts,
status codes, NDJSON framing, field order, keep_alive parsing and scheduling. Hot path
notes: routing is one dict lookup; streamed lines are built by string concatenation from
pre-encoded pieces (``_render``); with ``tokens_per_sec=0`` all lines of a reply go out
in a few large writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiohttp import web

from ..wire.ollama import NOT_FOUND_PAGE
from . import _native, _openai
from ._errors import HttpError
from ._httphost import CT_TEXT, HttpHost

MAX_BODY = 1 << 40  # no practical limit, as Ollama

__all__ = ["FakeOllama", "answer"]

Handler = Callable[["FakeOllama", web.BaseRequest], Awaitable[web.StreamResponse]]


async def _mock_stats(host: FakeOllama, request: web.BaseRequest) -> web.StreamResponse:
    return host.json(host.stats())


# (method, path) -> handler(host, request)
_ROUTES: dict[tuple[str, str], Handler] = {
    ("GET", "/"): _native.root,
    ("HEAD", "/"): _native.root,
    ("GET", "/api/version"): _native.version,
    ("HEAD", "/api/version"): _native.version,
    ("GET", "/api/tags"): _native.tags,
    ("HEAD", "/api/tags"): _native.tags,
    ("GET", "/api/ps"): _native.ps,
    ("POST", "/api/generate"): _native.generate,
    ("POST", "/api/chat"): _native.chat,
    ("POST", "/api/embed"): _native.embed,
    ("POST", "/api/embeddings"): _native.embeddings,
    ("POST", "/api/show"): _native.show,
    ("POST", "/api/pull"): _native.pull,
    ("POST", "/api/push"): _native.push,
    ("POST", "/api/copy"): _native.copy,
    ("DELETE", "/api/delete"): _native.delete,
    ("POST", "/api/create"): _native.create,
    ("GET", "/_mock/stats"): _mock_stats,
    ("POST", "/v1/chat/completions"): _openai.chat_completions,
    ("POST", "/v1/completions"): _openai.completions,
    ("POST", "/v1/embeddings"): _openai.embeddings,
    ("GET", "/v1/models"): _openai.list_models,
}


async def answer(host: Any, request: Any) -> web.StreamResponse:
    """Route one request to its handler and turn an :class:`HttpError` (or a bug) into
    Ollama's or OpenAI's error body: what the server does with every request, shared with
    the fleet simulator, which hands requests to a host without sockets."""
    path = request.path
    handler = _ROUTES.get((request.method, path))
    if handler is None:
        handler = _prefix_route(request.method, path)
        if handler is None:
            return host.raw(404, NOT_FOUND_PAGE, CT_TEXT)
    try:
        return await handler(host, request)
    except HttpError as exc:
        status, message = exc.status, exc.message
    except ConnectionError:
        # the client went away while we were writing: end quietly, as for a disconnect
        raise asyncio.CancelledError() from None
    except Exception as exc:  # noqa: BLE001 - a bug here must still look like Ollama
        if id(request) in host.streamed:
            raise  # headers already sent: let the server drop the connection
        status, message = 500, f"{type(exc).__name__}: {exc}"
    finally:
        host.streamed.discard(id(request))
    if path.startswith("/v1/"):
        return _openai.error_response(host, status, message)
    return host.error(status, message)


def _prefix_route(method: str, path: str) -> Handler | None:
    if path.startswith("/v1/models/") and method == "GET":
        return lambda host, req: _openai.get_model(host, req, path[len("/v1/models/") :])
    if path.startswith("/api/blobs/") and method in ("HEAD", "POST"):
        return lambda host, req: _native.blob(host, req, path[len("/api/blobs/") :])
    return None


class FakeOllama(HttpHost):
    """An emulated Ollama host (one ``ollama serve``) on loopback.

    ``async with FakeOllama(["llama3.2", "qwen3:8b"], load_delay=0, tokens_per_sec=0) as host:``
    then point any Ollama or OpenAI client at ``host.url`` (``host.url + "/v1"``).

    Knobs (all keyword-only; those marked (*) may be changed while running):

    * ``models``: names present on the host (``/api/tags``); tag defaults to ``latest``.
      Capabilities follow the family (``nomic-embed-text`` embeds only, ``qwen3`` /
      ``deepseek-r1`` / ``gpt-oss`` think, ``llama3.2`` has tools, ``gemma3`` vision...);
      ``capabilities={"name": [...]}`` overrides. Unknown families: completion + tools.
    * ``tokens_per_sec`` (*): generation pace (0 = as fast as possible, many lines per write);
      prompt evaluation runs at 10x that rate. ``response_tokens``: (min, max) answer length.
    * ``prompt_eval_tps`` (*): 0 (default) keeps the timing above. N > 0 turns on the prompt
      cache: evaluating a prompt takes ``tokens / N`` seconds, and each parallel slot of a
      loaded model keeps the tokens it last processed (prompt and reply), so a request that
      extends them (a continued conversation) evaluates only its new tokens. Replies report
      the whole prompt in ``prompt_eval_count``, the cached part in
      ``prompt_eval_cached_count`` and the evaluated part's time in ``prompt_eval_duration``
      (see ``_promptcache`` and :meth:`~._engine.Engine.metrics`).
    * ``load_delay`` (*): seconds to load a cold model. ``preload``: models loaded at start.
    * ``num_parallel``, ``max_loaded_models``, ``max_queue``, ``keep_alive``: as
      ``OLLAMA_NUM_PARALLEL`` etc. (see ``_scheduler``; embedding-only models get one slot;
      ``max_queue`` bounds every waiting request of the host).
    * ``vram``: bytes the resident models may hold (each model's ``size`` from the model
      table, as ``/api/tags`` and ``/api/ps`` show it); a cold model evicts idle models,
      least recently used first, until it fits. 0 (default): no memory limit. A model
      larger than ``vram`` loads alone, with ``size_vram = vram`` in ``/api/ps``.
    * ``fail_rate`` (*): probability of a 500 before the first byte;
      ``midstream_fail_rate`` (*): probability that a reply stops after some chunks with an
      in-band ``{"error": ...}`` line (a 500 for ``stream: false``). On ``/v1`` streams, as
      Ollama's OpenAI layer, the error becomes one chunk with an empty delta and the stream
      ends without ``data: [DONE]`` (see ``_render.chat_cut_chunk``).
    * ``busy`` (*): every inference request gets the 503 "server busy" error at once.
    * ``hanging`` (*): requests are read but never answered until it is set back to False.
    * ``host_id``: the ``X-Ollama-Host-Id`` header on every response (default ``mock-PORT``).
    * ``seed``: makes text, vectors and fault decisions reproducible.
    * ``pull_delay``: seconds a pull takes (spread over its progress lines).

    Decisions the real server leaves to the model:

    * Tool calls (``tool_calls`` (*), default ``"always"``): with ``tools`` given and the
      last message from the user, the model calls each tool whose name appears in that
      message (``get_weather`` or ``get weather``), or else the first tool, as a
      tool-trained model asked "What's the weather in Boston?" does. Arguments fill the
      tool schema's required properties by type (a proper name or number from the message
      when it has one, ``enum`` its first value). ``"named"``: only named tools are called;
      ``"never"``: the model always answers in text. After a ``tool`` message it answers
      in text.
    * ``format``: ``"json"`` gives a small JSON object, a schema gives a value of that
      schema (properties, types, enums, arrays, ``$ref`` into ``$defs``).
    * Registry: pulling succeeds for well-known families (llama*, qwen*, mistral, gemma*,
      phi*, nomic-embed-text, ...) on the default registry; names starting with
      ``nosuch`` and everything else fail with ``pull model manifest: file does not exist``.

    Lifecycle: :meth:`stop` is graceful, :meth:`kill` resets every connection at once,
    :meth:`restart` listens again on the same port as a fresh process (nothing loaded
    except ``preload``; the counters of :meth:`stats` survive).

    The methods that are neither knobs nor lifecycle (``resolve``, ``plan``, ``acquire``,
    ``json``, ``stream_batches``, ...) are the interface the route modules use; they come
    from :class:`~._engine.Engine` (model-level behaviour) and
    :class:`~._httphost.HttpHost` (responses).
    """

    def __init__(
        self,
        models: Sequence[str] = ("llama3.2",),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tokens_per_sec: float = 50.0,
        load_delay: float = 2.0,
        num_parallel: int = 1,
        max_queue: int = 512,
        max_loaded_models: int = 1,
        keep_alive: str | float = "5m",
        fail_rate: float = 0.0,
        midstream_fail_rate: float = 0.0,
        host_id: str | None = None,
        seed: int | None = None,
        preload: Sequence[str] = (),
        capabilities: Mapping[str, Sequence[str]] | None = None,
        response_tokens: tuple[int, int] = (8, 24),
        pull_delay: float = 0.0,
        prompt_eval_tps: float = 0.0,
        vram: int = 0,
        tool_calls: str = "always",
    ) -> None:
        super().__init__(
            models,
            tokens_per_sec=tokens_per_sec,
            load_delay=load_delay,
            num_parallel=num_parallel,
            max_queue=max_queue,
            max_loaded_models=max_loaded_models,
            keep_alive=keep_alive,
            fail_rate=fail_rate,
            midstream_fail_rate=midstream_fail_rate,
            seed=seed,
            preload=preload,
            capabilities=capabilities,
            response_tokens=response_tokens,
            pull_delay=pull_delay,
            prompt_eval_tps=prompt_eval_tps,
            vram=vram,
            tool_calls=tool_calls,
        )
        self._bind_host = host
        self._port = port
        self._host_id = host_id
        self._hanging = False
        self._hang_release = asyncio.Event()
        self._server: web.Server | None = None
        self._runner: web.ServerRunner | None = None
        self._site: web.TCPSite | None = None
        self._hung: set[Any] = set()  # transports of hanging requests
        self._started = False
        self.requests_total = 0

    # ------------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self._bind_host}:{self._port}"

    @property
    def host_id(self) -> str:
        return self._host_id if self._host_id is not None else f"mock-{self._port}"

    @property
    def hanging(self) -> bool:
        return self._hanging

    @hanging.setter
    def hanging(self, value: bool) -> None:
        value = bool(value)
        if value and not self._hanging:
            self._hang_release = asyncio.Event()
        elif not value and self._hanging:
            self._hang_release.set()
        self._hanging = value

    @property
    def running(self) -> bool:
        return self._started

    def stats(self) -> dict[str, Any]:
        """Per model and in total: requests ``in_flight`` and ``queued`` now; ``served``,
        ``rejected_503``, ``failed``; ``loads`` (every load that started, once, even if it
        was cancelled) and ``evictions`` (unloads to make room for another model; not
        keep-alive expiry, not an explicit unload or delete). Counters survive restarts."""
        per, tot = self.model_stats()
        return {
            "host_id": self.host_id,
            "models": per,
            "totals": tot,
            "loaded": self.loaded_models(),
            "requests": self.requests_total,
            "busy": self.busy,
            "hanging": self._hanging,
        }

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FakeOllama:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _make_request(self, message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
        # Ollama reads a body of any size (a vision chat resends its image history); aiohttp's
        # low-level server would refuse more than 1 MiB
        return web.BaseRequest(message, payload, protocol, writer, task, asyncio.get_running_loop(),
                               client_max_size=MAX_BODY)

    async def start(self) -> None:
        if self._started:
            return
        self.fresh_scheduler()
        self._server = web.Server(self._handle, handler_cancellation=True, access_log=None,
                                  request_factory=self._make_request)
        self._runner = web.ServerRunner(self._server, shutdown_timeout=1.0)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self._bind_host, self._port, reuse_address=True)
        try:
            await self._site.start()
        except BaseException:
            await self._runner.cleanup()
            self._runner = self._server = self._site = None
            raise
        self._port = int(self._runner.addresses[0][1])  # (older aiohttp has no TCPSite.port)
        self.host_header = self.host_id
        self._started = True

    async def stop(self, timeout: float = 1.0) -> None:
        """Graceful stop: stop listening, let running replies finish (up to ``timeout``)."""
        if not self._started:
            return
        self._started = False
        assert self._runner is not None
        self._runner._shutdown_timeout = timeout
        self._abort_hung()
        try:
            await self._runner.cleanup()
        finally:
            self.scheduler.close()
            self._runner = self._server = self._site = None

    async def kill(self) -> None:
        """Abrupt death: listener closed, every connection reset, all state lost."""
        if not self._started:
            return
        self._started = False
        assert self._runner is not None and self._server is not None
        if self._site is not None:
            await self._site.stop()
        for proto, transport in list(self._server._connections.items()):
            _reset(transport)
        self.scheduler.close()
        self._runner._shutdown_timeout = 0.05
        try:
            await self._runner.cleanup()
        finally:
            self._runner = self._server = self._site = None

    async def restart(self) -> None:
        """Listen again on the same port (after :meth:`kill` or :meth:`stop`)."""
        if self._started:
            await self.kill()
        for _ in range(50):
            try:
                await self.start()
                return
            except OSError:
                await asyncio.sleep(0.02)
        await self.start()

    def _abort_hung(self) -> None:
        self._hang_release.set()
        for tr in list(self._hung):
            _reset(tr)
        self._hung.clear()

    # ------------------------------------------------------------------ requests

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.requests_total += 1
        if self._hanging:
            await self._hang(request)
        return await answer(self, request)

    async def _hang(self, request: web.BaseRequest) -> None:
        with contextlib.suppress(Exception):
            await request.read()
        tr = request.transport
        if tr is not None:
            self._hung.add(tr)
        try:
            while self._hanging and self._started:
                await self._hang_release.wait()
        finally:
            self._hung.discard(tr)


def _reset(transport: Any) -> None:
    """Close a connection with RST (SO_LINGER 0) instead of a FIN."""
    try:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except (OSError, AttributeError):
        pass
    try:
        transport.abort()
    except Exception:  # noqa: BLE001 - already closed
        pass

