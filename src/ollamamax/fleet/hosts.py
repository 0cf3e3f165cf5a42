"""Runtime state of each host: the counters the request path touches.

:class:`HostState` holds what changes with every request (slots in flight, waiters that
would accept the host), health (down, ejection streak) and learned timings.  Only the event
loop thread touches it, and never across an ``await`` inside one bookkeeping step, so it
needs no lock.  What a host *has* (models present and loaded) is not here but in the
immutable snapshot (``snapshot.py``) and what it holds loaded in the residency model
(``residency.py``).  No I/O and no clock reads: callers pass times.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import HostConfig
from .learning import DEFAULT_LOAD_COST, Ewma

__all__ = ["HostState"]


@dataclass(eq=False, slots=True)
class HostState:
    """Runtime state of one host (mutable; event-loop thread only)."""

    index: int
    config: HostConfig
    name: str
    url: str
    capacity: int
    in_flight: int = 0
    # health (see health.py): ``down`` hosts get no requests (but in panic, see
    # ``dispatch.directory``) until a probe succeeds; down = ejected or unreachable
    down: bool = True
    ejected: bool = False  # taken out by outlier detection (its own failures)
    unreachable: bool = True  # its last refresh/probe failed (or there was none yet)
    down_cause: str = "not probed yet"
    ejected_until: float = 0.0  # monotonic; next probe not before this
    ejections: int = 0  # consecutive ejections (cooldown doubles with each)
    last_ejected: float = 0.0
    consecutive_failures: int = 0  # host-side failures in a row (any success resets it)
    window_ok: int = 0  # answers in the current outlier-detection interval
    window_failed: int = 0  # 5xx and host-side failures in that interval
    # learned timings (seconds)
    ttfb: Ewma = field(default_factory=Ewma)
    service: Ewma = field(default_factory=Ewma)
    load_cost: dict[str, Ewma] = field(default_factory=dict)

    def expected_load_cost(self, model: str) -> float:
        e = self.load_cost.get(model)
        return DEFAULT_LOAD_COST if e is None else e.get(DEFAULT_LOAD_COST)

    def load_ratio(self) -> float:
        return self.in_flight / self.capacity
