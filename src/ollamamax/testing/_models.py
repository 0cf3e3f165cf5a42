"""Model catalog, names, durations and the deterministic "inference" of the emulator.

Everything here is pure and synchronous: the server module (``_emulator``) does the
I/O and the scheduler (``_scheduler``) does the waiting.

* Names follow Ollama's ``[host/][namespace/]model[:tag]``; the lookup key is the fully
  qualified, lower-cased name, the display form drops the default host and the
  ``library`` namespace but keeps the tag (``llama3.2:latest``).
* Capabilities come from the model's family (a substring table below, first match
  wins) and can be overridden per model with ``FakeOllama(capabilities=...)``.
* Text is a deterministic function of ``(seed, model, prompt text)``: words from a small
  vocabulary, a token count inside ``response_tokens``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_NAMESPACE",
    "FOREVER",
    "ModelInfo",
    "ModelName",
    "Plan",
    "go_dumps",
    "make_model",
    "parse_keep_alive",
    "parse_name",
    "plan_generation",
    "registry_knows",
    "rfc3339",
]

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
FOREVER = math.inf  # keep_alive < 0 (Go: max int64 ns, about 292 years)
FOREVER_NS = (1 << 63) - 1

# --------------------------------------------------------------------------- JSON


def go_dumps(obj: Any) -> str:
    """Compact JSON as Go's encoder writes it: raw UTF-8, ``<``/``>``/``&`` escaped."""
    s = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    if "<" in s or ">" in s or "&" in s or "\u2028" in s or "\u2029" in s:
        s = (
            s.replace("<", "\\u003c")
            .replace(">", "\\u003e")
            .replace("&", "\\u0026")
            .replace("\u2028", "\\u2028")
            .replace("\u2029", "\\u2029")
        )
    return s


# --------------------------------------------------------------------------- time

_ts_cache_sec = -1
_ts_cache_prefix = ""


def rfc3339(ns: int | None = None) -> str:
    """RFC 3339 UTC with up to 9 fractional digits, trailing zeros trimmed (Go's RFC3339Nano)."""
    global _ts_cache_sec, _ts_cache_prefix
    if ns is None:
        ns = time.time_ns()
    sec, frac = divmod(ns, 1_000_000_000)
    if sec != _ts_cache_sec:
        if sec > 253402300799:  # past year 9999: clamp (Go would still print it)
            sec = 253402300799
        _ts_cache_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _ts_cache_sec = sec
    if frac:
        return f"{_ts_cache_prefix}.{frac:09d}".rstrip("0") + "Z"
    return _ts_cache_prefix + "Z"


def rfc3339_at(ns: int) -> str:
    """Like :func:`rfc3339` but without touching the one-entry cache (far dates)."""
    sec, frac = divmod(ns, 1_000_000_000)
    # time.gmtime handles years up to 9999 on every platform we care about
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(min(sec, 253402300799)))
    if frac:
        return f"{base}.{frac:09d}".rstrip("0") + "Z"
    return base + "Z"


# --------------------------------------------------------------------------- durations

_DUR_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # noqa: RUF001 - Go accepts both micro signs
    "μs": 1e-6,  # noqa: RUF001
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DUR_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)([^0-9.]*)")


def parse_go_duration(s: str) -> float:
    """Seconds from a Go duration string (``time.ParseDuration``); ``ValueError`` with Go's text."""
    orig = s
    quoted = json.dumps(orig)
    neg = False
    if s and s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"time: invalid duration {quoted}")
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _DUR_PART.match(s, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"time: invalid duration {quoted}")
        num, unit = m.group(1), m.group(2)
        if num in ("", "."):
            raise ValueError(f"time: invalid duration {quoted}")
        if unit == "":
            raise ValueError(f"time: missing unit in duration {quoted}")
        if unit not in _DUR_UNITS:
            raise ValueError(f"time: unknown unit {json.dumps(unit)} in duration {quoted}")
        total += float(num) * _DUR_UNITS[unit]
        pos = m.end()
    return -total if neg else total


def parse_keep_alive(value: Any) -> float | None:
    """keep_alive from JSON -> seconds (``math.inf`` = forever, ``None`` = not given).

    Numbers are seconds; strings are Go durations; negatives mean forever.
    Raises ``ValueError`` with the server's error text.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("Unsupported type: 'bool'")
    if isinstance(value, (int, float)):
        secs = float(value)
    elif isinstance(value, str):
        secs = parse_go_duration(value)
    else:
        raise ValueError(f"Unsupported type: '{type(value).__name__}'")
    if secs < 0:
        return FOREVER
    return secs


# --------------------------------------------------------------------------- names

_NAME_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,79}$")
_HOST_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-:]{0,349}$")
_TAG_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,79}$")


class ModelName:
    """A parsed model reference; ``key`` (lookup), ``display`` and ``full`` are precomputed."""

    __slots__ = ("host", "namespace", "model", "tag", "key", "display", "full")

    def __init__(self, host: str, namespace: str, model: str, tag: str) -> None:
        self.host = host
        self.namespace = namespace
        self.model = model
        self.tag = tag
        self.full = f"{host}/{namespace}/{model}:{tag}"
        self.key = self.full.lower()
        if host == DEFAULT_HOST:
            self.display = f"{model}:{tag}" if namespace == DEFAULT_NAMESPACE else f"{namespace}/{model}:{tag}"
        else:
            self.display = self.full

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelName) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"ModelName({self.full!r})"


_name_cache: dict[str, ModelName | None] = {}


def parse_name(name: str) -> ModelName | None:
    """Parse an Ollama model reference; ``None`` if it is not a valid name."""
    try:
        return _name_cache[name]
    except KeyError:
        pass
    res = _parse_name(name)
    if len(_name_cache) < 4096:
        _name_cache[name] = res
    return res


def _parse_name(name: str) -> ModelName | None:
    if not name or name.strip() != name:
        return None
    rest = name
    tag = "latest"
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG_PART.match(tag):
            return None
    parts = rest.split("/")
    if len(parts) == 1:
        host, ns, model = DEFAULT_HOST, DEFAULT_NAMESPACE, parts[0]
    elif len(parts) == 2:
        host, ns, model = DEFAULT_HOST, parts[0], parts[1]
    elif len(parts) == 3:
        host, ns, model = parts
    else:
        return None
    if not _NAME_PART.match(model) or not _NAME_PART.match(ns) or not _HOST_PART.match(host):
        return None
    return ModelName(host, ns, model, tag)


# --------------------------------------------------------------------------- catalog

# (substring of the model part, family, capabilities, parameter size, embedding length,
#  context length). First match wins, so more specific entries come first.
_FAMILIES: tuple[tuple[str, str, tuple[str, ...], str, int, int], ...] = (
    ("nomic-embed", "nomic-bert", ("embedding",), "137M", 768, 2048),
    ("mxbai-embed", "bert", ("embedding",), "334M", 1024, 512),
    ("snowflake-arctic-embed", "bert", ("embedding",), "335M", 1024, 512),
    ("bge-m3", "bert", ("embedding",), "567M", 1024, 8192),
    ("bge", "bert", ("embedding",), "335M", 1024, 512),
    ("all-minilm", "bert", ("embedding",), "23M", 384, 512),
    ("granite-embedding", "bert", ("embedding",), "278M", 768, 512),
    ("embed", "bert", ("embedding",), "137M", 768, 2048),
    ("gpt-oss", "gptoss", ("completion", "tools", "thinking"), "20.9B", 2880, 131072),
    ("deepseek-r1", "qwen2", ("completion", "tools", "thinking"), "8.2B", 4096, 131072),
    ("qwen3-coder", "qwen3moe", ("completion", "tools"), "30.5B", 2048, 262144),
    ("qwen3-vl", "qwen3vl", ("completion", "vision", "tools", "thinking"), "8.8B", 4096, 262144),
    ("qwen3", "qwen3", ("completion", "tools", "thinking"), "8.2B", 4096, 40960),
    ("qwq", "qwen2", ("completion", "tools", "thinking"), "32.8B", 5120, 40960),
    ("magistral", "llama", ("completion", "tools", "thinking"), "23.6B", 5120, 40960),
    ("phi4-reasoning", "phi3", ("completion", "thinking"), "14.7B", 5120, 32768),
    ("qwen2.5vl", "qwen25vl", ("completion", "vision"), "8.3B", 3584, 128000),
    ("qwen2.5-coder", "qwen2", ("completion", "tools", "insert"), "7.6B", 3584, 32768),
    ("qwen2.5", "qwen2", ("completion", "tools"), "7.6B", 3584, 32768),
    ("qwen2", "qwen2", ("completion", "tools"), "7.6B", 3584, 32768),
    ("llama3.2-vision", "mllama", ("completion", "vision"), "10.7B", 4096, 131072),
    ("llama3.2", "llama", ("completion", "tools"), "3.2B", 3072, 131072),
    ("llama3.1", "llama", ("completion", "tools"), "8.0B", 4096, 131072),
    ("llama3.3", "llama", ("completion", "tools"), "70.6B", 8192, 131072),
    ("llama4", "llama4", ("completion", "vision", "tools"), "108.6B", 5120, 10485760),
    ("llama3", "llama", ("completion",), "8.0B", 4096, 8192),
    ("llama2", "llama", ("completion",), "6.7B", 4096, 4096),
    ("codellama", "llama", ("completion", "insert"), "6.7B", 4096, 16384),
    ("llava", "llama", ("completion", "vision"), "7.2B", 4096, 32768),
    ("minicpm-v", "qwen2", ("completion", "vision"), "7.6B", 3584, 32768),
    ("moondream", "phi2", ("completion", "vision"), "1.4B", 2048, 2048),
    ("gemma3n", "gemma3n", ("completion",), "6.9B", 2048, 32768),
    ("gemma3", "gemma3", ("completion", "vision"), "4.3B", 2560, 131072),
    ("codegemma", "gemma", ("completion", "insert"), "9B", 3072, 8192),
    ("gemma", "gemma", ("completion",), "9.2B", 3584, 8192),
    ("mistral-small", "llama", ("completion", "vision", "tools"), "24.0B", 5120, 131072),
    ("mistral-nemo", "llama", ("completion", "tools"), "12.2B", 5120, 1024000),
    ("mistral", "llama", ("completion", "tools"), "7.2B", 4096, 32768),
    ("mixtral", "llama", ("completion", "tools"), "46.7B", 4096, 32768),
    ("phi4-mini", "phi3", ("completion", "tools"), "3.8B", 3072, 131072),
    ("phi4", "phi3", ("completion",), "14.7B", 5120, 16384),
    ("phi3", "phi3", ("completion",), "3.8B", 3072, 131072),
    ("command-r", "command-r", ("completion", "tools"), "32.3B", 8192, 131072),
    ("granite3", "granite", ("completion", "tools"), "8.2B", 4096, 131072),
    ("granite", "granite", ("completion", "tools"), "8.2B", 4096, 131072),
    ("smollm2", "llama", ("completion", "tools"), "1.7B", 2048, 8192),
    ("smollm", "llama", ("completion",), "1.7B", 2048, 2048),
    ("tinyllama", "llama", ("completion",), "1.1B", 2048, 2048),
    ("starcoder2", "starcoder2", ("completion", "insert"), "3B", 3072, 16384),
    ("deepseek-coder", "llama", ("completion", "insert"), "6.7B", 4096, 16384),
    ("deepseek-v3", "deepseek2", ("completion", "tools"), "671B", 7168, 163840),
    ("olmo", "olmo2", ("completion",), "7.3B", 4096, 4096),
)
# Names outside the table: a plain chat model with tools (what most tests want).
_DEFAULT_FAMILY = ("llama", ("completion", "tools"), "7.2B", 4096, 32768)

# Families the fake registry "has": pulling any of these (any tag) succeeds.
_REGISTRY_EXTRA = ("tinydolphin", "dolphin", "orca-mini", "vicuna", "neural-chat", "zephyr", "yi", "solar")

_TEMPLATE = "{{ if .System }}<|system|>{{ .System }}{{ end }}<|user|>{{ .Prompt }}<|assistant|>"
_LICENSE = "Emulated model for tests. No weights, no license terms."


def _param_count(size: str) -> float:
    unit = size[-1]
    mult = {"M": 1e6, "B": 1e9}.get(unit, 1e9)
    return float(size[:-1]) * mult


@dataclass(slots=True)
class ModelInfo:
    name: ModelName
    family: str
    capabilities: tuple[str, ...]
    parameter_size: str
    quantization_level: str
    size: int
    digest: str  # 64 hex, no "sha256:"
    modified_ns: int
    embedding_length: int
    context_length: int
    parent_model: str = ""
    system: str = ""
    layers: list[tuple[str, int]] = field(default_factory=list)  # (sha256:hex, size)

    @property
    def key(self) -> str:
        return self.name.key

    @property
    def display(self) -> str:
        return self.name.display

    def has(self, cap: str) -> bool:
        return cap in self.capabilities

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": self.parent_model,
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }


def _lookup_family(model: str) -> tuple[str, tuple[str, ...], str, int, int]:
    low = model.lower()
    for sub, fam, caps, psize, emb, ctx in _FAMILIES:
        if sub in low:
            return fam, caps, psize, emb, ctx
    return _DEFAULT_FAMILY


def registry_knows(name: ModelName) -> bool:
    """Whether the fake registry serves this name (well-known families only)."""
    low = name.model.lower()
    if low.startswith("nosuch"):
        return False
    if name.host != DEFAULT_HOST:
        return False
    return any(sub in low for sub, *_ in _FAMILIES) or any(low.startswith(x) for x in _REGISTRY_EXTRA)


def make_model(
    name: ModelName,
    capabilities: Mapping[str, Sequence[str]] | None = None,
    *,
    modified_ns: int | None = None,
) -> ModelInfo:
    fam, caps, psize, emb, ctx = _lookup_family(name.model)
    tag = name.tag.lower()
    # a size tag such as ":8b" / ":0.6b" / ":335m" overrides the family default
    m = re.match(r"^(\d+(?:\.\d+)?)([bm])\b", tag)
    if m:
        psize = f"{m.group(1)}{m.group(2).upper()}"
    if capabilities:
        # keys may be given as "llama3.2", "llama3.2:latest", "me/bot:7b" or the full name
        by_lower = {c.lower(): c for c in capabilities}
        for k in (name.key, name.display.lower(), f"{name.model}:{name.tag}".lower(), name.model.lower()):
            if k in by_lower:
                caps = tuple(capabilities[by_lower[k]])
                break
    quant = "F16" if "embedding" in caps else "Q4_K_M"
    bytes_per_param = 2.0 if quant == "F16" else 0.6
    size = int(_param_count(psize) * bytes_per_param) + 12_345
    h = hashlib.sha256(name.key.encode()).hexdigest()
    layers = [
        ("sha256:" + hashlib.sha256((name.key + "#model").encode()).hexdigest(), size - 12_345 + 9_000),
        ("sha256:" + hashlib.sha256((name.key + "#template").encode()).hexdigest(), 1_429),
        ("sha256:" + hashlib.sha256((name.key + "#license").encode()).hexdigest(), 7_711),
        ("sha256:" + hashlib.sha256((name.key + "#params").encode()).hexdigest(), 96),
    ]
    return ModelInfo(
        name=name,
        family=fam,
        capabilities=caps,
        parameter_size=psize,
        quantization_level=quant,
        size=size,
        digest=h,
        modified_ns=modified_ns if modified_ns is not None else time.time_ns(),
        embedding_length=emb,
        context_length=ctx,
        layers=layers,
    )


def show_body(info: ModelInfo, verbose: bool = False) -> dict[str, Any]:
    arch = info.family
    model_info: dict[str, Any] = {
        "general.architecture": arch,
        "general.basename": info.name.model,
        "general.file_type": 15 if info.quantization_level == "Q4_K_M" else 1,
        "general.parameter_count": int(_param_count(info.parameter_size)),
        "general.quantization_version": 2,
        f"{arch}.attention.head_count": 32,
        f"{arch}.block_count": 28,
        f"{arch}.context_length": info.context_length,
        f"{arch}.embedding_length": info.embedding_length,
        "tokenizer.ggml.model": "gpt2",
    }
    if verbose:
        model_info["tokenizer.ggml.tokens"] = list(VOCAB)
        model_info["tokenizer.ggml.token_type"] = [1] * len(VOCAB)
    else:
        model_info["tokenizer.ggml.tokens"] = None
        model_info["tokenizer.ggml.token_type"] = None
    modelfile = (
        "# Modelfile generated by \"ollama show\"\n"
        f"# To build a new Modelfile based on this, replace FROM with:\n# FROM {info.display}\n\n"
        f"FROM {info.layers[0][0].replace(':', '-')}\nTEMPLATE \"\"\"{_TEMPLATE}\"\"\"\n"
        "PARAMETER stop <|user|>\n"
    )
    body: dict[str, Any] = {
        "license": _LICENSE,
        "modelfile": modelfile,
        "parameters": "stop                           \"<|user|>\"",
        "template": _TEMPLATE,
    }
    if info.system:
        body["system"] = info.system
    body["details"] = info.details()
    body["model_info"] = model_info
    body["capabilities"] = list(info.capabilities)
    body["modified_at"] = rfc3339_at(info.modified_ns)
    return body


# --------------------------------------------------------------------------- generation

VOCAB: tuple[str, ...] = (
    "the", "model", "answer", "is", "a", "quick", "test", "of", "many", "hosts", "running",
    "together", "and", "each", "token", "arrives", "in", "order", "with", "some", "latency",
    "while", "the", "dispatcher", "keeps", "every", "request", "moving", "toward", "a",
    "loaded", "runner", "so", "nothing", "waits", "too", "long", "for", "its", "reply",
    "because", "streams", "flow", "through", "one", "gateway", "into", "clients", "that",
    "expect", "plain", "ndjson", "lines", "never", "blank", "ones", "even", "under", "load",
    "when", "queues", "fill", "up", "fast",
)  # fmt: skip
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
