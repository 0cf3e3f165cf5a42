"""Host state: what each host has (immutable snapshot) and how it is doing (runtime).

Two kinds of state, kept apart on purpose:

* :class:`HostView` / :class:`Snapshot` — what the background refresh learned from
  ``/api/tags`` and ``/api/ps``: models present and loaded, versions, raw entries.  A
  snapshot is never mutated; the refresh builds a new one and swaps the reference
  (``dispatcher._snapshot = new``), so the request path reads it without any lock.
* :class:`HostState` — per-host counters touched on the request path (in-flight count,
  EWMAs, health).  Only the event loop thread touches them, and never across an
  ``await`` inside one bookkeeping step, so they need no lock either.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ._types import HostConfig

if TYPE_CHECKING:
    from .upstream import Upstream

__all__ = [
    "DEFAULT_LOAD_COST",
    "HostState",
    "HostView",
    "Snapshot",
    "display_name",
    "host_name_from_url",
    "normalize_model",
]

# Expected cost (seconds) of loading a model on a host before we observed one.
DEFAULT_LOAD_COST = 10.0
EWMA_ALPHA = 0.2


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


def host_name_from_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.port is not None:
        return f"{parts.hostname}:{parts.port}"
    return parts.hostname or url


@dataclass(frozen=True, slots=True)
class HostView:
    """What one host reported at its last refresh (immutable)."""

    index: int
    name: str
    url: str
    healthy: bool = False
    present: frozenset[str] = frozenset()  # normalised names from /api/tags
    loaded: frozenset[str] = frozenset()  # normalised names from /api/ps
    tags: tuple[dict[str, Any], ...] = ()  # raw /api/tags entries
    ps: tuple[dict[str, Any], ...] = ()  # raw /api/ps entries
    version: str | None = None
    refreshed_at: float = 0.0  # time.monotonic() of the last successful refresh
    error: str | None = None


class Snapshot:
    """All hosts' views plus an index model -> host indices (immutable by convention)."""

    __slots__ = ("hosts", "by_model", "created_at")

    def __init__(self, hosts: tuple[HostView, ...]) -> None:
        self.hosts = hosts
        self.created_at = time.monotonic()
        by_model: dict[str, list[int]] = {}
        for v in hosts:
            for m in v.present:
                by_model.setdefault(m, []).append(v.index)
        self.by_model: dict[str, tuple[int, ...]] = {k: tuple(v) for k, v in by_model.items()}

    def replace(self, view: HostView) -> Snapshot:
        hosts = list(self.hosts)
        hosts[view.index] = view
        return Snapshot(tuple(hosts))


class Ewma:
    """Exponentially weighted moving average; ``value`` is None before the first sample."""

    __slots__ = ("alpha", "value")

    def __init__(self, alpha: float = EWMA_ALPHA) -> None:
        self.alpha = alpha
        self.value: float | None = None

    def add(self, x: float) -> None:
        v = self.value
        self.value = x if v is None else v + self.alpha * (x - v)

    def get(self, default: float) -> float:
        v = self.value
        return default if v is None else v


class DecayingRate:
    """Events per second, exponentially decayed with time constant ``tau`` seconds."""

    __slots__ = ("tau", "_v", "_t")

    def __init__(self, tau: float = 60.0) -> None:
        self.tau = tau
        self._v = 0.0
        self._t = time.monotonic()

    def hit(self, now: float) -> None:
        self._v = self._v * math.exp(-(now - self._t) / self.tau) + 1.0
        self._t = now

    def rate(self, now: float) -> float:
        return self._v * math.exp(-(now - self._t) / self.tau) / self.tau


@dataclass(eq=False, slots=True)
class HostState:
    """Runtime state of one host (mutable; event-loop thread only)."""

    index: int
    config: HostConfig
    name: str
    url: str
    capacity: int
    upstream: Upstream | None = None
    in_flight: int = 0
    # health: ``down`` hosts get no requests until a probe succeeds
    down: bool = True
    ejected_until: float = 0.0  # monotonic; next probe not before this
    ejections: int = 0  # consecutive ejections (cooldown doubles with each)
    last_ejected: float = 0.0
    consecutive_failures: int = 0
    # learned timings (seconds)
    ttfb: Ewma = field(default_factory=Ewma)
    service: Ewma = field(default_factory=Ewma)
    load_cost: dict[str, Ewma] = field(default_factory=dict)
    # models we sent requests for since the last refresh (likely loaded now)
    warm: dict[str, float] = field(default_factory=dict)
    waiters: Any = None  # AsyncRingQueue of admission waiters (see admission.py)
    queued: int = 0  # live waiters that would accept this host
    wake: Any = None  # asyncio.Event poked to refresh this host early

    @property
    def available(self) -> bool:
        return not self.down

    def is_loaded(self, model: str, view: HostView) -> bool:
        if model in view.loaded:
            return True
        t = self.warm.get(model)
        return t is not None and t >= view.refreshed_at

    def expected_load_cost(self, model: str) -> float:
        e = self.load_cost.get(model)
        return DEFAULT_LOAD_COST if e is None else e.get(DEFAULT_LOAD_COST)

    def load_ratio(self) -> float:
        return self.in_flight / self.capacity

    def expected_wait(self, default_service: float = 1.0) -> float:
        """Rough seconds until a slot frees for a new arrival (0 when one is free)."""
        over = self.in_flight - self.capacity + 1
        if over <= 0:
            return 0.0
        return (over + self.queued) / self.capacity * self.service.get(default_service)
