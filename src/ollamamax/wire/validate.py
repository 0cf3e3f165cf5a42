"""Request validation as Ollama's Go server words it, limited to what routing reads.

:func:`parse_body` decodes a JSON body the way Go's ``encoding/json`` does for the route's
request struct: an empty body, malformed JSON, a non-object or a routing field of the
wrong type raise :class:`BadRequest` with the server's exact 400 text; trailing data after
the first value is ignored, as Go's decoder ignores it; nesting deeper than Python's
parsers go (about 1,000 levels; Go allows 10,000) is a 400 "exceeded max depth", never a
500.  Well-formed bodies are decoded by msgspec, which reads a
13 MiB vision chat about three times faster than ``json.loads`` (the event loop is held
for that long; see ``tools/bench_big_bodies.py``); anything msgspec refuses goes through
``json`` once more, which finds Go's wording for the error.  Only the fields in the route's
``checks`` are looked at; everything else is the host's business (the body is forwarded
unchanged).  :func:`model_of` reads the model name, :func:`is_unload` recognises an
unload request.  Pure functions; no I/O.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec

from .ollama import go_json_error, go_type_name
from .routes import Route

__all__ = ["BadRequest", "is_unload", "is_zero_keep_alive", "model_of", "parse_body"]

_decode = msgspec.json.Decoder().decode
_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)

_ZERO_DURATION = re.compile(r"(?:0+(?:\.0*)?(?:ns|us|µs|ms|s|m|h))+")


class BadRequest(Exception):
    """A request the gateway answers itself (``status``, Ollama's ``message``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_body(route: Route, body: bytes) -> dict[str, Any]:
    """The request object, or :class:`BadRequest` (400) in Go's words."""
    if not body:
        raise BadRequest(400, "missing request body")
    try:
        obj = _decode(body)
    except _ERRORS:
        obj = _parse_slowly(body)
    struct = route.go_struct
    if not isinstance(obj, dict):
        raise BadRequest(400, f"json: cannot unmarshal {go_type_name(obj)} into Go value of type api.{struct}")
    for fname, ftype, goname in route.checks:
        v = obj.get(fname)
        if v is not None and type(v) is not ftype:
            raise BadRequest(
                400, f"json: cannot unmarshal {go_type_name(v)} into Go struct field {struct}.{fname} of type {goname}"
            )
    return obj


def _parse_slowly(body: bytes) -> Any:
    """What msgspec refused: Go's verdict (and wording) through ``json``."""
    try:
        text = body.decode()  # UTF-8 only, as Go's decoder
        if not text.strip():
            raise BadRequest(400, "missing request body")
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if not exc.msg.startswith("Extra data"):
            raise BadRequest(400, go_json_error(exc)) from None
        # Go's decoder reads the first value and ignores what follows.
        return json.JSONDecoder().raw_decode(exc.doc.lstrip())[0]
    except UnicodeDecodeError:
        raise BadRequest(400, "invalid character in request body (not UTF-8)") from None
    except RecursionError:
        raise BadRequest(400, "exceeded max depth") from None


def model_of(route: Route, obj: dict[str, Any]) -> str:
    """The model the request names ('' when none)."""
    name = obj.get(route.model_field)
    if not name and route.model_field == "model":
        name = obj.get("name")  # legacy field on show/pull/push/delete
    return name if isinstance(name, str) else ""


def is_zero_keep_alive(v: Any) -> bool:
    """``keep_alive`` 0 in any of Ollama's spellings (a number, "0", "0s", "0m0s"...)."""
    if isinstance(v, bool) or v is None:
        return False
    if isinstance(v, (int, float)):
        return v == 0
    if isinstance(v, str):
        s = v.strip()
        return s == "0" or _ZERO_DURATION.fullmatch(s) is not None
    return False


def is_unload(route: Route, obj: dict[str, Any]) -> bool:
    """An unload: generate with no prompt, or chat with no messages, and keep_alive 0."""
    keep_alive = obj.get("keep_alive")
    if keep_alive is None or not is_zero_keep_alive(keep_alive):
        return False
    if route.path == "/api/generate":
        return not obj.get("prompt")
    if route.path == "/api/chat":
        return not obj.get("messages")
    return False
