"""Request decoding: JSON bodies read as the real server's Go handlers read them.

Owns: gin's ``ShouldBindJSON`` behaviour (first JSON value wins, Go's error texts for
malformed JSON), the Go types of every request struct field the native routes validate
(``json: cannot unmarshal ... into Go struct field ...``), base64 image checks, the
``think`` and ``keep_alive`` values, and reading a conversation's turns. Every failure is
an :class:`HttpError` (400). Pure and synchronous: it must not look at the model table,
the scheduler or the response side, and it decides nothing about the reply.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ..wire.ollama import go_json_error, go_type_name
from ._errors import HttpError
from ._goformat import parse_keep_alive

__all__ = [
    "THINK_LEVELS",
    "conversation",
    "decode_body",
    "decode_object",
    "decode_openai_object",
    "keep_alive_of",
    "parse_messages",
    "parse_think",
]

THINK_LEVELS = ("high", "medium", "low", "max")

# Go types of the request struct fields we validate: field -> (accepted python types, go type name)
_STR = ((str,), "string")
_BOOL = ((bool,), "bool")
_INT = ((int,), "int")
_OBJ = ((dict,), "map[string]interface {}")
_ANY = ((object,), "any")

_GEN_FIELDS = {
    "model": _STR,
    "prompt": _STR,
    "suffix": _STR,
    "system": _STR,
    "template": _STR,
    "context": ((list,), "[]int"),
    "stream": _BOOL,
    "raw": _BOOL,
    "images": ((list,), "[]api.ImageData"),
    "options": _OBJ,
    "truncate": _BOOL,
    "shift": _BOOL,
    "logprobs": _BOOL,
    "top_logprobs": _INT,
}
_CHAT_FIELDS = {
    "model": _STR,
    "messages": ((list,), "[]api.Message"),
    "tools": ((list,), "api.Tools"),
    "stream": _BOOL,
    "options": _OBJ,
    "truncate": _BOOL,
    "shift": _BOOL,
    "logprobs": _BOOL,
    "top_logprobs": _INT,
}
_MSG_FIELDS = {
    "role": _STR,
    "content": _STR,
    "thinking": _STR,
    "images": ((list,), "[]api.ImageData"),
    "tool_calls": ((list,), "[]api.ToolCall"),
    "tool_name": _STR,
    "tool_call_id": _STR,
}
_EMBED_FIELDS = {"model": _STR, "truncate": _BOOL, "dimensions": _INT, "options": _OBJ}
_EMBEDDINGS_FIELDS = {"model": _STR, "prompt": _STR, "options": _OBJ}
_SHOW_FIELDS = {"model": _STR, "name": _STR, "system": _STR, "template": _STR, "verbose": _BOOL, "options": _OBJ}
_PULL_FIELDS = {"model": _STR, "name": _STR, "insecure": _BOOL, "stream": _BOOL, "username": _STR, "password": _STR}
_COPY_FIELDS = {"source": _STR, "destination": _STR}
_DELETE_FIELDS = {"model": _STR, "name": _STR}
_CREATE_FIELDS = {
    "model": _STR,
    "name": _STR,
    "from": _STR,
    "files": ((dict,), "map[string]string"),
    "adapters": ((dict,), "map[string]string"),
    "template": _STR,
    "system": _STR,
    "license": _ANY,
    "parameters": _OBJ,
    "messages": ((list,), "[]api.Message"),
    "quantize": _STR,
    "stream": _BOOL,
}



# the Go request struct (as named in error texts) -> the fields checked
_FIELDS: dict[str, Mapping[str, tuple[tuple[type, ...], str]]] = {
    "GenerateRequest": _GEN_FIELDS,
    "ChatRequest": _CHAT_FIELDS,
    "EmbedRequest": _EMBED_FIELDS,
    "EmbeddingRequest": _EMBEDDINGS_FIELDS,
    "ShowRequest": _SHOW_FIELDS,
    "PullRequest": _PULL_FIELDS,
    "PushRequest": _PULL_FIELDS,
    "CopyRequest": _COPY_FIELDS,
    "DeleteRequest": _DELETE_FIELDS,
    "CreateRequest": _CREATE_FIELDS,
}


def _check_fields(obj: Mapping[str, Any], fields: Mapping[str, tuple[tuple[type, ...], str]], struct: str, path: str = "") -> None:
    for name, (types, goname) in fields.items():
        v = obj.get(name)
        if v is None:
            continue
        ok = isinstance(v, types)
        if ok and bool not in types and isinstance(v, bool):
            ok = object in types
        if ok and goname == "int" and isinstance(v, float):
            ok = False
        if not ok:
            if goname == "int" and isinstance(v, float) and not isinstance(v, bool):
                kind = f"number {v}"
            else:
                kind = go_type_name(v)
            raise HttpError(400, f"json: cannot unmarshal {kind} into Go struct field {struct}.{path}{name} of type {goname}")


_B64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def _check_images(images: Any) -> None:
    """Images are []byte in Go: each must be standard base64 (JSON binding fails otherwise)."""
    if not isinstance(images, list):
        return
    for img in images:
        if not isinstance(img, str):
            raise HttpError(400, f"json: cannot unmarshal {go_type_name(img)} into Go value of type api.ImageData")
        body = img.rstrip("=")
        pad = len(img) - len(body)
        for i, ch in enumerate(body):
            if ch not in _B64:
                raise HttpError(400, f"illegal base64 data at input byte {i}")
        if pad > 2 or len(img) % 4:
            raise HttpError(400, f"illegal base64 data at input byte {len(img) - len(img) % 4 if len(img) % 4 else len(body)}")



_decoder = json.JSONDecoder()


def decode_body(raw: bytes, struct: str) -> Any:
    """Decode like gin's ShouldBindJSON: first JSON value, Go error texts."""
    if not raw:
        raise HttpError(400, "missing request body")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg.startswith("Extra data"):
            return _decoder.raw_decode(text, len(text) - len(text.lstrip()))[0]
        if not text.strip():
            raise HttpError(400, "missing request body") from None
        raise HttpError(400, go_json_error(exc)) from None


def decode_object(raw: bytes, struct: str) -> dict[str, Any]:
    """A native request body: a JSON object whose fields have the Go types of ``api.<struct>``."""
    obj = decode_body(raw, struct)
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise HttpError(400, f"json: cannot unmarshal {go_type_name(obj)} into Go value of type api.{struct}")
    _check_fields(obj, _FIELDS[struct], struct)
    if "images" in obj:
        _check_images(obj["images"])
    return obj


def decode_openai_object(raw: bytes, struct: str) -> dict[str, Any]:
    """A ``/v1`` request body: any JSON object (``openai.<struct>``; fields are checked by the route)."""
    obj = decode_body(raw, struct)
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise HttpError(400, f"json: cannot unmarshal {go_type_name(obj)} into Go value of type openai.{struct}")
    return obj


def parse_think(value: Any) -> bool | str | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value in THINK_LEVELS:
            return value
        if value in ("true", "false"):
            return value == "true"
        raise HttpError(400, f'invalid think value: {json.dumps(value)} (must be "high", "medium", "low", "max", true, or false)')
    raise HttpError(400, f"invalid think value: {json.dumps(value)} (must be \"high\", \"medium\", \"low\", \"max\", true, or false)")


def keep_alive_of(body: Mapping[str, Any]) -> float | None:
    try:
        return parse_keep_alive(body.get("keep_alive"))
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None


# --------------------------------------------------------------------------- conversations


def conversation(turns: Iterable[tuple[str, str]]) -> tuple[str, str | None, str | None]:
    """(all texts joined by newlines, the last text when the last role is "user", the last role)."""
    texts = []
    last_role: str | None = None
    for role, text in turns:
        texts.append(text)
        last_role = role
    return "\n".join(texts), texts[-1] if last_role == "user" else None, last_role


def parse_messages(msgs: list[Any], struct: str = "ChatRequest") -> tuple[str, str | None, str | None]:
    """Validate native chat messages; returns (all text, last user text, last role)."""

    def turns() -> Iterator[tuple[str, str]]:
        for m in msgs:
            if not isinstance(m, dict):
                raise HttpError(400, f"json: cannot unmarshal {go_type_name(m)} into Go struct field {struct}.messages of type api.Message")
            _check_fields(m, _MSG_FIELDS, struct, "messages.")
            if "images" in m:
                _check_images(m["images"])
            yield (m.get("role") or "").lower(), m.get("content") or ""

    return conversation(turns())
