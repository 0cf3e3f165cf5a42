"""The rules every front end applies: API keys, the body limit, the timeouts on clients,
cross-origin (CORS) requests and the Host check.

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

Liveness: ``GET /`` and ``HEAD /`` never need a key (load balancer and Kubernetes probes);
``/api/version`` does (see :meth:`GatewayRules.refusal`).

Browsers: :class:`OriginPolicy` decides cross-origin requests exactly as Ollama does with
gin-contrib/cors (defaults + ``OLLAMA_ORIGINS``), and :func:`host_allowed` is Ollama's
DNS-rebinding guard (a loopback listener refuses a Host that is not local).  Both are pure.
No framework here: the aiohttp app and the fast path both call these rules.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import os
import socket
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
    "CorsDecision",
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_ORIGINS",
    "MAX_RECEIVING",
    "DEFAULT_SEND_TIMEOUT",
    "ERROR_HEADERS",
    "GatewayRules",
    "OriginPolicy",
    "Refusal",
    "gateway_error_body",
    "host_allowed",
    "listener_is_loopback",
    "parse_origins",
    "shutdown_message",
]

# 1 GiB: a vision request (several base64 images) never hits it; the front ends count a
# body while it arrives and refuse it with 413 the moment it passes the limit
DEFAULT_MAX_BODY_SIZE = 1024 * 1024 * 1024
# request bodies being received at once, over all connections, beyond which one more gets 503
MAX_RECEIVING = 1024 * 1024 * 1024
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


# --------------------------------------------------------------------------- CORS
#
# Ollama's rules, followed here (cited from github.com/ollama/ollama):
# * envconfig/config.go ``AllowedOrigins()`` (``Origins()`` in older releases): the entries
#   of OLLAMA_ORIGINS (split on ","), then http(s)://{localhost,127.0.0.1,0.0.0.0} with and
#   without ":*", then app://*, file://*, tauri://*, vscode-webview://*, vscode-file://*.
#   Browser-extension origins are NOT allowed by default: gin-cors's AllowBrowserExtensions
#   only lets OLLAMA_ORIGINS list them (e.g. ``chrome-extension://*``).
# * server/routes.go ``GenerateRoutes``: gin-contrib/cors with DefaultConfig (methods GET,
#   POST, PUT, PATCH, DELETE, HEAD; max age 12 h), AllowWildcard, AllowBrowserExtensions and
#   the allowed request headers below; the cors middleware runs before the Host check.
# * gin-contrib/cors ``applyCors``: no Origin -> not a CORS request; an Origin equal to
#   "http://"+Host or "https://"+Host -> same origin, nothing added; an origin not allowed ->
#   403 whatever the method; OPTIONS -> 204 with the preflight headers; any other method
#   -> Vary: Origin and Access-Control-Allow-Origin: <origin>, and the request goes on.
#   An entry "*" allows every origin (then Access-Control-Allow-Origin: * and no Vary).
#   Wildcards: one "*" per entry; the origin must start with what precedes it and end with
#   what follows it.  (gin drops the character before a trailing "*", so its
#   "http://localhost:*" also lets "http://localhost.evil.com" in; here the whole prefix
#   "http://localhost:" must match: the intended rule, and not a hole.)

DEFAULT_ORIGINS: tuple[str, ...] = tuple(
    f"{scheme}://{host}{port}"
    for host in ("localhost", "127.0.0.1", "0.0.0.0")
    for port, scheme in (("", "http"), ("", "https"), (":*", "http"), (":*", "https"))
) + ("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")

# the schemes an origin without "*" may have (gin-cors Validate: DefaultSchemas plus, with
# AllowBrowserExtensions, ExtensionSchemas)
_ORIGIN_SCHEMES = ("http://", "https://", "chrome-extension://", "safari-extension://",
                   "moz-extension://", "ms-browser-extension://")

# Ollama's AllowHeaders (server/routes.go), in Go's canonical spelling as gin-cors sends them,
# plus the gateway's own request headers (affinity session, broadcast host list)
CORS_ALLOW_HEADERS = ",".join((
    "Authorization", "Content-Type", "User-Agent", "Accept", "X-Requested-With",
    "Openai-Beta", "X-Stainless-Arch", "X-Stainless-Async", "X-Stainless-Custom-Poll-Interval",
    "X-Stainless-Helper-Method", "X-Stainless-Lang", "X-Stainless-Os",
    "X-Stainless-Package-Version", "X-Stainless-Poll-Helper", "X-Stainless-Retry-Count",
    "X-Stainless-Runtime", "X-Stainless-Runtime-Version", "X-Stainless-Timeout",
    "X-Ollamamax-Session", "X-Ollamamax-Hosts",
))
CORS_ALLOW_METHODS = "GET,POST,PUT,PATCH,DELETE,HEAD"  # gin-cors DefaultConfig
CORS_MAX_AGE = "43200"  # DefaultConfig's 12 h


def parse_origins(value: str | Iterable[str] | None) -> list[str]:
    """Origin entries from ``OLLAMA_ORIGINS`` / ``--origins`` (a comma-separated string) or
    a list; surrounding space and quotes (envconfig.Var) and empty entries are dropped.
    Raises ``ValueError`` for an entry gin-cors would refuse (Ollama panics at start-up):
    more than one ``*``, or no ``*`` and no http(s):// or browser-extension scheme."""
    if value is None:
        return []
    items = value.strip().strip("\"'").split(",") if isinstance(value, str) else list(value)
    out = []
    for raw in items:
        if not isinstance(raw, str):
            raise ValueError(f"origin entries must be strings, got {raw!r}")
        o = raw.strip()
        if not o:
            continue
        if o.count("*") > 1:
            raise ValueError(f"origin {o!r}: only one '*' is allowed")
        if "*" not in o and not o.lower().startswith(_ORIGIN_SCHEMES):
            raise ValueError(f"origin {o!r}: an origin must contain '*' or start with "
                             f"{', '.join(_ORIGIN_SCHEMES)}")
        out.append(o)
    return out


class CorsDecision(NamedTuple):
    """What a request's ``Origin`` means: ``action`` is ``"none"`` (no CORS: no Origin, or
    same origin), ``"refuse"`` (403), ``"preflight"`` (answer 204 with ``headers``) or
    ``"allow"`` (serve it, adding ``headers`` to the answer, whatever its status)."""

    action: str
    headers: Mapping[str, str]


_NO_CORS = CorsDecision("none", {})
_REFUSE = CorsDecision("refuse", {})


class OriginPolicy:
    """The origins browsers may call the gateway from: Ollama's defaults plus ``extra``.

    ``OriginPolicy.from_env(os.environ)`` adds ``OLLAMA_ORIGINS`` as Ollama does.  Pure:
    :meth:`allows` and :meth:`decide` look at their arguments only."""

    __slots__ = ("origins", "allow_all", "_exact", "_wild")

    def __init__(self, extra: str | Iterable[str] | None = ()) -> None:
        self.origins: tuple[str, ...] = tuple(parse_origins(extra)) + DEFAULT_ORIGINS
        self.allow_all = "*" in self.origins
        self._exact = frozenset(o.lower() for o in self.origins if "*" not in o)
        self._wild = tuple(
            (o.lower().partition("*")[0], o.lower().partition("*")[2])
            for o in self.origins if "*" in o and o != "*"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None,
                 extra: str | Iterable[str] | None = ()) -> OriginPolicy:
        """Defaults + ``OLLAMA_ORIGINS`` from ``env`` (``os.environ`` when None) + ``extra``."""
        env = os.environ if env is None else env
        return cls(parse_origins(env.get("OLLAMA_ORIGINS")) + parse_origins(extra))

    def allows(self, origin: str) -> bool:
        """Whether a request with this ``Origin`` header may be served."""
        if self.allow_all:
            return True
        o = origin.lower()
        if o in self._exact:
            return True
        for prefix, suffix in self._wild:
            if len(o) >= len(prefix) + len(suffix) and o.startswith(prefix) and o.endswith(suffix):
                return True
        return False

    def decide(self, method: str, origin: str | None, host: str | None) -> CorsDecision:
        """gin-contrib/cors ``applyCors`` for one request (``host``: its Host header)."""
        if not origin:
            return _NO_CORS
        if host and (origin == "http://" + host or origin == "https://" + host):
            return _NO_CORS  # same origin (e.g. a page the gateway served)
        if not self.allows(origin):
            return _REFUSE
        allow_origin = "*" if self.allow_all else origin
        if method == "OPTIONS":
            headers = {
                "Access-Control-Allow-Origin": allow_origin,
                "Access-Control-Allow-Methods": CORS_ALLOW_METHODS,
                "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
                "Access-Control-Max-Age": CORS_MAX_AGE,
            }
            if not self.allow_all:
                headers["Vary"] = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
            return CorsDecision("preflight", headers)
        if self.allow_all:
            return CorsDecision("allow", {"Access-Control-Allow-Origin": "*"})
        return CorsDecision("allow", {"Access-Control-Allow-Origin": origin, "Vary": "Origin"})


# --------------------------------------------------------------------------- Host check
#
# Ollama's DNS-rebinding guard, server/routes.go ``allowedHostsMiddleware`` (with
# ``isLocalIP`` and ``allowedHost``): when the server listens on a loopback address, the
# request's Host (port removed as net.SplitHostPort does; the raw value when that fails)
# must be an IP literal that is loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7,
# netip's IsPrivate), unspecified or one of this machine's interface addresses, or a name
# that is empty, "localhost", this machine's hostname (os.Hostname, case-insensitive), or
# ends in ".localhost", ".local" or ".internal".  Anything else: 403.  Listening on any
# other address: no check.  One deliberate difference: a bracketed IPv6 literal without a
# port ("[::1]") is read as the address (Go's SplitHostPort fails on it and Ollama refuses).

_GO_PRIVATE = tuple(ipaddress.ip_network(n) for n in
                    ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
_LOCAL_TLDS = (".localhost", ".local", ".internal")


def _split_host(value: str) -> str:
    """net.SplitHostPort's host, or the value itself where SplitHostPort fails."""
    if value.startswith("["):
        end = value.find("]")
        if end > 0 and (end == len(value) - 1 or value[end + 1] == ":"):
            return value[1:end]
        return value
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value  # no port, or an unbracketed IPv6 address


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # netip unmaps 4-in-6 before IsLoopback / IsPrivate
    return ip


@functools.lru_cache(maxsize=1)
def _machine() -> tuple[str, frozenset[str]]:
    """This machine's hostname (lower case) and addresses (Ollama: os.Hostname and
    net.Interfaces; here the addresses the hostname resolves to, the stdlib's nearest)."""
    try:
        name = socket.gethostname()
    except OSError:  # pragma: no cover
        return "", frozenset()
    addrs: set[str] = set()
    try:
        for info in socket.getaddrinfo(name, None):
            ip = _ip(str(info[4][0]).split("%", 1)[0])
            if ip is not None:
                addrs.add(str(ip))
    except OSError:
        pass
    return name.lower(), frozenset(addrs)


def host_allowed(host_header: str | None, listener_is_loopback: bool, *,
                 hostname: str | None = None, local_ips: Iterable[str] | None = None) -> bool:
    """Ollama's Host check: may a request with this ``Host`` header be served by a listener
    that is (``listener_is_loopback``) or is not on a loopback address?  ``hostname`` and
    ``local_ips`` default to this machine's (looked up once)."""
    if not listener_is_loopback:
        return True
    host = _split_host(host_header or "")
    ip = _ip(host)
    if ip is not None:
        if ip.is_loopback or ip.is_unspecified or any(ip in n for n in _GO_PRIVATE):
            return True
        if local_ips is None:
            return str(ip) in _machine()[1]
        return any(str(ip) == str(_ip(a)) for a in local_ips)
    name = host.lower()
    if name in ("", "localhost") or name.endswith(_LOCAL_TLDS):
        return True
    return name == (_machine()[0] if hostname is None else hostname.lower())


@functools.lru_cache(maxsize=512)
def _host_allowed_on_loopback(host_header: str | None) -> bool:
    return host_allowed(host_header, True)


def listener_is_loopback(address: object) -> bool | None:
    """Whether a listening address is loopback: ``"127.0.0.1"``, ``"::1"``, ``"localhost"``
    or a socket address tuple -> True / False; None when that cannot be told (a name
    other than localhost, a Unix socket)."""
    if isinstance(address, (tuple, list)) and address:
        address = address[0]
    if not isinstance(address, str):
        return None
    host = address.strip("[]").split("%", 1)[0]
    if host.lower() == "localhost":
        return True
    ip = _ip(host)
    return None if ip is None else ip.is_loopback


class GatewayRules:
    """Keys, limits, browser rules (origins, Host check) and the dispatcher one gateway serves.

    ``origins``: an :class:`OriginPolicy`, or extra origin entries for one (None: Ollama's
    defaults plus ``OLLAMA_ORIGINS`` from the environment).  ``listener_loopback``: whether
    the gateway listens on a loopback address (True: the Host check applies; False or None,
    not known: it does not)."""

    def __init__(
        self,
        dispatcher: Any,
        *,
        api_keys: Iterable[str] = (),
        admin_keys: Iterable[str] = (),
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        send_timeout: float | None = DEFAULT_SEND_TIMEOUT,
        body_timeout: float | None = DEFAULT_BODY_TIMEOUT,
        origins: OriginPolicy | str | Iterable[str] | None = None,
        listener_loopback: bool | None = None,
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
        # request bodies being received now, on both front ends and all connections
        # (:meth:`reserve`); at least one body of the size limit always fits
        self.receiving = 0
        self.max_receiving = max(MAX_RECEIVING, self.max_body_size)
        if origins is None:
            origins = OriginPolicy.from_env()
        elif not isinstance(origins, OriginPolicy):
            origins = OriginPolicy(origins)
        self.origins: OriginPolicy = origins
        self.listener_loopback = listener_loopback

    @staticmethod
    def _key_matches(presented: bytes, keys: tuple[bytes, ...]) -> bool:
        ok = False
        for k in keys:  # every key is compared: time does not depend on which one matched
            ok |= hmac.compare_digest(presented, k)
        return ok

    def refusal(self, method: str, path: str, authorization: str | None) -> Refusal | None:
        """The 401 / 403 this request gets from its ``Authorization`` header, or ``None``.

        ``GET /`` and ``HEAD /`` ("Ollama is running") never need a key: they are what load
        balancers and Kubernetes probes call, and they say nothing but "up".
        ``/api/version`` keeps needing one: every client configured with a key sends it on
        every request (ollama-python's ``OLLAMA_API_KEY``, the openai SDK, Open WebUI), so
        a keyed client loses nothing, while the version number would tell an anonymous
        caller which known bugs the fleet has."""
        if not self.auth_enabled or (path == "/" and method in ("GET", "HEAD")):
            return None
        scheme, _, presented = (authorization or "").partition(" ")
        key = presented.strip().encode("utf-8", "surrogateescape") if scheme.lower() == "bearer" else b""
        if not key or not self._key_matches(key, self._user_keys):
            return Refusal(401, "unauthorized", "invalid_api_key", {"WWW-Authenticate": "Bearer"})
        if needs_admin(method, path) and not self._key_matches(key, self._admin_keys):
            return Refusal(403, "forbidden: this route needs an admin key", None, None)
        return None

    def host_allowed(self, host_header: str | None) -> bool:
        """Ollama's Host check (:func:`host_allowed`) for this gateway's listener: False ->
        answer 403.  Only a gateway told it listens on loopback (``listener_loopback`` True,
        as ``ollamamax serve`` does for a loopback ``--listen``) checks; unknown (None) means
        no check, as Ollama's middleware without a listener address.  Results are cached
        per Host value (a few microseconds the first time, a dict lookup after)."""
        if not self.listener_loopback:
            return True
        return _host_allowed_on_loopback(host_header)

    def cors(self, method: str, origin: str | None, host: str | None) -> CorsDecision:
        """What the request's ``Origin`` means (:meth:`OriginPolicy.decide`)."""
        return self.origins.decide(method, origin, host)

    def tenant_of(self, authorization: str | None) -> str | None:
        """The tenant of a request that :meth:`refusal` let through (None without keys)."""
        if not self.auth_enabled:
            return None
        scheme, _, presented = (authorization or "").partition(" ")
        return self._tenants.get(presented.strip().encode("utf-8", "surrogateescape")) if scheme.lower() == "bearer" else None

    def reserve(self, n: int) -> bool:
        """Take ``n`` bytes of the budget of request bodies being received at once (False:
        it is spent; answer 503 with ``Retry-After``); give them back with :meth:`release`."""
        if self.receiving + n > self.max_receiving:
            return False
        self.receiving += n
        return True

    def release(self, n: int) -> None:
        self.receiving -= n

    def busy_message(self) -> str:
        return "ollamamax gateway is receiving too many large request bodies at once; retry later"

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
