"""Model names as Ollama spells them: the canonical key the gateway indexes by, and the
short display form Ollama prints in messages.

Pure string functions; no I/O, no state but an LRU memo of ``normalize_model``.
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["display_name", "normalize_model"]


@lru_cache(maxsize=8192)
def normalize_model(name: str) -> str:
    """Canonical model key: lower case, default registry/namespace dropped, tag added.

    ``Llama3.2`` -> ``llama3.2:latest``; ``registry.ollama.ai/library/qwen3:8b`` ->
    ``qwen3:8b``; ``me/model`` -> ``me/model:latest``.
    """
    n = name.strip().lower()
    if n.startswith("registry.ollama.ai/"):
        n = n[len("registry.ollama.ai/") :]
    if n.startswith("library/"):
        n = n[len("library/") :]
    if ":" not in n.rsplit("/", 1)[-1]:
        n += ":latest"
    return n


def display_name(name: str) -> str:
    """Ollama's short display form (keeps case, adds the tag)."""
    n = name.strip()
    low = n.lower()
    for prefix in ("registry.ollama.ai/library/", "library/"):
        if low.startswith(prefix):
            n = n[len(prefix) :]
            break
    if ":" not in n.rsplit("/", 1)[-1]:
        n += ":latest"
    return n
