"""The one route table: every path the gateway answers, and what each one is.

A :class:`Route` says everything the rest of ollamamax needs to know about a path, so that
adding a route touches this table and the handler that serves it, nothing else:

* ``kind``: how the dispatcher serves it.  ``model`` routes carry a model and go to one
  host chosen by placement (generate, chat, embed, embeddings, show, push, the ``/v1``
  inference routes); ``tags``, ``ps``, ``version``, ``v1_models``, ``v1_model`` ask the
  hosts and merge; ``root`` and ``status`` are answered locally; ``pull``, ``create``,
  ``copy``, ``delete`` and ``blobs`` act on several hosts.
* the Go request struct (for Go's "cannot unmarshal" messages) and ``checks``: the typed
  fields the gateway validates before routing (only what routing reads);
* ``openai``: the ``/v1`` dialect (OpenAI error shape, ``stream`` defaults to false);
* ``loads_model``: a request makes the host load the model (show and push do not);
* ``cache``: ``"embed"`` (always cacheable), ``"gen"`` (cacheable when deterministic and
  enabled), or None;
* ``admin_methods``: methods that need an admin key (model management, blob uploads);
* how "model not found" and an empty model are worded, as Ollama words them.

Anything else is answered ``404 page not found`` (plain text), as Ollama's router does (it
has no 405s either).  Pure data and lookups; no I/O.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

__all__ = ["BLOBS", "ROUTES", "V1_MODEL", "Route", "lookup", "needs_admin"]

# field -> (the one type json.loads gives for an accepted value, Go type name); JSON null
# is always accepted (values from json.loads have exact types, so ``type(v) is t`` is the
# isinstance test, bools included)
_FIELD_TYPES: dict[str, tuple[type, str]] = {
    "model": (str, "string"),
    "stream": (bool, "bool"),
    "options": (dict, "map[string]interface {}"),
    "messages": (list, "[]api.Message"),
    "prompt": (str, "string"),
    "source": (str, "string"),
    "destination": (str, "string"),
    "name": (str, "string"),
}


def _checks(*fields: str) -> tuple[tuple[str, type, str], ...]:
    return tuple((f, *_FIELD_TYPES[f]) for f in fields)


@dataclass(frozen=True, slots=True)
class Route:
    path: str
    kind: str
    methods: frozenset[str]
    go_struct: str = "Request"  # Go request type, for "cannot unmarshal" messages
    checks: tuple[tuple[str, type, str], ...] = ()  # (field, type, Go type name)
    openai: bool = False  # /v1: OpenAI error shape, stream default false
    stream_default: bool = False
    loads_model: bool = False  # the host loads the model to answer
    cache: str | None = None  # "embed" | "gen" | None
    admin_methods: frozenset[str] = frozenset()  # methods that need an admin key
    # how "model not found" is worded: "single" model 'x' not found;
    # "double" model "x" not found, try pulling it first; "show" model 'x:latest' not found
    notfound: str = "single"
    # empty model: "required" -> 400 model is required; "notfound" -> 404 as above
    empty_model: str = "required"
    model_field: str = "model"


_POST = frozenset({"POST"})
_GET = frozenset({"GET", "HEAD"})
_DELETE = frozenset({"DELETE"})

ROUTES: dict[str, Route] = {
    r.path: r
    for r in (
        Route("/api/generate", "model", _POST, "GenerateRequest", _checks("model", "stream", "options", "prompt"),
              stream_default=True, loads_model=True, cache="gen", empty_model="notfound"),
        Route("/api/chat", "model", _POST, "ChatRequest", _checks("model", "stream", "options", "messages"),
              stream_default=True, loads_model=True, cache="gen"),
        Route("/api/embed", "model", _POST, "EmbedRequest", _checks("model", "options"),
              loads_model=True, cache="embed", notfound="double", empty_model="notfound"),
        Route("/api/embeddings", "model", _POST, "EmbeddingRequest", _checks("model", "options", "prompt"),
              loads_model=True, cache="embed", notfound="double", empty_model="notfound"),
        Route("/api/show", "model", _POST, "ShowRequest", _checks("model", "name"), notfound="show"),
        Route("/api/push", "model", _POST, "PushRequest", _checks("model", "stream", "name"),
              stream_default=True, admin_methods=_POST),
        Route("/v1/chat/completions", "model", _POST, "ChatCompletionRequest",
              _checks("model", "stream", "messages"), openai=True, loads_model=True, cache="gen"),
        Route("/v1/completions", "model", _POST, "CompletionRequest", _checks("model", "stream"),
              openai=True, loads_model=True, cache="gen"),
        Route("/v1/embeddings", "model", _POST, "EmbedRequest", _checks("model"),
              openai=True, loads_model=True, cache="embed", notfound="double"),
        Route("/api/tags", "tags", _GET),
        Route("/api/ps", "ps", _GET),
        Route("/api/version", "version", _GET),
        Route("/", "root", _GET),
        Route("/ollamamax/status", "status", _GET),
        Route("/v1/models", "v1_models", _GET, openai=True),
        Route("/api/pull", "pull", _POST, "PullRequest", _checks("model", "stream", "name"),
              stream_default=True, admin_methods=_POST),
        Route("/api/delete", "delete", _DELETE, "DeleteRequest", _checks("model", "name"), admin_methods=_DELETE),
        Route("/api/copy", "copy", _POST, "CopyRequest", _checks("source", "destination"),
              model_field="source", admin_methods=_POST),
        Route("/api/create", "create", _POST, "CreateRequest", _checks("model", "stream"),
              stream_default=True, admin_methods=_POST),
    )
}

V1_MODEL = Route("/v1/models/{model}", "v1_model", _GET, openai=True)
BLOBS = Route("/api/blobs/{digest}", "blobs", frozenset({"HEAD", "POST"}), admin_methods=_POST)


def lookup(method: str, path: str) -> Route | None:
    """The route for ``method path``, or None (-> 404 page not found)."""
    r = ROUTES.get(path)
    if r is None:
        if path.startswith("/v1/models/") and len(path) > len("/v1/models/"):
            r = V1_MODEL
        elif path.startswith("/api/blobs/") and len(path) > len("/api/blobs/"):
            r = BLOBS
        else:
            return None
    if method not in r.methods:
        return None
    return r


_MULTI_SLASH = re.compile(r"/{2,}")
# lower-cased admin paths, and prefixes whose every non-read method is admin
_ADMIN_PATHS = frozenset(r.path for r in ROUTES.values() if r.admin_methods)
_ADMIN_PREFIXES = ("/api/blobs",)


def needs_admin(method: str, path: str) -> bool:
    """Whether ``method path`` needs an admin key.

    Stricter than any router could be lenient: ``//``, ``/./``, ``/x/../``, a trailing
    slash, %-escapes (decoded by the caller) and case all count as the admin route, and any
    method but GET/HEAD on a blob path does too.
    """
    p = posixpath.normpath(_MULTI_SLASH.sub("/", path)).lower()
    if p in _ADMIN_PATHS:
        return True
    return p.startswith(_ADMIN_PREFIXES) and method not in ("GET", "HEAD")
