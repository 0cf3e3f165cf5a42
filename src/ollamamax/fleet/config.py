"""How one host is configured: :class:`HostConfig`, and the default name of a host.

Plain data; no behaviour beyond deriving a name from a URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["HostConfig", "host_name_from_url"]


@dataclass(slots=True)
class HostConfig:
    """One Ollama host.  ``url`` is its base URL, e.g. ``http://gpu1:11434``."""

    url: str
    name: str | None = None  # defaults to host:port of the URL
    weight: float = 1.0
    max_concurrency: int | None = None  # None -> DispatcherConfig.max_in_flight_per_host
    headers: Mapping[str, str] = field(default_factory=dict)  # e.g. Authorization
    # what the host can do, when known (else learned): Ollama's OLLAMA_NUM_PARALLEL (requests
    # one loaded model serves at once) and how many models it holds loaded at once
    num_parallel: int | None = None
    max_loaded_models: int | None = None
    vram: int | None = None  # bytes the loaded models may take (Ollama evicts by fit too)


def host_name_from_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.port is not None:
        return f"{parts.hostname}:{parts.port}"
    return parts.hostname or url
