"""Malformed requests are logged quietly: :func:`quiet_malformed_requests`.

aiohttp's server logs every request it cannot parse (``BadHttpMessage``: bad framing,
duplicate ``Content-Length``, control bytes, overlong lines ...) at ERROR, with a traceback,
as ``Error handling request from <peer>``.  On a gateway open to many clients that is a
log line per hostile or broken client, and a flood under fuzzing (4,000 fuzzed heads once
made 25,480 log lines).  Such a request is the client's error, answered with a 4xx; the
server has nothing to fix.  So these records become DEBUG, plus at most one WARNING per
:data:`WARN_EVERY` seconds that counts them.  Real server errors stay ERROR.
"""

from __future__ import annotations

import logging
import time

from aiohttp.http_exceptions import HttpProcessingError

__all__ = ["quiet_malformed_requests", "WARN_EVERY"]

WARN_EVERY = 60.0  # seconds between the WARNING lines that count malformed requests


class _MalformedRequests(logging.Filter):
    """On ``aiohttp.server``: a record caused by an unparseable request is re-logged at DEBUG
    (and counted in a rate-limited WARNING); others pass unchanged."""

    def __init__(self) -> None:
        super().__init__("ollamamax.malformed")
        self.count = 0  # malformed requests since the last WARNING
        self.warned = -WARN_EVERY  # monotonic time of the last WARNING

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.levelno < logging.ERROR or not isinstance(exc, HttpProcessingError) \
                or not 400 <= (exc.code or 0) < 500:
            return True
        self.count += 1
        log = logging.getLogger("ollamamax.gateway")
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        log.debug("malformed request from %s: %s", peer,
                  str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        now = time.monotonic()
        if now - self.warned >= WARN_EVERY:
            log.warning("%d malformed request(s) answered 4xx in the last %g s (details at DEBUG "
                        "on ollamamax.gateway)", self.count, WARN_EVERY)
            self.warned = now
            self.count = 0
        return False


_FILTER = _MalformedRequests()


def quiet_malformed_requests() -> None:
    """Install the filter on aiohttp's server logger (once per process; idempotent)."""
    logger = logging.getLogger("aiohttp.server")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
