"""An httpx transport that hands requests straight to a :class:`Dispatcher` (no gateway hop).

Needs the optional extra ``httpx`` (``pip install ollamamax[httpx]``)::

    async with Dispatcher(["http://gpu1:11434", "http://gpu2:11434"]) as d:
        t = DispatcherTransport(d)
        ollama_client = ollama.AsyncClient(host="http://ollamamax", transport=t)
        openai_client = openai.AsyncOpenAI(
            base_url="http://ollamamax/v1", api_key="unused",
            http_client=httpx.AsyncClient(transport=t),
        )

The host part of the URL is ignored: only the path and query reach the dispatcher, which
only ever talks to its configured hosts.  Streaming responses stream: the httpx response
wraps the dispatcher's chunk iterator, and closing the httpx response (or leaving the
client's ``async with``/``async for`` early) calls ``DispatchResponse.aclose()``, which
cancels the upstream request.  The transport does not own the dispatcher: ``aclose()`` on
the transport (called by ``httpx.AsyncClient.aclose``) leaves it running.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
from multidict import CIMultiDict

from ..wire.response import HOP_BY_HOP, DispatchResponse

__all__ = ["DispatcherTransport"]



class _DispatchStream(httpx.AsyncByteStream):
    """Yields the dispatcher's chunks as they arrive; ``aclose`` releases the upstream."""

    def __init__(self, resp: DispatchResponse) -> None:
        self._resp = resp

    async def __aiter__(self) -> AsyncIterator[bytes]:
        stream = self._resp.stream
        assert stream is not None
        try:
            async for chunk in stream:
                if chunk:
                    yield chunk
        finally:
            await self._resp.aclose()

    async def aclose(self) -> None:
        await self._resp.aclose()


class DispatcherTransport(httpx.AsyncBaseTransport):
    """``httpx.AsyncBaseTransport`` over ``dispatcher.handle()``."""

    def __init__(self, dispatcher: Any) -> None:
        self.dispatcher = dispatcher

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        url = request.url
        query = url.query.decode("ascii", "replace")
        headers = CIMultiDict(request.headers.multi_items())  # case-insensitive, as on the wire
        headers.popall("host", None)
        resp: DispatchResponse = await self.dispatcher.handle(
            request.method, url.path, body, headers, query=query
        )
        if resp.stream is None:
            try:
                out_headers = [(k, v) for k, v in resp.headers.items()
                               if k.lower() not in HOP_BY_HOP]
                return httpx.Response(resp.status, headers=out_headers,
                                      content=resp.body or b"", request=request)
            finally:
                await resp.aclose()
        out_headers = [(k, v) for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP]
        return httpx.Response(resp.status, headers=out_headers, stream=_DispatchStream(resp),
                              request=request)
