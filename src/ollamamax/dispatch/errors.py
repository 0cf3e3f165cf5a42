"""Error bodies the dispatcher produces, in Ollama's and OpenAI's shapes.

Native routes answer ``{"error": "<message>"}`` (``application/json; charset=utf-8``);
``/v1`` routes answer ``{"error": {"message", "type", "param", "code"}}`` with the type
derived from the status as Ollama's OpenAI middleware does.  Messages copy the server's
texts (see /work/shared/ollama-api.md section 3) because clients grep them.

Also here: :class:`ResponseError`, raised by the embedded API, mirroring
``ollama.ResponseError`` (same attributes and the same ``str()``), and the translation of
a Python ``json.JSONDecodeError`` into the Go decoder's wording (shared with the emulator,
in :mod:`ollamamax._ollama_wire`).
"""

from __future__ import annotations

import json

from .._ollama_wire import BUSY_MESSAGE, NOT_FOUND_PAGE, go_json_error, go_type_name

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


