"""What the connections of one gateway HTTP server share: :class:`ServerState`, :class:`FastStats`.

The fast path (``fastpath.py``) makes one :class:`ServerState` per listening server: the
rules, the aiohttp protocol factory connections are handed to, the cached ``Date`` header,
the idle sweep (one timer per server, not one per request), and the connection cap's counts
(fast-path connections and handed-over transports).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from email.utils import formatdate
from typing import Any

from .rules import GatewayRules

__all__ = ["FastStats", "SWEEP_INTERVAL", "ServerState"]

log = logging.getLogger("ollamamax.gateway")

SWEEP_INTERVAL = 5.0  # seconds between idle-connection sweeps


class FastStats:
    """Counters of one server: requests served on the fast path, connections accepted,
    handed over and refused (over ``max_connections``), connections open on the fast path
    (exported in ``/metrics``)."""

    __slots__ = ("fast_requests", "handed_over", "connections", "rejected", "_conns")

    def __init__(self, conns: set[Any] | None = None) -> None:
        self.fast_requests = 0
        self.handed_over = 0
        self.connections = 0
        self.rejected = 0
        self._conns = conns if conns is not None else set()

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def as_dict(self) -> dict[str, int]:
        return {"fast_requests": self.fast_requests, "handed_over": self.handed_over,
                "connections": self.connections, "rejected": self.rejected,
                "open_connections": self.open_connections}


class ServerState:
    """What every connection of one server shares (the fast path's ``_FastProtocol``
    instances are its ``conns``)."""

    __slots__ = ("rules", "fallback", "extra", "keepalive", "conns", "stats", "loop", "access",
                 "_date_sec", "_date", "_sweep", "closing", "max_connections", "handed",
                 "_pruned", "rejecting", "end_message")

    def __init__(self, rules: GatewayRules, fallback: Callable[[], asyncio.BaseProtocol],
                 extra_headers: Mapping[str, str], keepalive_timeout: float,
                 access: logging.Logger | None, max_connections: int | None = None) -> None:
        self.rules = rules
        self.fallback = fallback
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in extra_headers.items()).encode()
        self.keepalive = keepalive_timeout
        self.conns: set[Any] = set()
        self.stats = FastStats(self.conns)
        self.loop = asyncio.get_running_loop()
        self.access = access
        self._date_sec = -1
        self._date = b""
        self._sweep: asyncio.TimerHandle | None = None
        self.closing = False
        self.max_connections = max_connections or None
        # transports handed to aiohttp (they count against max_connections until closed;
        # closed ones are pruned by the sweep, or at once when the cap is reached)
        self.handed: set[asyncio.Transport] = set()
        self._pruned = 0.0
        self.rejecting = 0  # connections over the cap being answered 503 right now
        self.end_message: str | None = None  # set when the grace period is over

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._date_sec:
            self._date_sec = now
            self._date = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._date

    def add(self, conn: Any) -> None:
        self.conns.add(conn)
        self.stats.connections += 1
        if self._sweep is None and not self.closing:
            self._sweep = self.loop.call_later(SWEEP_INTERVAL, self.sweep)

    def _prune_handed(self) -> None:
        self._pruned = self.loop.time()
        self.handed = {t for t in self.handed if not t.is_closing()}

    def full(self) -> bool:
        """True when another client connection would pass ``max_connections``."""
        cap = self.max_connections
        if cap is None or len(self.conns) + len(self.handed) < cap:
            return False
        if self.handed and self.loop.time() - self._pruned > 0.05:  # at most 20 scans a second
            self._prune_handed()
        return len(self.conns) + len(self.handed) >= cap

    def sweep(self) -> None:
        """Close connections with no request running that have been idle too long; abort
        those whose unsent answer has not shrunk for ``send_timeout``."""
        self._sweep = None
        now = self.loop.time()
        deadline = now - self.keepalive
        send_timeout = self.rules.send_timeout
        for conn in [c for c in self.conns if c.task is None]:
            if send_timeout is not None and conn.stuck(now, send_timeout):
                log.info("client accepted no bytes for %g s; disconnecting it", send_timeout)
                conn.abort()
            elif conn.last < deadline:
                conn.close()
        if self.handed:
            self._prune_handed()
        if self.conns and not self.closing:
            self._sweep = self.loop.call_later(SWEEP_INTERVAL, self.sweep)

    def stop_sweeping(self) -> None:
        self.closing = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
