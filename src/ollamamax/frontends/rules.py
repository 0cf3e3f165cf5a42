"""The rules every front end applies before the dispatcher: API keys and the body limit.

:class:`GatewayRules` holds the keys and decides, from a request's head alone, whether it
is refused: no or wrong bearer key -> 401 (with ``WWW-Authenticate: Bearer``), a user key
on a model-management route or a blob upload -> 403 (the route table says which routes
need an admin key, and the path is normalised first so no spelling slips through), a body
over ``max_body_size`` -> 413.  Keys are compared in constant time.  The error bodies
come from ``wire.errors`` in the route's dialect.  No framework here: the aiohttp app and
the fast path both call these rules.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from ..wire.errors import JSON_CONTENT_TYPE, error_body, is_openai_path
from ..wire.response import HEADER_ATTEMPTS, HEADER_COLD, HEADER_HOST, HEADER_QUEUE_MS
from ..wire.routes import needs_admin

__all__ = ["DEFAULT_MAX_BODY_SIZE", "ERROR_HEADERS", "GatewayRules", "Refusal", "gateway_error_body"]

DEFAULT_MAX_BODY_SIZE = 32 * 1024 * 1024

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


class GatewayRules:
    """Keys, limits and the dispatcher one gateway serves."""

    def __init__(
        self,
        dispatcher: Any,
        *,
        api_keys: Iterable[str] = (),
        admin_keys: Iterable[str] = (),
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    ) -> None:
        if max_body_size <= 0:
            raise ValueError("max_body_size must be positive")
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
