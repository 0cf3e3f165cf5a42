"""What ``ollamamax bench`` sends: owns the API shapes it can load (the endpoints, their
native ``/api/...`` and OpenAI ``/v1/...`` paths, the default model and prompt) and
:class:`RequestSpec`, which builds the JSON request body for one request.  It must not send
anything, read replies or time anything (that is :mod:`.client`), and imports nothing
outside the standard library at module level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_MODEL", "DEFAULT_PROMPT", "ENDPOINTS", "NATIVE_PATHS", "OPENAI_PATHS", "RequestSpec"]

DEFAULT_PROMPT = "Why is the sky blue? Answer in one sentence."
DEFAULT_MODEL = "llama3.2"
ENDPOINTS = ("chat", "generate", "embed")
NATIVE_PATHS = {"chat": "/api/chat", "generate": "/api/generate", "embed": "/api/embed"}
OPENAI_PATHS = {"chat": "/v1/chat/completions", "generate": "/v1/completions", "embed": "/v1/embeddings"}


@dataclass
class RequestSpec:
    """One request shape: where to send it and how to read the reply."""

    url: str
    endpoint: str
    openai: bool
    stream: bool
    model: str
    prompt: str
    num_predict: int | None
    seed: int | None
    headers: dict[str, str]
    _cached: bytes | None = None

    def body(self, n: int) -> bytes:
        """The request body; built once unless the prompt has a ``{n}`` counter."""
        if self._cached is not None:
            return self._cached
        b = self._build(n)
        if "{n}" not in self.prompt:
            self._cached = b
        return b

    def _build(self, n: int) -> bytes:
        import json

        prompt = self.prompt.replace("{n}", str(n)) if "{n}" in self.prompt else self.prompt
        b: dict[str, Any] = {"model": self.model}
        if self.openai:
            if self.endpoint == "embed":
                b["input"] = prompt
                b["encoding_format"] = "float"
                return json.dumps(b).encode()
            if self.endpoint == "chat":
                b["messages"] = [{"role": "user", "content": prompt}]
            else:
                b["prompt"] = prompt
            b["stream"] = self.stream
            if self.stream:
                b["stream_options"] = {"include_usage": True}
            if self.num_predict is not None:
                b["max_tokens"] = self.num_predict
            if self.seed is not None:
                b["seed"] = self.seed
            return json.dumps(b).encode()
        if self.endpoint == "embed":
            b["input"] = prompt
            return json.dumps(b).encode()
        if self.endpoint == "chat":
            b["messages"] = [{"role": "user", "content": prompt}]
        else:
            b["prompt"] = prompt
        b["stream"] = self.stream
        opts: dict[str, Any] = {}
        if self.num_predict is not None:
            opts["num_predict"] = self.num_predict
        if self.seed is not None:
            opts["seed"] = self.seed
        if opts:
            b["options"] = opts
        return json.dumps(b).encode()
