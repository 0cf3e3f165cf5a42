"""The OpenAI-compatible ``/v1/*`` routes of the emulated host.

Owns: one function per endpoint (``chat_completions``, ``completions``, ``embeddings``,
``list_models``, ``get_model``) and OpenAI's error body (:func:`error_response`).
Real Ollama rewrites ``/v1`` requests into native ones and the replies back; here each
route reads the OpenAI request (messages with content parts, ``reasoning_effort``,
``response_format``, ``max_tokens``, ``stream_options``), asks the engine for the same
decisions the native routes get (model checks, faults, a runner, a plan) and writes the
OpenAI shapes directly with ``_render``'s SSE framing. It must not import the server
(``_server`` imports it) or the native routes, and keeps no state of its own. It reads
no monotonic clock (the engine times replies on the event loop's clock); ``created`` is
wall-clock seconds, as OpenAI's.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from aiohttp import web

from ._decode import conversation, decode_openai_object, keep_alive_of
from ._errors import MIDSTREAM_MSG, HttpError
from ._generation import TOKENS_JSON, Plan
from ._goformat import go_dumps
from ._httphost import CT_SSE, HttpHost
from ._promptcache import chat_tokens, generate_tokens
from ._render import (
    CHAT_DELTA,
    CHAT_DELTA_END,
    chat_cut_chunk,
    chunk_head,
    completion_cut_chunk,
    events_of,
    finish_reason,
    openai_tool_calls,
    openai_tool_calls_json,
    render_events,
    sse_end,
    usage,
)

__all__ = ["chat_completions", "completions", "embeddings", "error_response", "get_model", "list_models"]

_TYPES = {400: "invalid_request_error", 404: "not_found_error"}


def error_response(host: HttpHost, status: int, message: str) -> web.Response:
    body = {"error": {"message": message, "type": _TYPES.get(status, "api_error"), "param": None, "code": None}}
    return host.json(body, status)


def _text_of(content: Any, images: list[int]) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, Mapping):
                if p.get("type") == "text" and isinstance(p.get("text"), str):
                    parts.append(p["text"])
                elif p.get("type") == "image_url":
                    images.append(1)
                    continue
                else:
                    raise HttpError(400, "invalid message format")
            else:
                raise HttpError(400, "invalid message format")
        return "\n".join(parts)
    if content is None:
        return ""
    raise HttpError(400, "invalid message content type")


def _turns(msgs: list[Any], images: list[int]) -> Iterator[tuple[str, str]]:
    """(role, text) of each message; an image part appends to ``images``."""
    for m in msgs:
        if not isinstance(m, Mapping):
            raise HttpError(400, "invalid message format")
        yield str(m.get("role") or "").lower(), _text_of(m.get("content"), images)


def _think_of(body: Mapping[str, Any]) -> bool | str | None:
    eff = body.get("reasoning_effort")
    reasoning = body.get("reasoning")
    if eff is None and isinstance(reasoning, Mapping):
        eff = reasoning.get("effort")
    if eff is None:
        return None
    if eff == "none":
        return False
    if eff in ("high", "medium", "low", "max"):
        return eff
    raise HttpError(400, f"invalid reasoning value: '{eff}' (must be \"high\", \"medium\", \"low\", or \"none\")")


def _format_of(body: Mapping[str, Any]) -> Any:
    rf = body.get("response_format")
    if not isinstance(rf, Mapping):
        return None
    t = rf.get("type")
    if t == "json_object":
        return "json"
    if t == "json_schema":
        js = rf.get("json_schema")
        if isinstance(js, Mapping) and isinstance(js.get("schema"), Mapping):
            return js["schema"]
        return "json"
    return None


def _options(body: Mapping[str, Any]) -> tuple[dict[str, Any], int | None]:
    opts: dict[str, Any] = {}
    if isinstance(body.get("seed"), int):
        opts["seed"] = body["seed"]
    stop = body.get("stop")
    if isinstance(stop, (str, list)):
        opts["stop"] = stop
    mt = body.get("max_completion_tokens", body.get("max_tokens"))
    num_predict = mt if isinstance(mt, int) and not isinstance(mt, bool) else None
    return opts, num_predict


def _model_of(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    return model if isinstance(model, str) else ""


def _stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    """(stream, stream_options.include_usage): each only when exactly ``true``."""
    so = body.get("stream_options")
    return body.get("stream") is True, isinstance(so, Mapping) and so.get("include_usage") is True


async def _run(
    host: HttpHost, info: Any, keep_alive: float | None, plan: Plan, id_prefix: str, reply: Callable[[str, int, float], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Hold a runner for ``plan`` while ``reply(id, created, t_gen)`` answers."""
    runner, _ = await host.acquire(info, keep_alive, plan)
    ok = False
    try:
        cid = host.reply_id(id_prefix)
        created = int(time.time())
        t_gen = await host.first_token_wait(plan)
        resp = await reply(cid, created, t_gen)
        ok = True
        return resp
    finally:
        host.release(runner, ok and not plan.failed, plan)


async def _whole_wait(host: HttpHost, plan: Plan, t_gen: float) -> None:
    """A non-streamed reply: its 500 (midstream fault) or its generation time."""
    if host.midstream_fail_at(plan.eval_count, plan) >= 0:
        raise HttpError(500, MIDSTREAM_MSG)
    await host.pace(t_gen, plan.eval_count)


async def chat_completions(host: HttpHost, request: web.BaseRequest) -> web.StreamResponse:
    body = decode_openai_object(await request.read(), "ChatCompletionRequest")
    model = _model_of(body)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise HttpError(400, "[] is too short - 'messages'")
    images: list[int] = []
    text, last_user, last_role = conversation(_turns(msgs, images))
    keep_alive = keep_alive_of(body)
    think_v = _think_of(body)
    tools = body.get("tools") or None
    info = host.resolve_chat(model, tools)
    think = host.check_think(info, model, think_v)
    opts, num_predict = _options(body)
    stream, include_usage = _stream_flags(body)
    host.pre_schedule_faults(info)
    if images and not info.has("vision"):
        await host.refuse_images(info, keep_alive)
    plan = host.plan(
        info,
        text=text,
        last_user=last_user,
        last_role=last_role,
        think=think,
        fmt=_format_of(body),
        tools=tools,
        options=opts,
        num_predict=num_predict,
        prompt_tokens=chat_tokens(_turns(msgs, [])) if host.prompt_eval_tps > 0 else None,
    )

    async def reply(cid: str, created: int, t_gen: float) -> web.StreamResponse:
        if not stream:
            await _whole_wait(host, plan, t_gen)
            msg: dict[str, Any] = {"role": "assistant", "content": "".join(plan.content)}
            if plan.thinking:
                msg["reasoning"] = "".join(plan.thinking)
            if plan.tool_calls:
                msg["tool_calls"] = openai_tool_calls(plan.tool_calls)
            out = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "message": msg, "finish_reason": finish_reason(plan)}],
                "usage": usage(plan),
            }
            return host.json(out)
        events = events_of(plan)
        head = chunk_head(cid, "chat.completion.chunk", created, model)
        start = "data: " + head + '[{"index":0,"delta":{'

        def render(i: int, j: int) -> str:
            text = render_events(events, max(i, 1), j, start, CHAT_DELTA, CHAT_DELTA_END, plan, openai_tool_calls_json)
            if i:
                return text
            # the first chunk also carries the role
            return render_events(events, 0, 1, start + '"role":"assistant",', CHAT_DELTA, CHAT_DELTA_END, plan, openai_tool_calls_json) + text

        def final() -> str:
            return start + '},"finish_reason":"' + finish_reason(plan) + '"}]}\n\n' + sse_end(head, plan, include_usage)

        n = len(events)
        # a failure after the first chunk: Ollama's cut (see _render.chat_cut_chunk), no [DONE]
        cut = chat_cut_chunk(cid, created)
        return await host.stream_batches(request, t_gen, n, host.midstream_fail_at(n, plan), render, final, cut, CT_SSE)

    return await _run(host, info, keep_alive, plan, "chatcmpl", reply)


async def completions(host: HttpHost, request: web.BaseRequest) -> web.StreamResponse:
    body = decode_openai_object(await request.read(), "CompletionRequest")
    model = _model_of(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise HttpError(400, "invalid type for 'prompt' field: must be a string")
    keep_alive = keep_alive_of(body)
    info = host.resolve(model, not_found="model '{name}' not found")
    if not info.has("completion"):
        raise HttpError(400, f'"{model}" does not support generate')
    if body.get("suffix") and not info.has("insert"):
        raise HttpError(400, f'"{model}" does not support insert')
    opts, num_predict = _options(body)
    stream, include_usage = _stream_flags(body)
    host.pre_schedule_faults(info)
    plan = host.plan(
        info, text="\n" + prompt, last_user=prompt, last_role="user", think=False, fmt=None, tools=None, options=opts, num_predict=num_predict,
        prompt_tokens=generate_tokens(prompt) if host.prompt_eval_tps > 0 else None,
    )  # fmt: skip

    async def reply(cid: str, created: int, t_gen: float) -> web.StreamResponse:
        if not stream:
            await _whole_wait(host, plan, t_gen)
            out = {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_ollama",
                "choices": [{"text": "".join(plan.content), "index": 0, "finish_reason": plan.done_reason}],
                "usage": usage(plan),
            }
            return host.json(out)
        toks = plan.content
        n = len(toks)
        fail_at = host.midstream_fail_at(n, plan)
        head = chunk_head(cid, "text_completion", created, model)
        start = "data: " + head + '[{"text":'
        idx = plan.content_idx
        fin_reason = go_dumps(plan.done_reason)

        def render(i: int, j: int) -> str:
            parts = []
            for k in range(i, j):
                tok = TOKENS_JSON[idx[k]] if idx is not None else go_dumps(toks[k])
                fr = fin_reason if (k == n - 1 and fail_at < 0) else "null"
                parts.append(f'{start}{tok},"index":0,"finish_reason":{fr}}}]}}\n\n')
            return "".join(parts)

        def final() -> str:
            fin = f'{start}"","index":0,"finish_reason":{fin_reason}}}]}}\n\n' if n == 0 else ""
            return fin + sse_end(head, plan, include_usage)

        cut = completion_cut_chunk(cid, created, include_usage)  # Ollama's cut, no [DONE]
        return await host.stream_batches(request, t_gen, n, fail_at, render, final, cut, CT_SSE)

    return await _run(host, info, keep_alive, plan, "cmpl", reply)


async def embeddings(host: HttpHost, request: web.BaseRequest) -> web.StreamResponse:
    body = decode_openai_object(await request.read(), "EmbedRequest")
    model = _model_of(body)
    inp = body.get("input")
    if isinstance(inp, str):
        inputs = [inp]
    elif isinstance(inp, list) and inp and all(isinstance(x, str) for x in inp):
        inputs = inp
    elif inp is None or inp == "" or inp == []:
        raise HttpError(400, "invalid input")
    else:
        raise HttpError(400, "invalid input type")
    fmt = body.get("encoding_format")
    if fmt not in (None, "", "float", "base64"):
        raise HttpError(400, f'invalid encoding format: "{fmt}" (must be "float" or "base64")')
    dims = body.get("dimensions")
    if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool) or dims < 0):
        raise HttpError(400, "invalid dimensions")
    keep_alive = keep_alive_of(body)
    info = host.resolve(model, not_found='model "{name}" not found, try pulling it first')
    vecs, _, _ = await host.run_embedding(info, keep_alive, inputs, dims)
    data = []
    for i, v in enumerate(vecs):
        if fmt == "base64":
            emb: Any = base64.b64encode(v.astype("<f4").tobytes()).decode()
        else:
            emb = host.vector_json(v)
        data.append({"object": "embedding", "embedding": emb, "index": i})
    count = sum(len(t.split()) + 1 for t in inputs)
    return host.json({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": count, "total_tokens": count}})


def _model_obj(info: Any) -> dict[str, Any]:
    return {"id": info.display, "object": "model", "created": info.modified_ns // 1_000_000_000, "owned_by": info.name.namespace}


async def list_models(host: HttpHost, request: web.BaseRequest) -> web.StreamResponse:
    models = sorted(host.models.values(), key=lambda i: i.modified_ns, reverse=True)
    return host.json({"object": "list", "data": [_model_obj(i) for i in models]})


async def get_model(host: HttpHost, request: web.BaseRequest, name: str) -> web.StreamResponse:
    info = host.lookup(name)
    if info is None:
        raise HttpError(404, f"model '{name}' not found")
    return host.json(_model_obj(info))

