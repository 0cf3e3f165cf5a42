"""Passive health: eject a host after consecutive failures, bring it back by probe.

Rules (Envoy's outlier detection, simplified):

* every failed attempt (connection error, timeout before the first byte, 5xx, 503
  busy, an in-band error in a stream) adds one to the host's consecutive failures;
  any success resets the count;
* at ``eject_after_failures`` the host is ejected (``down``) for a cooldown that starts
  at ``eject_cooldown`` and doubles with each consecutive ejection, capped at
  ``eject_max_cooldown``; ejected hosts receive no requests;
* when the cooldown ends the refresh task probes the host (``/api/version``,
  ``/api/tags``, ``/api/ps``); success reinstates it, failure ejects it again with
  the doubled cooldown;
* the ejection streak is forgotten once a host has stayed up for ``eject_max_cooldown``.
"""

from __future__ import annotations

import logging
import time

from ._types import DispatcherConfig
from .hosts import HostState

__all__ = ["Health"]

log = logging.getLogger("ollamamax.dispatch")


class Health:
    def __init__(self, config: DispatcherConfig) -> None:
        self.config = config
        self.ejections_total = 0

    def cooldown(self, h: HostState) -> float:
        c = self.config
        return float(min(c.eject_cooldown * 2.0 ** max(h.ejections - 1, 0), c.eject_max_cooldown))

    def record_success(self, h: HostState) -> None:
        h.consecutive_failures = 0

    def record_failure(self, h: HostState) -> bool:
        """Count a failure; returns True when this failure ejected the host."""
        h.consecutive_failures += 1
        if not h.down and h.consecutive_failures >= self.config.eject_after_failures:
            self.eject(h)
            return True
        return False

    def eject(self, h: HostState, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if h.ejections and now - h.last_ejected > self.config.eject_max_cooldown + self.cooldown(h):
            h.ejections = 0  # it had been fine for a long while: start the streak again
        if not h.down:
            self.ejections_total += 1
        h.ejections += 1
        h.last_ejected = now
        was_down = h.down
        h.down = True
        h.ejected_until = now + self.cooldown(h)
        h.consecutive_failures = 0
        if not was_down:
            log.warning("host %s ejected for %.1f s", h.name, h.ejected_until - now)
        if h.wake is not None:
            h.wake.set()  # let the refresh task reschedule its probe

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
