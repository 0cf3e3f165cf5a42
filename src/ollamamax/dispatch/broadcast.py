"""Routes that act on several hosts: pull, create, copy, delete, blobs, and unload.

``/api/pull``: every healthy host, or only the hosts named (by name or URL, as
configured) in a ``hosts`` body field (list, or comma-separated string) or an
``X-Ollamamax-Hosts`` header (comma-separated); an unknown name is a 400.
``/api/create``: the hosts that have the ``from`` model (else every healthy host).
The progress of all hosts reaches the client as **one** stream, as if one Ollama
answered (:class:`ProgressMerger`): each status once, in order of first appearance; a
layer's ``total``/``completed`` are the sums over the hosts reporting that digest and
never go backwards; one ``{"status":"success"}`` when every host succeeded, else one
``{"error": ...}`` line in Ollama's own words (the most common host error, the first on
a tie), never naming a host.  Which hosts failed, and why, goes to this module's logger
(WARNING) and to :attr:`Broadcaster.last_failures` (for ``/ollamamax/status``).
``stream: false``: one JSON answer, Ollama's success or its error with its status code.
``/api/delete`` and ``/api/copy``: every host that has the (source) model; 404 in
Ollama's words when none has it.  ``/api/blobs/<digest>``: every healthy host (HEAD
answers 200 only if all have the blob).  Unload (``/api/generate`` with no prompt, or
``/api/chat`` with no messages, and ``keep_alive`` 0): every healthy host that has the
model (not only those the gateway believes have it loaded: a host may have loaded it
for a client that bypassed the gateway).  Each refreshes the hosts it changed.
``/api/push`` of a model no host has: :meth:`Broadcaster.push_missing` answers as
Ollama does (the push is tried on a host, whose in-band error the client gets).

This module carries out fan-outs; it does not choose hosts for inference (placement does).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..fleet.hosts import HostState
from ..fleet.residency import Residency
from ..upstream.client import (
    UPSTREAM_ERRORS,
    RawResponse,
    describe_error,
    header_get,
    timeout,
)
from ..wire.errors import JSON_CONTENT_TYPE, NDJSON_CONTENT_TYPE, ollama_error_body
from ..wire.names import normalize_model
from ..wire.response import DispatchResponse
from ..wire.routes import Route
from . import replies
from .config import DispatcherConfig
from .directory import PULL_TIMEOUT, HostDirectory

__all__ = ["HOSTS_HEADER", "Broadcaster", "Failure", "ProgressMerger", "verdict"]

log = logging.getLogger("ollamamax.dispatch.broadcast")

HOSTS_HEADER = "X-Ollamamax-Hosts"
DIGEST = re.compile(r"sha256[:-][0-9a-fA-F]{64}")
PROGRESS_INTERVAL = 0.1  # seconds between two progress lines of one layer (its end is sent at once)
KEEP_FAILURES = 16  # fan-outs that failed, kept for the status page

Result = tuple[int, str, bytes] | str  # (status, content type, body) or an error text
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@dataclass(frozen=True)
class Failure:
    """One host's failure in a fan-out.  ``status``: the host's HTTP status (0 for an
    in-band error line or a transport failure); ``from_host``: ``message`` is the host's
    own (Ollama's) text, not ours about the transport."""

    host: HostState
    message: str
    status: int = 0
    from_host: bool = True
    answer: tuple[str, bytes] | None = None  # the host's (content type, body) to pass on as is


def verdict(failures: Sequence[Failure]) -> Failure:
    """The failure the client is told about: among the hosts' own errors (else all), the
    most common message, the first one on a tie."""
    pool = [f for f in failures if f.from_host] or list(failures)
    counts = collections.Counter(f.message for f in pool)
    best = max(counts.values())
    return next(f for f in pool if counts[f.message] == best)


def error_text(status: int, body: bytes) -> str:
    """The ``error`` of a host's JSON error body (the raw text if it is not one)."""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        msg = json.loads(body).get("error")
        if isinstance(msg, str) and msg:
            return msg
    text = body.decode(errors="replace").strip()
    return text or f"HTTP {status}"


@dataclass
class _Layer:
    """What the hosts reported for one layer (one status and digest)."""

    status: str
    digest: str
    totals: dict[int, int] = field(default_factory=dict)
    done: dict[int, int] = field(default_factory=dict)
    sent_total: int = 0
    sent_done: int = 0
    sent_at: float = 0.0
    sent: bool = False  # a line for it has been sent

    def current(self) -> tuple[int, int]:
        total = max(self.sent_total, sum(self.totals.values()))
        return total, max(self.sent_done, min(sum(self.done.values()), total))

    def line(self, now: float) -> bytes:
        total, done = self.current()
        self.sent_total, self.sent_done, self.sent_at, self.sent = total, done, now, True
        obj: dict[str, Any] = {"status": self.status, "digest": self.digest}
        if total:
            obj["total"] = total
        if done:
            obj["completed"] = done
        return _dumps(obj).encode() + b"\n"

    def dirty(self) -> bool:
        return not self.sent or self.current() != (self.sent_total, self.sent_done)


class ProgressMerger:
    """Progress lines of several hosts (pull, push, create) -> the lines one Ollama would
    send.  Pure: :meth:`feed` takes one host's parsed line and the time and returns the
    lines to send now; :meth:`due` the held-back progress whose time has come;
    :meth:`flush` everything still held back.

    A line with a ``digest`` and a ``total`` or ``completed`` is a layer's progress: its
    totals and counts are summed over the hosts, a new line is sent when the layer ends
    (``completed`` reaches ``total``) or ``interval`` after the layer's last line, and the
    numbers sent never decrease.  Any other line is sent once, the first time a host sends
    it (by ``status`` and ``digest``).  Success and error lines are the caller's."""

    def __init__(self, interval: float = PROGRESS_INTERVAL) -> None:
        self.interval = interval
        self._seen: set[Any] = set()
        self._layers: dict[tuple[str, str], _Layer] = {}

    def feed(self, host: int, raw: bytes, obj: Any, now: float) -> list[bytes]:
        if not isinstance(obj, dict) or not isinstance(obj.get("status"), str):
            if raw in self._seen:
                return []
            self._seen.add(raw)
            return [raw + b"\n"]
        status: str = obj["status"]
        digest = obj.get("digest")
        total, done = obj.get("total"), obj.get("completed")
        if isinstance(digest, str) and (isinstance(total, int) or isinstance(done, int)):
            key = (status, digest)
            layer = self._layers.get(key)
            held: list[bytes] = []
            if layer is None:
                held = self.flush(now)  # what came before this layer goes first
                layer = self._layers[key] = _Layer(status, digest)
            if isinstance(total, int):
                layer.totals[host] = max(layer.totals.get(host, 0), total)
            if isinstance(done, int):
                layer.done[host] = max(layer.done.get(host, 0), done)
            if not layer.sent:
                return [*held, layer.line(now)]
            t, d = layer.current()
            if layer.dirty() and (d >= t or now - layer.sent_at >= self.interval):
                return [layer.line(now)]
            return []
        key2 = (status, digest if isinstance(digest, str) else None)
        if key2 in self._seen:
            return []
        self._seen.add(key2)
        return [*self.flush(now), raw + b"\n"]

    def next_due(self) -> float | None:
        """When the first held-back progress line is due (None: none is held back)."""
        times = [x.sent_at + self.interval for x in self._layers.values() if x.dirty()]
        return min(times) if times else None

    def due(self, now: float) -> list[bytes]:
        return [x.line(now) for x in self._layers.values() if x.dirty() and now - x.sent_at >= self.interval]

    def flush(self, now: float | None = None) -> list[bytes]:
        t = time.monotonic() if now is None else now
        return [x.line(t) for x in self._layers.values() if x.dirty()]


_END = object()


class MergedStream:
    """NDJSON progress of several hosts (pull/push/create) merged into one stream (see
    :class:`ProgressMerger`).  Each host's own success line is held back; at the end one
    ``{"status":"success"}`` is sent if every host succeeded, else one error line
    (:func:`verdict`), and ``on_failed`` gets every host's failure."""

    def __init__(
        self,
        started: list[tuple[HostState, RawResponse]],
        failed: list[Failure],
        *,
        idle_timeout: float,
        streams: set[Any],
        done_hook: Callable[[Sequence[HostState]], Awaitable[None]],
        on_failed: Callable[[Sequence[Failure]], None] = lambda f: None,
        interval: float = PROGRESS_INTERVAL,
    ) -> None:
        self._q: asyncio.Queue[Any] = asyncio.Queue()
        self._failures = list(failed)
        self._ok: list[HostState] = []
        self._pending = len(started)
        self._idle = idle_timeout
        self._streams = streams
        self._done_hook = done_hook
        self._on_failed = on_failed
        self._merger = ProgressMerger(interval)
        self._out: collections.deque[bytes] = collections.deque()
        self._finished = False
        self._loop = asyncio.get_running_loop()
        self._resps = [r for _, r in started]
        self._tasks = [asyncio.create_task(self._pump(h, r)) for h, r in started]

    async def _pump(self, h: HostState, resp: RawResponse) -> None:
        err: Failure | None = None
        success = False
        buf = b""
        try:
            while True:
                async with timeout(self._idle):
                    chunk = await resp.content.readany()
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    e, s = self._line(h, line)
                    err = err or e
                    success = success or s
            if buf.strip():
                e, s = self._line(h, buf)
                err = err or e
                success = success or s
        except UPSTREAM_ERRORS as exc:
            err = err or Failure(h, describe_error(exc, "idle timeout"), from_host=False)
        finally:
            resp.close()
        if err is None and not success:
            err = Failure(h, "stream ended without success", from_host=False)
        self._q.put_nowait((_END, h, err))

    def _line(self, h: HostState, line: bytes) -> tuple[Failure | None, bool]:
        s = line.strip()
        if not s:
            return None, False
        if s == b'{"status":"success"}':
            return None, True
        try:
            obj = json.loads(s)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            if "error" in obj:
                return Failure(h, str(obj.get("error"))), False
            if obj.get("status") == "success":
                return None, True
        self._q.put_nowait((h.index, s, obj))
        return None, False

    def __aiter__(self) -> MergedStream:
        return self

    async def __anext__(self) -> bytes:
        out = self._out
        while True:
            if out:
                return out.popleft()
            if self._finished:
                raise StopAsyncIteration
            if self._pending == 0:
                self._finished = True
                out.extend(self._merger.flush(self._loop.time()))
                out.append(await self._final())
                continue
            due = self._merger.next_due()
            try:
                if due is None:
                    item = await self._q.get()
                else:
                    item = await asyncio.wait_for(self._q.get(), max(0.0, due - self._loop.time()))
            except asyncio.TimeoutError:
                out.extend(self._merger.due(self._loop.time()))
                continue
            items = [item]
            while not self._q.empty():
                items.append(self._q.get_nowait())
            now = self._loop.time()
            for it in items:
                if it[0] is _END:
                    _, h, err = it
                    self._pending -= 1
                    if err is None:
                        self._ok.append(h)
                    else:
                        self._failures.append(err)
                else:
                    out.extend(self._merger.feed(it[0], it[1], it[2], now))
            out.extend(self._merger.due(now))

    async def _final(self) -> bytes:
        self._streams.discard(self)
        await self._done_hook(self._ok)
        if self._failures:
            self._on_failed(self._failures)
            return ollama_error_body(verdict(self._failures).message) + b"\n"
        return b'{"status":"success"}\n'

    async def aclose(self) -> None:
        self._finished = True
        self._streams.discard(self)
        for t in self._tasks:
            t.cancel()
        for r in self._resps:
            r.close()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


class Broadcaster:
    """``on_model_changed(model)`` is called (normalised name) when a pull, create, copy
    (for the destination) or delete may have changed what a model name means: when the
    operation starts, and again when it has ended and the hosts were refreshed (answers
    produced while it ran may come from either version).

    :attr:`last_failures`: the latest fan-outs that failed on some host, newest last, as
    plain data for the status document: ``{"route", "model", "at"`` (POSIX time)``,
    "error"`` (what the client was told)``, "hosts": [{"name", "url", "error"}]}``."""

    def __init__(
        self,
        config: DispatcherConfig,
        directory: HostDirectory,
        streams: set[Any],
        residency: Residency,
        on_model_changed: Callable[[str], None] = lambda model: None,
    ) -> None:
        self.config = config
        self.directory = directory
        self.streams = streams
        self.residency = residency
        self.on_model_changed = on_model_changed
        self._failures: collections.deque[dict[str, Any]] = collections.deque(maxlen=KEEP_FAILURES)

    @property
    def last_failures(self) -> list[dict[str, Any]]:
        return list(self._failures)

    def record_failures(self, route: Route, model: str, failures: Sequence[Failure], told: str) -> None:
        """Log (WARNING) and keep which hosts failed a fan-out, and why."""
        hosts = [{"name": f.host.name, "url": f.host.url, "error": f.message} for f in failures]
        self._failures.append({"route": route.path, "model": model, "at": time.time(), "error": told, "hosts": hosts})
        log.warning(
            "%s %r failed on %d host(s): %s", route.path, model, len(hosts),
            "; ".join(f"{h['name']} ({h['url']}): {h['error']}" for h in hosts),
        )

    # -- building blocks ---------------------------------------------------------------
    async def simple(
        self,
        h: HostState,
        method: str,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str] | None,
        limit: float | None = None,
    ) -> Result:
        """One non-streaming request: (status, content type, body) or an error text."""
        up = self.directory.upstreams[h.index]
        try:
            async with timeout(limit if limit is not None else self.config.first_byte_timeout):
                resp = await up.send(method, path, body, headers)
                try:
                    data = await resp.read()
                finally:
                    resp.release()
            return resp.status, resp.headers.get("Content-Type", JSON_CONTENT_TYPE), data
        except UPSTREAM_ERRORS as exc:
            return describe_error(exc)

    @staticmethod
    def failures_of(targets: Iterable[HostState], results: Iterable[Result]) -> list[Failure]:
        out = []
        for h, r in zip(targets, results):
            if isinstance(r, str):
                out.append(Failure(h, r, from_host=False))
            elif r[0] >= 300:
                out.append(Failure(h, error_text(r[0], r[2]), r[0], answer=(r[1], r[2])))
        return out

    def combine(
        self, route: Route, targets: list[HostState], results: Sequence[Result], model: str = "",
        ignore: Callable[[Failure], bool] = lambda f: False, record: bool = True,
    ) -> DispatchResponse:
        """One answer for a fan-out: the first success when every host succeeded (hosts
        whose failure ``ignore`` accepts do not count), else the failure of
        :func:`verdict`: that host's own answer as it is (status and body, Ollama's
        words), or for a transport failure a 502 in the route's dialect, never naming a
        host.  With ``record`` the failures are logged and kept (:meth:`record_failures`)."""
        names = ",".join(h.name for h in targets)
        failures = self.failures_of(targets, results)
        real = [f for f in failures if not ignore(f)]
        if real or len(failures) == len(targets):
            v = verdict(real or failures)
            if record:
                self.record_failures(route, model, real or failures, v.message)
            if v.answer is not None:
                hd = replies.base_headers(names, attempts=1)
                hd["Content-Type"] = v.answer[0]
                return DispatchResponse(v.status, hd, body=v.answer[1])
            return replies.error(route, v.status or 502, v.message, host=names, attempts=1)
        first = next(r for r in results if not isinstance(r, str) and r[0] < 300)
        assert not isinstance(first, str)
        status, ctype, data = first
        hd = replies.base_headers(names, attempts=1)
        hd["Content-Type"] = ctype
        return DispatchResponse(status, hd, body=data)

    def select_hosts(self, obj: dict[str, Any], headers: Mapping[str, str] | None) -> list[HostState] | str | None:
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
            h = self.directory.find(s)
            if h is None:
                return f"unknown host '{s}'"
            if h not in out:
                out.append(h)
        return out

    # -- routes ------------------------------------------------------------------------
    async def unload(
        self, route: Route, name: str, model: str, method: str, path: str, body: bytes,
        headers: Mapping[str, str] | None, no_healthy: Callable[[], DispatchResponse],
    ) -> DispatchResponse:
        """Every healthy host that could hold the model loaded: those that have it (the
        gateway's idea of what is loaded may be stale: a client may have loaded it on a
        host directly), plus any the gateway believes has it loaded.  A host that answers
        404 (it no longer has the model) does not fail the unload if another succeeded."""
        d = self.directory
        snap = d.store.current
        targets = d.holders(model)
        for h in d.up():
            if h not in targets and (model in snap.hosts[h.index].loaded or self.residency.get(h.index, model)):
                targets.append(h)
        if not targets:
            cands = await d.candidates_or_fetch(model)
            if cands is None:
                return replies.error(route, 404, replies.notfound_message(route, name))
            if not cands:
                return no_healthy()
            targets = d.holders(model) or cands
        results = await asyncio.gather(*(self.simple(h, method, path, body, headers) for h in targets))
        now = d.clock()
        for h in targets:
            r = self.residency.get(h.index, model)
            if r is not None:
                self.residency.forget(r, now)  # a refresh already on its way may still list it
            d.refresher.refresh_soon(h)
        return self.combine(route, targets, results, name, ignore=lambda f: f.status == 404)

    async def manage(
        self, route: Route, obj: dict[str, Any], name: str, method: str, path: str, body: bytes,
        headers: Mapping[str, str] | None,
    ) -> DispatchResponse:
        """pull / create / copy / delete."""
        d = self.directory
        kind = route.kind
        changed = [normalize_model(name)] if name.strip() else []
        if kind == "copy":
            dest = obj.get("destination")
            if isinstance(dest, str) and dest.strip():
                changed.append(normalize_model(dest))

        def model_changed() -> None:
            for m in changed:
                self.on_model_changed(m)

        model_changed()
        if kind == "pull" or kind == "create":
            if not name.strip():
                return replies.error(route, 400, "model is required")
            sel = self.select_hosts(obj, headers)
            if isinstance(sel, str):
                return replies.error(route, 400, sel)
            if sel is not None:
                targets = sel
            elif kind == "pull":
                targets = d.up()
            else:
                src = obj.get("from")
                targets = (d.holders(normalize_model(src)) if isinstance(src, str) and src else []) or d.up()
            return await self.fanout_progress(route, path, body, headers, obj, targets, on_done=model_changed)
        # delete / copy: every host that has the (source) model
        if not name.strip():
            if kind == "copy":
                return replies.error(route, 404, f'model "{name}" not found')
            return replies.error(route, 400, "model is required")
        norm = normalize_model(name)
        if d.candidates(norm) is None:
            await d.refresh_on_miss()
        targets = d.holders(norm)
        if not targets:
            msg = f'model "{name}" not found' if kind == "copy" else f"model '{name}' not found"
            return replies.error(route, 404, msg)
        results = await asyncio.gather(*(self.simple(h, method, path, body, headers) for h in targets))
        await d.refresher.refresh_all(targets)
        model_changed()
        return self.combine(route, targets, results, name)

    async def push_missing(
        self, route: Route, obj: dict[str, Any], path: str, body: bytes, headers: Mapping[str, str] | None
    ) -> DispatchResponse:
        """``/api/push`` of a model no host has.  Ollama does not answer 404 there: it
        streams ``retrieving manifest`` and then an in-band error (200), or with
        ``stream: false`` answers the error with 500.  So the push is sent to one healthy
        host (the least loaded), whose answer in Ollama's own words the client gets; the
        dispatcher calls this where it would otherwise answer "model not found"."""
        targets = self.directory.up()
        if not targets:
            return replies.error(route, 503, "no healthy host available")
        h = min(targets, key=lambda x: x.load_ratio())
        return await self.fanout_progress(route, path, body, headers, obj, [h])

    async def fanout_progress(
        self,
        route: Route,
        path: str,
        body: bytes,
        headers: Mapping[str, str] | None,
        obj: dict[str, Any],
        targets: list[HostState],
        on_done: Callable[[], None] = lambda: None,
    ) -> DispatchResponse:
        """A pull, push or create on every target, answered as one Ollama would (see the
        module's docstring); ``on_done()`` runs when all have ended and the hosts that
        succeeded were refreshed."""
        if not targets:
            return replies.error(route, 503, "no healthy host available")
        names = ",".join(h.name for h in targets)
        s = obj.get("stream")
        stream = route.stream_default if s is None else bool(s)
        refresher = self.directory.refresher
        m = obj.get("model") or obj.get("name")
        model = m if isinstance(m, str) else ""

        async def after(ok_hosts: Sequence[HostState]) -> None:
            with contextlib.suppress(Exception):
                await refresher.refresh_all(ok_hosts)
            on_done()

        if not stream:
            results = await asyncio.gather(*(self.simple(h, "POST", path, body, headers, PULL_TIMEOUT) for h in targets))
            await after(targets)
            return self.combine(route, targets, results, model)

        upstreams = self.directory.upstreams
        first_byte = self.config.first_byte_timeout

        async def open_one(h: HostState) -> RawResponse | Failure:
            resp = None
            try:
                async with timeout(first_byte):
                    resp = await upstreams[h.index].send("POST", path, body, headers)
                    if resp.status >= 300:
                        data = await resp.read()
                        resp.release()
                        ctype = resp.headers.get("Content-Type", JSON_CONTENT_TYPE)
                        return Failure(h, error_text(resp.status, data), resp.status, answer=(ctype, data))
                    return resp
            except UPSTREAM_ERRORS as exc:
                if resp is not None:
                    resp.close()
                return Failure(h, describe_error(exc), from_host=False)
            except asyncio.CancelledError:
                if resp is not None:
                    resp.close()
                raise

        opened = await asyncio.gather(*(open_one(h) for h in targets))
        started = [(h, r) for h, r in zip(targets, opened) if not isinstance(r, Failure)]
        failed = [r for r in opened if isinstance(r, Failure)]
        if not started:
            v = verdict(failed)
            self.record_failures(route, model, failed, v.message)
            if v.answer is not None:
                hd = replies.base_headers(names, attempts=1)
                hd["Content-Type"] = v.answer[0]
                return DispatchResponse(v.status, hd, body=v.answer[1])
            return replies.error(route, v.status or 502, v.message, host=names, attempts=1)

        def on_failed(failures: Sequence[Failure]) -> None:
            self.record_failures(route, model, failures, verdict(failures).message)

        ms = MergedStream(started, failed, idle_timeout=self.config.idle_timeout, streams=self.streams,
                          done_hook=after, on_failed=on_failed)
        self.streams.add(ms)
        hd = replies.base_headers(names, attempts=1)
        hd["Content-Type"] = NDJSON_CONTENT_TYPE
        return DispatchResponse(200, hd, stream=ms, _close=ms.aclose)

    async def blobs(self, method: str, path: str, body: bytes, headers: Mapping[str, str] | None) -> DispatchResponse:
        route = Route(path, "blobs", frozenset({method}))
        if not DIGEST.fullmatch(path[len("/api/blobs/") :]):
            # also keeps "/api/blobs/../pull" from reaching another endpoint of the host
            return replies.error(route, 400, "invalid digest format")
        targets = self.directory.up()
        if not targets:
            return replies.error(route, 503, "no healthy host available")
        results = await asyncio.gather(*(self.simple(h, method, path, body or None, headers) for h in targets))
        resp = self.combine(route, targets, results)
        if resp.status < 300:  # 201 if any host created it
            statuses = [r[0] for r in results if not isinstance(r, str)]
            if 201 in statuses:
                resp.status = 201
        return resp
