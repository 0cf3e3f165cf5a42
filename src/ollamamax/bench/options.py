"""Option values of ``ollamamax bench``: owns :class:`UsageError` and the parsing of durations
(``10s``, ``500ms``, ``2m``, plain seconds) and concurrency lists (``1,10,50``) into numbers, with
the error messages a user sees for bad values.  It must not know about argparse, HTTP or
output, and imports nothing outside the standard library (the ``ollamamax`` command loads
it at start-up).
"""

from __future__ import annotations

__all__ = ["UsageError", "parse_concurrency", "parse_duration"]


class UsageError(ValueError):
    """A bad option value (reported with exit status 2)."""


def parse_duration(text: str | float | int, *, name: str = "duration", allow_zero: bool = False) -> float:
    """``"10s"``, ``"500ms"``, ``"2m"``, ``"1h"`` or plain seconds (``"1.5"``) -> seconds."""
    import math
    import re

    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*", str(text))
        if m is None:
            raise UsageError(f"--{name}: expected a duration like 10s, 500ms, 2m or seconds, got {text!r}")
        value = float(m.group(1)) * {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}[m.group(2)]
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"--{name}: must be {'>= 0' if allow_zero else '> 0'}, got {text!r}")
    return value


def parse_concurrency(text: str) -> list[int]:
    """``"1,10,50"`` -> ``[1, 10, 50]`` (each an integer >= 1, order kept)."""
    levels: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            c = int(part)
        except ValueError:
            raise UsageError(f"--concurrency: {part!r} is not an integer (expected e.g. 1,10,50)") from None
        if c < 1:
            raise UsageError(f"--concurrency: levels must be >= 1, got {c}")
        if c > 100_000:
            raise UsageError(f"--concurrency: {c} is more than 100000 workers")
        levels.append(c)
    if not levels:
        raise UsageError("--concurrency: give at least one level, e.g. 1,10,50")
    return levels
