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
    """All hosts' views plus an index model -> host indices (immutable by convention)."""

    __slots__ = ("hosts", "by_model")

    def __init__(self, hosts: tuple[HostView, ...]) -> None:
        self.hosts = hosts
        by_model: dict[str, list[int]] = {}
        for v in hosts:
            for m in v.present:
                by_model.setdefault(m, []).append(v.index)
        self.by_model: dict[str, tuple[int, ...]] = {k: tuple(v) for k, v in by_model.items()}

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
