"""Authentication over every route the gateway serves, through both HTTP front ends.

One gateway per front end for the whole module (a real Dispatcher over emulated hosts, on
a background loop), with one user key and one admin key.  Each cell of
route x {no key, wrong key, user key, admin key} x front is its own test:

* no key or a wrong key -> 401, on every route (observability and unknown paths too)
  except the liveness probes ``GET /`` and ``HEAD /``, which never need a key;
* the user key on a model-management route (pull, push, create, copy, delete, blob
  upload) -> 403; on any other route -> neither 401 nor 403;
* the admin key -> never 401 or 403.

The routes are listed here on purpose (method, path, a minimal valid body) rather than
taken from the package's route table: a route dropped from that table, or a new route
that skips the key check, must show up as a difference.
"""

from __future__ import annotations

import hashlib
import http.client
import json
from typing import Any
from urllib.parse import urlsplit

import pytest
from test_gateway_common import ThreadedStack

pytestmark = pytest.mark.timeout(60)

USER_KEY = "user-key-0123"
ADMIN_KEY = "admin-key-4567"
KEYS: dict[str, Any] = {"api_keys": [USER_KEY], "admin_keys": [ADMIN_KEY]}

BLOB = b"auth matrix blob bytes"
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
MSGS = [{"role": "user", "content": "hi"}]

# (method, path, body): body is a JSON-able object, raw bytes, or None (no body)
ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/", None),
    ("HEAD", "/", None),
    ("GET", "/api/version", None),
    ("GET", "/api/tags", None),
    ("HEAD", "/api/tags", None),
    ("GET", "/api/ps", None),
    ("POST", "/api/generate", {"model": "llama3.2", "prompt": "hi", "stream": False}),
    ("POST", "/api/chat", {"model": "llama3.2", "messages": MSGS, "stream": False}),
    ("POST", "/api/embed", {"model": "nomic-embed-text", "input": "hi"}),
    ("POST", "/api/embeddings", {"model": "nomic-embed-text", "prompt": "hi"}),
    ("POST", "/api/show", {"model": "llama3.2"}),
    ("HEAD", f"/api/blobs/{DIGEST}", None),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/llama3.2", None),
    ("POST", "/v1/chat/completions", {"model": "llama3.2", "messages": MSGS}),
    ("POST", "/v1/completions", {"model": "llama3.2", "prompt": "hi"}),
    ("POST", "/v1/embeddings", {"model": "nomic-embed-text", "input": "hi"}),
    ("GET", "/nosuch/route", None),  # the catch-all: an unknown path needs a key too
    # observability
    ("GET", "/metrics", None),
    ("GET", "/ollamamax/", None),
    ("GET", "/ollamamax", None),  # redirect to /ollamamax/ (not followed)
    ("GET", "/ollamamax/status", None),
    # model management: admin key only
    ("POST", "/api/pull", {"model": "all-minilm", "stream": False}),
    ("POST", "/api/push", {"model": "llama3.2", "stream": False}),
    ("POST", "/api/create", {"model": "matrix-created", "from": "llama3.2", "stream": False}),
    ("POST", "/api/copy", {"source": "llama3.2", "destination": "matrix-copy"}),
    ("DELETE", "/api/delete", {"model": "matrix-copy"}),
    ("POST", f"/api/blobs/{DIGEST}", BLOB),
]
PUBLIC_ROUTES = {("GET", "/"), ("HEAD", "/")}  # liveness probes: no key needed
ADMIN_ROUTES = {
    ("POST", "/api/pull"),
    ("POST", "/api/push"),
    ("POST", "/api/create"),
    ("POST", "/api/copy"),
    ("DELETE", "/api/delete"),
    ("POST", f"/api/blobs/{DIGEST}"),
}
AUTH = {
    "no-key": None,
    "wrong-key": "Bearer wrong-key-0000",
    "user-key": f"Bearer {USER_KEY}",
    "admin-key": f"Bearer {ADMIN_KEY}",
}


def _route_id(route: tuple[str, str, Any]) -> str:
    method, path, _ = route
    return f"{method} {path if not path.startswith('/api/blobs/') else '/api/blobs/sha256:...'}"


@pytest.fixture(scope="module")
def gateways():
    """Base URL of each front end: both gateways live for the whole module."""
    with ThreadedStack(front="fast", app_kw=KEYS) as fast, \
            ThreadedStack(front="aiohttp", app_kw=KEYS) as plain:
        yield {"fast": fast.url, "aiohttp": plain.url}


def _request(url: str, method: str, path: str, body: Any, authorization: str | None) -> tuple[int, dict[str, str], bytes]:
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=20)
    try:
        headers = {}
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = ("application/octet-stream" if isinstance(body, bytes)
                                       else "application/json")
        if authorization is not None:
            headers["Authorization"] = authorization
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_the_matrix_covers_every_admin_route():
    """The admin routes of the README are all in the matrix (and marked admin)."""
    listed = {(m, p) for m, p, _ in ROUTES}
    assert ADMIN_ROUTES <= listed
    assert {p for _, p in ADMIN_ROUTES} >= {"/api/pull", "/api/push", "/api/create", "/api/copy",
                                           "/api/delete"}


@pytest.mark.parametrize("key", list(AUTH), ids=list(AUTH))
@pytest.mark.parametrize("route", ROUTES, ids=[_route_id(r) for r in ROUTES])
def test_auth(gateways, front, route, key):
    method, path, body = route
    status, headers, data = _request(gateways[front], method, path, body, AUTH[key])
    admin_route = (method, path) in ADMIN_ROUTES
    if (method, path) in PUBLIC_ROUTES:
        assert status == 200, (status, data)
        assert data == (b"" if method == "HEAD" else b"Ollama is running")
    elif key in ("no-key", "wrong-key"):
        assert status == 401, (status, data)
        assert headers.get("www-authenticate") == "Bearer"
        if method != "HEAD":
            err = json.loads(data)["error"]
            assert (err["code"] == "invalid_api_key" if path.startswith("/v1/")
                    else err == "unauthorized")
    elif key == "user-key" and admin_route:
        assert status == 403, (status, data)
        assert json.loads(data)["error"].startswith("forbidden")
    else:
        assert status not in (401, 403), (status, data)
