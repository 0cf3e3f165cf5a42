"""Routes answered by asking every healthy host and merging: tags, ps, version, /v1/models.

``/api/tags``, ``/api/ps``, ``/v1/models``: asked live from every healthy host and
merged, each model once (tags: newest ``modified_at`` wins; ps: latest ``expires_at``
wins, sorted longest-remaining first; a host that does not answer ``/api/tags`` now
contributes what its last refresh saw).  ``/api/version``: the *lowest* version among
reachable hosts, so a client that gates features on the version never uses one a host
lacks; a 503 when no host is reachable (see :meth:`Merger.version`).
``/v1/models/{model}``: asked of the least-loaded host that has the model.

Reads only; it changes nothing on the hosts or in the fleet's state.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from ..fleet.hosts import HostState
from ..upstream.client import UPSTREAM_ERRORS
from ..wire.names import normalize_model
from ..wire.response import DispatchResponse
from ..wire.routes import V1_MODEL
from . import replies
from .broadcast import Broadcaster
from .config import DispatcherConfig
from .directory import HostDirectory

__all__ = ["Merger", "parse_time", "version_key"]

# a model name as it may appear in /v1/models/{model}: no dot segments, no query
MODEL_IN_PATH = re.compile(r"(?!.*(?:^|/)\.\.?(?:/|$))[A-Za-z0-9._:/-]+")
_RE_FRAC = re.compile(r"\.(\d+)")


def version_key(v: str) -> tuple[int, ...]:
    out = []
    for part in re.split(r"[.\-+]", v):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


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


def merge_models(lists: list[list[Any]], newest_by: str) -> dict[str, Any]:
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


class Merger:
    def __init__(self, config: DispatcherConfig, directory: HostDirectory, broadcaster: Broadcaster) -> None:
        self.config = config
        self.directory = directory
        self.broadcaster = broadcaster

    async def gather_json(self, path: str) -> list[tuple[HostState, Any]]:
        d = self.directory
        targets = d.up()
        limit = max(self.config.connect_timeout, 1.0)

        async def one(h: HostState) -> Any:
            try:
                return await d.upstreams[h.index].get_json(path, limit)
            except (*UPSTREAM_ERRORS, ValueError):  # type: ignore[misc]
                return None

        results = await asyncio.gather(*(one(h) for h in targets))
        return list(zip(targets, results))

    async def tags(self) -> DispatchResponse:
        snap = self.directory.store.current
        lists = []
        for h, doc in await self.gather_json("/api/tags"):
            models = doc.get("models") if isinstance(doc, dict) else None
            # a host that did not answer now contributes what the last refresh saw
            lists.append(models if isinstance(models, list) else list(snap.hosts[h.index].tags))
        return replies.json_reply(200, merge_models(lists, "modified_at"))

    async def ps(self) -> DispatchResponse:
        lists = []
        for _h, doc in await self.gather_json("/api/ps"):
            models = doc.get("models") if isinstance(doc, dict) else None
            if isinstance(models, list):
                lists.append(models)
        return replies.json_reply(200, merge_models(lists, "expires_at"))

    def version(self) -> DispatchResponse:
        """The lowest version among reachable hosts (clients gate features on it).

        With no reachable host (or none that has told its version yet) the answer is
        **503** ``{"error": "no healthy host available"}`` with ``Retry-After``, not a
        version: ollamamax's own version number would be read as an Ollama version (it is
        not one), and a stale version of a host that is gone would tell a client "Ollama
        is running" when nothing can serve it.  A client that probes ``/api/version`` to
        see whether Ollama is up (the CLI, UIs) so sees that it is not."""
        hosts = self.directory.hosts
        versions = [v.version for v in self.directory.store.current.hosts if v.version and not hosts[v.index].down]
        if not versions:
            return replies.error(None, 503, "no healthy host available", extra={"Retry-After": "1"})
        return replies.json_reply(200, {"version": min(versions, key=version_key)})

    async def v1_models(self) -> DispatchResponse:
        merged: dict[str, dict[str, Any]] = {}
        for _h, doc in await self.gather_json("/v1/models"):
            data = doc.get("data") if isinstance(doc, dict) else None
            if not isinstance(data, list):
                continue
            for m in data:
                if isinstance(m, dict) and isinstance(m.get("id"), str):
                    merged.setdefault(normalize_model(m["id"]), m)
        return replies.json_reply(200, {"object": "list", "data": list(merged.values())})

    async def v1_model(self, name: str, headers: Mapping[str, str] | None) -> DispatchResponse:
        if not MODEL_IN_PATH.fullmatch(name):
            return replies.error(V1_MODEL, 404, f"model '{name}' not found")
        norm = normalize_model(name)
        cands = await self.directory.candidates_or_fetch(norm)
        if not cands:
            return replies.error(V1_MODEL, 404, f"model '{name}' not found")
        h = min(cands, key=lambda x: x.load_ratio())
        b = self.broadcaster
        r = await b.simple(h, "GET", "/v1/models/" + name, None, headers)
        return b.combine(V1_MODEL, [h], [r], name, record=False)
