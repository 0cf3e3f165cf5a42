"""What each host reported at its last refresh, published as immutable snapshots.

A :class:`HostView` is one host's ``/api/tags`` + ``/api/ps`` (models present and loaded,
raw entries, version).  A :class:`Snapshot` holds every host's view plus an index
model -> host indices.  Neither is ever mutated: the refresher builds a new view and
:meth:`SnapshotStore.publish` swaps in a new snapshot, so the request path reads
``store.current`` without a lock.  No I/O here; the refresher (``dispatch.refresh``) asks
the hosts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..wire.names import normalize_model

__all__ = ["HostView", "Snapshot", "SnapshotStore"]


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
    refreshed_at: float = 0.0  # monotonic time the last successful refresh started
    error: str | None = None


class Snapshot:
    """All hosts' views plus an index model -> host indices, and model -> the digests the
    hosts report for it (immutable by convention)."""

    __slots__ = ("hosts", "by_model", "digests")

    def __init__(self, hosts: tuple[HostView, ...]) -> None:
        self.hosts = hosts
        by_model: dict[str, list[int]] = {}
        digests: dict[str, set[str]] = {}
        for v in hosts:
            for m in v.present:
                by_model.setdefault(m, []).append(v.index)
            for entry in v.tags:
                d = entry.get("digest")
                name = entry.get("name") or entry.get("model")
                if isinstance(d, str) and d and isinstance(name, str):
                    digests.setdefault(normalize_model(name), set()).add(d)
        self.by_model: dict[str, tuple[int, ...]] = {k: tuple(v) for k, v in by_model.items()}
        # "" for a model no host reports a digest for; several digests joined when hosts
        # hold different builds under one name
        self.digests: dict[str, str] = {k: ",".join(sorted(v)) for k, v in digests.items()}

    def replace(self, view: HostView) -> Snapshot:
        hosts = list(self.hosts)
        hosts[view.index] = view
        return Snapshot(tuple(hosts))


class SnapshotStore:
    """The current :class:`Snapshot`; writers publish whole views, readers read ``current``."""

    __slots__ = ("current",)

    def __init__(self, views: Iterable[HostView]) -> None:
        self.current = Snapshot(tuple(views))

    def publish(self, view: HostView) -> None:
        self.current = self.current.replace(view)
