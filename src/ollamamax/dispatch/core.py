"""The Dispatcher: one object that answers every Ollama / OpenAI-compatible route.

Request path for an inference route (``/api/chat`` ...)::

    parse (json.loads once; Go-like 400s)  ->  cache lookup  ->  candidates
    (healthy hosts that have the model, from the immutable snapshot)  ->  selection
    (model-aware expected-TTFT tiers, then the strategy orders a tier)  ->  admission
    (per-host slots, bounded FIFO wait)  ->  upstream attempt (TTFB timeout)  ->
    retry on another host while nothing went to the client  ->  response (body or
    pass-through stream with idle timeout; aclose() cancels upstream at once)  ->
    accounting (histograms, counters, EWMAs, cache fill, cold-load learning).

The original request bytes are forwarded unchanged.  The client's own headers are not
(only Content-Type/Accept/User-Agent plus the host's configured headers).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from .._errors import QueueFull
from . import routes
from ._types import (
    HEADER_ATTEMPTS,
    HEADER_CACHE,
    HEADER_COLD,
    HEADER_HOST,
    HEADER_QUEUE_MS,
    DispatcherConfig,
    DispatchResponse,
    HostConfig,
)
from .admission import Admission
from .cache import CachedResponse, ResponseCache
from .errors import (
    BUSY_MESSAGE,
    JSON_CONTENT_TYPE,
    NDJSON_CONTENT_TYPE,
    NOT_FOUND_PAGE,
    SSE_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    ResponseError,
    go_json_error,
    go_type_name,
    ollama_error_body,
    openai_error_body,
)
from .health import Health
from .hosts import (
    DecayingRate,
    Ewma,
    HostState,
    HostView,
    Snapshot,
    display_name,
    host_name_from_url,
    normalize_model,
)
from .refresh import Refresher
from .routes import PULL_TIMEOUT, Route, lookup
from .strategies import (
    STRATEGIES,
    LatencyStrategy,
    LeastLoadedStrategy,
    P2CStrategy,
    Pick,
    RoundRobinStrategy,
    Strategy,
    chat_prefix_hashes,
    make_strategy,
)
from .upstream import (
    UPSTREAM_ERRORS,
    PassThrough,
    RawResponse,
    Replay,
    TraceCtx,
    Upstream,
    describe_error,
    timeout,
)
from .upstream import header_get as _hget

__all__ = ["Dispatcher"]

log = logging.getLogger("ollamamax.dispatch")

_json_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

# Response headers never copied from upstream (hop-by-hop, or recomputed by the front end).
_DROP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "date",
        "server",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
METRICS_BYTES = 512  # the metrics are the last fields of the final object
COLD_LOAD_S = 0.02  # a load_duration above this means the host had to load the model
SLOW_TTFB_S = 1.0  # a first byte slower than this and 4x the usual triggers a refresh of the host
MISS_REFRESH_WAIT = 1.0  # how long an unknown-model request waits for the refresh it triggered

_SMALL_INTS = tuple(str(i) for i in range(16))
_NO_HOSTS: list[HostState] = []  # never mutated
# strategies whose order() of one candidate is that candidate, with no side effect
_PLAIN_ORDER = frozenset({LeastLoadedStrategy, P2CStrategy, RoundRobinStrategy, LatencyStrategy})
_RE_METRICS = re.compile(rb'"(load_duration|eval_count|eval_duration)":(\d+)')


def _final_metrics(tail: bytes) -> tuple[int | None, int | None, int | None]:
    """(load_duration, eval_count, eval_duration) of the last bytes of an answer: the
    last ``"name":<digits>`` of each in ``tail``, None where absent."""
    # The final object lists them in this order; scanning from the last load_duration
    # finds all three at once.  Matches cannot overlap, so what a scan from there finds
    # is exactly the tail's last match of each name; if one is missing there, scan all.
    pos = tail.rfind(b'"load_duration":')
    ld = ec = ed = None
    for k, v in _RE_METRICS.findall(tail, pos) if pos > 0 else _RE_METRICS.findall(tail):
        if k == b"eval_count":
            ec = v
        elif k == b"eval_duration":
            ed = v
        else:
            ld = v
    if pos > 0 and (ld is None or ec is None or ed is None):
        return _scan_metrics(tail)
    return (
        int(ld) if ld is not None else None,
        int(ec) if ec is not None else None,
        int(ed) if ed is not None else None,
    )


def _scan_metrics(tail: bytes) -> tuple[int | None, int | None, int | None]:
    m = {k: int(v) for k, v in _RE_METRICS.findall(tail)}
    return m.get(b"load_duration"), m.get(b"eval_count"), m.get(b"eval_duration")

# Routes whose requests make the host load the model.
_LOADING_PATHS = frozenset(
    {
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/embeddings",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
    }
)
# Go request struct names for the /v1 routes' type errors.
_V1_STRUCTS = {
    "/v1/chat/completions": "ChatCompletionRequest",
    "/v1/completions": "CompletionRequest",
    "/v1/embeddings": "EmbedRequest",
}
# field -> (accepted Python types, Go type name); None (JSON null) is always accepted.
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "model": ((str,), "string"),
    "stream": ((bool,), "bool"),
    "options": ((dict,), "map[string]interface {}"),
    "messages": ((list,), "[]api.Message"),
    "prompt": ((str,), "string"),
    "source": ((str,), "string"),
    "destination": ((str,), "string"),
    "name": ((str,), "string"),
}
# json.loads without its Python layers: the C scanner, used when the body is exactly one
# JSON value with no surrounding whitespace (anything else takes the json.loads path).
_scan_once = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_FIELDS_BY_ROUTE: dict[str, tuple[str, ...]] = {
    "/api/generate": ("model", "stream", "options", "prompt"),
    "/api/chat": ("model", "stream", "options", "messages"),
    "/api/embed": ("model", "options"),
    "/api/embeddings": ("model", "options", "prompt"),
    "/api/show": ("model", "name"),
    "/api/push": ("model", "stream", "name"),
    "/api/pull": ("model", "stream", "name"),
    "/api/delete": ("model", "name"),
    "/api/copy": ("source", "destination"),
    "/api/create": ("model", "stream"),
    "/v1/chat/completions": ("model", "stream", "messages"),
    "/v1/completions": ("model", "stream"),
    "/v1/embeddings": ("model",),
}


# path -> ((field, the one type json.loads gives for an accepted value, Go type name), ...)
# (values from json.loads have exact types, so ``type(v) is t`` is the isinstance test,
# bools included)
_CHECKS_BY_ROUTE: dict[str, tuple[tuple[str, type, str], ...]] = {
    path: tuple((f, _FIELD_TYPES[f][0][0], _FIELD_TYPES[f][1]) for f in fields)
    for path, fields in _FIELDS_BY_ROUTE.items()
}
assert all(len(t) == 1 for t, _ in _FIELD_TYPES.values())


def _is_zero_keep_alive(v: Any) -> bool:
    if isinstance(v, bool) or v is None:
        return False
    if isinstance(v, (int, float)):
        return v == 0
    if isinstance(v, str):
        s = v.strip()
        if s == "0":
            return True
        m = re.fullmatch(r"(?:0+(?:\.0*)?(?:ns|us|µs|ms|s|m|h))+", s)
        return m is not None
    return False


class _Failure:
    """One failed upstream attempt (the slot is already released)."""

    __slots__ = ("host", "status", "body", "message", "busy", "content_type")

    def __init__(
        self,
        host: HostState,
        *,
        status: int = 0,
        body: bytes = b"",
        message: str = "",
        content_type: str = JSON_CONTENT_TYPE,
    ) -> None:
        self.host = host
        self.status = status
        self.body = body
        self.message = message
        self.busy = status == 503
        self.content_type = content_type


class _Req:
    """Everything about one inference request the dispatcher needs across attempts."""

    __slots__ = (
        "route",
        "method",
        "path",
        "body",
        "headers",
        "query",
        "obj",
        "name",
        "model",
        "pick",
        "cache_key",
        "cache_header",
        "cands",
        "t0",
    )

    def __init__(
        self, route: Route, method: str, path: str, body: bytes, headers: Mapping[str, str] | None, query: str
    ) -> None:
        self.route = route
        self.method = method
        self.path = path
        self.body = body
        self.headers = headers
        self.query = query
        self.obj: dict[str, Any] = {}
        self.name = ""
        self.model = ""
        self.pick: Pick | None = None
        self.cache_key: tuple[str, str, bytes] | None = None
        self.cache_header = False
        self.cands: list[HostState] = []
        self.t0 = time.perf_counter()


def _us(seconds: float) -> int:
    return max(1, int(seconds * 1e6))


class _Timings:
    """The histograms of one (host, model): microseconds, tokens_per_s in tokens/s."""

    __slots__ = ("queue_wait", "connect", "ttfb", "total", "tokens_per_s")

    def __init__(self, factory: Any) -> None:
        self.queue_wait = factory()
        self.connect = factory()
        self.ttfb = factory()
        self.total = factory()
        self.tokens_per_s = factory()


class _StreamCtx:
    """What the dispatcher needs back when a pass-through stream ends."""

    __slots__ = ("host", "req", "t0", "t_first", "cold", "queue_s", "trace")

    def __init__(
        self, host: HostState, req: _Req, t0: float, t_first: float, cold: bool, queue_s: float, trace: TraceCtx
    ) -> None:
        self.host = host
        self.req = req
        self.t0 = t0
        self.t_first = t_first
        self.cold = cold
        self.queue_s = queue_s
        self.trace = trace


class Dispatcher:
    """Dispatch Ollama API requests over many Ollama hosts.

    ``hosts`` are base URLs or :class:`HostConfig`.  ``strategy`` (default from the
    config, ``least-loaded``) is one of ``least-loaded``, ``p2c``, ``round-robin``,
    ``latency``, ``affinity``.  Keyword ``overrides`` replace fields of ``config``.
    Use as ``async with Dispatcher([...]) as d:``; the initial refresh of every host
    completes (bounded by the connect timeout) before the block starts; hosts that are
    down are marked unhealthy and probed again later.
    """

    def __init__(
        self,
        hosts: Sequence[str | HostConfig],
        *,
        strategy: str | None = None,
        config: DispatcherConfig | None = None,
        **overrides: Any,
    ) -> None:
        cfg = config if config is not None else DispatcherConfig()
        if strategy is not None:
            overrides["strategy"] = strategy
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        if cfg.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {cfg.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if cfg.max_in_flight_per_host < 1:
            raise ValueError("max_in_flight_per_host must be >= 1")
        if cfg.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.config = cfg
        hosts = [hosts] if isinstance(hosts, (str, HostConfig)) else list(hosts)
        if not hosts:
            raise ValueError("at least one host is required")
        self.hosts: list[HostState] = []
        names: set[str] = set()
        for i, spec in enumerate(hosts):
            hc = HostConfig(url=spec) if isinstance(spec, str) else spec
            url = hc.url.strip().rstrip("/")
            if not re.match(r"^https?://[^/\s]+$", url):
                raise ValueError(f"invalid host URL {hc.url!r} (expected http://host:port)")
            name = hc.name or host_name_from_url(url)
            base, k = name, 2
            while name in names:
                name = f"{base}#{k}"
                k += 1
            names.add(name)
            cap = hc.max_concurrency if hc.max_concurrency is not None else cfg.max_in_flight_per_host
            if cap < 1:
                raise ValueError(f"max_concurrency of {url} must be >= 1")
            if hc.weight <= 0:
                raise ValueError(f"weight of {url} must be > 0")
            self.hosts.append(HostState(index=i, config=hc, name=name, url=url, capacity=int(cap)))
        self._by_name = {h.name: h for h in self.hosts}
        self._snapshot = Snapshot(tuple(HostView(h.index, h.name, h.url) for h in self.hosts))
        self.health = Health(cfg)
        self.strategy: Strategy | None = None
        self.admission: Admission = None  # type: ignore[assignment]  # set by start()
        self.cache = ResponseCache(cfg.cache_size, cfg.cache_ttl, cache_generate=cfg.cache_generate)
        self.refresher = Refresher(self)
        self._streams: set[Any] = set()
        self._demand: dict[str, DecayingRate] = {}
        self._hist: dict[tuple[str, str], _Timings] = {}
        # id(upstream header tuple) -> (that tuple, its end-to-end headers), see _resp_headers
        self._kept_headers: dict[int, tuple[Any, dict[str, str]]] = {}
        self.counters: dict[str, Any] = {
            "requests": Counter(),
            "retries": 0,
            "ejections": Counter(),
            "cache_hits": 0,
            "cache_misses": 0,
        }
        self._miss_refresh: asyncio.Task[None] | None = None
        self._miss_refresh_at = 0.0
        self._auto_pulls: dict[str, asyncio.Task[bool]] = {}
        self._started = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------
    async def __aenter__(self) -> Dispatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        from .. import LatencyHistogram  # noqa: F401  (fail early if the core is missing)

        for h in self.hosts:
            h.upstream = Upstream(h.config, h.capacity, self.config)
            h.wake = asyncio.Event()
        self.admission = Admission(self.hosts, self.config.queue_size)
        self.strategy = make_strategy(self.config.strategy, self.hosts, overflow=self.config.affinity_overflow)
        try:
            await self.refresher.start()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.admission is not None:  # queued requests get 503 now, not at their deadline
            self.admission.close()
        await self.refresher.stop()
        pending = [t for t in (*self._auto_pulls.values(), self._miss_refresh) if t is not None and not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        for s in list(self._streams):
            await s.aclose()
        for h in self.hosts:
            if h.upstream is not None:
                await h.upstream.close()
        # let the aborted upstream transports finish closing (avoids ResourceWarnings)
        await asyncio.sleep(0)

    # -- snapshot ----------------------------------------------------------------------
    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def _set_view(self, view: HostView) -> None:
        self._snapshot = self._snapshot.replace(view)

    # -- public entry point ------------------------------------------------------------
    async def handle(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        query: str = "",
    ) -> DispatchResponse:
        """Answer one HTTP request (see ``_types.py`` for the contract)."""
        if self.admission is None or self._closed:
            raise RuntimeError("Dispatcher is not running: use 'async with Dispatcher(...)' or await start()")
        method = method.upper()
        route = lookup(method, path)
        if route is None:
            return self._plain(404, NOT_FOUND_PAGE)
        kind = route.kind
        if kind == "model":
            return await self._handle_model(route, method, path, body or b"", headers, query)
        if kind == "root":
            return self._plain(200, b"Ollama is running")
        if kind == "tags":
            return await routes.handle_tags(self)
        if kind == "ps":
            return await routes.handle_ps(self)
        if kind == "version":
            return routes.handle_version(self)
        if kind == "status":
            return self._json(200, self.status())
        if kind == "v1_models":
            return await routes.handle_v1_models(self)
        if kind == "v1_model":
            return await routes.handle_v1_model(self, path[len("/v1/models/") :], headers)
        if kind == "blobs":
            return await routes.handle_blobs(self, method, path, body or b"", headers)
        return await routes.handle_admin(self, route, method, path, body or b"", headers, query)

    # -- small response builders -------------------------------------------------------
    @staticmethod
    def _base_headers(
        host: str = "-", cold: bool = False, queue_s: float = 0.0, attempts: int = 0, cache: str | None = None
    ) -> dict[str, str]:
        h = {
            HEADER_HOST: host,
            HEADER_COLD: "1" if cold else "0",
            HEADER_QUEUE_MS: f"{queue_s * 1000.0:.0f}" if queue_s else "0",
            HEADER_ATTEMPTS: _SMALL_INTS[attempts] if 0 <= attempts < 16 else str(attempts),
        }
        if cache is not None:
            h[HEADER_CACHE] = cache
        return h

    def _plain(self, status: int, body: bytes, **kw: Any) -> DispatchResponse:
        h = self._base_headers(**kw)
        h["Content-Type"] = TEXT_CONTENT_TYPE
        return DispatchResponse(status, h, body=body)

    def _json(self, status: int, obj: Any, **kw: Any) -> DispatchResponse:
        h = self._base_headers(**kw)
        h["Content-Type"] = JSON_CONTENT_TYPE
        return DispatchResponse(status, h, body=_json_dumps(obj).encode())

    def _error(
        self, route: Route | None, status: int, message: str, *, extra: Mapping[str, str] | None = None, **kw: Any
    ) -> DispatchResponse:
        h = self._base_headers(**kw)
        h["Content-Type"] = JSON_CONTENT_TYPE
        if extra:
            h.update(extra)
        body = openai_error_body(message, status) if route is not None and route.openai else ollama_error_body(message)
        return DispatchResponse(status, h, body=body)

    def _busy(self, route: Route | None, **kw: Any) -> DispatchResponse:
        return self._error(route, 503, BUSY_MESSAGE, extra={"Retry-After": str(self._retry_after())}, **kw)

    def _no_healthy(self, route: Route, name: str, **kw: Any) -> DispatchResponse:
        """Every host that has the model is down (ejected or unreachable)."""
        now = time.monotonic()
        norm = normalize_model(name)
        waits = [
            h.ejected_until - now
            for h in self.hosts
            if norm in self._snapshot.hosts[h.index].present and h.ejected_until > now
        ]
        retry = int(min(60, max(1, math.ceil(min(waits))))) if waits else 1
        return self._error(
            route, 503, f"no healthy host has model '{display_name(name)}'", extra={"Retry-After": str(retry)}, **kw
        )

    def _retry_after(self) -> int:
        cap = sum(h.capacity for h in self.hosts if not h.down) or 1
        svc = [h.service.value for h in self.hosts if h.service.value is not None]
        mean = sum(svc) / len(svc) if svc else 1.0
        waiting = self.admission.waiting if self.admission is not None else 0
        return int(min(30, max(1, math.ceil((waiting + 1) / cap * mean))))

    def _notfound_message(self, route: Route, name: str) -> str:
        if route.notfound == "double":
            return f'model "{name}" not found, try pulling it first'
        if route.notfound == "show":
            return f"model '{display_name(name)}' not found"
        return f"model '{name}' not found"

    # -- parsing -----------------------------------------------------------------------
    def _parse(self, route: Route, path: str, body: bytes) -> dict[str, Any] | DispatchResponse:
        if not body:
            return self._error(route, 400, "missing request body")
        try:
            text = body.decode()  # UTF-8 only, as Go's decoder
            try:
                obj, end = _scan_once(text, 0)
            except StopIteration:
                end = -1
            if end != len(text):
                if not body.strip():
                    return self._error(route, 400, "missing request body")
                obj = json.loads(text)
        except json.JSONDecodeError as exc:
            if not exc.msg.startswith("Extra data"):
                return self._error(route, 400, go_json_error(exc))
            # Go's decoder reads the first value and ignores what follows.
            obj, _ = json.JSONDecoder().raw_decode(exc.doc.lstrip())
        except UnicodeDecodeError:
            return self._error(route, 400, "invalid character in request body (not UTF-8)")
        struct = route.go_struct or _V1_STRUCTS.get(path, "Request")
        if not isinstance(obj, dict):
            return self._error(
                route, 400, f"json: cannot unmarshal {go_type_name(obj)} into Go value of type api.{struct}"
            )
        for fname, ftype, goname in _CHECKS_BY_ROUTE.get(path, ()):
            v = obj.get(fname)
            if v is not None and type(v) is not ftype:
                return self._error(
                    route,
                    400,
                    f"json: cannot unmarshal {go_type_name(v)} into Go struct field {struct}.{fname} of type {goname}",
                )
        return obj

    def _model_of(self, route: Route, obj: dict[str, Any]) -> str:
        name = obj.get(route.model_field)
        if not name and route.model_field == "model":
            name = obj.get("name")  # legacy field on show/pull/push/delete
        return name if isinstance(name, str) else ""

    # -- inference routes --------------------------------------------------------------
    async def _handle_model(
        self, route: Route, method: str, path: str, body: bytes, headers: Mapping[str, str] | None, query: str
    ) -> DispatchResponse:
        parsed = self._parse(route, path, body)
        if isinstance(parsed, DispatchResponse):
            if self.cache.cacheable_route(path):
                parsed.headers[HEADER_CACHE] = "miss"
            return parsed
        obj = parsed
        req = _Req(route, method, path, body, headers, query)
        req.obj = obj
        name = self._model_of(route, obj)
        req.name = name
        req.cache_header = cache_header = self.cache.cacheable_route(path)
        cache_tag = "miss" if cache_header else None  # the X-Ollamamax-Cache header, if any
        if not name.strip():
            if route.empty_model == "notfound":
                return self._error(route, 404, f"model '{name}' not found", cache=cache_tag)
            return self._error(route, 400, "model is required", cache=cache_tag)
        model = normalize_model(name)
        req.model = model
        keep_alive = obj.get("keep_alive")
        if keep_alive is not None and path in ("/api/generate", "/api/chat") and _is_zero_keep_alive(keep_alive):
            empty = not obj.get("prompt") if path == "/api/generate" else not obj.get("messages")
            if empty:
                return await routes.unload(self, req)

        if cache_header:
            req.cache_key = self.cache.key_for(path, model, obj)
            if req.cache_key is not None:
                hit = self.cache.get(req.cache_key)
                if hit is not None:
                    self.counters["cache_hits"] += 1
                    return self._replay(hit)
                self.counters["cache_misses"] += 1

        cands = self._candidates(model)
        if cands is None:  # not in the snapshot: refresh (and maybe pull) first
            cands = await self._candidates_or_fetch(model)
        if cands is None:
            return self._error(route, 404, self._notfound_message(route, name), cache=cache_tag)
        if not cands:
            return self._no_healthy(route, name, cache=cache_tag)
        req.cands = cands
        rate = self._demand.get(model)  # only models some host has: bounded
        if rate is None:
            rate = self._demand[model] = DecayingRate()
        rate.hit(time.monotonic())
        req.pick = self._make_pick(req)
        return await self._forward(req)

    def _replay(self, hit: CachedResponse) -> DispatchResponse:
        h = dict(hit.headers)
        h.update(self._base_headers(cache="hit"))
        if hit.chunks is not None:
            rp = Replay(hit.chunks)
            return DispatchResponse(hit.status, h, stream=rp, _close=rp.aclose)
        return DispatchResponse(hit.status, h, body=hit.body)

    def _make_pick(self, req: _Req) -> Pick:
        if self.config.strategy != "affinity":
            return Pick(req.model)
        session = _hget(req.headers, self.config.session_header)
        if session:
            return Pick(req.model, session=session)
        obj = req.obj
        msgs = obj.get("messages")
        if isinstance(msgs, list) and msgs:
            return Pick(req.model, prefixes=chat_prefix_hashes(req.model, msgs))
        prompt = obj.get("prompt")
        if isinstance(prompt, str):
            return Pick(req.model, prompt_key=(req.model + "\x00" + prompt).encode())
        return Pick(req.model)

    def _candidates(self, model: str) -> list[HostState] | None:
        idx = self._snapshot.by_model.get(model)
        if not idx:
            return None
        hosts = self.hosts
        if len(idx) == 1:
            h = hosts[idx[0]]
            return [] if h.down else [h]
        return [hosts[i] for i in idx if not hosts[i].down]

    async def _candidates_or_fetch(self, model: str) -> list[HostState] | None:
        cands = self._candidates(model)
        if cands is not None:
            return cands
        # Not in the snapshot: it may have been pulled since the last refresh.
        await self._refresh_on_miss()
        cands = self._candidates(model)
        if cands is None and self.config.auto_pull:
            if await self._auto_pull(model):
                cands = self._candidates(model)
        return cands

    async def _refresh_on_miss(self) -> None:
        """Refresh all healthy hosts, at most once a second, shared by concurrent misses."""
        t = self._miss_refresh
        if t is None or t.done():
            if time.monotonic() - self._miss_refresh_at < 1.0:
                return
            self._miss_refresh_at = time.monotonic()

            async def run() -> None:
                await asyncio.gather(*(self.refresher.refresh_host(h) for h in self.hosts if not h.down))

            t = self._miss_refresh = asyncio.create_task(run())
        # bounded: one hanging host must not make every unknown-model 404 slow
        await asyncio.wait({t}, timeout=MISS_REFRESH_WAIT)

    async def _auto_pull(self, model: str) -> bool:
        t = self._auto_pulls.get(model)
        if t is None:
            t = self._auto_pulls[model] = asyncio.create_task(self._do_auto_pull(model))
            t.add_done_callback(lambda _t: self._auto_pulls.pop(model, None))
        return await asyncio.shield(t)

    async def _do_auto_pull(self, model: str) -> bool:
        hosts = sorted((h for h in self.hosts if not h.down), key=lambda h: h.load_ratio())
        if not hosts:
            return False
        h = hosts[0]
        body = _json_dumps({"model": model, "stream": False}).encode()
        try:
            async with timeout(PULL_TIMEOUT):
                resp = await h.upstream.send("POST", "/api/pull", body)  # type: ignore[union-attr]
                try:
                    await resp.read()
                    ok = resp.status == 200
                finally:
                    resp.release()
        except UPSTREAM_ERRORS:
            return False
        if ok:
            await self.refresher.refresh_host(h)
        return ok

    # -- selection + admission ---------------------------------------------------------
    def _resident_demand(self, h: HostState, view: HostView, now: float) -> float:
        total = 0.0
        for m in view.loaded | frozenset(h.warm):
            r = self._demand.get(m)
            if r is not None:
                total += r.rate(now)
        return total

    def _order_cold(self, cold: list[HostState], pick: Pick) -> list[HostState]:
        assert self.strategy is not None
        ordered = self.strategy.order(cold, pick)
        if len(ordered) <= 1 or self.config.strategy == "affinity":
            return ordered
        snap = self._snapshot
        now = time.monotonic()
        # least in-demand resident models first, so hot models do not thrash
        return sorted(ordered, key=lambda h: round(self._resident_demand(h, snap.hosts[h.index], now), 3))

    @staticmethod
    def expected_ttft(h: HostState, model: str, loaded: bool) -> float:
        """Expected seconds to the first token of a new ``model`` request on ``h``:
        the wait for a gateway slot (in-flight beyond capacity x observed service time),
        plus the learned load cost (EWMA of load_duration, default 10 s) if the model is
        not resident, plus the host's EWMA time to first byte."""
        t = h.expected_wait() + h.ttfb.get(0.0)
        if not loaded:
            t += h.expected_load_cost(model)
        return t

    async def _acquire(self, pool: list[HostState], req: _Req, deadline: float) -> tuple[HostState, float]:
        """A slot on one host of ``pool`` and the seconds waited for it (raises
        ``QueueFull`` / ``TimeoutError`` when none came before ``deadline``)."""
        h, wait_on, widen_after = self._select(pool, req)
        if h is not None:
            return h, 0.0
        return await self._wait_slot(pool, wait_on, widen_after, deadline)

    def _select(
        self, pool: list[HostState], req: _Req
    ) -> tuple[HostState | None, list[HostState], float | None]:
        """Take a free slot now: (host, [], None); else (None, hosts to wait on, seconds
        after which to accept any host of ``pool`` or None)."""
        adm = self.admission
        strategy = self.strategy
        assert strategy is not None and req.pick is not None
        if len(pool) == 1 and type(strategy) in _PLAIN_ORDER:
            # one candidate: loaded or not, it is the one to take or wait for
            h = pool[0]
            if adm.try_acquire(h):
                return h, _NO_HOSTS, None
            return None, pool, None
        snap = self._snapshot
        model = req.model
        loaded: list[HostState] = []
        cold: list[HostState] = []
        for h in pool:
            (loaded if h.is_loaded(model, snap.hosts[h.index]) else cold).append(h)
        widen_after: float | None = None
        if loaded:
            for h in strategy.order(loaded, req.pick):
                if adm.try_acquire(h):
                    return h, _NO_HOSTS, None
            wait_on = loaded
            if cold:
                # expected time to first token: wait for a slot (+ load if cold) + EWMA TTFB
                wait_est = min(self.expected_ttft(h, model, True) for h in loaded)
                cost = min(self.expected_ttft(h, model, False) for h in cold)
                if wait_est > cost:
                    for h in self._order_cold(cold, req.pick):
                        if adm.try_acquire(h):
                            return h, _NO_HOSTS, None
                    wait_on = pool
                else:
                    widen_after = max(cost - wait_est, 0.05)
        else:
            for h in self._order_cold(pool, req.pick):
                if adm.try_acquire(h):
                    return h, _NO_HOSTS, None
            wait_on = pool
        return None, wait_on, widen_after

    async def _wait_slot(
        self, pool: list[HostState], wait_on: list[HostState], widen_after: float | None, deadline: float
    ) -> tuple[HostState, float]:
        adm = self.admission
        t0 = time.monotonic()
        remaining = deadline - t0
        if adm.full() or remaining <= 0:
            raise QueueFull
        if widen_after is not None and widen_after < remaining:
            try:
                h = await adm.wait(wait_on, widen_after)
                return h, time.monotonic() - t0
            except (TimeoutError, asyncio.TimeoutError):
                wait_on = pool  # waited as long as a load would take: accept any host now
        h = await adm.wait(wait_on, deadline - time.monotonic())
        return h, time.monotonic() - t0

    # -- forwarding with retries -------------------------------------------------------
    async def _forward(self, req: _Req) -> DispatchResponse:
        cfg = self.config
        tried: set[int] = set()
        attempts = 0
        queue_s = 0.0
        last: _Failure | None = None
        deadline = time.monotonic() + cfg.queue_timeout
        while attempts < cfg.max_attempts:
            if attempts:
                pool = [h for h in req.cands if h.index not in tried and not h.down]
                if not pool and last is not None and last.busy:
                    pool = [h for h in req.cands if not h.down]
            else:
                pool = req.cands  # just taken from the snapshot: all up, none tried
            if not pool:
                break
            h, wait_on, widen_after = self._select(pool, req)
            if h is None:
                t_wait = time.monotonic()
                try:
                    h, waited = await self._wait_slot(pool, wait_on, widen_after, deadline)
                except (QueueFull, TimeoutError, asyncio.TimeoutError):
                    queue_s += time.monotonic() - t_wait
                    return self._busy(
                        req.route, queue_s=queue_s, attempts=attempts, cache="miss" if req.cache_header else None
                    )
                queue_s += waited
            attempts += 1
            if attempts > 1:
                self.counters["retries"] += 1
            result = await self._attempt(h, req, attempts, queue_s)
            if isinstance(result, DispatchResponse):
                return result
            last = result
            tried.add(h.index)
            log.debug(
                "attempt %d of %s %s on %s failed: %s",
                attempts,
                req.path,
                req.model,
                h.name,
                result.message or result.status,
            )
            if attempts < cfg.max_attempts:
                base = cfg.retry_backoff * (2 ** (attempts - 1))
                await asyncio.sleep(base * random.uniform(0.5, 1.5))
        return self._exhausted(req, last, attempts, queue_s)

    def _exhausted(self, req: _Req, last: _Failure | None, attempts: int, queue_s: float) -> DispatchResponse:
        route = req.route
        cache_kw: dict[str, Any] = {"cache": "miss"} if req.cache_header else {}
        if last is None:
            return self._no_healthy(route, req.name, attempts=attempts, queue_s=queue_s, **cache_kw)
        kw: dict[str, Any] = dict(host=last.host.name, attempts=attempts, queue_s=queue_s, **cache_kw)
        self.counters["requests"][(req.path, req.model, last.host.name, last.status or 502)] += 1
        if last.busy:
            return self._busy(route, **kw)
        if last.status:
            h = self._base_headers(**kw)
            h["Content-Type"] = last.content_type
            return DispatchResponse(last.status, h, body=last.body)
        return self._error(
            route, 502, f"all {attempts} upstream attempts failed; last: {last.host.name}: {last.message}", **kw
        )

    async def _attempt(self, h: HostState, req: _Req, attempts: int, queue_s: float) -> DispatchResponse | _Failure:
        """One try on host ``h`` (holding one of its slots).  Releases the slot unless a
        stream is returned (then the stream releases it)."""
        cfg = self.config
        model = req.model
        view = self._snapshot.hosts[h.index]
        loads = req.path in _LOADING_PATHS  # show/push do not load the model
        cold = loads and not h.is_loaded(model, view)
        if loads:
            h.warm[model] = time.monotonic()
        trace = TraceCtx()
        t0 = time.perf_counter()
        resp: RawResponse | None = None
        first = b""
        body = b""
        streaming = False
        up = h.upstream
        assert up is not None
        try:
            # one timer bounds head + first chunk (or whole body): time to first byte;
            # the response cancels it itself once the first body bytes are read
            resp = await up.send(
                req.method,
                req.path,
                req.body,
                req.headers,
                query=req.query,
                trace=trace,
                timeout=cfg.first_byte_timeout,
            )
            ctype = getattr(resp, "content_type", None)
            if ctype is None:  # a response object without the fast attribute
                ctype = resp.headers.get("Content-Type", "")
            streaming = resp.status == 200 and (
                ctype.startswith(NDJSON_CONTENT_TYPE) or ctype.startswith(SSE_CONTENT_TYPE)
            )
            if streaming:
                first = await resp.readany()
            else:
                body = await resp.read()
            t_first = time.perf_counter()
        except asyncio.CancelledError:
            if resp is not None:
                resp.close()
            self.admission.release(h)
            raise
        except UPSTREAM_ERRORS as exc:
            if resp is not None:
                resp.close()
            self.admission.release(h)
            if cold:
                h.warm.pop(model, None)
            if self.health.record_failure(h):
                self.counters["ejections"][h.name] += 1
            return _Failure(h, message=describe_error(exc, f"no answer within {cfg.first_byte_timeout:g} s"))

        status = resp.status
        if streaming and first.startswith(b'{"error"'):
            # The host failed before producing anything: nothing went to the client yet.
            resp.close()
            self.admission.release(h)
            if self.health.record_failure(h):
                self.counters["ejections"][h.name] += 1
            return _Failure(h, status=500, body=first.split(b"\n", 1)[0], message="error before first token")
        if not streaming:
            resp.release()
            self.admission.release(h)
            if status >= 500:
                if status != 503 and self.health.record_failure(h):
                    self.counters["ejections"][h.name] += 1
                return _Failure(
                    h, status=status, body=body, content_type=resp.headers.get("Content-Type", JSON_CONTENT_TYPE)
                )
            if status == 404 and req.route.kind == "model":
                # The snapshot said this host has the model; it no longer does.
                self.refresher.poke(h)
                return _Failure(
                    h, status=404, body=body, content_type=resp.headers.get("Content-Type", JSON_CONTENT_TYPE)
                )
        headers = self._resp_headers(resp, h, cold, queue_s, attempts, "miss" if req.cache_header else None)
        if not streaming:
            self.health.record_success(h)
            t_end = time.perf_counter()
            self._account(h, req, status, t0, t_first, t_end, queue_s, trace, body[-METRICS_BYTES:], cold)
            if status == 200 and req.cache_key is not None:
                self.cache.put(req.cache_key, CachedResponse(status, _cacheable_headers(headers), body, None))
            if req.pick is not None and status == 200:
                self.strategy.observe(req.pick, h)  # type: ignore[union-attr]
            return DispatchResponse(status, headers, body=body)
        if not first:  # empty stream: nothing to pass through
            resp.release()
            self.admission.release(h)
            self.health.record_success(h)
            return DispatchResponse(status, headers, body=b"")
        st = PassThrough(
            resp,
            first,
            idle=cfg.idle_timeout,
            sse=ctype.startswith(SSE_CONTENT_TYPE),
            label=f"upstream host {h.name}",
            collect=req.cache_key is not None,
            on_finish=self._finish_stream,
            ctx=_StreamCtx(h, req, t0, t_first, cold, queue_s, trace),
        )
        self._streams.add(st)
        return DispatchResponse(status, headers, stream=st, _close=st.aclose)

    def _resp_headers(
        self, resp: RawResponse, h: HostState, cold: bool, queue_s: float, attempts: int, cache: str | None
    ) -> dict[str, str]:
        pairs = getattr(resp, "header_list", None)
        if pairs is None:  # a response object without the fast attribute
            out = {k: v for k, v in resp.headers.items() if k.lower() not in _DROP_HEADERS}
        else:
            # _rawhttp hands out the same header tuple for every answer with the same
            # head bytes: the filtered copy is kept per tuple (by identity)
            cached = self._kept_headers.get(id(pairs))
            if cached is not None and cached[0] is pairs:
                out = cached[1].copy()
            else:
                kept = {k: v for k, v in pairs if k.lower() not in _DROP_HEADERS}
                if len(self._kept_headers) >= 64:
                    self._kept_headers.clear()
                self._kept_headers[id(pairs)] = (pairs, kept)
                out = kept.copy()
        out[HEADER_HOST] = h.name
        out[HEADER_COLD] = "1" if cold else "0"
        out[HEADER_QUEUE_MS] = f"{queue_s * 1000.0:.0f}" if queue_s else "0"
        out[HEADER_ATTEMPTS] = _SMALL_INTS[attempts] if 0 <= attempts < 16 else str(attempts)
        if cache is not None:
            out[HEADER_CACHE] = cache
        return out

    # -- accounting --------------------------------------------------------------------
    def _timings(self, host: str, model: str) -> _Timings:
        key = (host, model)
        t = self._hist.get(key)
        if t is None:
            from .. import LatencyHistogram

            t = self._hist[key] = _Timings(LatencyHistogram)
        return t

    def _account(
        self,
        h: HostState,
        req: _Req,
        status: int,
        t0: float,
        t_first: float,
        t_end: float,
        queue_s: float,
        trace: TraceCtx,
        tail: bytes,
        cold: bool,
    ) -> None:
        model = req.model
        name = h.name
        self.counters["requests"][(req.path, model, name, status)] += 1
        if status != 200:
            return
        tm = self._hist.get((name, model))
        if tm is None:
            tm = self._timings(name, model)
        tm.queue_wait.record(int(queue_s * 1e6) or 1)  # microseconds, at least 1
        if trace.connect_s is not None:
            tm.connect.record(int(trace.connect_s * 1e6) or 1)
        ttfb = t_first - t0
        tm.ttfb.record(int(ttfb * 1e6) or 1)
        tm.total.record(int((t_end - req.t0) * 1e6) or 1)  # arrival to last byte
        # an unusually slow first byte often means the host (re)loaded a model
        slow = h.ttfb.value is not None and ttfb > max(SLOW_TTFB_S, 4.0 * h.ttfb.value)
        h.ttfb.add(ttfb)
        h.service.add(t_end - t0)
        ld_ns, ec, ed = _final_metrics(tail)
        loaded_now = False
        if ld_ns is not None and ld_ns / 1e9 > COLD_LOAD_S:
            e = h.load_cost.get(model)
            if e is None:
                e = h.load_cost[model] = Ewma()
            e.add(ld_ns / 1e9)
            loaded_now = True
        if ec is not None and ed:
            tm.tokens_per_s.record(max(1, int(round(ec / (ed / 1e9)))))
        if cold or loaded_now or slow:
            self.refresher.poke(h)  # learn what is resident now (it may have evicted another)

    def _finish_stream(self, st: PassThrough, ok: bool | None, error: str) -> None:
        """Called once when a pass-through stream ends (ok True), fails (False) or is
        closed by the consumer (None): release the slot, then account."""
        self._streams.discard(st)
        c: _StreamCtx = st.ctx
        h, req = c.host, c.req
        self.admission.release(h)
        t_end = time.perf_counter()
        if ok is None:  # consumer went away
            self.counters["requests"][(req.path, req.model, h.name, 499)] += 1
            return
        tail = st.tail
        last_line = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        host_error = last_line.startswith(b'{"error"') or last_line.startswith(b'data: {"error"')
        if not ok or host_error:
            if self.health.record_failure(h):
                self.counters["ejections"][h.name] += 1
            self.counters["requests"][(req.path, req.model, h.name, 502 if not ok else 500)] += 1
            return
        self.health.record_success(h)
        self._account(h, req, 200, c.t0, c.t_first, t_end, c.queue_s, c.trace, tail[-METRICS_BYTES:], c.cold)
        if req.pick is not None:
            self.strategy.observe(req.pick, h)  # type: ignore[union-attr]
        if req.cache_key is not None and st.chunks is not None:
            headers = {"Content-Type": st.content_type or NDJSON_CONTENT_TYPE}
            self.cache.put(req.cache_key, CachedResponse(200, headers, None, tuple(st.chunks)))

    # -- status and metrics ------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The ``/ollamamax/status`` document: strategy, wait-queue depth and size, cache
        stats, and per host: name, url, healthy, ejected_until (POSIX time of the next
        probe while down, else None), models (present), loaded, in_flight, capacity, queued,
        version, error (of the last failed refresh)."""
        now_m, now_w = time.monotonic(), time.time()
        snap = self._snapshot
        hosts = []
        for h in self.hosts:
            v = snap.hosts[h.index]
            hosts.append(
                {
                    "name": h.name,
                    "url": h.url,
                    "healthy": not h.down,
                    "ejected_until": (now_w + (h.ejected_until - now_m)) if h.down and h.ejected_until else None,
                    "models": sorted(v.present),
                    "loaded": sorted(m for m in v.present | frozenset(h.warm) if h.is_loaded(m, v)),
                    "in_flight": h.in_flight,
                    "capacity": h.capacity,
                    "queued": h.queued,
                    "version": v.version,
                    "error": v.error,
                }
            )
        adm = self.admission
        return {
            "strategy": self.config.strategy,
            "queue": {"depth": adm.waiting if adm is not None else 0, "size": self.config.queue_size},
            "hosts": hosts,
            "cache": self.cache.stats(),
        }

    def metrics_snapshot(self) -> dict[str, Any]:
        """Histograms (LatencyHistogram objects, microseconds; tokens_per_s in tokens/s)
        keyed by (host, model), and counters.  For the metrics exporter."""
        hists: dict[str, dict[tuple[str, str], Any]] = {
            k: {} for k in ("queue_wait", "connect", "ttfb", "total", "tokens_per_s")
        }
        for key, tm in self._hist.items():
            for kind in _Timings.__slots__:
                hist = getattr(tm, kind)
                if hist.count:
                    hists[kind][key] = hist
        c = self.counters
        return {
            "histograms": hists,
            "counters": {
                "requests": dict(c["requests"]),
                "retries": c["retries"],
                "ejections": dict(c["ejections"]),
                "cache_hits": c["cache_hits"],
                "cache_misses": c["cache_misses"],
            },
            "hosts": {
                h.name: {"in_flight": h.in_flight, "capacity": h.capacity, "healthy": not h.down} for h in self.hosts
            },
            "queue_depth": self.admission.waiting if self.admission is not None else 0,
        }

    # -- embedded API (ollama.AsyncClient-shaped) --------------------------------------
    async def _call(self, method: str, path: str, payload: dict[str, Any] | None, stream: bool = False) -> Any:
        body = _json_dumps({k: v for k, v in payload.items() if v is not None}).encode() if payload else b""
        resp = await self.handle(method, path, body, {"Content-Type": "application/json"})
        if resp.status >= 400:
            data = await resp.read()
            raise ResponseError(data.decode(errors="replace"), resp.status)
        if stream:
            return self._iter_json(resp)
        data = await resp.read()
        if not data:
            return {"status": "success"}
        if resp.headers.get("Content-Type", "").startswith(NDJSON_CONTENT_TYPE):
            last: Any = {}
            for line in data.splitlines():
                if line.strip():
                    last = json.loads(line)
                    if isinstance(last, dict) and last.get("error"):
                        raise ResponseError(str(last["error"]))
            return last
        return json.loads(data)

    async def _iter_json(self, resp: DispatchResponse) -> AsyncIterator[dict[str, Any]]:
        try:
            if resp.body is not None:
                for line in resp.body.splitlines():
                    if line.strip():
                        part = json.loads(line)
                        if isinstance(part, dict) and part.get("error"):
                            raise ResponseError(str(part["error"]))
                        yield part
                return
            buf = b""
            assert resp.stream is not None
            async for chunk in resp.stream:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        part = json.loads(line)
                        if isinstance(part, dict) and part.get("error"):
                            raise ResponseError(str(part["error"]))
                        yield part
            if buf.strip():
                part = json.loads(buf)
                if isinstance(part, dict) and part.get("error"):
                    raise ResponseError(str(part["error"]))
                yield part
        finally:
            await resp.aclose()

    async def chat(
        self,
        model: str = "",
        messages: Sequence[Any] | None = None,
        *,
        tools: Sequence[Any] | None = None,
        stream: bool = False,
        think: bool | str | None = None,
        format: Any = None,
        options: Mapping[str, Any] | None = None,
        keep_alive: float | str | None = None,
        **kw: Any,
    ) -> Any:
        payload = {
            "model": model,
            "messages": list(messages) if messages is not None else None,
            "tools": list(tools) if tools is not None else None,
            "stream": stream,
            "think": think,
            "format": format,
            "options": dict(options) if options is not None else None,
            "keep_alive": keep_alive,
            **kw,
        }
        return await self._call("POST", "/api/chat", payload, stream)

    async def generate(
        self,
        model: str = "",
        prompt: str | None = None,
        suffix: str | None = None,
        *,
        system: str | None = None,
        template: str | None = None,
        context: Sequence[int] | None = None,
        stream: bool = False,
        think: bool | str | None = None,
        raw: bool | None = None,
        format: Any = None,
        images: Sequence[str] | None = None,
        options: Mapping[str, Any] | None = None,
        keep_alive: float | str | None = None,
        **kw: Any,
    ) -> Any:
        payload = {
            "model": model,
            "prompt": prompt,
            "suffix": suffix,
            "system": system,
            "template": template,
            "context": list(context) if context is not None else None,
            "stream": stream,
            "think": think,
            "raw": raw,
            "format": format,
            "images": list(images) if images is not None else None,
            "options": dict(options) if options is not None else None,
            "keep_alive": keep_alive,
            **kw,
        }
        return await self._call("POST", "/api/generate", payload, stream)

    async def embed(
        self,
        model: str = "",
        input: str | Sequence[str] = "",
        truncate: bool | None = None,
        options: Mapping[str, Any] | None = None,
        keep_alive: float | str | None = None,
        dimensions: int | None = None,
    ) -> Any:
        payload = {
            "model": model,
            "input": input if isinstance(input, str) else list(input),
            "truncate": truncate,
            "options": dict(options) if options is not None else None,
            "keep_alive": keep_alive,
            "dimensions": dimensions,
        }
        return await self._call("POST", "/api/embed", payload)

    async def embeddings(
        self,
        model: str = "",
        prompt: str | None = None,
        options: Mapping[str, Any] | None = None,
        keep_alive: float | str | None = None,
    ) -> Any:
        payload = {
            "model": model,
            "prompt": prompt,
            "options": dict(options) if options is not None else None,
            "keep_alive": keep_alive,
        }
        return await self._call("POST", "/api/embeddings", payload)

    async def list(self) -> Any:
        return await self._call("GET", "/api/tags", None)

    async def ps(self) -> Any:
        return await self._call("GET", "/api/ps", None)

    async def show(self, model: str) -> Any:
        return await self._call("POST", "/api/show", {"model": model})

    async def pull(self, model: str, *, insecure: bool = False, stream: bool = False) -> Any:
        return await self._call("POST", "/api/pull", {"model": model, "insecure": insecure, "stream": stream}, stream)

    async def copy(self, source: str, destination: str) -> Any:
        await self._call("POST", "/api/copy", {"source": source, "destination": destination})
        return {"status": "success"}

    async def delete(self, model: str) -> Any:
        await self._call("DELETE", "/api/delete", {"model": model})
        return {"status": "success"}

    async def create(
        self,
        model: str,
        quantize: str | None = None,
        from_: str | None = None,
        files: Mapping[str, str] | None = None,
        adapters: Mapping[str, str] | None = None,
        template: str | None = None,
        license: str | Sequence[str] | None = None,
        system: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        messages: Sequence[Any] | None = None,
        *,
        stream: bool = False,
    ) -> Any:
        payload = {
            "model": model,
            "stream": stream,
            "quantize": quantize,
            "from": from_,
            "files": dict(files) if files is not None else None,
            "adapters": dict(adapters) if adapters is not None else None,
            "template": template,
            "license": license if license is None or isinstance(license, str) else list(license),
            "system": system,
            "parameters": dict(parameters) if parameters is not None else None,
            "messages": list(messages) if messages is not None else None,
        }
        return await self._call("POST", "/api/create", payload, stream)


def _cacheable_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if not k.startswith("X-Ollamamax-")}
