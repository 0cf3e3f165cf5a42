"""Error bodies in Ollama's and OpenAI's shapes, the content types, and ``ResponseError``.

Native routes answer ``{"error": "<message>"}`` (``application/json; charset=utf-8``);
``/v1`` routes answer ``{"error": {"message", "type", "param", "code"}}`` with the type
derived from the status as Ollama's OpenAI middleware does (one map, used by the
dispatcher and the front ends alike).  Messages copy the server's texts (see
/work/shared/ollama-api.md section 3) because clients grep them.

:func:`stream_error_line` is the in-band error that ends a stream which cannot finish (an
NDJSON ``{"error": ...}`` line, or an SSE ``data: {"error": {...}}`` event on ``/v1``).

Also here: :class:`ResponseError`, raised by the embedded API, mirroring
``ollama.ResponseError`` (same attributes and the same ``str()``).  Pure functions; this
module decides the *shape* of an error, never whether there is one.
"""

from __future__ import annotations

import json

__all__ = [
    "JSON_CONTENT_TYPE",
    "NDJSON_CONTENT_TYPE",
    "SSE_CONTENT_TYPE",
    "TEXT_CONTENT_TYPE",
    "ResponseError",
    "error_body",
    "is_openai_path",
    "ollama_error_body",
    "openai_error_body",
    "openai_error_type",
    "stream_error_line",
]

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
NDJSON_CONTENT_TYPE = "application/x-ndjson"
SSE_CONTENT_TYPE = "text/event-stream"

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

# status -> OpenAI error type; anything else is "api_error"
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
}


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


def is_openai_path(path: str) -> bool:
    """True for ``/v1`` and everything under it (the OpenAI-compatible dialect)."""
    return path == "/v1" or path.startswith("/v1/")


def ollama_error_body(message: str) -> bytes:
    return _dumps({"error": message}).encode()


def openai_error_type(status: int) -> str:
    return _OPENAI_TYPES.get(status, "api_error")


def openai_error_body(message: str, status: int, code: str | None = None) -> bytes:
    return _dumps(
        {"error": {"message": message, "type": openai_error_type(status), "param": None, "code": code}}
    ).encode()


def error_body(openai: bool, status: int, message: str, code: str | None = None) -> bytes:
    """The error body in the dialect of the route (OpenAI's on ``/v1``, else Ollama's)."""
    return openai_error_body(message, status, code) if openai else ollama_error_body(message)


def stream_error_line(sse: bool, message: str, tail: bytes = b"", status: int = 500) -> bytes:
    """The in-band error that ends a stream after its first byte, in the stream's dialect:
    an NDJSON line ``{"error":"<message>"}\\n`` (Ollama's native routes), or for SSE (``/v1``)
    a ``data: {"error":{...}}\\n\\n`` event in OpenAI's shape.  ``tail`` is what the stream
    sent last: when it stopped inside a line (or an event), the error starts on a new one."""
    if sse:
        sep = b"" if not tail or tail.endswith(b"\n\n") else b"\n\n"
        return sep + b"data: " + openai_error_body(message, status) + b"\n\n"
    sep = b"" if not tail or tail.endswith(b"\n") else b"\n"
    return sep + ollama_error_body(message) + b"\n"
