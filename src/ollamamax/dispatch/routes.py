"""Path -> how the dispatcher handles it.

Three families:

* **single-host** routes carry a model and go to one host chosen by the strategy
  (``model``: generate, chat, embed, embeddings, show, push, the ``/v1`` inference routes);
* **merged** routes ask every healthy host and merge the answers (``tags``, ``ps``,
  ``version``, ``v1_models``) — or answer locally (``root``, ``status``);
* **broadcast** routes act on several hosts (``pull``, ``delete``, ``copy``,
  ``create``, ``blobs``).

Anything else is answered ``404 page not found`` (plain text), as Ollama's router does
(it has no 405s either).  The gateway only ever talks to its configured hosts.

Details of the merged and broadcast routes
    ``/api/tags``, ``/api/ps``, ``/v1/models``: asked live from every healthy host and
    merged, each model once (tags: newest ``modified_at`` wins; ps: latest ``expires_at``
    wins, sorted longest-remaining first).  ``/api/version``: the *lowest* version among
    reachable hosts, so a client that gates features on the version never uses one a
    host lacks; ollamamax's own version when no host is reachable.
    ``/api/pull``: every healthy host, or only the hosts named (by name or URL, as
    configured) in a ``hosts`` body field (list, or comma-separated string) or an
    ``X-Ollamamax-Hosts`` header (comma-separated); an unknown name is a 400.  Progress
    lines of all hosts are forwarded as they come; one final ``{"status":"success"}``
    when every host succeeded, else one ``{"error": "<host>: <why>; ..."}`` line.
    ``/api/create``: the hosts that have the ``from`` model (else every healthy host),
    same stream merging.  ``/api/delete`` and ``/api/copy``: every host that has the
    (source) model; 404 in Ollama's words when none has it.  ``/api/blobs/<digest>``:
    every healthy host (HEAD answers 200 only if all have the blob).
    Unload (``/api/generate`` with no prompt, or ``/api/chat`` with no messages, and
    ``keep_alive`` 0): every host that has the model loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .. import __version__
from ._types import DispatchResponse
from ._rawhttp import RawResponse
from .errors import JSON_CONTENT_TYPE, NDJSON_CONTENT_TYPE, ollama_error_body
from .hosts import HostState, normalize_model
from .upstream import UPSTREAM_ERRORS, describe_error, header_get, timeout

if TYPE_CHECKING:
    from .core import Dispatcher, _Req

__all__ = ["BLOBS", "HOSTS_HEADER", "ROUTES", "V1_MODEL", "Route", "lookup"]

HOSTS_HEADER = "X-Ollamamax-Hosts"
_DIGEST = re.compile(r"sha256[:-][0-9a-fA-F]{64}")
# a model name as it may appear in /v1/models/{model}: no dot segments, no query
_MODEL_IN_PATH = re.compile(r"(?!.*(?:^|/)\.\.?(?:/|$))[A-Za-z0-9._:/-]+")
PULL_TIMEOUT = 3600.0  # a non-streamed pull (auto-pull, pull/create with stream false) may take this long


@dataclass(frozen=True, slots=True)
class Route:
    path: str
    kind: str
    methods: frozenset[str]
    go_struct: str = ""  # Go request type, for "cannot unmarshal" messages
    openai: bool = False  # /v1: OpenAI error shape, stream default false
    stream_default: bool = False
    # how "model not found" is worded: "single" model 'x' not found;
    # "double" model "x" not found, try pulling it first; "show" model 'x:latest' not found
    notfound: str = "single"
    # empty model: "required" -> 400 model is required; "notfound" -> 404 as above
    empty_model: str = "required"
    model_field: str = "model"


_POST = frozenset({"POST"})
_GET = frozenset({"GET", "HEAD"})

ROUTES: dict[str, Route] = {
    r.path: r
    for r in (
        Route("/api/generate", "model", _POST, "GenerateRequest", stream_default=True, empty_model="notfound"),
        Route("/api/chat", "model", _POST, "ChatRequest", stream_default=True),
        Route("/api/embed", "model", _POST, "EmbedRequest", notfound="double", empty_model="notfound"),
        Route("/api/embeddings", "model", _POST, "EmbeddingRequest", notfound="double", empty_model="notfound"),
        Route("/api/show", "model", _POST, "ShowRequest", notfound="show"),
        Route("/api/push", "model", _POST, "PushRequest", stream_default=True),
        Route("/v1/chat/completions", "model", _POST, openai=True),
        Route("/v1/completions", "model", _POST, openai=True),
        Route("/v1/embeddings", "model", _POST, openai=True, notfound="double"),
        Route("/api/tags", "tags", _GET),
        Route("/api/ps", "ps", _GET),
        Route("/api/version", "version", _GET),
        Route("/", "root", _GET),
        Route("/ollamamax/status", "status", _GET),
        Route("/v1/models", "v1_models", _GET, openai=True),
        Route("/api/pull", "pull", _POST, "PullRequest", stream_default=True),
        Route("/api/delete", "delete", frozenset({"DELETE"}), "DeleteRequest"),
        Route("/api/copy", "copy", _POST, "CopyRequest", model_field="source"),
        Route("/api/create", "create", _POST, "CreateRequest", stream_default=True),
    )
}

V1_MODEL = Route("/v1/models/{model}", "v1_model", _GET, openai=True)
BLOBS = Route("/api/blobs/{digest}", "blobs", frozenset({"HEAD", "POST"}))


def lookup(method: str, path: str) -> Route | None:
    """The route for ``method path``, or None (-> 404 page not found)."""
    r = ROUTES.get(path)
    if r is None:
        if path.startswith("/v1/models/") and len(path) > len("/v1/models/"):
            r = V1_MODEL
        elif path.startswith("/api/blobs/") and len(path) > len("/api/blobs/"):
            r = BLOBS
        else:
            return None
    if method not in r.methods:
        return None
    return r


# -- helpers ------------------------------------------------------------------------
def version_key(v: str) -> tuple[int, ...]:
    out = []
    for part in re.split(r"[.\-+]", v):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


_RE_FRAC = re.compile(r"\.(\d+)")


def parse_time(s: Any) -> float:
    """RFC 3339 (up to 9 fractional digits, Z or offset) -> POSIX seconds; 0 if unparsable."""
    if not isinstance(s, str) or not s:
        return 0.0
    t = s.strip()
    if t.endswith("Z") or t.endswith("z"):
        t = t[:-1] + "+00:00"
    t = _RE_FRAC.sub(lambda m: "." + (m.group(1) + "000000")[:6], t, count=1)
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        return 0.0
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    try:
        return dt.timestamp()
    except (OverflowError, OSError, ValueError):  # pragma: no cover - year 2318 is fine on 64-bit
        return float("inf")


class _MergedStream:
    """NDJSON progress of several hosts (pull/create) merged into one stream.

    Each host's lines are forwarded as they arrive (whole lines, so hosts never
    interleave inside a line); each host's own final ``success`` line is held back and
    one ``{"status":"success"}`` is sent once every host succeeded, or one error line
    naming the failed hosts.
    """

    def __init__(
        self, d: Dispatcher, started: list[tuple[HostState, RawResponse]], failed: list[str], done_hook: Any
    ) -> None:
        self._d = d
        self._q: asyncio.Queue[Any] = asyncio.Queue()
        self._errors = list(failed)
        self._ok: list[HostState] = []
        self._pending = len(started)
        self._done_hook = done_hook
        self._finished = False
        self._resps = [r for _, r in started]
        self._tasks = [asyncio.create_task(self._pump(h, r)) for h, r in started]

    async def _pump(self, h: HostState, resp: RawResponse) -> None:
        err: str | None = None
        success = False
        buf = b""
        idle = self._d.config.idle_timeout
        try:
            while True:
                async with timeout(idle):
                    chunk = await resp.content.readany()
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    e, s = self._line(line)
                    err = err or e
                    success = success or s
            if buf.strip():
                e, s = self._line(buf)
                err = err or e
                success = success or s
        except UPSTREAM_ERRORS as exc:
            err = describe_error(exc, "idle timeout")
        finally:
            resp.close()
        if err is None and not success:
            err = "stream ended without success"
        self._q.put_nowait((h, err))

    def _line(self, line: bytes) -> tuple[str | None, bool]:
        s = line.strip()
        if not s:
            return None, False
        if s.startswith(b'{"error"'):
            try:
                return str(json.loads(s).get("error")), False
            except ValueError:
                return s.decode(errors="replace"), False
        if s == b'{"status":"success"}':
            return None, True
        if b'"success"' in s:
            try:
                if json.loads(s).get("status") == "success":
                    return None, True
            except (ValueError, AttributeError):
                pass
        self._q.put_nowait(s + b"\n")
        return None, False

    def __aiter__(self) -> _MergedStream:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._finished:
                raise StopAsyncIteration
            if self._pending == 0:
                self._finished = True
                return await self._final()
            item = await self._q.get()
            if isinstance(item, bytes):
                return item
            h, err = item
            self._pending -= 1
            if err is None:
                self._ok.append(h)
            else:
                self._errors.append(f"{h.name}: {err}")

    async def _final(self) -> bytes:
        self._d._streams.discard(self)
        await self._done_hook(self._ok)
        if self._errors:
            return ollama_error_body("; ".join(self._errors)) + b"\n"
        return b'{"status":"success"}\n'

    async def aclose(self) -> None:
        self._finished = True
        self._d._streams.discard(self)
        for t in self._tasks:
            t.cancel()
        for r in self._resps:
            r.close()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


# -- handlers (functions of the dispatcher) ----------------------------------------
async def unload(d: Dispatcher, req: _Req) -> DispatchResponse:
    snap = d._snapshot
    idx = snap.by_model.get(req.model, ())
    targets = [d.hosts[i] for i in idx if not d.hosts[i].down and d.hosts[i].is_loaded(req.model, snap.hosts[i])]
    if not targets:
        cands = await d._candidates_or_fetch(req.model)
        if cands is None:
            return d._error(req.route, 404, d._notfound_message(req.route, req.name))
        if not cands:
            return d._no_healthy(req.route, req.name)
        targets = cands[:1]
    results = await asyncio.gather(*(simple(d, h, req.method, req.path, req.body, req.headers) for h in targets))
    for h in targets:
        h.warm.pop(req.model, None)
        d.refresher.poke(h)
    return combine(d, req.route, targets, results)


async def simple(
    d: Dispatcher,
    h: HostState,
    method: str,
    path: str,
    body: bytes | None,
    headers: Mapping[str, str] | None,
    limit: float | None = None,
) -> tuple[int, str, bytes] | str:
    """One non-streaming request: (status, content type, body) or an error text."""
    up = h.upstream
    assert up is not None
    try:
        async with timeout(limit if limit is not None else d.config.first_byte_timeout):
            resp = await up.send(method, path, body, headers)
            try:
                data = await resp.read()
            finally:
                resp.release()
        return resp.status, resp.headers.get("Content-Type", JSON_CONTENT_TYPE), data
    except UPSTREAM_ERRORS as exc:
        return describe_error(exc)


def combine(
    d: Dispatcher, route: Route, targets: list[HostState], results: Sequence[tuple[int, str, bytes] | str]
) -> DispatchResponse:
    """First failure (if any) decides the answer; otherwise the first success."""
    names = ",".join(h.name for h in targets)
    errors = []
    for h, r in zip(targets, results):
        if isinstance(r, str):
            errors.append(f"{h.name}: {r}")
        elif r[0] >= 300:
            hd = d._base_headers(h.name, attempts=1)
            hd["Content-Type"] = r[1]
            return DispatchResponse(r[0], hd, body=r[2])
    if errors:
        return d._error(route, 502, "; ".join(errors), host=names, attempts=1)
    first = results[0]
    assert not isinstance(first, str)
    status, ctype, data = first
    hd = d._base_headers(names, attempts=1)
    hd["Content-Type"] = ctype
    return DispatchResponse(status, hd, body=data)


def select_hosts(d: Dispatcher, obj: dict[str, Any], headers: Mapping[str, str] | None) -> list[HostState] | str | None:
    """Hosts named by a ``hosts`` body field or X-Ollamamax-Hosts header (None: not set)."""
    spec: Any = obj.get("hosts")
    if spec is None:
        spec = header_get(headers, HOSTS_HEADER)
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = [s for s in (p.strip() for p in spec.split(",")) if s]
    if not isinstance(spec, list) or not all(isinstance(s, str) for s in spec):
        return "hosts must be a list of host names or URLs"
    out: list[HostState] = []
    for s in spec:
        h = d._by_name.get(s) or next((x for x in d.hosts if x.url == s.rstrip("/")), None)
        if h is None:
            return f"unknown host '{s}'"
        if h not in out:
            out.append(h)
    return out


async def handle_admin(
    d: Dispatcher, route: Route, method: str, path: str, body: bytes, headers: Mapping[str, str] | None, query: str
) -> DispatchResponse:
    parsed = d._parse(route, path, body)
    if isinstance(parsed, DispatchResponse):
        return parsed
    obj = parsed
    kind = route.kind
    name = d._model_of(route, obj)
    snap = d._snapshot
    if kind == "pull":
        if not name.strip():
            return d._error(route, 400, "model is required")
        sel = select_hosts(d, obj, headers)
        if isinstance(sel, str):
            return d._error(route, 400, sel)
        targets = sel if sel is not None else [h for h in d.hosts if not h.down]
        return await fanout_progress(d, route, path, body, headers, obj, targets)
    if kind == "create":
        if not name.strip():
            return d._error(route, 400, "model is required")
        sel = select_hosts(d, obj, headers)
        if isinstance(sel, str):
            return d._error(route, 400, sel)
        if sel is not None:
            targets = sel
        else:
            src = obj.get("from")
            have = snap.by_model.get(normalize_model(src), ()) if isinstance(src, str) and src else ()
            targets = [d.hosts[i] for i in have if not d.hosts[i].down] or [h for h in d.hosts if not h.down]
        return await fanout_progress(d, route, path, body, headers, obj, targets)
    # delete / copy: every host that has the (source) model
    if not name.strip():
        if kind == "copy":
            return d._error(route, 404, f'model "{name}" not found')
        return d._error(route, 400, "model is required")
    norm = normalize_model(name)
    if d._candidates(norm) is None:
        await d._refresh_on_miss()
    idx = d._snapshot.by_model.get(norm, ())
    targets = [d.hosts[i] for i in idx if not d.hosts[i].down]
    if not targets:
        msg = f'model "{name}" not found' if kind == "copy" else f"model '{name}' not found"
        return d._error(route, 404, msg)
    results = await asyncio.gather(*(simple(d, h, method, path, body, headers) for h in targets))
    await asyncio.gather(*(d.refresher.refresh_host(h) for h in targets))
    return combine(d, route, targets, results)


async def fanout_progress(
    d: Dispatcher,
    route: Route,
    path: str,
    body: bytes,
    headers: Mapping[str, str] | None,
    obj: dict[str, Any],
    targets: list[HostState],
) -> DispatchResponse:
    if not targets:
        return d._error(route, 503, "no healthy host available")
    names = ",".join(h.name for h in targets)
    s = obj.get("stream")
    stream = route.stream_default if s is None else bool(s)

    async def after(ok_hosts: Sequence[HostState]) -> None:
        with contextlib.suppress(Exception):
            await asyncio.gather(*(d.refresher.refresh_host(h) for h in ok_hosts))

    if not stream:
        results = await asyncio.gather(*(simple(d, h, "POST", path, body, headers, PULL_TIMEOUT) for h in targets))
        await after(targets)
        return combine(d, route, targets, results)

    async def open_one(h: HostState) -> RawResponse | str:
        resp = None
        try:
            async with timeout(d.config.first_byte_timeout):
                resp = await h.upstream.send("POST", path, body, headers)  # type: ignore[union-attr]
                if resp.status >= 300:
                    data = await resp.read()
                    resp.release()
                    return f"{resp.status} {data.decode(errors='replace').strip()}"
                return resp
        except UPSTREAM_ERRORS as exc:
            if resp is not None:
                resp.close()
            return describe_error(exc)
        except asyncio.CancelledError:
            if resp is not None:
                resp.close()
            raise

    opened = await asyncio.gather(*(open_one(h) for h in targets))
    started = [(h, r) for h, r in zip(targets, opened) if not isinstance(r, str)]
    failed = [f"{h.name}: {r}" for h, r in zip(targets, opened) if isinstance(r, str)]
    if not started:
        return d._error(route, 500 if len(failed) else 503, "; ".join(failed), host=names, attempts=1)
    ms = _MergedStream(d, started, failed, after)
    d._streams.add(ms)
    hd = d._base_headers(names, attempts=1)
    hd["Content-Type"] = NDJSON_CONTENT_TYPE
    return DispatchResponse(200, hd, stream=ms, _close=ms.aclose)


async def handle_blobs(
    d: Dispatcher, method: str, path: str, body: bytes, headers: Mapping[str, str] | None
) -> DispatchResponse:
    route = Route(path, "blobs", frozenset({method}))
    if not _DIGEST.fullmatch(path[len("/api/blobs/") :]):
        # also keeps "/api/blobs/../pull" from reaching another endpoint of the host
        return d._error(route, 400, "invalid digest format")
    targets = [h for h in d.hosts if not h.down]
    if not targets:
        return d._error(route, 503, "no healthy host available")
    results = await asyncio.gather(*(simple(d, h, method, path, body or None, headers) for h in targets))
    resp = combine(d, route, targets, results)
    if resp.status < 300:  # 201 if any host created it
        statuses = [r[0] for r in results if not isinstance(r, str)]
        if 201 in statuses:
            resp.status = 201
    return resp


async def gather_json(d: Dispatcher, path: str) -> list[tuple[HostState, Any]]:
    targets = [h for h in d.hosts if not h.down]
    limit = max(d.config.connect_timeout, 1.0)

    async def one(h: HostState) -> Any:
        try:
            return await h.upstream.get_json(path, limit)  # type: ignore[union-attr]
        except (*UPSTREAM_ERRORS, ValueError):  # type: ignore[misc]
            return None

    results = await asyncio.gather(*(one(h) for h in targets))
    return list(zip(targets, results))


def _merge_models(lists: list[list[Any]], newest_by: str) -> dict[str, Any]:
    """One entry per model (normalised name) across hosts, keeping the entry whose
    ``newest_by`` timestamp is latest; listed latest first, as Ollama sorts them."""
    merged: dict[str, dict[str, Any]] = {}
    for models in lists:
        for m in models:
            if not isinstance(m, dict):
                continue
            key = normalize_model(str(m.get("name") or m.get("model") or ""))
            old = merged.get(key)
            if old is None or parse_time(m.get(newest_by)) > parse_time(old.get(newest_by)):
                merged[key] = m
    return {"models": sorted(merged.values(), key=lambda m: parse_time(m.get(newest_by)), reverse=True)}


async def handle_tags(d: Dispatcher) -> DispatchResponse:
    snap = d._snapshot
    lists = []
    for h, doc in await gather_json(d, "/api/tags"):
        models = doc.get("models") if isinstance(doc, dict) else None
        # a host that did not answer now contributes what the last refresh saw
        lists.append(models if isinstance(models, list) else list(snap.hosts[h.index].tags))
    return d._json(200, _merge_models(lists, "modified_at"))


async def handle_ps(d: Dispatcher) -> DispatchResponse:
    lists = []
    for _h, doc in await gather_json(d, "/api/ps"):
        models = doc.get("models") if isinstance(doc, dict) else None
        if isinstance(models, list):
            lists.append(models)
    return d._json(200, _merge_models(lists, "expires_at"))


def handle_version(d: Dispatcher) -> DispatchResponse:
    """The lowest version among reachable hosts (clients gate features on it), or
    ollamamax's own version when no host is reachable."""
    versions = [v.version for v in d._snapshot.hosts if v.version and not d.hosts[v.index].down]
    version = min(versions, key=version_key) if versions else __version__
    return d._json(200, {"version": version})


async def handle_v1_models(d: Dispatcher) -> DispatchResponse:
    merged: dict[str, dict[str, Any]] = {}
    for _h, doc in await gather_json(d, "/v1/models"):
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list):
            continue
        for m in data:
            if isinstance(m, dict) and isinstance(m.get("id"), str):
                merged.setdefault(normalize_model(m["id"]), m)
    return d._json(200, {"object": "list", "data": list(merged.values())})


async def handle_v1_model(d: Dispatcher, name: str, headers: Mapping[str, str] | None) -> DispatchResponse:
    if not _MODEL_IN_PATH.fullmatch(name):
        return d._error(V1_MODEL, 404, f'model "{name}" not found')
    norm = normalize_model(name)
    cands = await d._candidates_or_fetch(norm)
    if not cands:
        return d._error(V1_MODEL, 404, f'model "{name}" not found')
    h = min(cands, key=lambda x: x.load_ratio())
    r = await simple(d, h, "GET", "/v1/models/" + name, None, headers)
    return combine(d, V1_MODEL, [h], [r])
