"""Gateway configuration: TOML file + environment + command line -> :class:`GatewayConfig`.

Precedence, highest first: **command line > environment > TOML file > defaults**.  Each
setting is resolved on its own, so ``--strategy p2c`` on the command line overrides only the
strategy of a config file.

Keys (TOML top level; environment variable ``OLLAMAMAX_<KEY in upper case>``; CLI option
``--<key with dashes>``):

=================  ==========================  ==================================================
key                default                     meaning
=================  ==========================  ==================================================
backends           (required)                  Ollama base URLs.  env: comma-separated list;
                                               CLI: ``--backend URL`` (repeatable)
listen             ``127.0.0.1:11434``         ``host:port`` or ``[v6addr]:port``
workers            1                           processes sharing the port (SO_REUSEPORT)
api_keys           none                        accepted ``Authorization: Bearer`` keys; when any
                                               key (api or admin) is set, every route needs one
admin_keys         none                        keys that may also pull/push/create/copy/delete
max_body_size      ``1GiB``                    request body limit (bytes, or ``512KiB``/``10MB``)
grace_period       30                          seconds in-flight requests get after SIGTERM;
                                               then a stream ends with an in-band error
                                               line, an unanswered request gets 503
log_level          ``info``                    debug, info, warning, error, critical
loop               ``auto``                    auto (uvloop when installed), asyncio, uvloop
strategy           ``least-loaded``            least-loaded, p2c, round-robin, latency, affinity
auto_pull          false                       pull a model no host has, then serve it
queue_size         1024                        gateway wait-queue capacity
queue_timeout      30                          seconds a request may wait for a slot
max_in_flight      8                           default per-host in-flight limit
gc_freeze          false                       ``gc.freeze()`` once started (see gcstats.tune_gc)
gc_threshold       Python's (700,10,10)        e.g. ``"50000,20,20"``: ``gc.set_threshold``
connect_timeout    5                           seconds to open a connection to a host
first_byte_timeout 300                         seconds from sending to a host's first byte
idle_timeout       120                         longest gap between two chunks of a stream
send_timeout       60                          seconds a client may accept no bytes of its
                                               answer; then it is disconnected, its request
                                               cancelled and its host slot freed
body_timeout       60                          seconds from a request's head to the end of
                                               its body; else 408 and the connection closes
max_connections    0 (from the fd limit)       client connections per process (both front
                                               ends); more get 503 + ``Retry-After``.  0: the
                                               soft RLIMIT_NOFILE (raised to the hard limit
                                               at start-up) minus 96 for the process and
                                               2 x slots + 4 per host for upstream
                                               connections, at least a quarter of the limit
cache_bytes        ``256MiB``                  response cache budget (keys and values)
cache_scope        ``tenant``                  tenant: API keys never share cache hits; shared
origins            none                        origins browsers may call from, added to
                                               Ollama's defaults (localhost, 127.0.0.1,
                                               0.0.0.0 on any port; app://, file://, tauri://,
                                               vscode-webview://, vscode-file://); ``*``
                                               wildcards; env: comma-separated.  Ollama's own
                                               ``OLLAMA_ORIGINS`` is always added too
access_log         true                        one logfmt line per request on the
                                               ``ollamamax.access`` logger (stderr)
redis_url          none                        ``redis://``, ``rediss://`` or ``unix://`` URL
                                               (password or ACL user in it): several gateways
                                               share the scheduler's state (CLI ``--redis``;
                                               TOML also ``[redis] url = ...``)
redis_prefix       ``ollamamax``               prefix of every Redis key (two fleets, one Redis)
=================  ==========================  ==================================================

The TOML file may also hold a ``[dispatcher]`` table with any
:class:`~ollamamax.dispatch.config.DispatcherConfig` field (``first_byte_timeout``,
``cache_size``, ...) and per-host settings::

    [[hosts]]
    url = "http://gpu1:11434"
    name = "gpu1"
    weight = 2.0
    max_concurrency = 16
    headers = { Authorization = "Bearer upstream-secret" }

Hosts are the union of ``backends`` and ``[[hosts]]`` in the file.  A backend list from the
environment or the command line *replaces* the file's list; a URL in it that also appears in
``[[hosts]]`` keeps that entry's per-host settings.  The config file is ``--config PATH`` or
``OLLAMAMAX_CONFIG``.  Unknown keys, wrong types, bad URLs and an empty backend list raise
:class:`ConfigError` (``ollamamax serve`` turns it into exit code 2).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..dispatch.config import DispatcherConfig
from ..fleet.config import HostConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "ConfigError",
    "GatewayConfig",
    "STRATEGIES",
    "DEFAULT_MAX_BODY_SIZE",
    "load_config",
    "parse_listen",
    "parse_size",
    "parse_backend_url",
]

DEFAULT_MAX_BODY_SIZE = 1024 * 1024 * 1024  # frontends.rules.DEFAULT_MAX_BODY_SIZE
DEFAULT_LISTEN = "127.0.0.1:11434"
STRATEGIES = ("least-loaded", "p2c", "round-robin", "latency", "affinity")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOOPS = ("auto", "asyncio", "uvloop")
ENV_PREFIX = "OLLAMAMAX_"


class ConfigError(ValueError):
    """A configuration problem, with a message meant for the person running the command."""


@dataclass
class GatewayConfig:
    """Everything ``ollamamax serve`` needs: the hosts, the dispatcher knobs, the gateway's own."""

    hosts: list[HostConfig]
    dispatcher: DispatcherConfig = field(default_factory=DispatcherConfig)
    listen_host: str = "127.0.0.1"
    listen_port: int = 11434
    workers: int = 1
    api_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    grace_period: float = 30.0
    # a client that accepts no bytes of an answer for this long is disconnected (nginx's
    # send_timeout); its upstream request is cancelled and its slot freed
    send_timeout: float = 60.0
    # a request body must arrive within this many seconds of its head
    body_timeout: float = 60.0
    # client connections at once; beyond it new ones get 503 and are closed (0: derived
    # from the descriptor limit at start-up)
    max_connections: int = 0
    log_level: str = "info"
    loop: str = "auto"
    gc_freeze: bool = False
    gc_threshold: tuple[int, ...] | None = None
    # origins browsers may call from besides Ollama's defaults (OLLAMA_ORIGINS included)
    origins: tuple[str, ...] = ()
    access_log: bool = True

    @property
    def listen(self) -> str:
        return format_hostport(self.listen_host, self.listen_port)

    def url(self, port: int | None = None) -> str:
        host = self.listen_host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return "http://" + format_hostport(host, self.listen_port if port is None else port)

    def to_dict(self, *, redact: bool = False) -> dict[str, Any]:
        """A JSON-able dict; :meth:`from_dict` reverses it (used to hand config to workers)."""
        d = dataclasses.asdict(self)
        d["hosts"] = [
            {**dataclasses.asdict(h), "headers": dict(h.headers)} for h in self.hosts
        ]
        d["api_keys"] = list(self.api_keys)
        d["admin_keys"] = list(self.admin_keys)
        d["origins"] = list(self.origins)
        if redact:
            d["api_keys"] = ["***"] * len(self.api_keys)
            d["admin_keys"] = ["***"] * len(self.admin_keys)
            for h in d["hosts"]:
                h["headers"] = {k: "***" for k in h["headers"]}
            if d["dispatcher"].get("redis_url"):
                from ..dispatch.shared import redacted_url

                d["dispatcher"]["redis_url"] = redacted_url(d["dispatcher"]["redis_url"])
        return d

    def to_json(self, *, redact: bool = False) -> str:
        return json.dumps(self.to_dict(redact=redact), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GatewayConfig:
        d = dict(d)
        hosts = [HostConfig(**h) for h in d.pop("hosts")]
        disp = DispatcherConfig(**d.pop("dispatcher"))
        d["api_keys"] = tuple(d.get("api_keys", ()))
        d["admin_keys"] = tuple(d.get("admin_keys", ()))
        d["origins"] = tuple(d.get("origins", ()))
        if d.get("gc_threshold") is not None:
            d["gc_threshold"] = tuple(d["gc_threshold"])
        return cls(hosts=hosts, dispatcher=disp, **d)


# ----------------------------------------------------------------------------- parsers


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:11434"`` / ``"[::1]:8080"`` / ``"localhost:80"`` -> (host, port)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"listen: expected 'host:port' or '[ipv6]:port', got {value!r}")
    v = value.strip()
    m = re.fullmatch(r"\[([0-9A-Fa-f:.%a-zA-Z]+)\]:(\d{1,5})", v)
    if m:
        host, port_s = m.group(1), m.group(2)
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise ConfigError(f"listen: {host!r} is not an IPv6 address (in {value!r})") from None
    else:
        host, sep, port_s = v.rpartition(":")
        if not sep or not host or ":" in host or not port_s.isdigit():
            raise ConfigError(
                f"listen: expected 'host:port' or '[ipv6]:port' (e.g. 127.0.0.1:11434), got {value!r}"
            )
    port = int(port_s)
    if not 0 <= port <= 65535:
        raise ConfigError(f"listen: port {port} out of range 0..65535")
    return host, port


_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "kb": 1000,
    "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
}


def parse_size(value: object, *, what: str = "max_body_size") -> int:
    """Bytes from an int or a string such as ``"32MiB"``, ``"10MB"``, ``"512k"``."""
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a size, got {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", value)
        if not m or m.group(2).lower() not in _SIZE_UNITS:
            raise ConfigError(
                f"{what}: expected bytes or a size like '32MiB', '10MB', '512KiB', got {value!r}"
            )
        n = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    else:
        raise ConfigError(f"{what}: expected a size, got {value!r}")
    if n <= 0:
        raise ConfigError(f"{what}: must be positive, got {value!r}")
    return n


def parse_redis_url(value: object, what: str = "redis_url") -> str:
    """A ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL; a password or ACL user may be
    in it (``redis://user:secret@host:6379/0``)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{what}: expected a URL like 'redis://127.0.0.1:6379/0', got {value!r}")
    v = value.strip()
    scheme = v.partition("://")[0].lower()
    if "://" not in v or scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"{what}: expected a redis://, rediss:// or unix:// URL, got {v!r}")
    return v


def parse_backend_url(value: object) -> str:
    """Validate an Ollama base URL and return it without a trailing slash."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"backend URL: expected a string like 'http://gpu1:11434', got {value!r}")
    v = value.strip()
    if "://" not in v:
        raise ConfigError(
            f"backend URL {v!r} has no scheme: write it as 'http://{v}' (or https://)"
        )
    try:
        parts = urlsplit(v)
        port = parts.port  # raises ValueError when out of range / not a number
    except ValueError as exc:
        raise ConfigError(f"backend URL {v!r} is invalid: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"backend URL {v!r}: scheme must be http or https, not {parts.scheme!r}")
    if not parts.hostname:
        raise ConfigError(f"backend URL {v!r} has no host name")
    if parts.query or parts.fragment:
        raise ConfigError(f"backend URL {v!r} must not have a query or fragment")
    if parts.username or parts.password:
        raise ConfigError(
            f"backend URL {v!r} must not carry credentials; use [[hosts]] headers instead"
        )
    del port
    return v.rstrip("/")


def _parse_bool(value: object, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        s = value.strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off", ""):
            return False
    raise ConfigError(f"{what}: expected true/false, got {value!r}")


def _parse_int(value: object, what: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected an integer, got {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        n = int(value)
    else:
        raise ConfigError(f"{what}: expected an integer, got {value!r}")
    if minimum is not None and n < minimum:
        raise ConfigError(f"{what}: must be >= {minimum}, got {n}")
    return n


def _parse_float(value: object, what: str, *, minimum: float | None = None,
                 positive: bool = False) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        x = float(value)
    elif isinstance(value, str):
        try:
            x = float(value)
        except ValueError:
            raise ConfigError(f"{what}: expected a number, got {value!r}") from None
    else:
        raise ConfigError(f"{what}: expected a number, got {value!r}")
    if x != x or x in (float("inf"), float("-inf")):
        raise ConfigError(f"{what}: expected a finite number, got {value!r}")
    if positive and x <= 0:
        raise ConfigError(f"{what}: must be > 0, got {value!r}")
    if minimum is not None and x < minimum:
        raise ConfigError(f"{what}: must be >= {minimum}, got {value!r}")
    return x


def _parse_choice(value: object, what: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value.strip().lower() not in choices:
        raise ConfigError(f"{what}: expected one of {', '.join(choices)}; got {value!r}")
    return value.strip().lower()


def _parse_str_list(value: object, what: str, *, split: bool) -> list[str]:
    """A list of non-empty strings; a string is split on commas when ``split``."""
    if isinstance(value, str) and split:
        items = [s.strip() for s in value.split(",")]
        return [s for s in items if s]
    if isinstance(value, (list, tuple)):
        out = []
        for item in value:
            if not isinstance(item, str) or not item.strip():
                raise ConfigError(f"{what}: expected non-empty strings, got {item!r}")
            out.append(item.strip())
        return out
    raise ConfigError(f"{what}: expected a list of strings, got {value!r}")


# ---------------------------------------------------------------------------- the keys

# key -> parser(value, where) ; "where" names the source for error messages.
_TOP_KEYS = (
    "backends", "listen", "workers", "api_keys", "admin_keys", "max_body_size",
    "grace_period", "log_level", "loop", "strategy", "auto_pull", "queue_size",
    "queue_timeout", "max_in_flight", "gc_freeze", "gc_threshold",
    "connect_timeout", "first_byte_timeout", "idle_timeout", "send_timeout", "body_timeout",
    "max_connections", "cache_bytes", "cache_scope", "origins", "access_log",
    "redis_url", "redis_prefix",
)
# top-level key -> DispatcherConfig field (converted and checked as that field)
_DISPATCHER_ALIASES = {
    "strategy": "strategy",
    "auto_pull": "auto_pull",
    "queue_size": "queue_size",
    "queue_timeout": "queue_timeout",
    "max_in_flight": "max_in_flight_per_host",
    "connect_timeout": "connect_timeout",
    "first_byte_timeout": "first_byte_timeout",
    "idle_timeout": "idle_timeout",
    "cache_bytes": "cache_bytes",
    "cache_scope": "cache_scope",
    "redis_url": "redis_url",
    "redis_prefix": "redis_prefix",
}
CACHE_SCOPES = ("tenant", "shared")
_DISPATCHER_FIELDS = {f.name: f for f in dataclasses.fields(DispatcherConfig)}
_HOST_KEYS = ("url", "name", "weight", "max_concurrency", "headers", "num_parallel", "max_loaded_models", "vram")


def _convert(key: str, value: object, where: str) -> object:
    what = f"{key} ({where})"
    split = where.startswith("environment")  # lists come comma-separated only from env
    if key == "backends":
        return [parse_backend_url(u) for u in _parse_str_list(value, what, split=split)]
    if key in ("api_keys", "admin_keys"):
        keys = _parse_str_list(value, what, split=split)
        for k in keys:
            if any(c.isspace() for c in k):
                raise ConfigError(f"{what}: keys must not contain white space")
        return tuple(keys)
    if key == "listen":
        return parse_listen(value)  # type: ignore[arg-type]
    if key == "workers":
        return _parse_int(value, what, minimum=1)
    if key == "max_body_size":
        return parse_size(value, what=what)
    if key == "grace_period":
        return _parse_float(value, what, minimum=0.0)
    if key == "log_level":
        return _parse_choice(value, what, LOG_LEVELS)
    if key == "loop":
        return _parse_choice(value, what, LOOPS)
    if key in ("send_timeout", "body_timeout"):
        return _parse_float(value, what, positive=True)
    if key == "max_connections":
        return _parse_int(value, what, minimum=0)
    if key in _DISPATCHER_ALIASES:
        return _convert_dispatcher_field(_DISPATCHER_ALIASES[key], value, where)
    if key in ("gc_freeze", "access_log"):
        return _parse_bool(value, what)
    if key == "origins":
        return _parse_origins(value, what)
    if key == "gc_threshold":
        from .gcstats import parse_gc_threshold

        text = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value
        try:
            return parse_gc_threshold(text)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ConfigError(f"{what}: {exc}") from None
    raise AssertionError(key)  # pragma: no cover


def _parse_origins(value: object, what: str) -> tuple[str, ...]:
    from ..frontends.rules import parse_origins

    if not isinstance(value, (str, list, tuple)):
        raise ConfigError(f"{what}: expected a list of origins, got {value!r}")
    try:
        return tuple(parse_origins(value))  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None


# [dispatcher] knobs that must be at least 1 (ints) or strictly positive (floats);
# other ints may be 0 (cache_size 0 disables the cache), other floats >= 0.
_AT_LEAST_ONE = {"max_in_flight_per_host", "queue_size", "max_attempts", "eject_after_failures"}
_POSITIVE = {"queue_timeout", "connect_timeout", "first_byte_timeout", "idle_timeout",
             "refresh_interval", "eject_cooldown", "eject_max_cooldown", "affinity_overflow",
             "cache_ttl"}


def _convert_dispatcher_field(name: str, value: object, where: str) -> object:
    what = f"dispatcher.{name} ({where})"
    default = _DISPATCHER_FIELDS[name].default
    if name == "strategy":
        return _parse_choice(value, what, STRATEGIES)
    if name == "cache_scope":
        return _parse_choice(value, what, CACHE_SCOPES)
    if name in ("cache_bytes",):
        return parse_size(value, what=what)
    if name == "redis_url":
        return parse_redis_url(value, what)
    if name in ("max_ejection_percent", "panic_threshold"):
        v = _parse_float(value, what, minimum=0.0)
        if v > 100.0:  # type: ignore[operator]
            raise ConfigError(f"{what}: a percentage, 0 to 100, got {value!r}")
        return v
    if isinstance(default, bool):
        return _parse_bool(value, what)
    if isinstance(default, int):
        return _parse_int(value, what, minimum=1 if name in _AT_LEAST_ONE else 0)
    if isinstance(default, float) or default is None:
        if name == "cache_ttl" and isinstance(value, str) and value.lower() == "none":
            return None  # TOML has no null: cache_ttl = "none" means entries never expire
        return _parse_float(value, what, positive=name in _POSITIVE, minimum=0.0)
    if isinstance(default, str):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{what}: expected a non-empty string, got {value!r}")
        return value
    raise ConfigError(f"{what}: cannot be set from configuration")  # pragma: no cover


def _parse_host_entry(entry: object, index: int) -> HostConfig:
    where = f"[[hosts]] entry {index + 1}"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: expected a table, got {entry!r}")
    unknown = sorted(set(entry) - set(_HOST_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(_HOST_KEYS)}"
        )
    if "url" not in entry:
        raise ConfigError(f"{where}: 'url' is required")
    url = parse_backend_url(entry["url"])
    name = entry.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ConfigError(f"{where}: name must be a non-empty string, got {name!r}")
    weight = _parse_float(entry.get("weight", 1.0), f"{where} weight", positive=True)
    mc = entry.get("max_concurrency")
    if mc is not None:
        mc = _parse_int(mc, f"{where} max_concurrency", minimum=1)
    # what the host can do (else the scheduler learns it): OLLAMA_NUM_PARALLEL,
    # OLLAMA_MAX_LOADED_MODELS, and the memory its models may take
    known: dict[str, int | None] = {}
    for key in ("num_parallel", "max_loaded_models"):
        v = entry.get(key)
        known[key] = None if v is None else _parse_int(v, f"{where} {key}", minimum=1)
    vram = entry.get("vram")
    known["vram"] = None if vram is None else parse_size(vram, what=f"{where} vram")
    headers = entry.get("headers", {})
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ConfigError(f"{where}: headers must be a table of strings, got {headers!r}")
    return HostConfig(url=url, name=name, weight=weight, max_concurrency=mc, headers=dict(headers), **known)


def _url_key(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}{parts.path.rstrip('/')}"


def read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} not found") from None
    except OSError as exc:
        raise ConfigError(f"config file {path!r} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path!r} is not valid TOML: {exc}") from None


def load_config(
    cli: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    config_path: str | None = None,
) -> GatewayConfig:
    """Resolve a :class:`GatewayConfig` from CLI values, environment and a TOML file.

    ``cli`` maps the keys above to values, ``None`` meaning "not given" (an argparse
    namespace's ``vars()`` works: ``backend``/``api_key``/``admin_key`` are accepted as the
    singular spellings of the list options, and ``config`` names the file).  ``env`` is
    ``os.environ`` or a test dict.  ``config_path`` overrides both sources for the file.
    """
    cli = dict(cli or {})
    env = env or {}
    # accept argparse spellings
    for singular, plural in (("backend", "backends"), ("api_key", "api_keys"),
                             ("admin_key", "admin_keys")):
        if singular in cli and cli.get(plural) is None:
            cli[plural] = cli.pop(singular)
    path = config_path or cli.get("config") or env.get(ENV_PREFIX + "CONFIG") or None

    toml: dict[str, Any] = read_toml(path) if path else {}
    where_toml = f"config file {path}"
    redis_table = toml.pop("redis", None)
    if redis_table is not None:  # [redis] url = ..., prefix = ...: the redis_* keys
        if not isinstance(redis_table, Mapping) or set(redis_table) - {"url", "prefix"}:
            raise ConfigError(f"{where_toml}: [redis] must be a table with 'url' and optionally 'prefix'")
        for k, v in redis_table.items():
            if f"redis_{k}" in toml:
                raise ConfigError(f"{where_toml}: redis_{k} is set both at top level and in [redis]")
            toml[f"redis_{k}"] = v
    unknown = sorted(set(toml) - set(_TOP_KEYS) - {"dispatcher", "hosts"})
    if unknown:
        raise ConfigError(
            f"{where_toml}: unknown key(s) {', '.join(unknown)}; valid keys: "
            f"{', '.join(_TOP_KEYS)}, [dispatcher], [redis], [[hosts]]"
        )

    values: dict[str, object] = {}
    source: dict[str, str] = {}
    for key in _TOP_KEYS:
        if cli.get(key) is not None:
            values[key] = _convert(key, cli[key], "command line")
            source[key] = "cli"
        elif env.get(ENV_PREFIX + key.upper()) not in (None, ""):
            values[key] = _convert(key, env[ENV_PREFIX + key.upper()],
                                   f"environment {ENV_PREFIX}{key.upper()}")
            source[key] = "env"
        elif key in toml:
            values[key] = _convert(key, toml[key], where_toml)
            source[key] = "toml"

    # dispatcher knobs: [dispatcher] table first, then the aliases on top
    disp_kwargs: dict[str, Any] = {}  # each value converted and checked per field
    table = toml.get("dispatcher", {})
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where_toml}: [dispatcher] must be a table")
    unknown = sorted(set(table) - set(_DISPATCHER_FIELDS))
    if unknown:
        raise ConfigError(
            f"{where_toml}: unknown [dispatcher] key(s) {', '.join(unknown)}; valid keys: "
            f"{', '.join(_DISPATCHER_FIELDS)}"
        )
    for name, value in table.items():
        disp_kwargs[name] = _convert_dispatcher_field(name, value, where_toml)
    for alias, fname in _DISPATCHER_ALIASES.items():
        if alias in toml and fname in table:
            raise ConfigError(
                f"{where_toml}: {alias!r} is set both at top level and as [dispatcher] {fname}"
            )
        if alias in values:
            disp_kwargs[fname] = values[alias]

    # hosts
    toml_hosts_raw = toml.get("hosts", [])
    if not isinstance(toml_hosts_raw, list):
        raise ConfigError(f"{where_toml}: 'hosts' must be an array of tables ([[hosts]])")
    toml_hosts = [_parse_host_entry(e, i) for i, e in enumerate(toml_hosts_raw)]
    by_url = {_url_key(h.url): h for h in toml_hosts}
    backends: list[str] = list(values.get("backends", ()))  # type: ignore[call-overload]
    if source.get("backends") in ("cli", "env"):
        # a higher-precedence list replaces the file's hosts, keeping their settings
        hosts = [by_url.get(_url_key(u)) or HostConfig(url=u) for u in backends]
    else:
        hosts = [HostConfig(url=u) for u in backends if _url_key(u) not in by_url] + toml_hosts
    if not hosts:
        raise ConfigError(
            "no backends: give --backend http://HOST:11434 (repeatable), set "
            "OLLAMAMAX_BACKENDS=url1,url2, or list them in the config file"
        )
    seen: dict[str, str] = {}
    for h in hosts:
        k = _url_key(h.url)
        if k in seen:
            raise ConfigError(f"backend {h.url!r} is listed twice")
        seen[k] = h.url
    names = [h.name for h in hosts if h.name]
    if len(names) != len(set(names)):
        raise ConfigError(f"host names must be unique, got {names}")

    kw: dict[str, Any] = {}
    if "listen" in values:
        kw["listen_host"], kw["listen_port"] = values["listen"]  # type: ignore[misc]
    for key in ("workers", "api_keys", "admin_keys", "max_body_size", "grace_period",
                "log_level", "loop", "gc_freeze", "gc_threshold", "send_timeout", "body_timeout",
                "max_connections", "access_log"):
        if key in values:
            kw[key] = values[key]
    # Ollama's OLLAMA_ORIGINS is honoured as Ollama does (added to the defaults), with the
    # gateway's own origins setting on top
    origins = _parse_origins(env.get("OLLAMA_ORIGINS") or "", "OLLAMA_ORIGINS (environment)")
    kw["origins"] = origins + tuple(values.get("origins", ()))  # type: ignore[arg-type]
    return GatewayConfig(hosts=hosts, dispatcher=DispatcherConfig(**disp_kwargs), **kw)
