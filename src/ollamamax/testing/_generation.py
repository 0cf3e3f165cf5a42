"""Deterministic "inference": what one request's answer will be, decided up front.

Owns: :class:`Plan` (thinking tokens, answer tokens, tool calls, done reason, counts) and
:func:`plan_generation`, which derives it from ``(seed, model, prompt text)`` and the
request's options (``format`` schemas, tools, ``num_predict``, ``stop``); also the
pre-encoded token strings the renderers concatenate, and the seed derivation the
embedding vectors share. Pure and synchronous: it must not sleep, pace, hold host
state or know about HTTP; the engine (``_engine``) decides when a plan is made and the
renderers (``_render``) turn it into lines.

Text is words from the models' small vocabulary, a token count inside
``response_tokens``.
"""

from __future__ import annotations

import json
import math
import random
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._models import VOCAB

__all__ = ["TOKENS_JSON", "Plan", "plan_generation", "schema_value", "seed_for", "tool_call_id"]

THINK_VOCAB: tuple[str, ...] = (
    "Okay,", "let", "me", "think", "about", "this.", "The", "user", "wants", "a", "short",
    "answer,", "so", "I", "should", "keep", "it", "simple", "and", "clear.", "First,",
    "consider", "what", "matters", "most.",
)  # fmt: skip

# pre-encoded JSON strings of " word" tokens (the hot path concatenates these)
# index i < len(VOCAB): " word"; index len(VOCAB) + i: "word" (the first token of an answer)
TOKENS = tuple(" " + w for w in VOCAB) + VOCAB
TOKENS_JSON = tuple(json.dumps(t) for t in TOKENS)
THINK_TOKENS = tuple(" " + w for w in THINK_VOCAB)


def seed_for(seed: int | None, *parts: str) -> int:
    h = zlib.crc32("\x1f".join(parts).encode("utf-8", "surrogatepass"))
    return (h ^ ((seed or 0) * 0x9E3779B1)) & 0xFFFFFFFF


@dataclass(slots=True)
class Plan:
    """What one inference request will produce, decided up front."""

    thinking: list[str]  # thinking tokens (emitted first)
    content: list[str]  # answer tokens
    tool_calls: list[dict[str, Any]]  # native shape, arguments as objects
    done_reason: str  # "stop" | "length"
    prompt_eval_count: int
    context_tokens: list[int]  # ids of answer tokens (generate's `context`)
    content_idx: list[int] | None = None  # vocabulary indices when content is plain words
    model_key: str = ""
    failed: bool = False  # set when a fault was injected into this reply
    prompt_tokens: list[str] | None = None  # the prompt's tokens when the prompt cache is on
    cached: int = 0  # prompt tokens found in the cache slot (not evaluated again)
    slot: Any = None  # the runner's cache slot this reply holds (``_promptcache.Slot``)

    @property
    def eval_count(self) -> int:
        return len(self.thinking) + len(self.content) + (1 if self.tool_calls else 0)


def _split_text(text: str, rng: random.Random) -> list[str]:
    """Cut a string (e.g. JSON) into token-sized pieces."""
    out = []
    i = 0
    n = len(text)
    while i < n:
        k = rng.randint(2, 6)
        out.append(text[i : i + k])
        i += k
    return out


def _schema_value(schema: Any, rng: random.Random, defs: Mapping[str, Any], depth: int = 0) -> Any:
    if not isinstance(schema, Mapping) or depth > 8:
        return "value"
    if "$ref" in schema and isinstance(schema["$ref"], str):
        ref = schema["$ref"].rsplit("/", 1)[-1]
        return _schema_value(defs.get(ref, {}), rng, defs, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][rng.randrange(len(schema["enum"]))]
    for key in ("anyOf", "oneOf", "allOf"):
        alts = schema.get(key)
        if isinstance(alts, list) and alts:
            non_null = [a for a in alts if not (isinstance(a, Mapping) and a.get("type") == "null")]
            return _schema_value((non_null or alts)[0], rng, defs, depth + 1)
    typ = schema.get("type")
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), "null")
    if typ is None:
        typ = "object" if "properties" in schema else "string"
    if typ == "object":
        props = schema.get("properties")
        out: dict[str, Any] = {}
        if isinstance(props, Mapping):
            for k, sub in props.items():
                out[k] = _schema_value(sub, rng, defs, depth + 1)
        return out
    if typ == "array":
        lo = schema.get("minItems", 1)
        hi = schema.get("maxItems", max(lo, 3))
        lo = lo if isinstance(lo, int) and lo >= 0 else 1
        hi = hi if isinstance(hi, int) and hi >= lo else lo + 2
        cnt = rng.randint(lo, min(hi, lo + 3))
        return [_schema_value(schema.get("items", {}), rng, defs, depth + 1) for _ in range(cnt)]
    if typ == "integer":
        lo = schema.get("minimum", 0)
        hi = schema.get("maximum", lo + 100)
        try:
            return rng.randint(int(math.ceil(lo)), int(math.floor(hi)))
        except (TypeError, ValueError):
            return rng.randint(0, 100)
    if typ == "number":
        lo = schema.get("minimum", 0.0)
        hi = schema.get("maximum", lo + 100.0)
        try:
            return round(rng.uniform(float(lo), float(hi)), 2)
        except (TypeError, ValueError):
            return round(rng.uniform(0, 100), 2)
    if typ == "boolean":
        return rng.random() < 0.5
    if typ == "null":
        return None
    fmt = schema.get("format")
    if fmt == "date":
        return "2026-01-%02d" % rng.randint(1, 28)
    if fmt == "date-time":
        return "2026-01-%02dT12:00:00Z" % rng.randint(1, 28)
    if fmt == "email":
        return f"{VOCAB[rng.randrange(len(VOCAB))]}@example.com"
    words = [VOCAB[rng.randrange(len(VOCAB))] for _ in range(rng.randint(1, 3))]
    return " ".join(words)


def schema_value(schema: Any, rng: random.Random) -> Any:
    defs: dict[str, Any] = {}
    if isinstance(schema, Mapping):
        for k in ("$defs", "definitions"):
            if isinstance(schema.get(k), Mapping):
                defs.update(schema[k])
    return _schema_value(schema, rng, defs)


_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


def tool_call_id(rng: random.Random) -> str:
    return "call_" + "".join(rng.choice(_ID_CHARS) for _ in range(8))


def _pick_tools(tools: Sequence[Any], text: str) -> list[Mapping[str, Any]]:
    low = text.lower()
    picked = []
    for t in tools:
        if not isinstance(t, Mapping):
            continue
        fn = t.get("function")
        if not isinstance(fn, Mapping):
            continue
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            continue
        n = name.lower()
        if n in low or n.replace("_", " ") in low:
            picked.append(fn)
    return picked


def plan_generation(
    *,
    seed: int | None,
    model_key: str,
    text: str,
    last_user: str | None,
    last_role: str | None,
    think: bool,
    fmt: Any,
    tools: Sequence[Any] | None,
    num_predict: int | None,
    stop: Sequence[str] | None,
    response_tokens: tuple[int, int],
) -> Plan:
    """Decide the tokens of one answer.

    Tool calls: when ``tools`` are given and the *last* message is a user message that
    mentions a tool's name (``get_weather`` or ``get weather``, case-insensitive), the
    model calls every mentioned tool (arguments built from its parameter schema) and
    writes no text. After a ``tool`` message it answers in text.
    """
    h = seed_for(seed, model_key, text)
    rng = random.Random(h)
    lo, hi = response_tokens
    rand = rng.random
    n = lo + int(rand() * (hi - lo + 1)) if hi > lo else lo
    prompt_eval_count = max(1, len(text.split()) + 4)
    thinking: list[str] = []
    if think:
        m = max(2, n // 2)
        thinking = [THINK_TOKENS[rng.randrange(len(THINK_TOKENS))] for _ in range(m)]
        thinking[0] = thinking[0].lstrip()
    tool_calls: list[dict[str, Any]] = []
    content_idx: list[int] | None = None
    if tools and last_role == "user" and last_user:
        for i, fn in enumerate(_pick_tools(tools, last_user)):
            args = schema_value(fn.get("parameters") or {}, rng)
            if not isinstance(args, dict):
                args = {}
            tool_calls.append({"id": tool_call_id(rng), "function": {"index": i, "name": fn["name"], "arguments": args}})
    if tool_calls:
        content: list[str] = []
    elif fmt is not None and fmt != "":
        if isinstance(fmt, Mapping):
            value = schema_value(fmt, rng)
        else:  # "json"
            value = {VOCAB[rng.randrange(len(VOCAB))]: " ".join(VOCAB[rng.randrange(len(VOCAB))] for _ in range(3))}
        content = _split_text(json.dumps(value, ensure_ascii=False), rng)
    else:
        nv = len(VOCAB)
        content_idx = [int(rand() * nv) for _ in range(n)]
        if content_idx:
            content_idx[0] += len(VOCAB)
        content = [TOKENS[i] for i in content_idx]
    done_reason = "stop"
    if stop:
        acc = ""
        for i, tok in enumerate(content):
            acc += tok
            hit = next((s for s in stop if s and s in acc), None)
            if hit is not None:
                cut = acc.index(hit)
                before = acc[: cut]
                # rebuild content up to the stop string
                content = _resplit(before, content[: i + 1])
                content_idx = None
                break
    if num_predict is not None and num_predict >= 0:
        total = len(thinking) + len(content)
        if total > num_predict:
            done_reason = "length"
            if len(thinking) >= num_predict:
                thinking = thinking[:num_predict]
                content = []
                content_idx = None
            else:
                keep = num_predict - len(thinking)
                content = content[:keep]
                if content_idx is not None:
                    content_idx = content_idx[:keep]
            tool_calls = tool_calls if len(thinking) + len(content) < num_predict else []
    if content_idx is not None:
        ctx = [100 + i for i in content_idx]
    else:
        ctx = [(zlib.crc32(t.encode()) & 0x1FFFF) for t in content]
    return Plan(thinking, content, tool_calls, done_reason, prompt_eval_count, ctx, content_idx)


def _resplit(text: str, toks: list[str]) -> list[str]:
    out = []
    acc = 0
    for t in toks:
        if acc + len(t) <= len(text):
            out.append(t)
            acc += len(t)
        else:
            rest = text[acc:]
            if rest:
                out.append(rest)
            break
    return out
