"""The embedded client API: ``chat``, ``generate``, ``embed``... with the same names,
arguments and return shapes as ``ollama.AsyncClient``.

:class:`EmbeddedClient` is a mixin over one method, ``handle(method, path, body,
headers)``: each call encodes its request as JSON, hands it to ``handle`` like any front
end would, and decodes the answer (a dict, or an async iterator of dicts for streams).
Errors raise :class:`~ollamamax.wire.errors.ResponseError`, as ``ollama.ResponseError``
behaves.  It knows nothing of hosts or routing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from ..wire.errors import NDJSON_CONTENT_TYPE, ResponseError
from ..wire.response import DispatchResponse

__all__ = ["EmbeddedClient"]

_json_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _decode_line(line: bytes) -> Any:
    """One NDJSON line; an in-band ``{"error": ...}`` raises."""
    part = json.loads(line)
    if isinstance(part, dict) and part.get("error"):
        raise ResponseError(str(part["error"]))
    return part


class EmbeddedClient:
    async def handle(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        query: str = "",
        tenant: str | None = None,
    ) -> DispatchResponse:
        raise NotImplementedError

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
                    last = _decode_line(line)
            return last
        return json.loads(data)

    @staticmethod
    async def _iter_json(resp: DispatchResponse) -> AsyncIterator[dict[str, Any]]:
        try:
            if resp.body is not None:
                for line in resp.body.splitlines():
                    if line.strip():
                        yield _decode_line(line)
                return
            buf = b""
            assert resp.stream is not None
            async for chunk in resp.stream:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield _decode_line(line)
            if buf.strip():
                yield _decode_line(buf)
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
