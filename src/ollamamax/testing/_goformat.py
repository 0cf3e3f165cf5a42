"""Go's text formats as the real server writes and reads them.

Owns: compact JSON as Go's ``encoding/json`` writes it (:func:`go_dumps`), RFC 3339 times
with Go's nanosecond trimming (:func:`rfc3339`), Go durations (``time.ParseDuration``)
and the ``keep_alive`` value built on them. Pure functions of their arguments (plus the
wall clock for :func:`rfc3339` without an argument); nothing here knows about models,
requests or HTTP, and it must not import any other emulator module: every layer
above uses it.
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any

__all__ = ["FOREVER", "go_dumps", "parse_go_duration", "parse_keep_alive", "rfc3339", "rfc3339_at"]

FOREVER = math.inf  # keep_alive < 0 (Go: max int64 ns, about 292 years)
FOREVER_NS = (1 << 63) - 1

# --------------------------------------------------------------------------- JSON


def go_dumps(obj: Any) -> str:
    """Compact JSON as Go's encoder writes it: raw UTF-8, ``<``/``>``/``&`` escaped."""
    s = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    if "<" in s or ">" in s or "&" in s or "\u2028" in s or "\u2029" in s:
        s = (
            s.replace("<", "\\u003c")
            .replace(">", "\\u003e")
            .replace("&", "\\u0026")
            .replace("\u2028", "\\u2028")
            .replace("\u2029", "\\u2029")
        )
    return s


# --------------------------------------------------------------------------- time

_ts_cache_sec = -1
_ts_cache_prefix = ""


def rfc3339(ns: int | None = None) -> str:
    """RFC 3339 UTC with up to 9 fractional digits, trailing zeros trimmed (Go's RFC3339Nano)."""
    global _ts_cache_sec, _ts_cache_prefix
    if ns is None:
        ns = time.time_ns()
    sec, frac = divmod(ns, 1_000_000_000)
    if sec != _ts_cache_sec:
        if sec > 253402300799:  # past year 9999: clamp (Go would still print it)
            sec = 253402300799
        _ts_cache_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _ts_cache_sec = sec
    if frac:
        return f"{_ts_cache_prefix}.{frac:09d}".rstrip("0") + "Z"
    return _ts_cache_prefix + "Z"


def rfc3339_at(ns: int) -> str:
    """Like :func:`rfc3339` but without touching the one-entry cache (far dates)."""
    sec, frac = divmod(ns, 1_000_000_000)
    # time.gmtime handles years up to 9999 on every platform we care about
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(min(sec, 253402300799)))
    if frac:
        return f"{base}.{frac:09d}".rstrip("0") + "Z"
    return base + "Z"


# --------------------------------------------------------------------------- durations

_DUR_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # noqa: RUF001 - Go accepts both micro signs
    "μs": 1e-6,  # noqa: RUF001
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DUR_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)([^0-9.]*)")


def parse_go_duration(s: str) -> float:
    """Seconds from a Go duration string (``time.ParseDuration``); ``ValueError`` with Go's text."""
    orig = s
    quoted = json.dumps(orig)
    neg = False
    if s and s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"time: invalid duration {quoted}")
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _DUR_PART.match(s, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"time: invalid duration {quoted}")
        num, unit = m.group(1), m.group(2)
        if num in ("", "."):
            raise ValueError(f"time: invalid duration {quoted}")
        if unit == "":
            raise ValueError(f"time: missing unit in duration {quoted}")
        if unit not in _DUR_UNITS:
            raise ValueError(f"time: unknown unit {json.dumps(unit)} in duration {quoted}")
        total += float(num) * _DUR_UNITS[unit]
        pos = m.end()
    return -total if neg else total


def parse_keep_alive(value: Any) -> float | None:
    """keep_alive from JSON -> seconds (``math.inf`` = forever, ``None`` = not given).

    Numbers are seconds; strings are Go durations; negatives mean forever.
    Raises ``ValueError`` with the server's error text.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("Unsupported type: 'bool'")
    if isinstance(value, (int, float)):
        secs = float(value)
    elif isinstance(value, str):
        secs = parse_go_duration(value)
    else:
        raise ValueError(f"Unsupported type: '{type(value).__name__}'")
    if secs < 0:
        return FOREVER
    return secs

