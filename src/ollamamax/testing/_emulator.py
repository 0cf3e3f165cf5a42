"""FakeOllama: an emulated Ollama host on loopback (aiohttp low-level server).

One :class:`FakeOllama` is one "ollama serve" process: a model table, a scheduler
(``_scheduler``), the native ``/api/*`` routes, the OpenAI-compatible ``/v1/*`` routes
(``_openai``) and fault switches (``fail_rate``, ``midstream_fail_rate``, ``busy``,
``hanging``, :meth:`FakeOllama.kill`). The facts it reproduces are in
``/work/shared/ollama-api.md``: error texts, status codes, NDJSON framing, field order,
keep_alive parsing and scheduling.

Hot path notes: routing is one dict lookup; streamed lines are built by string
concatenation from pre-encoded pieces; with ``tokens_per_sec=0`` all lines of a reply
go out in a few large writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Any, Awaitable, Callable

import numpy as np
from aiohttp import web

from .._ollama_wire import BUSY_MESSAGE, NOT_FOUND_PAGE
from ._decode import decode_object, keep_alive_of, parse_messages, parse_think
from ._errors import FAIL_MSG, MIDSTREAM_MSG, HttpError
from ._generation import Plan, plan_generation, seed_for
from ._goformat import go_dumps, parse_keep_alive, rfc3339, rfc3339_at
from ._models import ModelInfo, make_model, parse_name, registry_knows, show_body
from ._render import CHAT, GENERATE, MIDSTREAM_NDJSON, Shape, events_of, render_events
from ._scheduler import QueueFullError, Runner, Scheduler

__all__ = ["FakeOllama"]

VERSION = "0.32.15"

CT_JSON = "application/json; charset=utf-8"
CT_NDJSON = "application/x-ndjson"
CT_TEXT = "text/plain; charset=utf-8"
CT_SSE = "text/event-stream"

class _Stream(web.StreamResponse):
    """A streamed reply whose headers leave with its first body bytes (one write, not two).

    Ollama also writes nothing until the first chunk exists; aiohttp's plain
    StreamResponse would flush the headers on ``prepare``.
    """

    _send_headers_immediately = False


# --------------------------------------------------------------------------- the server


class FakeOllama:
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
    * ``load_delay`` (*): seconds to load a cold model. ``preload``: models loaded at start.
    * ``num_parallel``, ``max_loaded_models``, ``max_queue``, ``keep_alive``: as
      ``OLLAMA_NUM_PARALLEL`` etc. (see ``_scheduler``; embedding-only models get one slot;
      ``max_queue`` bounds every waiting request of the host).
    * ``fail_rate`` (*): probability of a 500 before the first byte;
      ``midstream_fail_rate`` (*): probability that a reply stops after some chunks with an
      in-band ``{"error": ...}`` line (a 500 for ``stream: false``).
    * ``busy`` (*): every inference request gets the 503 "server busy" error at once.
    * ``hanging`` (*): requests are read but never answered until it is set back to False.
    * ``host_id``: the ``X-Ollama-Host-Id`` header on every response (default ``mock-PORT``).
    * ``seed``: makes text, vectors and fault decisions reproducible.
    * ``pull_delay``: seconds a pull takes (spread over its progress lines).

    Decisions the real server leaves to the model:

    * Tool calls: with ``tools`` given and the last message from the user, the model calls
      each tool whose name appears in that message (``get_weather`` or ``get weather``),
      arguments generated from the tool's JSON schema; otherwise it answers in text.
    * ``format``: ``"json"`` gives a small JSON object, a schema gives a value of that
      schema (properties, types, enums, arrays, ``$ref`` into ``$defs``).
    * Registry: pulling succeeds for well-known families (llama*, qwen*, mistral, gemma*,
      phi*, nomic-embed-text, ...) on the default registry; names starting with
      ``nosuch`` and everything else fail with ``pull model manifest: file does not exist``.

    Lifecycle: :meth:`stop` is graceful, :meth:`kill` resets every connection at once,
    :meth:`restart` listens again on the same port as a fresh process (nothing loaded
    except ``preload``; the counters of :meth:`stats` survive).
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
    ) -> None:
        if isinstance(models, str):
            models = [m.strip() for m in models.split(",") if m.strip()]
        self._bind_host = host
        self._port = port
        self.tokens_per_sec = float(tokens_per_sec)
        self.load_delay = float(load_delay)
        self.num_parallel = int(num_parallel)
        self.max_queue = int(max_queue)
        self.max_loaded_models = int(max_loaded_models)
        ka = parse_keep_alive(keep_alive)
        self.default_keep_alive: float = 300.0 if ka is None else ka
        self.fail_rate = float(fail_rate)
        self.midstream_fail_rate = float(midstream_fail_rate)
        self._host_id = host_id
        self.seed = seed
        self.response_tokens = (int(response_tokens[0]), int(response_tokens[1]))
        if self.response_tokens[0] < 0 or self.response_tokens[1] < self.response_tokens[0]:
            raise ValueError("response_tokens must be (lo, hi) with 0 <= lo <= hi")
        self.pull_delay = float(pull_delay)
        self.capabilities = dict(capabilities) if capabilities else None
        self.busy = False
        self._hanging = False
        self._hang_release = asyncio.Event()
        self._rng = random.Random(seed)
        self.models: dict[str, ModelInfo] = {}
        for m in models:
            self.add_model(m)
        self._preload = tuple(preload)
        for m in self._preload:
            if self.lookup(m) is None:
                self.add_model(m)
        self._blobs: set[str] = set()
        self._emb_cache: dict[tuple[Any, ...], np.ndarray] = {}
        self._emb_json_cache: dict[tuple[Any, ...], str] = {}
        self._sched = self._new_scheduler()
        self._server: web.Server | None = None
        self._runner: web.ServerRunner | None = None
        self._site: web.TCPSite | None = None
        self._streamed: set[int] = set()  # id() of requests whose headers went out
        self._hung: set[Any] = set()  # transports of hanging requests
        self._started = False
        self.requests_total = 0
        self._routes: dict[tuple[str, str], Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]] = {}
        self._build_routes()
        self._hdr_host = ""

    # ------------------------------------------------------------------ model table

    def add_model(self, name: str) -> ModelInfo:
        """Make ``name`` present on this host (as if pulled)."""
        mn = parse_name(name)
        if mn is None:
            raise ValueError(f"invalid model name {name!r}")
        info = make_model(mn, self.capabilities)
        self.models[mn.key] = info
        return info

    def lookup(self, name: str) -> ModelInfo | None:
        mn = parse_name(name)
        if mn is None:
            return None
        return self.models.get(mn.key)

    def _new_scheduler(self) -> Scheduler:
        return Scheduler(
            num_parallel=self.num_parallel,
            max_loaded_models=self.max_loaded_models,
            max_queue=self.max_queue,
            default_keep_alive=self.default_keep_alive,
            load_delay_fn=lambda: self.load_delay,
        )

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

    def loaded_models(self) -> list[str]:
        return [r.info.display for r in self._sched.runners.values() if r.loaded]

    def stats(self) -> dict[str, Any]:
        sched = self._sched
        per: dict[str, Any] = {}
        tot = {"in_flight": 0, "queued": 0, "served": 0, "rejected_503": 0, "loads": 0, "failed": 0}
        keys = set(sched.stats) | set(sched.runners)
        for key in sorted(keys):
            r = sched.runners.get(key)
            st = sched.stat(key)
            info = r.info if r is not None else self.models.get(key)
            name = info.display if info is not None else key
            row = {
                "in_flight": r.in_flight if r else 0,
                "queued": len(r.waiters) if r else 0,
                "served": st.served,
                "rejected_503": st.rejected_503,
                "loads": st.loads,
                "failed": st.failed,
                "loaded": bool(r and r.loaded),
            }
            per[name] = row
            for k in tot:
                tot[k] += row[k]
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

    async def start(self) -> None:
        if self._started:
            return
        old = self._sched
        self._sched = self._new_scheduler()
        self._sched.stats = old.stats  # counters survive restarts; loaded state does not
        for m in self._preload:
            info = self.lookup(m)
            if info is not None:
                self._sched.preload(info)
        self._server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        self._runner = web.ServerRunner(self._server, shutdown_timeout=1.0)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self._bind_host, self._port, reuse_address=True)
        try:
            await self._site.start()
        except BaseException:
            await self._runner.cleanup()
            self._runner = self._server = self._site = None
            raise
        self._port = self._site.port
        self._hdr_host = self.host_id
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
            self._sched.close()
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
        self._sched.close()
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

    # ------------------------------------------------------------------ plumbing

    def _build_routes(self) -> None:
        r = self._routes
        r[("GET", "/")] = self._root
        r[("HEAD", "/")] = self._root
        r[("GET", "/api/version")] = self._version
        r[("HEAD", "/api/version")] = self._version
        r[("GET", "/api/tags")] = self._tags
        r[("HEAD", "/api/tags")] = self._tags
        r[("GET", "/api/ps")] = self._ps
        r[("POST", "/api/generate")] = self._generate
        r[("POST", "/api/chat")] = self._chat
        r[("POST", "/api/embed")] = self._embed
        r[("POST", "/api/embeddings")] = self._embeddings
        r[("POST", "/api/show")] = self._show
        r[("POST", "/api/pull")] = self._pull
        r[("POST", "/api/push")] = self._push
        r[("POST", "/api/copy")] = self._copy
        r[("DELETE", "/api/delete")] = self._delete
        r[("POST", "/api/create")] = self._create
        r[("GET", "/_mock/stats")] = self._mock_stats
        from . import _openai

        r[("POST", "/v1/chat/completions")] = lambda req: _openai.chat_completions(self, req)
        r[("POST", "/v1/completions")] = lambda req: _openai.completions(self, req)
        r[("POST", "/v1/embeddings")] = lambda req: _openai.embeddings(self, req)
        r[("GET", "/v1/models")] = lambda req: _openai.list_models(self, req)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.requests_total += 1
        if self._hanging:
            await self._hang(request)
        path = request.path
        handler = self._routes.get((request.method, path))
        if handler is None:
            handler = self._prefix_route(request.method, path)
            if handler is None:
                return self._raw(404, NOT_FOUND_PAGE, CT_TEXT)
        try:
            return await handler(request)
        except HttpError as exc:
            status, message = exc.status, exc.message
        except ConnectionError:
            # the client went away while we were writing: end quietly, as for a disconnect
            raise asyncio.CancelledError() from None
        except Exception as exc:  # noqa: BLE001 - a bug here must still look like Ollama
            if id(request) in self._streamed:
                raise  # headers already sent: let aiohttp drop the connection
            status, message = 500, f"{type(exc).__name__}: {exc}"
        finally:
            self._streamed.discard(id(request))
        if path.startswith("/v1/"):
            from ._openai import error_response

            return error_response(self, status, message)
        return self.error(status, message)

    def _prefix_route(self, method: str, path: str) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]] | None:
        if path.startswith("/v1/models/") and method == "GET":
            from . import _openai

            return lambda req: _openai.get_model(self, req, path[len("/v1/models/") :])
        if path.startswith("/api/blobs/") and method in ("HEAD", "POST"):
            return lambda req: self._blob(req, path[len("/api/blobs/") :])
        return None

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

    def _headers(self, ctype: str) -> dict[str, str]:
        return {"Content-Type": ctype, "X-Ollama-Host-Id": self._hdr_host}

    def _raw(self, status: int, body: bytes, ctype: str | None) -> web.Response:
        headers = {"X-Ollama-Host-Id": self._hdr_host}
        if ctype is not None:
            headers["Content-Type"] = ctype
        return web.Response(status=status, body=body, headers=headers)

    def json(self, obj: Any, status: int = 200) -> web.Response:
        return web.Response(status=status, body=go_dumps(obj).encode(), headers=self._headers(CT_JSON))

    def error(self, status: int, message: str) -> web.Response:
        return self.json({"error": message}, status)

    async def _body(self, request: web.BaseRequest, struct: str) -> dict[str, Any]:
        raw = await request.read()
        return decode_object(raw, struct)

    async def start_stream(self, request: web.BaseRequest, ctype: str = CT_NDJSON) -> web.StreamResponse:
        resp = _Stream(status=200, headers=self._headers(ctype))
        resp.enable_chunked_encoding()
        self._streamed.add(id(request))
        await resp.prepare(request)
        return resp

    # ------------------------------------------------------------------ simple routes

    async def _root(self, request: web.BaseRequest) -> web.StreamResponse:
        return self._raw(200, b"Ollama is running", CT_TEXT)

    async def _version(self, request: web.BaseRequest) -> web.StreamResponse:
        return self.json({"version": VERSION})

    async def _mock_stats(self, request: web.BaseRequest) -> web.StreamResponse:
        return self.json(self.stats())

    def _tag_entry(self, info: ModelInfo) -> dict[str, Any]:
        return {
            "name": info.display,
            "model": info.display,
            "modified_at": rfc3339_at(info.modified_ns),
            "size": info.size,
            "digest": info.digest,
            "details": info.details(),
            "capabilities": list(info.capabilities),
        }

    async def _tags(self, request: web.BaseRequest) -> web.StreamResponse:
        models = sorted(self.models.values(), key=lambda i: i.modified_ns, reverse=True)
        return self.json({"models": [self._tag_entry(i) for i in models]})

    async def _ps(self, request: web.BaseRequest) -> web.StreamResponse:
        rows = []
        for r in self._sched.runners.values():
            if not r.loaded:
                continue
            info = r.info
            exp = self._sched.expires_at_ns(r)
            rows.append(
                (
                    exp,
                    {
                        "name": info.display,
                        "model": info.display,
                        "size": info.size,
                        "digest": info.digest,
                        "details": info.details(),
                        "expires_at": rfc3339_at(exp),
                        "size_vram": info.size,
                        "context_length": min(info.context_length, 4096),
                    },
                )
            )
        rows.sort(key=lambda x: x[0], reverse=True)
        return self.json({"models": [row for _, row in rows]})

    async def _show(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await self._body(request, "ShowRequest")
        name = body.get("model") or body.get("name") or ""
        if not name:
            raise HttpError(400, "model is required")
        mn = parse_name(name)
        if mn is None:
            raise HttpError(400, "invalid model name")
        info = self.models.get(mn.key)
        if info is None:
            raise HttpError(404, f"model '{mn.display}' not found")
        return self.json(show_body(info, bool(body.get("verbose"))))

    # ------------------------------------------------------------------ management

    def _pull_lines(self, info_layers: list[tuple[str, int]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for digest, total in info_layers:
            short = digest[7:19]
            out.append({"status": f"pulling {short}", "digest": digest, "total": total})
            for frac in (0.25, 0.5, 1.0):
                out.append({"status": f"pulling {short}", "digest": digest, "total": total, "completed": int(total * frac)})
        out.append({"status": "verifying sha256 digest"})
        out.append({"status": "writing manifest"})
        out.append({"status": "success"})
        return out

    async def _pull(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await self._body(request, "PullRequest")
        name = body.get("model") or body.get("name") or ""
        mn = parse_name(name)
        if mn is None:
            raise HttpError(400, "invalid model name")
        stream = body.get("stream") is not False
        known = registry_knows(mn) or mn.key in self.models
        if not stream:
            if not known:
                raise HttpError(500, "pull model manifest: file does not exist")
            if self.pull_delay > 0:
                await asyncio.sleep(self.pull_delay)
            self._pulled(mn)
            return self.json({"status": "success"})
        resp = await self.start_stream(request)
        await resp.write(b'{"status":"pulling manifest"}\n')
        if not known:
            await resp.write(b'{"error":"pull model manifest: file does not exist"}\n')
            await resp.write_eof()
            return resp
        layers = make_model(mn).layers
        lines = self._pull_lines(layers)
        step = self.pull_delay / max(1, len(lines))
        for i, line in enumerate(lines):
            if step > 0:
                await asyncio.sleep(step)
            if i == len(lines) - 1:
                self._pulled(mn)
            await resp.write((go_dumps(line) + "\n").encode())
        await resp.write_eof()
        return resp

    def _pulled(self, mn: Any) -> None:
        if mn.key not in self.models:
            self.models[mn.key] = make_model(mn, self.capabilities)
        else:
            self.models[mn.key].modified_ns = time.time_ns()

    async def _push(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await self._body(request, "PushRequest")
        name = body.get("model") or body.get("name") or ""
        mn = parse_name(name)
        if mn is None:
            raise HttpError(400, "invalid model name")
        info = self.models.get(mn.key)
        stream = body.get("stream") is not False
        if not stream:
            if info is None:
                raise HttpError(500, "open manifest: file does not exist")
            return self.json({"status": "success"})
        resp = await self.start_stream(request)
        await resp.write(b'{"status":"retrieving manifest"}\n')
        if info is None:
            await resp.write(b'{"status":"couldn\'t retrieve manifest"}\n')
            await resp.write(b'{"error":"open manifest: file does not exist"}\n')
            await resp.write_eof()
            return resp
        lines: list[dict[str, Any]] = []
        for digest, total in info.layers:
            lines.append({"status": "starting upload", "digest": digest, "total": total})
            short = digest[7:19]
            for frac in (0.5, 1.0):
                lines.append({"status": f"pushing {short}", "digest": digest, "total": total, "completed": int(total * frac)})
        lines.append({"status": "pushing manifest"})
        lines.append({"status": "success"})
        await resp.write("".join(go_dumps(x) + "\n" for x in lines).encode())
        await resp.write_eof()
        return resp

    async def _copy(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await self._body(request, "CopyRequest")
        src = body.get("source") or ""
        dst = body.get("destination") or ""
        smn = parse_name(src)
        dmn = parse_name(dst)
        if smn is None or dmn is None:
            raise HttpError(400, "invalid model name")
        info = self.models.get(smn.key)
        if info is None:
            raise HttpError(404, f'model "{src}" not found')
        new = make_model(dmn, {dmn.key: info.capabilities})
        new.parent_model = info.parent_model
        self.models[dmn.key] = new
        return self._raw(200, b"", None)

    async def _delete(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await self._body(request, "DeleteRequest")
        name = body.get("model") or body.get("name") or ""
        mn = parse_name(name)
        if mn is None:
            raise HttpError(400, "invalid model name")
        if mn.key not in self.models:
            raise HttpError(404, f"model '{name}' not found")
        del self.models[mn.key]
        r = self._sched.runners.get(mn.key)
        if r is not None:
            r.keep_alive = 0
            if r.idle:
                self._sched.unload(r)
        return self._raw(200, b"", None)

    async def _create(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await self._body(request, "CreateRequest")
        name = body.get("model") or body.get("name") or ""
        mn = parse_name(name)
        if mn is None:
            raise HttpError(400, "invalid model name")
        src_name = body.get("from")
        files = body.get("files")
        if not src_name and not files:
            raise HttpError(400, "neither 'from' or 'files' was specified")
        stream = body.get("stream") is not False
        lines: list[dict[str, Any]] = []
        err: str | None = None
        caps: Sequence[str] | None = None
        if src_name:
            smn = parse_name(src_name)
            src = self.models.get(smn.key) if smn is not None else None
            if src is None:
                err = f"model '{src_name}' not found"
            else:
                caps = src.capabilities
                for digest, _ in src.layers:
                    lines.append({"status": f"using existing layer {digest}"})
        else:
            for digest in (files or {}).values():
                if isinstance(digest, str):
                    lines.append({"status": f"using existing layer {digest}"})
        if err is None:
            for key in ("template", "system", "parameters", "license", "messages"):
                if body.get(key):
                    d = hashlib.sha256(go_dumps(body[key]).encode()).hexdigest()
                    lines.append({"status": f"creating new layer sha256:{d}"})
            lines.append({"status": "writing manifest"})
            lines.append({"status": "success"})
        if not stream:
            if err is not None:
                raise HttpError(500, err)
            self._created(mn, caps, body)
            return self.json({"status": "success"})
        resp = await self.start_stream(request)
        out = "".join(go_dumps(x) + "\n" for x in lines[:-1] if err is None) if err is None else ""
        if err is None:
            self._created(mn, caps, body)
            out += go_dumps(lines[-1]) + "\n"
        else:
            out = '{"status":"parsing modelfile"}\n' + go_dumps({"error": err}) + "\n"
        await resp.write(out.encode())
        await resp.write_eof()
        return resp

    def _created(self, mn: Any, caps: Sequence[str] | None, body: Mapping[str, Any]) -> None:
        info = make_model(mn, {mn.key: caps} if caps is not None else self.capabilities)
        if isinstance(body.get("system"), str):
            info.system = body["system"]
        if body.get("from"):
            info.parent_model = str(body["from"])
        self.models[mn.key] = info

    async def _blob(self, request: web.BaseRequest, digest: str) -> web.StreamResponse:
        ok = digest.startswith("sha256:") and len(digest) == 71 and all(c in "0123456789abcdef" for c in digest[7:])
        if not ok:
            raise HttpError(400, "invalid digest format")
        known = digest in self._blobs or any(d == digest for i in self.models.values() for d, _ in i.layers)
        if request.method == "HEAD":
            if known:
                return self._raw(200, b"", None)
            raise HttpError(404, f'blob "{digest}" not found')
        data = await request.read()
        got = "sha256:" + hashlib.sha256(data).hexdigest()
        if got != digest:
            raise HttpError(400, f'digest mismatch, expected "{digest}", got "{got}"')
        if known:
            return self._raw(200, b"", None)
        self._blobs.add(digest)
        return self._raw(201, b"", None)

    # ------------------------------------------------------------------ inference helpers

    def resolve(self, name: str, *, not_found: str) -> ModelInfo:
        """Find a local model or raise the right 404 (``not_found`` is a format with {name})."""
        mn = parse_name(name)
        if mn is None:
            if not name:
                raise HttpError(404, not_found.format(name=name))
            raise HttpError(400, "invalid model name")
        info = self.models.get(mn.key)
        if info is None:
            raise HttpError(404, not_found.format(name=name))
        return info

    def check_think(self, info: ModelInfo, model: str, think: bool | str | None) -> bool:
        """Whether the reply thinks; 400 if thinking was asked of a model without it."""
        if think is None:
            return info.has("thinking")
        if think is False:
            return False
        if not info.has("thinking"):
            raise HttpError(400, f'"{model}" does not support thinking')
        return True

    def pre_schedule_faults(self, info: ModelInfo) -> None:
        if self.busy:
            self._sched.stat(info.key).rejected_503 += 1
            raise HttpError(503, BUSY_MESSAGE)
        if self.fail_rate > 0 and self._rng.random() < self.fail_rate:
            self._sched.stat(info.key).failed += 1
            raise HttpError(500, FAIL_MSG)

    async def acquire(self, info: ModelInfo, keep_alive: float | None) -> tuple[Runner, float]:
        try:
            return await self._sched.acquire(info, keep_alive)
        except QueueFullError:
            raise HttpError(503, BUSY_MESSAGE) from None

    def release(self, runner: Runner, ok: bool) -> None:
        if ok:
            self._sched.stat(runner.info.key).served += 1
        self._sched.release(runner)

    def midstream_fail_at(self, n_events: int, plan: Plan) -> int:
        """Index of the event after which an in-band error replaces the rest (-1: no failure)."""
        if self.midstream_fail_rate > 0 and self._rng.random() < self.midstream_fail_rate:
            plan.failed = True
            self._sched.stat(plan.model_key).failed += 1
            return self._rng.randint(1, max(1, n_events - 1)) if n_events > 1 else 0
        return -1

    async def load_or_unload(self, info: ModelInfo, keep_alive: float | None) -> str:
        """Empty prompt / messages: load the model (or unload it with keep_alive 0)."""
        if keep_alive == 0:
            r = self._sched.runner(info)
            r.keep_alive = 0
            if r.loaded and r.idle:
                self._sched.unload(r)
            elif r.load_task is not None and not r.waiters:
                self._sched.unload(r)
            return "unload"
        runner, _ = await self.acquire(info, keep_alive)
        self._sched.release(runner)
        return "load"

    async def pace(self, t_gen: float, upto: int) -> None:
        """Sleep until token number ``upto`` (1-based) is due at the current rate."""
        tps = self.tokens_per_sec
        if tps <= 0:
            return
        due = t_gen + upto / tps
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def batch_end(self, t_gen: float, i: int, n: int) -> int:
        """How many events (from index i) are due now; at least one."""
        tps = self.tokens_per_sec
        if tps <= 0:
            return n
        due = int((time.monotonic() - t_gen) * tps)
        return min(n, max(i + 1, due))

    def plan(
        self,
        info: ModelInfo,
        *,
        text: str,
        last_user: str | None,
        last_role: str | None,
        think: bool,
        fmt: Any,
        tools: Sequence[Any] | None,
        options: Mapping[str, Any] | None,
        num_predict: int | None = None,
        stop: Any = None,
    ) -> Plan:
        if options:
            np_ = options.get("num_predict")
            if isinstance(np_, int) and not isinstance(np_, bool) and num_predict is None:
                num_predict = np_
            if stop is None:
                stop = options.get("stop")
        if num_predict is not None and num_predict < 0:
            num_predict = None
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list):
            stop = None
        seed = self.seed
        if options and isinstance(options.get("seed"), int):
            seed = (seed or 0) ^ options["seed"]
        plan = plan_generation(
            seed=seed,
            model_key=info.key,
            text=text,
            last_user=last_user,
            last_role=last_role,
            think=think,
            fmt=fmt,
            tools=tools,
            num_predict=num_predict,
            stop=[s for s in stop if isinstance(s, str)] if stop else None,
            response_tokens=self.response_tokens,
        )
        plan.model_key = info.key
        return plan

    def metrics(self, t0: float, load_wait: float, t_acq: float, plan: Plan, t_gen: float, t_end: float) -> dict[str, int]:
        """The six duration/count fields, in Go order (nanoseconds)."""
        load_ns = int(load_wait * 1e9) if load_wait > 0 else max(1000, int((t_acq - t0) * 1e9) // 4)
        pe_ns = self.prompt_eval_seconds(plan.prompt_eval_count)
        ev_ns = max(1000, int((t_end - t_gen) * 1e9))
        total = max(int((t_end - t0) * 1e9), load_ns + int(pe_ns * 1e9) + ev_ns)
        out = {
            "total_duration": total,
            "load_duration": load_ns,
            "prompt_eval_count": plan.prompt_eval_count,
            "prompt_eval_duration": max(1000, int(pe_ns * 1e9)),
        }
        if plan.eval_count:
            out["eval_count"] = plan.eval_count
            out["eval_duration"] = ev_ns
        return out

    def prompt_eval_seconds(self, count: int) -> float:
        tps = self.tokens_per_sec
        if tps <= 0:
            return count * 2e-6
        return count / (tps * 10.0)

    # ------------------------------------------------------------------ /api/generate

    async def _native_body(self, request: web.BaseRequest, struct: str) -> tuple[dict[str, Any], str, bool | str | None, float | None]:
        """The checks /api/generate and /api/chat share: (body, model, think value, keep_alive)."""
        body = await self._body(request, struct)
        model = body.get("model") or ""
        think_v = parse_think(body.get("think"))
        keep_alive = keep_alive_of(body)
        tl = body.get("top_logprobs")
        if tl is not None and not 0 <= tl <= 20:
            raise HttpError(400, "top_logprobs must be between 0 and 20")
        return body, model, think_v, keep_alive

    async def _generate(self, request: web.BaseRequest) -> web.StreamResponse:
        t0 = time.monotonic()
        body, model, think_v, keep_alive = await self._native_body(request, "GenerateRequest")
        raw = bool(body.get("raw"))
        if raw and (body.get("template") or body.get("system") or body.get("context")):
            raise HttpError(400, "raw mode does not support template, system, or context")
        info = self.resolve(model, not_found="model '{name}' not found")
        if not info.has("completion"):
            raise HttpError(400, f'"{model}" does not support generate')
        if body.get("suffix") and not info.has("insert"):
            raise HttpError(400, f'"{model}" does not support insert')
        if body.get("images") and not info.has("vision"):
            raise HttpError(400, f'"{model}" does not support vision')
        think = self.check_think(info, model, think_v)
        prompt = body.get("prompt") or ""
        stream = body.get("stream") is not False
        if not prompt and not body.get("images"):
            reason = await self.load_or_unload(info, keep_alive)
            return self.json({"model": model, "created_at": rfc3339(), "response": "", "done": True, "done_reason": reason})
        self.pre_schedule_faults(info)
        plan = self.plan(
            info,
            text=(body.get("system") or "") + "\n" + prompt,
            last_user=prompt,
            last_role="user",
            think=think,
            fmt=body.get("format"),
            tools=None,
            options=body.get("options"),
        )
        ctx = None if raw else (list(body.get("context") or [])[-64:] + plan.context_tokens)
        return await self._reply(request, GENERATE, info, keep_alive, model, plan, t0, stream, ctx)

    async def _reply(
        self, request: web.BaseRequest, shape: Shape, info: ModelInfo, keep_alive: float | None, model: str, plan: Plan, t0: float, stream: bool, ctx: list[int] | None = None
    ) -> web.StreamResponse:
        """Hold a runner while the reply (streamed or whole) is generated."""
        runner, load_wait = await self.acquire(info, keep_alive)
        ok = False
        try:
            t_acq = time.monotonic()
            if stream:
                resp = await self._stream_ndjson(request, shape, model, plan, t0, load_wait, t_acq, ctx)
            else:
                resp = await self._whole_ndjson(shape, model, plan, t0, load_wait, t_acq, ctx)
            ok = True
            return resp
        finally:
            self.release(runner, ok and not plan.failed)

    async def _first_token_wait(self, plan: Plan) -> float:
        """Prompt evaluation time (slept when paced); returns the generation start."""
        if self.tokens_per_sec > 0:
            await asyncio.sleep(self.prompt_eval_seconds(plan.prompt_eval_count))
        return time.monotonic()

    async def _whole_ndjson(
        self, shape: Shape, model: str, plan: Plan, t0: float, load_wait: float, t_acq: float, ctx: list[int] | None
    ) -> web.StreamResponse:
        """A non-streamed reply after its generation time (or a 500 halfway through)."""
        t_gen = await self._first_token_wait(plan)
        n = plan.eval_count
        if self.midstream_fail_at(n, plan) >= 0:
            await self.pace(t_gen, max(1, n // 2))
            raise HttpError(500, MIDSTREAM_MSG)
        await self.pace(t_gen, n)
        t_end = time.monotonic()
        out: dict[str, Any] = {"model": model, "created_at": rfc3339()}
        out.update(shape.fields(plan))
        out["done"] = True
        out["done_reason"] = plan.done_reason
        if ctx is not None:
            out["context"] = ctx
        out.update(self.metrics(t0, load_wait, t_acq, plan, t_gen, t_end))
        return self.json(out)

    async def stream_batches(
        self, request: web.BaseRequest, t_gen: float, n: int, fail_at: int, render: Callable[[int, int], str], final: Callable[[], str], error_line: bytes, ctype: str = CT_NDJSON
    ) -> web.StreamResponse:
        """Stream ``n`` events paced from ``t_gen`` then ``final()``, or (``fail_at >= 0``) the first ``fail_at`` then ``error_line``.

        ``render(i, j)`` gives the text of events i..j-1, once per batch of events due together:
        paced, one write per batch; unpaced, the whole reply in one write with the last line.
        """
        resp: web.StreamResponse | None = None
        pending: list[str] = []
        paced = self.tokens_per_sec > 0
        limit = n if fail_at < 0 else fail_at
        i = 0
        while i < limit:
            await self.pace(t_gen, i + 1)
            j = self.batch_end(t_gen, i, limit)
            text = render(i, j)
            if paced:
                if resp is None:
                    resp = await self.start_stream(request, ctype)
                await resp.write(text.encode())
            else:
                pending.append(text)
            i = j
        if resp is None:
            resp = await self.start_stream(request, ctype)
        if fail_at >= 0:
            await resp.write_eof("".join(pending).encode() + error_line)
            return resp
        pending.append(final())
        await resp.write_eof("".join(pending).encode())
        return resp

    async def _stream_ndjson(
        self, request: web.BaseRequest, shape: Shape, model: str, plan: Plan, t0: float, load_wait: float, t_acq: float, ctx: list[int] | None
    ) -> web.StreamResponse:
        """A streamed /api/generate or /api/chat reply."""
        pre, suf, done = shape.pre, shape.suf, shape.done
        t_gen = await self._first_token_wait(plan)
        events = events_of(plan)
        n = len(events)
        fail_at = self.midstream_fail_at(n, plan)
        head = '{"model":' + go_dumps(model) + ',"created_at":"'

        def render(i: int, j: int) -> str:
            # one instant per batch of lines written together
            return render_events(events, i, j, head + rfc3339(), pre, suf, plan)

        def final() -> str:
            t_end = time.monotonic()
            out = head + rfc3339() + done + go_dumps(plan.done_reason)
            if ctx is not None:
                out += ',"context":' + go_dumps(ctx)
            m = self.metrics(t0, load_wait, t_acq, plan, t_gen, t_end)
            return out + "," + go_dumps(m)[1:] + "\n"

        return await self.stream_batches(request, t_gen, n, fail_at, render, final, MIDSTREAM_NDJSON)

    # ------------------------------------------------------------------ /api/chat

    def parse_messages(self, msgs: list[Any], struct: str = "ChatRequest") -> tuple[str, str | None, str | None]:
        """Validate messages; returns (all text, last user text, last role)."""
        return parse_messages(msgs, struct)

    def resolve_chat(self, model: str, tools: Any, images: bool) -> ModelInfo:
        """The model checks of a chat request (/api/chat and /v1/chat/completions), in order."""
        if not model.strip():
            raise HttpError(400, "model is required")
        info = self.resolve(model, not_found="model '{name}' not found")
        if not info.has("completion"):
            raise HttpError(400, f'"{model}" does not support chat')
        if tools and not info.has("tools"):
            raise HttpError(400, f"{info.name.full} does not support tools")
        if images and not info.has("vision"):
            raise HttpError(400, f'"{model}" does not support vision')
        return info

    async def _chat(self, request: web.BaseRequest) -> web.StreamResponse:
        t0 = time.monotonic()
        body, model, think_v, keep_alive = await self._native_body(request, "ChatRequest")
        msgs = body.get("messages") or []
        text, last_user, last_role = self.parse_messages(msgs)
        tools = body.get("tools") or None
        info = self.resolve_chat(model, tools, any(isinstance(m, dict) and m.get("images") for m in msgs))
        think = self.check_think(info, model, think_v)
        stream = body.get("stream") is not False
        if not msgs:
            reason = await self.load_or_unload(info, keep_alive)
            return self.json(
                {"model": model, "created_at": rfc3339(), "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": reason}
            )
        self.pre_schedule_faults(info)
        plan = self.plan(
            info, text=text, last_user=last_user, last_role=last_role, think=think, fmt=body.get("format"), tools=tools, options=body.get("options")
        )
        return await self._reply(request, CHAT, info, keep_alive, model, plan, t0, stream)

    # ------------------------------------------------------------------ embeddings

    def embed_vector(self, info: ModelInfo, text: str, dims: int | None = None, normalise: bool = True) -> np.ndarray:
        """Deterministic vector for (seed, model, text); cached (a bounded dict, FIFO)."""
        ck = (info.key, text, dims, normalise)
        hit = self._emb_cache.get(ck)
        if hit is not None:
            return hit
        v = self._make_vector(info, text, dims, normalise)
        if len(self._emb_cache) >= 4096:
            self._emb_cache.pop(next(iter(self._emb_cache)))
        self._emb_cache[ck] = v
        return v

    def embed_json(self, info: ModelInfo, text: str, dims: int | None = None) -> str:
        """The JSON array text of :meth:`embed_vector` (normalised), cached."""
        ck = (info.key, text, dims)
        hit = self._emb_json_cache.get(ck)
        if hit is None:
            hit = go_dumps(self.vector_json(self.embed_vector(info, text, dims)))
            if len(self._emb_json_cache) >= 4096:
                self._emb_json_cache.pop(next(iter(self._emb_json_cache)))
            self._emb_json_cache[ck] = hit
        return hit

    def _make_vector(self, info: ModelInfo, text: str, dims: int | None, normalise: bool) -> np.ndarray:
        dim = info.embedding_length
        rng = np.random.default_rng(seed_for(self.seed, info.key, text))
        v = rng.standard_normal(dim)
        if dims is not None and 0 < dims < dim:
            v = v[:dims]
        if normalise:
            v = v / (np.linalg.norm(v) or 1.0)
            return v.astype(np.float32)
        return v * 0.5

    @staticmethod
    def vector_json(v: np.ndarray) -> list[float]:
        """float32 values as short decimal numbers (about 8 significant digits)."""
        return np.round(v.astype(np.float64), 9).tolist()

    async def run_embedding(self, info: ModelInfo, keep_alive: float | None, inputs: list[str], dims: int | None, normalise: bool = True) -> tuple[list[np.ndarray], float, float]:
        self.pre_schedule_faults(info)
        t0 = time.monotonic()
        runner, load_wait = await self.acquire(info, keep_alive)
        ok = False
        try:
            if self.tokens_per_sec > 0:
                words = sum(len(t.split()) + 1 for t in inputs)
                await asyncio.sleep(words / (self.tokens_per_sec * 50.0))
            vecs = [self.embed_vector(info, t, dims, normalise) for t in inputs]
            ok = True
            return vecs, load_wait, t0
        finally:
            self.release(runner, ok)

    async def _embed(self, request: web.BaseRequest) -> web.StreamResponse:
        t0 = time.monotonic()
        body = await self._body(request, "EmbedRequest")
        model = body.get("model") or ""
        keep_alive = keep_alive_of(body)
        inp = body.get("input")
        if inp is None or inp == "":
            inputs: list[str] = []
        elif isinstance(inp, str):
            inputs = [inp]
        elif isinstance(inp, list):
            if not all(isinstance(x, str) for x in inp):
                raise HttpError(400, "invalid input type")
            inputs = inp
        else:
            raise HttpError(400, "invalid input type")
        info = self.resolve(model, not_found='model "{name}" not found, try pulling it first')
        dims = body.get("dimensions")
        if dims is not None and dims < 0:
            raise HttpError(400, "dimensions must be a positive number")
        if body.get("truncate") is False:
            for t in inputs:
                if len(t.split()) > info.context_length:
                    raise HttpError(400, "the input length exceeds the context length")
        if not inputs:
            await self.load_or_unload(info, keep_alive)
            return self.json({"model": model, "embeddings": []})
        vecs, load_wait, _ = await self.run_embedding(info, keep_alive, inputs, dims)
        count = sum(len(t.split()) + 1 for t in inputs)
        t_end = time.monotonic()
        tail = go_dumps(
            {
                "total_duration": max(1000, int((t_end - t0) * 1e9)),
                "load_duration": max(1000, int(load_wait * 1e9)),
                "prompt_eval_count": count,
            }
        )
        out = (
            '{"model":' + go_dumps(model) + ',"embeddings":['
            + ",".join(self.embed_json(info, t, dims) for t in inputs) + "]," + tail[1:]
        )  # fmt: skip
        return web.Response(status=200, body=out.encode(), headers=self._headers(CT_JSON))

    async def _embeddings(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await self._body(request, "EmbeddingRequest")
        model = body.get("model") or ""
        keep_alive = keep_alive_of(body)
        info = self.resolve(model, not_found='model "{name}" not found, try pulling it first')
        prompt = body.get("prompt") or ""
        if not prompt:
            await self.load_or_unload(info, keep_alive)
            return self.json({"embedding": []})
        vecs, _, _ = await self.run_embedding(info, keep_alive, [prompt], None, normalise=False)
        return self.json({"embedding": vecs[0].tolist()})


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

