"""The rules every front end applies: API keys, the body limit, and the timeouts on clients.

:class:`GatewayRules` holds the keys and decides, from a request's head alone, whether it
is refused: no or wrong bearer key -> 401 (with ``WWW-Authenticate: Bearer``), a user key
on a model-management route or a blob upload -> 403 (the route table says which routes
need an admin key, and the path is normalised first so no spelling slips through), a body
over ``max_body_size`` -> 413.  Keys are compared in constant time.  The error bodies
come from ``wire.errors`` in the route's dialect.  It also holds the limits on slow clients
both front ends enforce: ``send_timeout`` (a client that accepts no bytes of an answer for
this long is disconnected, which cancels its request and frees its host slot) and
``body_timeout`` (a request body must have arrived this long after its head, else 408), and
the in-band error that ends a stream the gateway has to cut (:meth:`GatewayRules.stream_end`).
No framework here: the aiohttp app and the fast path both call these rules.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from ..wire.errors import (
    JSON_CONTENT_TYPE,
    SSE_CONTENT_TYPE,
    error_body,
    is_openai_path,
    stream_error_line,
)
from ..wire.response import HEADER_ATTEMPTS, HEADER_COLD, HEADER_HOST, HEADER_QUEUE_MS
from ..wire.routes import needs_admin

__all__ = [
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_SEND_TIMEOUT",
    "ERROR_HEADERS",
    "GatewayRules",
    "Refusal",
    "gateway_error_body",
    "shutdown_message",
]

DEFAULT_MAX_BODY_SIZE = 32 * 1024 * 1024
DEFAULT_SEND_TIMEOUT = 60.0  # nginx's send_timeout
DEFAULT_BODY_TIMEOUT = 60.0  # nginx's client_body_timeout

# every error the gateway itself answers carries the dispatcher's headers, with "no host"
ERROR_HEADERS = {
    "Content-Type": JSON_CONTENT_TYPE,
    HEADER_HOST: "-",
    HEADER_COLD: "0",
    HEADER_QUEUE_MS: "0",
    HEADER_ATTEMPTS: "0",
}


class Refusal(NamedTuple):
    """A request the gateway answers itself before dispatching (401 / 403)."""

    status: int
    message: str
    code: str | None
    headers: Mapping[str, str] | None


def gateway_error_body(path: str, status: int, message: str, code: str | None = None) -> bytes:
    """The JSON error body in the shape the path's clients expect (Ollama or OpenAI)."""
    return error_body(is_openai_path(path), status, message, code)


def shutdown_message(grace: float | None) -> str:
    """What a request still running when the gateway's grace period ends is told."""
    if grace is None:
        return "ollamamax gateway shutting down"
    return f"ollamamax gateway shutting down: the grace period of {grace:g} s ended"


def _positive_or_none(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not value > 0:
        raise ValueError(f"{what} must be positive (or None: no limit)")
    return value


class GatewayRules:
    """Keys, limits and the dispatcher one gateway serves."""

    def __init__(
        self,
        dispatcher: Any,
        *,
        api_keys: Iterable[str] = (),
        admin_keys: Iterable[str] = (),
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        send_timeout: float | None = DEFAULT_SEND_TIMEOUT,
        body_timeout: float | None = DEFAULT_BODY_TIMEOUT,
    ) -> None:
        if max_body_size <= 0:
            raise ValueError("max_body_size must be positive")
        self.send_timeout = _positive_or_none(send_timeout, "send_timeout")
        self.body_timeout = _positive_or_none(body_timeout, "body_timeout")
        admin = tuple(admin_keys)
        user = tuple(api_keys)
        for k in admin + user:
            if not isinstance(k, str) or not k.strip() or k != k.strip():
                raise ValueError("API keys must be non-empty strings without surrounding space")
        self.dispatcher = dispatcher
        self._admin_keys = tuple(k.encode() for k in admin)
        self._user_keys = tuple(k.encode() for k in user) + self._admin_keys
        # each key is its own tenant (the response cache never shares hits across tenants);
        # the name says which key without containing it
        self._tenants = {k: f"key-{i}" for i, k in enumerate(dict.fromkeys(self._user_keys))}
        self.auth_enabled = bool(self._user_keys)
        self.max_body_size = int(max_body_size)

    @staticmethod
    def _key_matches(presented: bytes, keys: tuple[bytes, ...]) -> bool:
        ok = False
        for k in keys:  # every key is compared: time does not depend on which one matched
            ok |= hmac.compare_digest(presented, k)
        return ok

    def refusal(self, method: str, path: str, authorization: str | None) -> Refusal | None:
        """The 401 / 403 this request gets from its ``Authorization`` header, or ``None``."""
        if not self.auth_enabled:
            return None
        scheme, _, presented = (authorization or "").partition(" ")
        key = presented.strip().encode() if scheme.lower() == "bearer" else b""
        if not key or not self._key_matches(key, self._user_keys):
            return Refusal(401, "unauthorized", "invalid_api_key", {"WWW-Authenticate": "Bearer"})
        if needs_admin(method, path) and not self._key_matches(key, self._admin_keys):
            return Refusal(403, "forbidden: this route needs an admin key", None, None)
        return None

    def tenant_of(self, authorization: str | None) -> str | None:
        """The tenant of a request that :meth:`refusal` let through (None without keys)."""
        if not self.auth_enabled:
            return None
        scheme, _, presented = (authorization or "").partition(" ")
        return self._tenants.get(presented.strip().encode()) if scheme.lower() == "bearer" else None

    def too_large_message(self, detail: str) -> str:
        return f"request body too large: {detail} exceeds the limit of {self.max_body_size} bytes"

    def body_timeout_message(self) -> str:
        return f"request body did not arrive within {self.body_timeout:g} s of its head"

    @staticmethod
    def stream_end(path: str, headers: Mapping[str, str], message: str, tail: bytes) -> bytes:
        """The in-band error line that ends a stream the gateway cuts (shutdown): SSE (OpenAI's
        shape) when the answer is an event stream, else an NDJSON line (Ollama's)."""
        ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        sse = ctype.startswith(SSE_CONTENT_TYPE) or (not ctype and is_openai_path(path))
        return stream_error_line(sse, message, tail, 503)
