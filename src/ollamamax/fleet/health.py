"""Passive health: eject a host after consecutive failures, bring it back by probe.

Rules (Envoy's outlier detection, simplified):

* every failed attempt the caller charges to the host (a connection error, a timeout
  before the first byte, a 5xx other than 503 busy, an in-band error in a stream) adds one
  to the host's consecutive failures; any success resets the count;
* at ``eject_after_failures`` the host is ejected (``down``) for a cooldown that starts
  at ``eject_cooldown`` and doubles with each consecutive ejection, capped at
  ``eject_max_cooldown``; ejected hosts receive no requests;
* when the cooldown ends the refresher probes the host; success reinstates it, failure
  ejects it again with the doubled cooldown;
* the ejection streak is forgotten once a host has stayed up for ``eject_max_cooldown``.

This module keeps the counts and decides; it does no I/O.  ``on_eject(host)`` tells
whoever schedules probes that a host's schedule changed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from .hosts import HostState

__all__ = ["Health", "HealthPolicy"]

log = logging.getLogger("ollamamax.dispatch")


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    eject_after_failures: int = 3
    eject_cooldown: float = 2.0
    eject_max_cooldown: float = 60.0


class Health:
    def __init__(
        self,
        policy: HealthPolicy,
        *,
        on_eject: Callable[[HostState], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.on_eject = on_eject
        self.clock = clock

    def cooldown(self, h: HostState) -> float:
        p = self.policy
        return float(min(p.eject_cooldown * 2.0 ** max(h.ejections - 1, 0), p.eject_max_cooldown))

    def record_success(self, h: HostState) -> None:
        h.consecutive_failures = 0

    def record_failure(self, h: HostState) -> bool:
        """Count a failure; returns True when this failure ejected the host."""
        h.consecutive_failures += 1
        if not h.down and h.consecutive_failures >= self.policy.eject_after_failures:
            self.eject(h)
            return True
        return False

    def eject(self, h: HostState) -> None:
        now = self.clock()
        if h.ejections and now - h.last_ejected > self.policy.eject_max_cooldown + self.cooldown(h):
            h.ejections = 0  # it had been fine for a long while: start the streak again
        h.ejections += 1
        h.last_ejected = now
        was_down = h.down
        h.down = True
        h.ejected_until = now + self.cooldown(h)
        h.consecutive_failures = 0
        if not was_down:
            log.warning("host %s ejected for %.1f s", h.name, h.ejected_until - now)
        if self.on_eject is not None:
            self.on_eject(h)  # let the prober reschedule

    def probe_failed(self, h: HostState) -> None:
        """A refresh/probe failed: (re-)eject with the next cooldown."""
        self.eject(h)

    def reinstate(self, h: HostState) -> bool:
        """A probe succeeded.  Returns True if the host was down before."""
        was_down = h.down
        h.down = False
        h.ejected_until = 0.0
        h.consecutive_failures = 0
        if was_down:
            log.info("host %s is healthy", h.name)
        return was_down
