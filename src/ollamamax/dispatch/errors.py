"""Error bodies the dispatcher produces, in Ollama's and OpenAI's shapes.

Native routes answer ``{"error": "<message>"}`` (``application/json; charset=utf-8``);
``/v1`` routes answer ``{"error": {"message", "type", "param", "code"}}`` with the type
derived from the status as Ollama's OpenAI middleware does.  Messages copy the server's
texts (see /work/shared/ollama-api.md section 3) because clients grep them.

Also here: :class:`ResponseError`, raised by the embedded API, mirroring
``ollama.ResponseError`` (same attributes and the same ``str()``), and the translation of
a Python ``json.JSONDecodeError`` into the Go decoder's wording.
"""

from __future__ import annotations

import json

__all__ = [
    "BUSY_MESSAGE",
    "JSON_CONTENT_TYPE",
    "NOT_FOUND_PAGE",
    "ResponseError",
    "go_json_error",
    "go_type_name",
    "ollama_error_body",
    "openai_error_body",
    "openai_error_type",
]

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
NDJSON_CONTENT_TYPE = "application/x-ndjson"
SSE_CONTENT_TYPE = "text/event-stream"
# Note the two spaces after the period: this is the server's exact text.
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
NOT_FOUND_PAGE = b"404 page not found"

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class ResponseError(Exception):
    """An error answer from the dispatcher (mirrors ``ollama.ResponseError``).

    ``status_code`` is the HTTP status, or ``-1`` for an error that arrived in-band
    inside a stream (as the official client reports it).
    """

    def __init__(self, error: str, status_code: int = -1) -> None:
        try:
            parsed = json.loads(error)
        except (ValueError, TypeError):
            parsed = None
        if isinstance(parsed, dict) and "error" in parsed:
            inner = parsed["error"]
            if isinstance(inner, dict):  # OpenAI shape
                inner = inner.get("message", inner)
            error = inner if isinstance(inner, str) else str(inner)
        super().__init__(error)
        self.error = error
        self.status_code = status_code

    def __str__(self) -> str:
        return f"{self.error} (status code: {self.status_code})"


def ollama_error_body(message: str) -> bytes:
    return _dumps({"error": message}).encode()


def openai_error_type(status: int) -> str:
    if status == 400:
        return "invalid_request_error"
    if status == 404:
        return "not_found_error"
    return "api_error"


def openai_error_body(message: str, status: int) -> bytes:
    return _dumps(
        {"error": {"message": message, "type": openai_error_type(status), "param": None, "code": None}}
    ).encode()


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


def _quote_char(doc: str, pos: int) -> str:
    ch = doc[pos] if 0 <= pos < len(doc) else ""
    if ch == "'":
        return "'\\''"
    return f"'{ch}'"


def go_json_error(exc: json.JSONDecodeError) -> str:
    """Translate Python's decoder error into the Go decoder's message (best effort)."""
    doc, pos, msg = exc.doc, exc.pos, exc.msg
    rest = doc[pos:] if isinstance(doc, str) else ""
    if pos >= len(doc) or not rest.strip() or msg.startswith("Unterminated string"):
        return "unexpected EOF"
    ch = _quote_char(doc, pos)
    if msg.startswith("Expecting value"):
        return f"invalid character {ch} looking for beginning of value"
    if msg.startswith("Expecting property name"):
        return f"invalid character {ch} looking for beginning of object key string"
    if msg.startswith("Expecting ':'"):
        return f"invalid character {ch} after object key"
    if msg.startswith("Expecting ',' delimiter"):
        # Look back to the innermost open bracket to tell objects from arrays.
        depth = 0
        for c in reversed(doc[:pos]):
            if c in "]}":
                depth += 1
            elif c in "[{":
                if depth == 0:
                    where = "object key:value pair" if c == "{" else "array element"
                    return f"invalid character {ch} after {where}"
                depth -= 1
        return f"invalid character {ch} after object key:value pair"
    if msg.startswith("Invalid control character"):
        return f"invalid character {ch} in string literal"
    if msg.startswith("Invalid \\escape") or msg.startswith("Invalid \\u"):
        return f"invalid character {ch} in string escape code"
    if msg.startswith("Extra data"):
        return f"invalid character {ch} after top-level value"
    return f"invalid JSON: {msg}"
