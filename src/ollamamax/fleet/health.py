"""Outlier detection: eject a host for *its* failures, never for a request's.

A trusted proxy must not let one client's bad request take the fleet offline.  So the
caller (``dispatch.forward``) tells this module what kind of failure it saw, and this
module keeps the counts and decides (Envoy's outlier detection, adapted to small fleets):

* **Gateway-side failures** (``CONNECT``: the connection could not be made; ``TIMEOUT``: no
  answer in time; ``RESET``: the connection broke or the answer was not HTTP) add one to
  the host's consecutive failures; any success resets the count; at
  ``eject_after_failures`` in a row the host is ejected (Envoy's consecutive gateway
  failure).  Nothing but the host can cause these.
* **5xx answers** never eject by count: a 500 may be the request's fault (images sent to a
  text-only model: every host says 500), and random runner failures hit every host alike.
  They enter the **failure-rate** detector, with gateway-side failures: a host with at least
  ``min_requests`` answers in the current interval whose failure share is at least
  ``failure_rate_threshold`` *and* at least ``failure_rate_margin`` above the median of its
  peers' is ejected (cause ``FAILURE_RATE``; Envoy's success-rate ejection, for small
  fleets).  The host is judged the moment a failure of its crosses the bar, and every
  ``interval`` seconds (:meth:`Health.evaluate`) the counts start over.  A failure that
  every host shares raises every host's share alike, so no host stands out and none is
  ejected; a host that fails where its peers succeed is out after ``min_requests``
  answers.  ``HOST_5XX`` (a 5xx attributed to the host: its runner failed, or its peers did
  not give the same answer) and unattributed 5xx (:meth:`Health.record_unattributed`) count
  alike here; the difference matters to the caller's retry decision.
* **Bounded**: never more than ``max_ejection_percent`` of the hosts are ejected at once
  (at least one may be); beyond it an ejection is skipped and counted.  Hosts whose probe
  fails (unreachable) are not bounded: they cannot serve anyway.
* **Cooldown**: an ejected host gets no requests for a cooldown that starts at
  ``eject_cooldown`` and doubles with each consecutive ejection (capped at
  ``eject_max_cooldown``); then the refresher probes it, and success reinstates it.  The
  ejection streak is forgotten once a host has stayed up for ``eject_max_cooldown``.
* Failures inside the gateway (its own descriptor or memory exhaustion) are never given
  to this module: they are not a host's fault.

Each ejection is logged with its cause and the failure that triggered it, and counted by
(host, cause).  ``on_down(host)`` tells the owner a host just went down (it moves the
requests still waiting on that host's first byte, and reschedules the probe).  No I/O.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .hosts import HostState

__all__ = [
    "CONNECT",
    "FAILURE_RATE",
    "GATEWAY_FAILURES",
    "HOST_5XX",
    "RESET",
    "TIMEOUT",
    "UNREACHABLE",
    "Health",
    "HealthPolicy",
]

log = logging.getLogger("ollamamax.dispatch")

# host-side failure kinds (and ejection causes)
CONNECT = "connect"
TIMEOUT = "timeout"
RESET = "reset"
HOST_5XX = "5xx"
GATEWAY_FAILURES = frozenset({CONNECT, TIMEOUT, RESET})  # eject after so many in a row
# ejection causes of their own
FAILURE_RATE = "failure_rate"
UNREACHABLE = "unreachable"


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    eject_after_failures: int = 3
    eject_cooldown: float = 2.0
    eject_max_cooldown: float = 60.0
    max_ejection_percent: float = 50.0
    interval: float = 10.0  # failure-rate detection period, seconds
    min_requests: int = 10  # answers a host needs in an interval to be judged
    failure_rate_threshold: float = 0.5
    failure_rate_margin: float = 0.3


class Health:
    def __init__(
        self,
        hosts: Sequence[HostState],
        policy: HealthPolicy,
        *,
        on_down: Callable[[HostState], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hosts = list(hosts)
        self.policy = policy
        self.on_down = on_down
        self.clock = clock
        self.ejections: Counter[tuple[str, str]] = Counter()  # (host, cause) -> ejections
        self.skipped: Counter[str] = Counter()  # host -> ejections the bound prevented
        self.last_evaluated = clock()
        # bumped whenever a host goes down or comes back: whoever caches a decision over
        # the hosts' health (the directory's candidates) checks it
        self.epoch = 0

    # -- what happened ----------------------------------------------------------------
    def record_success(self, h: HostState) -> None:
        h.consecutive_failures = 0
        h.window_ok += 1

    def record_failure(self, h: HostState, kind: str, detail: str = "") -> bool:
        """A failure of the host (``CONNECT``, ``TIMEOUT``, ``RESET``, ``HOST_5XX``); returns
        True when it ejected the host."""
        h.window_failed += 1
        if kind in GATEWAY_FAILURES:
            h.consecutive_failures += 1
            if not h.down and h.consecutive_failures >= self.policy.eject_after_failures:
                return self.eject(h, kind, f"{h.consecutive_failures} failures in a row, last: {detail or kind}")
            return False
        return self._judge(h, detail)

    def record_unattributed(self, h: HostState, detail: str = "") -> bool:
        """A 5xx that may be the request's fault: it counts toward the failure rate only."""
        h.window_failed += 1
        return self._judge(h, detail)

    def forgive(self, h: HostState) -> None:
        """A 5xx counted by :meth:`record_unattributed` turned out to be the request's fault
        (another host gave the same answer): it leaves the host's failure share."""
        if h.window_failed > 0:
            h.window_failed -= 1

    # -- failure-rate detection ---------------------------------------------------------
    def _judge(self, h: HostState, detail: str = "") -> bool:
        """Eject ``h`` now if its failure share this interval stands out from its peers'."""
        p = self.policy
        total = h.window_ok + h.window_failed
        if h.down or total < p.min_requests or h.window_failed < p.failure_rate_threshold * total:
            return False
        floor = max(1, p.min_requests // 2)
        peers = [x.window_failed / n for x in self.hosts
                 if x is not h and (n := x.window_ok + x.window_failed) >= floor]
        if not peers:
            return False
        rate = h.window_failed / total
        median = statistics.median(peers)
        if rate - median < p.failure_rate_margin:
            return False
        return self.eject(h, FAILURE_RATE, f"{h.window_failed} of {total} answers failed (peers' median "
                                           f"{median:.0%}), last: {detail or '-'}")

    def evaluate(self, now: float | None = None) -> list[HostState]:
        """End one detection interval: eject the hosts whose failure share stands out from
        their peers', and start the next interval.  Returns the hosts ejected."""
        now = self.clock() if now is None else now
        p = self.policy
        self.last_evaluated = now
        out = [h for h in self.hosts if h.window_ok + h.window_failed >= p.min_requests and self._judge(h)]
        for h in self.hosts:
            h.window_ok = h.window_failed = 0
        return out

    # -- ejection and return ------------------------------------------------------------
    def cooldown(self, h: HostState) -> float:
        p = self.policy
        return float(min(p.eject_cooldown * 2.0 ** max(h.ejections - 1, 0), p.eject_max_cooldown))

    def ejection_room(self) -> int:
        """How many more hosts outlier detection may eject now."""
        allowed = max(1, math.floor(len(self.hosts) * self.policy.max_ejection_percent / 100.0))
        return allowed - sum(1 for h in self.hosts if h.ejected)

    def eject(self, h: HostState, cause: str, detail: str = "") -> bool:
        """Take ``h`` out for a cooldown (bounded); returns False when the bound kept it in."""
        if h.ejected:
            return False
        if self.ejection_room() <= 0:
            self.skipped[h.name] += 1
            log.warning("host %s not ejected (%s: %s): %g%% of the hosts are ejected already",
                        h.name, cause, detail, self.policy.max_ejection_percent)
            h.consecutive_failures = 0
            return False
        now = self._start_cooldown(h)
        h.ejected = True
        self.ejections[(h.name, cause)] += 1
        log.warning("host %s ejected for %.3g s: %s (%s)", h.name, h.ejected_until - now, cause, detail or "-")
        self._went_down(h, f"ejected: {cause}")
        return True

    def probe_failed(self, h: HostState, error: str = "") -> None:
        """A refresh/probe failed: the host is unreachable until a probe succeeds (probed
        again after the next cooldown)."""
        was_unreachable = h.unreachable
        self._start_cooldown(h)
        h.unreachable = True
        if not was_unreachable:
            self.ejections[(h.name, UNREACHABLE)] += 1
            log.warning("host %s unreachable: %s", h.name, error or "probe failed")
        self._went_down(h, f"unreachable: {error or 'probe failed'}")

    def reinstate(self, h: HostState) -> bool:
        """A probe succeeded.  Returns True if the host was down before."""
        was_down = h.down
        if was_down or h.unreachable or h.ejected:
            self.epoch += 1
        h.down = h.ejected = h.unreachable = False
        h.down_cause = ""
        h.ejected_until = 0.0
        h.consecutive_failures = 0
        if was_down:
            log.info("host %s is healthy", h.name)
        return was_down

    def _start_cooldown(self, h: HostState) -> float:
        now = self.clock()
        if h.ejections and now - h.last_ejected > self.policy.eject_max_cooldown + self.cooldown(h):
            h.ejections = 0  # it had been fine for a long while: start the streak again
        h.ejections += 1
        h.last_ejected = now
        h.ejected_until = now + self.cooldown(h)
        h.consecutive_failures = 0
        return now

    def _went_down(self, h: HostState, cause: str) -> None:
        self.epoch += 1
        h.down = True
        h.down_cause = cause
        if self.on_down is not None:
            self.on_down(h)
