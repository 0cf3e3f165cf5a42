"""Routes that act on several hosts: pull, create, copy, delete, blobs, and unload.

``/api/pull``: every healthy host, or only the hosts named (by name or URL, as
configured) in a ``hosts`` body field (list, or comma-separated string) or an
``X-Ollamamax-Hosts`` header (comma-separated); an unknown name is a 400.  Progress lines
of all hosts are forwarded as they come; one final ``{"status":"success"}`` when every
host succeeded, else one ``{"error": "<host>: <why>; ..."}`` line.  ``/api/create``: the
hosts that have the ``from`` model (else every healthy host), same stream merging.
``/api/delete`` and ``/api/copy``: every host that has the (source) model; 404 in
Ollama's words when none has it.  ``/api/blobs/<digest>``: every healthy host (HEAD
answers 200 only if all have the blob).  Unload (``/api/generate`` with no prompt, or
``/api/chat`` with no messages, and ``keep_alive`` 0): every host that has the model
loaded.  Each refreshes the hosts it changed.

This module carries out fan-outs; it does not choose hosts for inference (placement does).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
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

__all__ = ["HOSTS_HEADER", "Broadcaster"]

HOSTS_HEADER = "X-Ollamamax-Hosts"
DIGEST = re.compile(r"sha256[:-][0-9a-fA-F]{64}")

Result = tuple[int, str, bytes] | str  # (status, content type, body) or an error text


class MergedStream:
    """NDJSON progress of several hosts (pull/create) merged into one stream.

    Each host's lines are forwarded as they arrive (whole lines, so hosts never
    interleave inside a line); each host's own final ``success`` line is held back and
    one ``{"status":"success"}`` is sent once every host succeeded, or one error line
    naming the failed hosts.
    """

    def __init__(
        self,
        started: list[tuple[HostState, RawResponse]],
        failed: list[str],
        *,
        idle_timeout: float,
        streams: set[Any],
        done_hook: Callable[[Sequence[HostState]], Awaitable[None]],
    ) -> None:
        self._q: asyncio.Queue[Any] = asyncio.Queue()
        self._errors = list(failed)
        self._ok: list[HostState] = []
        self._pending = len(started)
        self._idle = idle_timeout
        self._streams = streams
        self._done_hook = done_hook
        self._finished = False
        self._resps = [r for _, r in started]
        self._tasks = [asyncio.create_task(self._pump(h, r)) for h, r in started]

    async def _pump(self, h: HostState, resp: RawResponse) -> None:
        err: str | None = None
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

    def __aiter__(self) -> MergedStream:
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
        self._streams.discard(self)
        await self._done_hook(self._ok)
        if self._errors:
            return ollama_error_body("; ".join(self._errors)) + b"\n"
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
    produced while it ran may come from either version)."""

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
    def combine(route: Route, targets: list[HostState], results: Sequence[Result]) -> DispatchResponse:
        """First failure (if any) decides the answer; otherwise the first success."""
        names = ",".join(h.name for h in targets)
        errors = []
        for h, r in zip(targets, results):
            if isinstance(r, str):
                errors.append(f"{h.name}: {r}")
            elif r[0] >= 300:
                hd = replies.base_headers(h.name, attempts=1)
                hd["Content-Type"] = r[1]
                return DispatchResponse(r[0], hd, body=r[2])
        if errors:
            return replies.error(route, 502, "; ".join(errors), host=names, attempts=1)
        first = results[0]
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
        d = self.directory
        snap = d.store.current
        targets = [h for h in d.holders(model) if model in snap.hosts[h.index].loaded or self.residency.get(h.index, model)]
        if not targets:
            cands = await d.candidates_or_fetch(model)
            if cands is None:
                return replies.error(route, 404, replies.notfound_message(route, name))
            if not cands:
                return no_healthy()
            targets = cands[:1]
        results = await asyncio.gather(*(self.simple(h, method, path, body, headers) for h in targets))
        for h in targets:
            r = self.residency.get(h.index, model)
            if r is not None:
                self.residency.forget(r)
            d.refresher.refresh_soon(h)
        return self.combine(route, targets, results)

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
        return self.combine(route, targets, results)

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
        """A pull or create on every target; ``on_done()`` runs when all have ended and
        the hosts that succeeded were refreshed."""
        if not targets:
            return replies.error(route, 503, "no healthy host available")
        names = ",".join(h.name for h in targets)
        s = obj.get("stream")
        stream = route.stream_default if s is None else bool(s)
        refresher = self.directory.refresher

        async def after(ok_hosts: Sequence[HostState]) -> None:
            with contextlib.suppress(Exception):
                await refresher.refresh_all(ok_hosts)
            on_done()

        if not stream:
            results = await asyncio.gather(*(self.simple(h, "POST", path, body, headers, PULL_TIMEOUT) for h in targets))
            await after(targets)
            return self.combine(route, targets, results)

        upstreams = self.directory.upstreams
        first_byte = self.config.first_byte_timeout

        async def open_one(h: HostState) -> RawResponse | str:
            resp = None
            try:
                async with timeout(first_byte):
                    resp = await upstreams[h.index].send("POST", path, body, headers)
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
            return replies.error(route, 500 if len(failed) else 503, "; ".join(failed), host=names, attempts=1)
        ms = MergedStream(started, failed, idle_timeout=self.config.idle_timeout, streams=self.streams, done_hook=after)
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
