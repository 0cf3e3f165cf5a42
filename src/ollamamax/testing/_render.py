"""Rendering: a :class:`~._generation.Plan` as the bytes of a reply, native and ``/v1``.

Owns: the event list of a plan (thinking tokens, content tokens, tool calls), the stream
line formats built from it by string concatenation of pre-encoded pieces (the hot path),
the native reply shapes of ``/api/generate`` and ``/api/chat`` (NDJSON lines and the
fields of a whole reply), and OpenAI's SSE framing (chunk heads, ``usage``, the finish
chunk, ``[DONE]``, in-band errors). Pure functions of a plan and strings: it must not
pace, write, read requests, or decide anything (faults, lengths, models); the route
modules choose a shape and the engine decides the plan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from ._errors import MIDSTREAM_MSG
from ._generation import TOKENS_JSON, Plan
from ._goformat import go_dumps

__all__ = [
    "CHAT",
    "CHAT_DELTA",
    "CHAT_DELTA_END",
    "GENERATE",
    "MIDSTREAM_NDJSON",
    "Shape",
    "chat_cut_chunk",
    "chunk_head",
    "completion_cut_chunk",
    "events_of",
    "finish_reason",
    "openai_tool_calls",
    "openai_tool_calls_json",
    "render_events",
    "sse_end",
    "sse_error",
    "usage",
]

# --------------------------------------------------------------------------- events


def events_of(plan: Plan) -> list[tuple[int, Any]]:
    """The reply as a list of (kind, value): 0 thinking token, 1 content token, 2 tool calls."""
    ev: list[tuple[int, Any]] = [(0, t) for t in plan.thinking]
    ev.extend((1, t) for t in plan.content)
    if plan.tool_calls:
        ev.append((2, plan.tool_calls))
    return ev


def render_events(
    events: Sequence[tuple[int, Any]], i: int, j: int, start: str, pre: tuple[str, str, str], suf: str, plan: Plan, tools_json: Callable[[Any], str] = go_dumps
) -> str:
    """The stream lines of ``events[i:j]``: ``start + pre[kind] + <value JSON> + suf`` each (tool calls via ``tools_json``)."""
    idx = plan.content_idx
    nthink = len(plan.thinking)
    parts = []
    for k in range(i, j):
        kind, val = events[k]
        if kind == 1:
            tok = TOKENS_JSON[idx[k - nthink]] if idx is not None else go_dumps(val)
        elif kind == 0:
            tok = go_dumps(val)
        else:
            tok = tools_json(val)
        parts.append(f"{start}{pre[kind]}{tok}{suf}")
    return "".join(parts)


# --------------------------------------------------------------------------- native NDJSON

MIDSTREAM_NDJSON = go_dumps({"error": MIDSTREAM_MSG}).encode() + b"\n"


class Shape(NamedTuple):
    """How /api/generate or /api/chat renders a reply.

    Streamed lines continue '{"model":…,"created_at":"<ts>' with ``pre[kind]`` (thinking,
    content, tool calls), the value's JSON and ``suf``; the final line with ``done``, then the
    done_reason. A whole reply puts ``fields(plan)`` between created_at and done.
    """

    pre: tuple[str, str, str]
    suf: str
    done: str
    fields: Callable[[Plan], dict[str, Any]]


def generate_fields(plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {"response": "".join(plan.content)}
    if plan.thinking:
        out["thinking"] = "".join(plan.thinking)
    return out


def chat_fields(plan: Plan) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(plan.content)}
    if plan.thinking:
        msg["thinking"] = "".join(plan.thinking)
    if plan.tool_calls:
        msg["tool_calls"] = plan.tool_calls
    return {"message": msg}


GENERATE = Shape(
    ('","response":"","thinking":', '","response":', '","response":"","tool_calls":'), ',"done":false}\n', '","response":"","done":true,"done_reason":', generate_fields
)
CHAT = Shape(
    (
        '","message":{"role":"assistant","content":"","thinking":',
        '","message":{"role":"assistant","content":',
        '","message":{"role":"assistant","content":"","tool_calls":',
    ),
    '},"done":false}\n',
    '","message":{"role":"assistant","content":""},"done":true,"done_reason":',
    chat_fields,
)


# --------------------------------------------------------------------------- OpenAI SSE


def sse_error(message: str) -> bytes:
    return ("data: " + go_dumps({"error": {"message": message, "type": "api_error", "param": None, "code": None}}) + "\n\n").encode()


def chat_cut_chunk(cid: str, created: int) -> bytes:
    """What ends a ``/v1/chat/completions`` stream that fails after its first chunk: one
    chunk with an empty delta, ``"model":""`` and no finish reason; no ``[DONE]``, no error
    object. Ollama's ``streamResponse`` (server/routes.go) writes the in-band
    ``{"error":...}`` line through the OpenAI middleware's ``ChatWriter.Write``
    (middleware/openai.go); the status is already 200, so ``writeResponse`` decodes the line
    as an ``api.ChatResponse`` (all fields zero: no model, not done) and ``openai.ToChunks``
    (openai/openai.go) turns it into this chunk; ``Done`` is false, so no ``[DONE]``
    follows. The error text is lost."""
    return ("data: " + chunk_head(cid, "chat.completion.chunk", created, "")
            + '[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n').encode()  # fmt: skip


def completion_cut_chunk(cid: str, created: int, include_usage: bool) -> bytes:
    """The same for ``/v1/completions``: ``CompleteWriter.writeResponse`` (middleware/openai.go)
    decodes the error line as an empty ``api.GenerateResponse`` and ``openai.ToCompleteChunk``
    makes a chunk with empty text and no finish reason (field order of Go's
    ``CompletionChunk``: choices before model; with ``include_usage`` every chunk carries a
    zero ``usage``); no ``[DONE]``."""
    tail = ',"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}' if include_usage else "}"
    return ('data: {"id":"' + cid + '","object":"text_completion","created":' + str(created)
            + ',"choices":[{"text":"","index":0,"finish_reason":null}],"model":"","system_fingerprint":"fp_ollama"'
            + tail + "\n\n").encode()  # fmt: skip

# delta prefixes of a chat chunk by event kind: thinking, content, tool calls
CHAT_DELTA = ('"content":"","reasoning":', '"content":', '"content":"","tool_calls":')
CHAT_DELTA_END = '},"finish_reason":null}]}\n\n'


def usage(plan: Any) -> dict[str, int]:
    return {
        "prompt_tokens": plan.prompt_eval_count,
        "completion_tokens": plan.eval_count,
        "total_tokens": plan.prompt_eval_count + plan.eval_count,
    }


def finish_reason(plan: Any) -> str:
    if plan.tool_calls:
        return "tool_calls"
    return plan.done_reason


def openai_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, c in enumerate(calls):
        fn = c["function"]
        out.append({"id": c["id"], "index": i, "type": "function", "function": {"name": fn["name"], "arguments": go_dumps(fn["arguments"])}})
    return out


def openai_tool_calls_json(calls: list[dict[str, Any]]) -> str:
    return go_dumps(openai_tool_calls(calls))


def chunk_head(cid: str, obj: str, created: int, model: str) -> str:
    """A streamed reply object's JSON up to its ``choices`` value."""
    return (
        '{"id":"' + cid + '","object":"' + obj + '","created":' + str(created) + ',"model":' + go_dumps(model)
        + ',"system_fingerprint":"fp_ollama","choices":'
    )  # fmt: skip


def sse_end(head: str, plan: Plan, include_usage: bool) -> str:
    """The optional usage chunk, then ``[DONE]``."""
    if include_usage:
        return "data: " + head + '[],"usage":' + go_dumps(usage(plan)) + "}\n\ndata: [DONE]\n\n"
    return "data: [DONE]\n\n"

