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
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._models import VOCAB

__all__ = [
    "TOKENS_JSON",
    "TOOL_CALL_MODES",
    "Plan",
    "plan_generation",
    "schema_value",
    "seed_for",
    "tool_arguments",
    "tool_call_id",
]

# When a model offered tools calls one (the last message being the user's): "always" (the
# default) calls the tools the message names, else the first tool; "named" only the tools
# the message names; "never" answers in text.
TOOL_CALL_MODES = ("always", "named", "never")

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


def _tool_functions(tools: Sequence[Any]) -> list[Mapping[str, Any]]:
    """The ``function`` objects of the offered tools that have a name, in order."""
    out = []
    for t in tools:
        if not isinstance(t, Mapping):
            continue
        fn = t.get("function")
        if isinstance(fn, Mapping) and isinstance(fn.get("name"), str) and fn["name"]:
            out.append(fn)
    return out


def _pick_tools(tools: Sequence[Any], text: str, mode: str) -> list[Mapping[str, Any]]:
    """The tools the model calls: those ``text`` names (``get_weather`` or ``get weather``,
    case-insensitive); with none named, the first tool in mode ``always``."""
    if mode == "never":
        return []
    fns = _tool_functions(tools)
    low = text.lower()
    picked = [fn for fn in fns if fn["name"].lower() in low or fn["name"].lower().replace("_", " ") in low]
    if not picked and mode == "always" and fns:
        picked = fns[:1]
    return picked


_NUMBER_RE = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?!\w)")
_WORD_RE = re.compile(r"[A-Za-z][\w'-]*|[.!?]")


class _Hints:
    """Values a model would take from the user's message: its numbers and its proper names
    (capitalised words that do not start a sentence), e.g. ``Boston`` in "What's the
    weather in Boston?" and ``3`` in "What is the value of magic_function(3)?"."""

    def __init__(self, text: str, tool_names: Sequence[str]) -> None:
        skip = {n.lower() for n in tool_names}
        self.numbers = [float(m.group()) for m in _NUMBER_RE.finditer(text)]
        self.names: list[str] = []
        start = True
        for m in _WORD_RE.finditer(text):
            w = m.group()
            if w in ".!?":
                start = True
                continue
            if not start and w[0].isupper() and w.lower() not in skip and w not in self.names:
                self.names.append(w)
            start = False

    def number(self, lo: float | None, hi: float | None, integer: bool) -> float | None:
        """The first number of the message inside [lo, hi] (a whole one for an integer)."""
        for v in self.numbers:
            if (lo is None or v >= lo) and (hi is None or v <= hi) and (v.is_integer() or not integer):
                return v
        return None


def _bound(schema: Mapping[str, Any], key: str) -> float | None:
    v = schema.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _arg_number(schema: Mapping[str, Any], hints: _Hints, integer: bool) -> int | float:
    """A number from the message inside the schema's bounds, else 1 (or the bound nearest to it)."""
    lo, hi = _bound(schema, "minimum"), _bound(schema, "maximum")
    v = hints.number(lo, hi, integer)
    if v is None:
        v = 1.0
        if lo is not None and v < lo:
            v = math.ceil(lo) if integer else lo
        elif hi is not None and v > hi:
            v = math.floor(hi) if integer else hi
    return int(v) if integer else float(v)


def _arg_value(schema: Any, rng: random.Random, defs: Mapping[str, Any], hints: _Hints, depth: int = 0) -> Any:
    """A plausible value of ``schema`` for a tool argument."""
    if not isinstance(schema, Mapping) or depth > 8:
        return "value"
    if isinstance(schema.get("$ref"), str):
        return _arg_value(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), rng, defs, hints, depth + 1)
    if "const" in schema:
        return schema["const"]
    if "default" in schema:
        return schema["default"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        alts = schema.get(key)
        if isinstance(alts, list) and alts:
            non_null = [a for a in alts if not (isinstance(a, Mapping) and a.get("type") == "null")]
            return _arg_value((non_null or alts)[0], rng, defs, hints, depth + 1)
    typ = schema.get("type")
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), "null")
    if typ is None:
        typ = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if typ == "object":
        return _arg_object(schema, rng, defs, hints, depth)
    if typ == "array":
        lo = schema.get("minItems")
        count = lo if isinstance(lo, int) and not isinstance(lo, bool) and lo > 0 else 1
        return [_arg_value(schema.get("items", {}), rng, defs, hints, depth + 1) for _ in range(min(count, 8))]
    if typ in ("integer", "number"):
        return _arg_number(schema, hints, typ == "integer")
    if typ == "boolean":
        return True
    if typ == "null":
        return None
    fmt = schema.get("format")
    if fmt == "date":
        return "2026-01-15"
    if fmt == "date-time":
        return "2026-01-15T12:00:00Z"
    if fmt == "email":
        return "user@example.com"
    if fmt in ("uri", "url"):
        return "https://example.com"
    if hints.names:
        return hints.names[0]
    return VOCAB[rng.randrange(len(VOCAB))]


def _arg_object(schema: Mapping[str, Any], rng: random.Random, defs: Mapping[str, Any], hints: _Hints, depth: int) -> dict[str, Any]:
    """Values for the required properties (for every property when none is listed as required)."""
    props = schema.get("properties")
    props = props if isinstance(props, Mapping) else {}
    req = schema.get("required")
    names = [k for k in req if isinstance(k, str)] if isinstance(req, list) else list(props)
    return {k: _arg_value(props.get(k, {"type": "string"}), rng, defs, hints, depth + 1) for k in names}


def tool_arguments(parameters: Any, rng: random.Random, message: str = "", tool_names: Sequence[str] = ()) -> dict[str, Any]:
    """The ``arguments`` object of a call to a tool whose ``parameters`` schema is given: its
    required properties filled by type. Strings take a proper name from ``message`` (else
    a word), numbers a number from it within the schema's bounds (else 1), ``enum`` its
    first value, booleans true, arrays ``minItems`` (at least one) items, objects their
    own required properties; ``const`` and ``default`` win."""
    if not isinstance(parameters, Mapping):
        return {}
    defs: dict[str, Any] = {}
    for k in ("$defs", "definitions"):
        if isinstance(parameters.get(k), Mapping):
            defs.update(parameters[k])
    return _arg_object(parameters, rng, defs, _Hints(message, tool_names), 0)


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
    tool_calls_mode: str = "always",
) -> Plan:
    """Decide the tokens of one answer.

    Tool calls: when ``tools`` are given and the *last* message is a user message, the
    model calls every tool that message names (``get_weather`` or ``get weather``,
    case-insensitive), or else the first tool (``tool_calls_mode`` "always"; "named" calls
    only named tools, "never" none), with arguments from :func:`tool_arguments`, and
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
        # The shape is Ollama's api.ToolCall (api/types.go: id, function.index/name/arguments
        # as an object); the /v1 routes convert it as openai/openai.go ToToolCalls does
        # (arguments as a JSON string, finish_reason "tool_calls": ToChatCompletion, ToChunks).
        names = [fn["name"] for fn in _tool_functions(tools)]
        for i, fn in enumerate(_pick_tools(tools, last_user, tool_calls_mode)):
            args = tool_arguments(fn.get("parameters"), rng, last_user, names)
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
