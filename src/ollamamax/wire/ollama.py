"""Texts of the real Ollama server that both sides of ollamamax must reproduce exactly.

The dispatcher answers malformed requests itself, and the host emulator (``testing/``)
answers them as a real host does; both use these so the two can never drift.  Pure
functions and constants only.
Source: ``shared/ollama-api.md`` section 3 (Go's ``encoding/json`` decoder wording, gin's
404 page, the scheduler's busy message).
"""

from __future__ import annotations

import json

__all__ = ["BUSY_MESSAGE", "NOT_FOUND_PAGE", "go_json_error", "go_type_name"]

# Note the two spaces after the period: this is the server's exact text.
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
NOT_FOUND_PAGE = b"404 page not found"

_LITERALS = {"t": "true", "f": "false", "n": "null"}


def go_type_name(value: object) -> str:
    """The JSON kind as Go's decoder names it in ``cannot unmarshal <kind>``."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _quote_char(ch: str) -> str:
    return "'\\''" if ch == "'" else f"'{ch}'"


def go_json_error(exc: json.JSONDecodeError) -> str:
    """Translate Python's decoder error into the Go decoder's message (best effort).

    Callers handle "Extra data" themselves: Go decodes the first value and ignores the rest.
    """
    doc, pos, msg = exc.doc, exc.pos, exc.msg
    if pos >= len(doc) or not doc[pos:].strip() or msg.startswith("Unterminated string"):
        return "unexpected EOF"
    ch = _quote_char(doc[pos])
    if msg.startswith("Expecting value") and doc[pos] in _LITERALS:
        lit = _LITERALS[doc[pos]]
        for i, want in enumerate(lit):
            if pos + i >= len(doc):
                return "unexpected EOF"
            if doc[pos + i] != want:
                return f"invalid character {_quote_char(doc[pos + i])} in literal {lit} (expecting '{want}')"
    if msg.startswith("Expecting value"):
        return f"invalid character {ch} looking for beginning of value"
    if msg.startswith("Expecting property name"):
        return f"invalid character {ch} looking for beginning of object key string"
    if msg.startswith("Expecting ':'"):
        return f"invalid character {ch} after object key"
    if msg.startswith("Expecting ','"):
        # the innermost open bracket tells an object from an array
        depth = 0
        for c in reversed(doc[:pos]):
            if c in "]}":
                depth += 1
            elif c in "[{":
                if depth == 0:
                    return f"invalid character {ch} after {'object key:value pair' if c == '{' else 'array element'}"
                depth -= 1
        return f"invalid character {ch} after object key:value pair"
    if msg.startswith("Invalid control character"):
        return f"invalid character {ch} in string literal"
    if msg.startswith("Invalid \\escape") or msg.startswith("Invalid \\u"):
        return f"invalid character {ch} in string escape code"
    if msg.startswith("Extra data"):
        return f"invalid character {ch} after top-level value"
    return f"invalid character {ch} looking for beginning of value"
