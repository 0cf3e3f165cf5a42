"""Model names and the model catalog of the emulator.

Owns: parsing Ollama model references (``[host/][namespace/]model[:tag]``) into
:class:`ModelName`, the family table that gives each model its capabilities and sizes,
:class:`ModelInfo` (one model present on a host), the fake registry's answer to "does
this name exist" and the ``/api/show`` body of a model. Also the one tokenizer vocabulary
all emulated models share (``/api/show`` lists it; ``_generation`` draws answers from it).
Pure and synchronous: it must not hold per-host state, plan answers or touch HTTP.

* The lookup key is the fully qualified, lower-cased name; the display form drops the
  default host and the ``library`` namespace but keeps the tag (``llama3.2:latest``).
* Capabilities come from the model's family (a substring table below, first match
  wins) and can be overridden per model with ``FakeOllama(capabilities=...)``.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._goformat import rfc3339_at

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_NAMESPACE",
    "VOCAB",
    "ModelInfo",
    "ModelName",
    "make_model",
    "parse_name",
    "registry_knows",
    "show_body",
]

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"

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


# --------------------------------------------------------------------------- vocabulary

VOCAB: tuple[str, ...] = (
    "the", "model", "answer", "is", "a", "quick", "test", "of", "many", "hosts", "running",
    "together", "and", "each", "token", "arrives", "in", "order", "with", "some", "latency",
    "while", "the", "dispatcher", "keeps", "every", "request", "moving", "toward", "a",
    "loaded", "runner", "so", "nothing", "waits", "too", "long", "for", "its", "reply",
    "because", "streams", "flow", "through", "one", "gateway", "into", "clients", "that",
    "expect", "plain", "ndjson", "lines", "never", "blank", "ones", "even", "under", "load",
    "when", "queues", "fill", "up", "fast",
)  # fmt: skip
