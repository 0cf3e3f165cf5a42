"""The HTTP client side of ``ollamamax bench``: owns sending one request and reading its
whole reply (native NDJSON or OpenAI SSE streams, or one JSON body), timing it, and
classifying the result as an :class:`Outcome` (success with latency, TTFT, tokens and
per-request tokens/s, or an error kind); it also owns :func:`discover_model`.  It must not
decide when requests are sent or whether they count (that is :mod:`.loop`), keep totals, or
print; aiohttp is imported inside the functions only, never at module level.

* TTFT is the time to the first streamed chunk (NDJSON line / SSE event); without
  ``--stream`` the whole reply is the first chunk, so TTFT = latency.
* Tokens: ``eval_count`` (native) or ``usage.completion_tokens`` (``--openai``); per-request
  tokens/s is ``eval_count / eval_duration`` when the server reports it, else it is
  estimated from the client-side timing (first chunk to end when streaming).
* Errors: ``http <status>`` (a non-200 answer), ``in-band`` (an ``error`` object in a 200
  reply or stream), ``connection`` (refused, reset, closed early), ``timeout``,
  ``protocol`` (a reply that cannot be parsed or a stream cut before its end).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .request import RequestSpec

__all__ = ["Outcome", "discover_model", "one_request"]


@dataclass
class Outcome:
    """What one request gave: its start time and either a success (kind ``None``) or an error."""

    t_start: float
    kind: str | None = None  # None = success
    message: str = ""
    latency_us: float = 0.0
    ttft_us: float = 0.0
    tokens: int = 0
    tps: float = 0.0  # per-request tokens/s, 0 = unknown


def _error_text(raw: bytes) -> str:
    import json

    try:
        obj = json.loads(raw)
    except ValueError:
        return raw[:200].decode("utf-8", "replace").strip()
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict):  # OpenAI shape
            return str(err.get("message", err))[:200]
        if err is not None:
            return str(err)[:200]
    return raw[:200].decode("utf-8", "replace").strip()


def _per_request_tps(obj: dict[str, Any], tokens: int, t_first: float, t_end: float, t_start: float) -> float:
    ev_ns = obj.get("eval_duration") if obj else None
    if tokens > 0 and isinstance(ev_ns, (int, float)) and ev_ns > 0:
        return tokens / (ev_ns / 1e9)
    if tokens > 1 and t_end > t_first > t_start:
        return (tokens - 1) / (t_end - t_first)
    if tokens > 0 and t_end > t_start:
        return tokens / (t_end - t_start)
    return 0.0


def _json_object(data: bytes) -> dict[str, Any]:
    import json

    obj = json.loads(data)
    if not isinstance(obj, dict):
        raise ValueError("reply is not a JSON object")
    return obj


async def one_request(session: Any, spec: RequestSpec, n: int, done_re: Any) -> Outcome:
    """Send one request, read the whole reply, classify it."""
    import asyncio
    import time

    import aiohttp

    clock = time.perf_counter
    t0 = clock()
    out = Outcome(t_start=t0)
    try:
        async with session.post(spec.url, data=spec.body(n), headers=spec.headers) as resp:
            if resp.status != 200:
                raw = await resp.read()
                out.kind = f"http {resp.status}"
                out.message = _error_text(raw)
                return out
            tokens = 0
            final: dict[str, Any] = {}
            if spec.stream and spec.endpoint != "embed":
                t_first = 0.0
                finished = False
                if spec.openai:
                    chunks = 0
                    async for line in resp.content:
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            finished = True
                            break
                        if not t_first:
                            t_first = clock()
                        chunks += 1
                        if b'"error"' in data or b'"usage"' in data:
                            obj = _json_object(data)
                            if "error" in obj:
                                out.kind = "in-band"
                                err = obj["error"]
                                out.message = str(err.get("message", err) if isinstance(err, dict) else err)[:200]
                                return out
                            usage = obj.get("usage")
                            if isinstance(usage, dict):
                                tokens = int(usage.get("completion_tokens") or 0)
                    if finished and not tokens:
                        tokens = max(0, chunks - 1)  # no usage chunk: count content chunks
                else:
                    async for line in resp.content:
                        if not t_first:
                            if not line.strip():
                                continue
                            t_first = clock()
                        if b'"error"' in line or done_re.search(line) is not None:
                            obj = _json_object(line)
                            if "error" in obj:
                                out.kind = "in-band"
                                out.message = str(obj["error"])[:200]
                                return out
                            if obj.get("done") is True:
                                final = obj
                                finished = True
                    tokens = int(final.get("eval_count") or 0)
                t_end = clock()
                if not finished:
                    out.kind = "protocol"
                    out.message = "stream ended before its final chunk"
                    return out
            else:
                raw = await resp.read()
                t_end = t_first = clock()
                obj = _json_object(raw)
                if "error" in obj:
                    out.kind = "in-band"
                    out.message = _error_text(raw)
                    return out
                if spec.endpoint == "embed":
                    if ("data" if spec.openai else "embeddings") not in obj:
                        out.kind = "protocol"
                        out.message = "embedding reply without vectors"
                        return out
                elif spec.openai:
                    usage = obj.get("usage")
                    tokens = int(usage.get("completion_tokens") or 0) if isinstance(usage, dict) else 0
                else:
                    final = obj
                    tokens = int(obj.get("eval_count") or 0)
            out.latency_us = (t_end - t0) * 1e6
            out.ttft_us = (t_first - t0) * 1e6
            out.tokens = tokens
            out.tps = _per_request_tps(final, tokens, t_first, t_end, t0)
            return out
    except asyncio.TimeoutError:  # also aiohttp's ServerTimeoutError (checked before ClientError)
        out.kind = "timeout"
        out.message = "no complete reply within --timeout"
    except aiohttp.ClientPayloadError as exc:
        out.kind = "connection"
        out.message = f"reply cut: {exc}"[:200]
    except aiohttp.ClientError as exc:
        out.kind = "connection"
        out.message = f"{type(exc).__name__}: {exc}"[:200]
    except OSError as exc:
        out.kind = "connection"
        out.message = f"{type(exc).__name__}: {exc}"[:200]
    except ValueError as exc:  # JSON decoding, over-long line
        out.kind = "protocol"
        out.message = f"unreadable reply: {exc}"[:200]
    return out


async def discover_model(url: str, *, openai: bool, endpoint: str, api_key: str | None, timeout: float = 5.0) -> str | None:
    """The first model the server lists (an embedding model for ``embed`` when there is one)."""
    import asyncio

    import aiohttp

    base = url.rstrip("/")
    if openai and base.endswith("/v1"):
        base = base[:-3]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.get(base + ("/v1/models" if openai else "/api/tags"), headers=headers) as resp:
                if resp.status != 200:
                    return None
                obj = await resp.json(content_type=None)
    except (aiohttp.ClientError, OSError, ValueError, asyncio.TimeoutError):
        return None
    try:
        names = [m["id"] for m in obj["data"]] if openai else [m["name"] for m in obj["models"]]
    except (KeyError, TypeError):
        return None
    if not names:
        return None
    if endpoint == "embed":
        for n in names:
            if "embed" in n:
                return str(n)
    else:
        for n in names:
            if "embed" not in n:
                return str(n)
    return str(names[0])
