"""The host as its HTTP routes see it: the engine plus building and writing responses.

Owns: :class:`HttpHost`, the interface the route modules (``_native``, ``_openai``) are
written against, defined here below them so that they never import the server. It adds
to :class:`~._engine.Engine` the response side: headers (with ``X-Ollama-Host-Id``),
whole JSON replies, streamed replies whose headers leave with the first body bytes, and
the paced batch loop every streamed reply shares. It must not listen, route, know any
particular endpoint or decide anything about models; the server (``_server``) subclasses
it and fills in ``host_header`` when it starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from ._decode import parse_messages
from ._engine import Engine
from ._goformat import go_dumps

__all__ = ["CT_JSON", "CT_NDJSON", "CT_SSE", "CT_TEXT", "HttpHost"]

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


class HttpHost(Engine):
    """An :class:`~._engine.Engine` that answers over HTTP (arguments as for the engine).

    ``host_header`` is the ``X-Ollama-Host-Id`` value of every response (set by the server
    when it starts); ``streamed`` holds ``id(request)`` of the requests whose headers have
    gone out (an error after that cannot become an error response any more).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.host_header = ""
        self.streamed: set[int] = set()

    def _headers(self, ctype: str) -> dict[str, str]:
        return {"Content-Type": ctype, "X-Ollama-Host-Id": self.host_header}

    def raw(self, status: int, body: bytes, ctype: str | None) -> web.Response:
        """A response with a fixed body (no Content-Type when ``ctype`` is None)."""
        headers = {"X-Ollama-Host-Id": self.host_header}
        if ctype is not None:
            headers["Content-Type"] = ctype
        return web.Response(status=status, body=body, headers=headers)

    def json(self, obj: Any, status: int = 200) -> web.Response:
        return web.Response(status=status, body=go_dumps(obj).encode(), headers=self._headers(CT_JSON))

    def json_bytes(self, body: bytes, status: int = 200) -> web.Response:
        """A JSON response whose body is already encoded."""
        return web.Response(status=status, body=body, headers=self._headers(CT_JSON))

    def error(self, status: int, message: str) -> web.Response:
        return self.json({"error": message}, status)

    def parse_messages(self, msgs: list[Any], struct: str = "ChatRequest") -> tuple[str, str | None, str | None]:
        """Validate messages; returns (all text, last user text, last role)."""
        return parse_messages(msgs, struct)

    async def start_stream(self, request: web.BaseRequest, ctype: str = CT_NDJSON) -> web.StreamResponse:
        resp = _Stream(status=200, headers=self._headers(ctype))
        resp.enable_chunked_encoding()
        self.streamed.add(id(request))
        await resp.prepare(request)
        return resp

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
