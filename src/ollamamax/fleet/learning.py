"""Learned quantities: moving averages and decaying event rates.

:class:`Ewma` smooths samples (time to first byte, service time, load cost);
:class:`DecayingRate` counts events per second with exponential decay (per-model demand).
Neither reads a clock: the caller passes ``now`` (seconds on any monotonic clock), so the
same code runs under a virtual clock in tests and the simulator.
"""

from __future__ import annotations

import math

__all__ = ["DEFAULT_LOAD_COST", "EWMA_ALPHA", "DecayingRate", "Demand", "Ewma"]

# Expected cost (seconds) of loading a model on a host before we observed one.
DEFAULT_LOAD_COST = 10.0
EWMA_ALPHA = 0.2


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

    def __init__(self, now: float, tau: float = 60.0) -> None:
        self.tau = tau
        self._v = 0.0
        self._t = now

    def hit(self, now: float) -> None:
        self._v = self._v * math.exp(-(now - self._t) / self.tau) + 1.0
        self._t = now

    def rate(self, now: float) -> float:
        return self._v * math.exp(-(now - self._t) / self.tau) / self.tau


class Demand:
    """Per-model arrival rates (requests per second, decayed over ``tau`` seconds).

    Early on, a decayed count underestimates every rate (after ``t`` seconds of traffic it
    has seen ``1 - exp(-t/tau)`` of what a long history would hold); :meth:`rate` divides
    that out, counting from the first request of any model (at least ``MIN_WINDOW``
    seconds), so the first minute's decisions see rates of the right size."""

    __slots__ = ("tau", "rates", "since")

    MIN_WINDOW = 5.0

    def __init__(self, tau: float = 60.0) -> None:
        self.tau = tau
        self.rates: dict[str, DecayingRate] = {}
        self.since: float | None = None  # the first request of any model

    def hit(self, model: str, now: float) -> None:
        r = self.rates.get(model)
        if r is None:
            r = self.rates[model] = DecayingRate(now, self.tau)
            if self.since is None:
                self.since = now
        r.hit(now)

    def rate(self, model: str, now: float) -> float:
        r = self.rates.get(model)
        if r is None or self.since is None:
            return 0.0
        seen = max(now - self.since, self.MIN_WINDOW) / self.tau
        raw = r.rate(now)
        return raw / -math.expm1(-seen) if seen < 20.0 else raw
