"""The native ``/api/*`` routes of the emulated host.

Owns: one function per endpoint (``version``, ``tags``, ``ps``, ``show``, ``pull``,
``push``, ``copy``, ``delete``, ``create``, ``blob``, ``generate``, ``chat``, ``embed``,
``embeddings``, and ``root`` for ``/``), each ``(host, request) -> response``: it
decodes the body (``_decode``), asks the engine for the decisions (model checks, faults,
a runner, a plan, metrics), picks the native reply shape (``_render``) and writes it
through the :class:`~._httphost.HttpHost` it is given. It must not import the server
(``_server`` imports it and holds the routing table), keep state of its own or reach
into the scheduler beyond reading it for ``/api/ps``. Durations come from ``host.now()``
(the event loop's clock); wall-clock timestamps from ``_goformat``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from ._decode import decode_object, keep_alive_of, parse_messages, parse_think
from ._errors import MIDSTREAM_MSG, HttpError
from ._generation import Plan
from ._goformat import go_dumps, rfc3339, rfc3339_at
from ._httphost import CT_TEXT, HttpHost
from ._models import ModelInfo, make_model, parse_name, registry_knows, show_body
from ._promptcache import chat_tokens, generate_tokens
from ._render import CHAT, GENERATE, MIDSTREAM_NDJSON, Shape, events_of, render_events

__all__ = [
    "blob",
    "chat",
    "copy",
    "create",
    "delete",
    "embed",
    "embeddings",
    "generate",
    "ps",
    "pull",
    "push",
    "root",
    "show",
    "tags",
    "version",
]

VERSION = "0.32.15"


async def _body(request: web.BaseRequest, struct: str) -> dict[str, Any]:
    raw = await request.read()
    return decode_object(raw, struct)


# --------------------------------------------------------------------------- information


async def root(host: HttpHost, request: web.BaseRequest) -> web.StreamResponse:
    return host.raw(200, b"Ollama is running", CT_TEXT)


async def version(host: HttpHost, request: web.BaseRequest) -> web.StreamResponse:
    return host.json({"version": VERSION})


def _tag_entry(info: ModelInfo) -> dict[str, Any]:
    return {
        "name": info.display,
        "model": info.display,
        "modified_at": rfc3339_at(info.modified_ns),
        "size": info.size,
        "digest": info.digest,
        "details": info.details(),
        "capabilities": list(info.capabilities),
    }


async def tags(host: HttpHost, request: web.BaseRequest) -> web.StreamResponse:
    models = sorted(host.models.values(), key=lambda i: i.modified_ns, reverse=True)
    return host.json({"models": [_tag_entry(i) for i in models]})


async def ps(host: HttpHost, request: web.BaseRequest) -> web.StreamResponse:
    """Loaded models, longest remaining keep-alive first. ``size`` is the model's memory,
    ``size_vram`` the part of it on the "GPU": all of it unless the host's ``vram`` is
    smaller than the model (then it runs partly on the CPU, as Ollama reports a partial
    offload: ``PsHandler`` copies the runner's ``totalSize`` and ``vramSize``)."""
    rows = []
    for r in host.scheduler.runners.values():
        if not r.loaded:
            continue
        info = r.info
        exp = host.scheduler.expires_at_ns(r)
        rows.append(
            (
                exp,
                {
                    "name": info.display,
                    "model": info.display,
                    "size": info.size,
                    "digest": info.digest,
                    "details": info.details(),
                    "expires_at": rfc3339_at(exp),
                    "size_vram": r.size_vram or info.size,
                    "context_length": min(info.context_length, 4096),
                },
            )
        )
    rows.sort(key=lambda x: x[0], reverse=True)
    return host.json({"models": [row for _, row in rows]})


async def show(host: HttpHost, request: web.BaseRequest) -> web.StreamResponse:
    body = await _body(request, "ShowRequest")
    name = body.get("model") or body.get("name") or ""
    if not name:
        raise HttpError(400, "model is required")
    mn = parse_name(name)
    if mn is None:
        raise HttpError(400, "invalid model name")
    info = host.models.get(mn.key)
    if info is None:
        raise HttpError(404, f"model '{mn.display}' not found")
    return host.json(show_body(info, bool(body.get("verbose"))))


# --------------------------------------------------------------------------- management


def _pull_lines(info_layers: list[tuple[str, int]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for digest, total in info_layers:
        short = digest[7:19]
        out.append({"status": f"pulling {short}", "digest": digest, "total": total})
        for frac in (0.25, 0.5, 1.0):
            out.append({"status": f"pulling {short}", "digest": digest, "total": total, "completed": int(total * frac)})
    out.append({"status": "verifying sha256 digest"})
    out.append({"status": "writing manifest"})
    out.append({"status": "success"})
    return out


async def pull(host: HttpHost, request: web.BaseRequest) -> web.StreamResponse:
    body = await _body(request, "PullRequest")
    name = body.get("model") or body.get("name") or ""
    mn = parse_name(name)
    if mn is None:
        raise HttpError(400, "invalid model name")
    stream = body.get("stream") is not False
    known = registry_knows(mn) or mn.key in host.models
    if not stream:
        if not known:
            raise HttpError(500, "pull model manifest: file does not exist")
        if host.pull_delay > 0:
            await asyncio.sleep(host.pull_delay)
        host.mark_pulled(mn)
        return host.json({"status": "success"})
    resp = await host.start_stream(request)
    await resp.write(b'{"status":"pulling manifest"}\n')
    if not known:
        await resp.write(b'{"error":"pull model manifest: file does not exist"}\n')
        await resp.write_eof()
        return resp
    layers = make_model(mn).layers
    lines = _pull_lines(layers)
    step = host.pull_delay / max(1, len(lines))
    for i, line in enumerate(lines):
        if step > 0:
            await asyncio.sleep(step)
        if i == len(lines) - 1:
            host.mark_pulled(mn)
        await resp.write((go_dumps(line) + "\n").encode())
    await resp.write_eof()
    return resp


async def push(host: HttpHost, request: web.BaseRequest) -> web.StreamResponse:
    body = await _body(request, "PushRequest")
    name = body.get("model") or body.get("name") or ""
    mn = parse_name(name)
    if mn is None:
        raise HttpError(400, "invalid model name")
    info = host.models.get(mn.key)
    stream = body.get("stream") is not False
    if not stream:
        if info is None:
            raise HttpError(500, "open manifest: file does not exist")
        return host.json({"status": "success"})
    resp = await host.start_stream(request)
    await resp.write(b'{"status":"retrieving manifest"}\n')
    if info is None:
        await resp.write(b'{"status":"couldn\'t retrieve manifest"}\n')
        await resp.write(b'{"error":"open manifest: file does not exist"}\n')
        await resp.write_eof()
        return resp
    lines: list[dict[str, Any]] = []
    for digest, total in info.layers:
        lines.append({"status": "starting upload", "digest": digest, "total": total})
        short = digest[7:19]
        for frac in (0.5, 1.0):
            lines.append({"status": f"pushing {short}", "digest": digest, "total": total, "completed": int(total * frac)})
    lines.append({"status": "pushing manifest"})
    lines.append({"status": "success"})
    await resp.write("".join(go_dumps(x) + "\n" for x in lines).encode())
    await resp.write_eof()
    return resp


async def copy(host: HttpHost, request: web.BaseRequest) -> web.StreamResponse:
    body = await _body(request, "CopyRequest")
    src = body.get("source") or ""
    dst = body.get("destination") or ""
    smn = parse_name(src)
    dmn = parse_name(dst)
    if smn is None or dmn is None:
        raise HttpError(400, "invalid model name")
    info = host.models.get(smn.key)
    if info is None:
        raise HttpError(404, f'model "{src}" not found')
    host.copy_model(info, dmn)
    return host.raw(200, b"", None)


async def delete(host: HttpHost, request: web.BaseRequest) -> web.StreamResponse:
    body = await _body(request, "DeleteRequest")
    name = body.get("model") or body.get("name") or ""
    mn = parse_name(name)
    if mn is None:
        raise HttpError(400, "invalid model name")
    if mn.key not in host.models:
        raise HttpError(404, f"model '{name}' not found")
    host.delete_model(mn)
    return host.raw(200, b"", None)


async def create(host: HttpHost, request: web.BaseRequest) -> web.StreamResponse:
    body = await _body(request, "CreateRequest")
    name = body.get("model") or body.get("name") or ""
    mn = parse_name(name)
    if mn is None:
        raise HttpError(400, "invalid model name")
    src_name = body.get("from")
    files = body.get("files")
    if not src_name and not files:
        raise HttpError(400, "neither 'from' or 'files' was specified")
    stream = body.get("stream") is not False
    lines: list[dict[str, Any]] = []
    err: str | None = None
    caps: Sequence[str] | None = None
    if src_name:
        smn = parse_name(src_name)
        src = host.models.get(smn.key) if smn is not None else None
        if src is None:
            err = f"model '{src_name}' not found"
        else:
            caps = src.capabilities
            for digest, _ in src.layers:
                lines.append({"status": f"using existing layer {digest}"})
    else:
        for digest in (files or {}).values():
            if isinstance(digest, str):
                lines.append({"status": f"using existing layer {digest}"})
    if err is None:
        for key in ("template", "system", "parameters", "license", "messages"):
            if body.get(key):
                d = hashlib.sha256(go_dumps(body[key]).encode()).hexdigest()
                lines.append({"status": f"creating new layer sha256:{d}"})
        lines.append({"status": "writing manifest"})
        lines.append({"status": "success"})
    if not stream:
        if err is not None:
            raise HttpError(500, err)
        host.create_model(mn, caps, body)
        return host.json({"status": "success"})
    resp = await host.start_stream(request)
    out = "".join(go_dumps(x) + "\n" for x in lines[:-1] if err is None) if err is None else ""
    if err is None:
        host.create_model(mn, caps, body)
        out += go_dumps(lines[-1]) + "\n"
    else:
        out = '{"status":"parsing modelfile"}\n' + go_dumps({"error": err}) + "\n"
    await resp.write(out.encode())
    await resp.write_eof()
    return resp


async def blob(host: HttpHost, request: web.BaseRequest, digest: str) -> web.StreamResponse:
    ok = digest.startswith("sha256:") and len(digest) == 71 and all(c in "0123456789abcdef" for c in digest[7:])
    if not ok:
        raise HttpError(400, "invalid digest format")
    known = host.has_blob(digest)
    if request.method == "HEAD":
        if known:
            return host.raw(200, b"", None)
        raise HttpError(404, f'blob "{digest}" not found')
    data = await request.read()
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != digest:
        raise HttpError(400, f'digest mismatch, expected "{digest}", got "{got}"')
    if known:
        return host.raw(200, b"", None)
    host.add_blob(digest)
    return host.raw(201, b"", None)


# --------------------------------------------------------------------------- inference


async def _native_body(request: web.BaseRequest, struct: str) -> tuple[dict[str, Any], str, bool | str | None, float | None]:
    """The checks /api/generate and /api/chat share: (body, model, think value, keep_alive)."""
    body = await _body(request, struct)
    model = body.get("model") or ""
    think_v = parse_think(body.get("think"))
    keep_alive = keep_alive_of(body)
    tl = body.get("top_logprobs")
    if tl is not None and not 0 <= tl <= 20:
        raise HttpError(400, "top_logprobs must be between 0 and 20")
    return body, model, think_v, keep_alive


async def generate(host: HttpHost, request: web.BaseRequest) -> web.StreamResponse:
    t0 = host.now()
    body, model, think_v, keep_alive = await _native_body(request, "GenerateRequest")
    raw = bool(body.get("raw"))
    if raw and (body.get("template") or body.get("system") or body.get("context")):
        raise HttpError(400, "raw mode does not support template, system, or context")
    info = host.resolve(model, not_found="model '{name}' not found")
    if not info.has("completion"):
        raise HttpError(400, f'"{model}" does not support generate')
    if body.get("suffix") and not info.has("insert"):
        raise HttpError(400, f'"{model}" does not support insert')
    think = host.check_think(info, model, think_v)
    prompt = body.get("prompt") or ""
    stream = body.get("stream") is not False
    if not prompt and not body.get("images"):
        reason = await host.load_or_unload(info, keep_alive)
        return host.json({"model": model, "created_at": rfc3339(), "response": "", "done": True, "done_reason": reason})
    host.pre_schedule_faults(info)
    if body.get("images") and not info.has("vision"):
        await host.refuse_images(info, keep_alive)
    tokens = None
    if host.prompt_eval_tps > 0:
        tokens = generate_tokens(prompt, body.get("system") or "", raw=raw, context=body.get("context") or ())
    plan = host.plan(
        info,
        text=(body.get("system") or "") + "\n" + prompt,
        last_user=prompt,
        last_role="user",
        think=think,
        fmt=body.get("format"),
        tools=None,
        options=body.get("options"),
        prompt_tokens=tokens,
    )
    ctx = None if raw else (list(body.get("context") or [])[-64:] + plan.context_tokens)
    return await _reply(host, request, GENERATE, info, keep_alive, model, plan, t0, stream, ctx)


async def _reply(
    host: HttpHost, request: web.BaseRequest, shape: Shape, info: ModelInfo, keep_alive: float | None, model: str, plan: Plan, t0: float, stream: bool, ctx: list[int] | None = None
) -> web.StreamResponse:
    """Hold a runner while the reply (streamed or whole) is generated."""
    runner, load_wait = await host.acquire(info, keep_alive, plan)
    ok = False
    try:
        t_acq = host.now()
        if stream:
            resp = await _stream_ndjson(host, request, shape, model, plan, t0, load_wait, t_acq, ctx)
        else:
            resp = await _whole_ndjson(host, shape, model, plan, t0, load_wait, t_acq, ctx)
        ok = True
        return resp
    finally:
        host.release(runner, ok and not plan.failed, plan)


async def _whole_ndjson(
    host: HttpHost, shape: Shape, model: str, plan: Plan, t0: float, load_wait: float, t_acq: float, ctx: list[int] | None
) -> web.StreamResponse:
    """A non-streamed reply after its generation time (or a 500 halfway through)."""
    t_gen = await host.first_token_wait(plan)
    n = plan.eval_count
    if host.midstream_fail_at(n, plan) >= 0:
        await host.pace(t_gen, max(1, n // 2))
        raise HttpError(500, MIDSTREAM_MSG)
    await host.pace(t_gen, n)
    t_end = host.now()
    out: dict[str, Any] = {"model": model, "created_at": rfc3339()}
    out.update(shape.fields(plan))
    out["done"] = True
    out["done_reason"] = plan.done_reason
    if ctx is not None:
        out["context"] = ctx
    out.update(host.metrics(t0, load_wait, t_acq, plan, t_gen, t_end))
    return host.json(out)


async def _stream_ndjson(
    host: HttpHost, request: web.BaseRequest, shape: Shape, model: str, plan: Plan, t0: float, load_wait: float, t_acq: float, ctx: list[int] | None
) -> web.StreamResponse:
    """A streamed /api/generate or /api/chat reply."""
    pre, suf, done = shape.pre, shape.suf, shape.done
    t_gen = await host.first_token_wait(plan)
    events = events_of(plan)
    n = len(events)
    fail_at = host.midstream_fail_at(n, plan)
    head = '{"model":' + go_dumps(model) + ',"created_at":"'

    def render(i: int, j: int) -> str:
        # one instant per batch of lines written together
        return render_events(events, i, j, head + rfc3339(), pre, suf, plan)

    def final() -> str:
        t_end = host.now()
        out = head + rfc3339() + done + go_dumps(plan.done_reason)
        if ctx is not None:
            out += ',"context":' + go_dumps(ctx)
        m = host.metrics(t0, load_wait, t_acq, plan, t_gen, t_end)
        return out + "," + go_dumps(m)[1:] + "\n"

    return await host.stream_batches(request, t_gen, n, fail_at, render, final, MIDSTREAM_NDJSON)


async def chat(host: HttpHost, request: web.BaseRequest) -> web.StreamResponse:
    t0 = host.now()
    body, model, think_v, keep_alive = await _native_body(request, "ChatRequest")
    msgs = body.get("messages") or []
    text, last_user, last_role = parse_messages(msgs)
    tools = body.get("tools") or None
    info = host.resolve_chat(model, tools)
    images = any(isinstance(m, dict) and m.get("images") for m in msgs)
    think = host.check_think(info, model, think_v)
    stream = body.get("stream") is not False
    if not msgs:
        reason = await host.load_or_unload(info, keep_alive)
        return host.json(
            {"model": model, "created_at": rfc3339(), "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": reason}
        )
    host.pre_schedule_faults(info)
    if images and not info.has("vision"):
        await host.refuse_images(info, keep_alive)
    tokens = None
    if host.prompt_eval_tps > 0:  # msgs were validated by parse_messages
        tokens = chat_tokens(((m.get("role") or "").lower(), m.get("content") or "") for m in msgs)
    plan = host.plan(
        info, text=text, last_user=last_user, last_role=last_role, think=think, fmt=body.get("format"), tools=tools, options=body.get("options"),
        prompt_tokens=tokens,
    )  # fmt: skip
    return await _reply(host, request, CHAT, info, keep_alive, model, plan, t0, stream)


# --------------------------------------------------------------------------- embeddings


async def embed(host: HttpHost, request: web.BaseRequest) -> web.StreamResponse:
    t0 = host.now()
    body = await _body(request, "EmbedRequest")
    model = body.get("model") or ""
    keep_alive = keep_alive_of(body)
    inp = body.get("input")
    if inp is None or inp == "":
        inputs: list[str] = []
    elif isinstance(inp, str):
        inputs = [inp]
    elif isinstance(inp, list):
        if not all(isinstance(x, str) for x in inp):
            raise HttpError(400, "invalid input type")
        inputs = inp
    else:
        raise HttpError(400, "invalid input type")
    info = host.resolve(model, not_found='model "{name}" not found, try pulling it first')
    dims = body.get("dimensions")
    if dims is not None and dims < 0:
        raise HttpError(400, "dimensions must be a positive number")
    if body.get("truncate") is False:
        for t in inputs:
            if len(t.split()) > info.context_length:
                raise HttpError(400, "the input length exceeds the context length")
    if not inputs:
        await host.load_or_unload(info, keep_alive)
        return host.json({"model": model, "embeddings": []})
    vecs, load_wait, _ = await host.run_embedding(info, keep_alive, inputs, dims)
    count = sum(len(t.split()) + 1 for t in inputs)
    t_end = host.now()
    tail = go_dumps(
        {
            "total_duration": max(1000, int((t_end - t0) * 1e9)),
            "load_duration": max(1000, int(load_wait * 1e9)),
            "prompt_eval_count": count,
        }
    )
    out = (
        '{"model":' + go_dumps(model) + ',"embeddings":['
        + ",".join(host.embed_json(info, t, dims) for t in inputs) + "]," + tail[1:]
    )  # fmt: skip
    return host.json_bytes(out.encode())


async def embeddings(host: HttpHost, request: web.BaseRequest) -> web.StreamResponse:
    body = await _body(request, "EmbeddingRequest")
    model = body.get("model") or ""
    keep_alive = keep_alive_of(body)
    info = host.resolve(model, not_found='model "{name}" not found, try pulling it first')
    prompt = body.get("prompt") or ""
    if not prompt:
        await host.load_or_unload(info, keep_alive)
        return host.json({"embedding": []})
    vecs, _, _ = await host.run_embedding(info, keep_alive, [prompt], None, normalise=False)
    return host.json({"embedding": vecs[0].tolist()})
