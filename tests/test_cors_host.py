"""Browsers: CORS with Ollama's defaults and ``OLLAMA_ORIGINS``, and the Host check.

The rules are pure functions in ``frontends.rules`` (tested cell by cell against Ollama's
envconfig ``AllowedOrigins`` + gin-contrib/cors and ``allowedHostsMiddleware`` /
``allowedHost``); the functional tests check the aiohttp app applies them before the key
check, on every answer, and also when mounted as a sub-application.  The fast path hands
requests with ``Origin`` / ``OPTIONS`` to aiohttp; its Host check is expected to pass once
it calls ``GatewayRules.host_allowed``.
"""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from test_gateway_common import serve_app, stack

from ollamamax import create_app
from ollamamax.frontends.rules import (
    CORS_ALLOW_HEADERS,
    DEFAULT_ORIGINS,
    GatewayRules,
    OriginPolicy,
    host_allowed,
    listener_is_loopback,
    parse_origins,
)
from ollamamax.ops.config import ConfigError, load_config
from ollamamax.wire.response import DispatchResponse

pytestmark = pytest.mark.timeout(60)

CHAT = b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}'


# ------------------------------------------------------------------ origins (pure)


@pytest.mark.parametrize("origin, allowed", [
    ("http://localhost", True), ("https://localhost", True), ("http://localhost:3000", True),
    ("https://127.0.0.1:8443", True), ("http://0.0.0.0:80", True), ("http://127.0.0.1", True),
    ("app://obsidian.md", True), ("file://", True), ("tauri://localhost", True),
    ("vscode-webview://1abc", True), ("vscode-file://vscode-app", True),
    ("https://evil.com", False), ("http://localhost.evil.com", False),  # gin's trailing-* quirk
    ("http://127.0.0.1.nip.io", False), ("http://[::1]:3000", False), ("null", False),
    ("chrome-extension://abcdef", False),  # extensions must be listed (AllowBrowserExtensions)
    ("http://localhos", False), ("ftp://localhost", False),
])
def test_default_origins(origin, allowed):
    assert OriginPolicy().allows(origin) is allowed
    assert OriginPolicy(()).allows(origin) is allowed


def test_default_list_is_ollamas():
    assert len(DEFAULT_ORIGINS) == 17
    assert DEFAULT_ORIGINS[:4] == ("http://localhost", "https://localhost", "http://localhost:*",
                                   "https://localhost:*")
    assert DEFAULT_ORIGINS[-5:] == ("app://*", "file://*", "tauri://*", "vscode-webview://*",
                                    "vscode-file://*")


def test_ollama_origins_adds_with_wildcards():
    p = OriginPolicy.from_env({"OLLAMA_ORIGINS": " 'https://*.example.com,chrome-extension://*,"
                                                 "https://app.test' "})
    assert p.allows("https://a.example.com") and p.allows("https://a.b.example.com")
    assert not p.allows("https://example.com.evil.net") and not p.allows("http://a.example.com")
    assert p.allows("chrome-extension://abcdef") and p.allows("https://app.test")
    assert p.allows("HTTPS://APP.TEST")
    assert not p.allows("https://app.test.evil")
    assert p.allows("http://localhost:1234")  # the defaults stay
    both = OriginPolicy.from_env({"OLLAMA_ORIGINS": "https://a.test"}, extra="https://b.test")
    assert both.allows("https://a.test") and both.allows("https://b.test")
    assert not OriginPolicy.from_env({}).allows("https://a.test")


def test_star_allows_every_origin():
    p = OriginPolicy("*")
    assert p.allows("https://anything.example")
    d = p.decide("POST", "https://anything.example", "gw:11434")
    assert d.action == "allow" and d.headers == {"Access-Control-Allow-Origin": "*"}


@pytest.mark.parametrize("bad", ["example.com", "https://*.a.*", "localhost:3000", "ws://x"])
def test_bad_origin_entries_are_refused(bad):
    with pytest.raises(ValueError):
        parse_origins(bad)
    with pytest.raises(ConfigError):
        load_config({"backends": ["http://a:1"], "origins": bad}, {})


def test_decide_follows_gin_cors():
    p = OriginPolicy()
    assert p.decide("POST", None, "localhost:11434").action == "none"
    assert p.decide("POST", "http://gw:8080", "gw:8080").action == "none"  # same origin
    assert p.decide("POST", "https://gw:8080", "gw:8080").action == "none"
    for method in ("OPTIONS", "POST", "GET"):
        assert p.decide(method, "https://evil.com", "localhost:11434").action == "refuse"
    pre = p.decide("OPTIONS", "http://localhost:3000", "localhost:11434")
    assert pre.action == "preflight"
    assert pre.headers == {
        "Access-Control-Allow-Origin": "http://localhost:3000",
        "Access-Control-Allow-Methods": "GET,POST,PUT,PATCH,DELETE,HEAD",
        "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
        "Access-Control-Max-Age": "43200",
        "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
    }
    for h in ("Authorization", "Content-Type", "X-Stainless-Os", "Openai-Beta"):
        assert h in CORS_ALLOW_HEADERS.split(",")
    normal = p.decide("POST", "http://localhost:3000", "localhost:11434")
    assert normal.action == "allow"
    assert normal.headers == {"Access-Control-Allow-Origin": "http://localhost:3000",
                              "Vary": "Origin"}


# ------------------------------------------------------------------ Host check (pure)


@pytest.mark.parametrize("host, allowed", [
    (None, True), ("", True), ("localhost", True), ("localhost:11434", True),
    ("LOCALHOST:1", True), ("app.localhost:80", True), ("printer.local", True),
    ("db.internal:5432", True), ("myhost", True), ("MyHost:11434", True),
    ("127.0.0.1:11434", True), ("127.9.9.9", True), ("[::1]:11434", True), ("::1", True),
    ("[::1]", True),  # a bracketed literal without a port (Ollama refuses; documented)
    ("0.0.0.0:11434", True), ("[::]:1", True), ("10.1.2.3:11434", True),
    ("172.16.0.1", True), ("172.31.255.255", True), ("192.168.1.10:80", True),
    ("[fd00::1]:80", True), ("[::ffff:127.0.0.1]:80", True), ("203.0.113.5:11434", True),
    ("evil.com", False), ("evil.com:11434", False), ("localhost.evil.com", False),
    ("x", False), ("172.32.0.1", False), ("8.8.8.8:80", False), ("169.254.1.1", False),
    ("100.64.0.1", False), ("[2001:db8::1]:80", False), ("myhost.evil.com", False),
    ("localhost.", False), ("127.1", False),
])
def test_host_allowed_on_a_loopback_listener(host, allowed):
    got = host_allowed(host, True, hostname="MyHost", local_ips=["203.0.113.5"])
    assert got is allowed, host
    assert host_allowed(host, False, hostname="MyHost", local_ips=[]) is True


def test_listener_is_loopback():
    assert listener_is_loopback("127.0.0.1") is True
    assert listener_is_loopback("::1") is True
    assert listener_is_loopback("[::1]") is True
    assert listener_is_loopback("localhost") is True
    assert listener_is_loopback(("127.0.0.5", 11434)) is True
    assert listener_is_loopback("0.0.0.0") is False
    assert listener_is_loopback("::") is False
    assert listener_is_loopback("192.168.1.2") is False
    assert listener_is_loopback("gw.example") is None


def test_rules_hold_the_listener_fact():
    assert GatewayRules(None, listener_loopback=True).host_allowed("evil.com:1") is False
    assert GatewayRules(None, listener_loopback=True).host_allowed("localhost:1") is True
    assert GatewayRules(None, listener_loopback=False).host_allowed("evil.com:1") is True
    assert GatewayRules(None).host_allowed("evil.com:1") is True  # unknown listener: no check


def test_config_origins_and_env():
    cfg = load_config({"backends": ["http://a:1"], "origins": "https://a.test, https://*.b.test"},
                      {"OLLAMA_ORIGINS": "https://c.test"})
    assert cfg.origins == ("https://c.test", "https://a.test", "https://*.b.test")
    cfg = load_config({"backends": ["http://a:1"]}, {"OLLAMAMAX_ORIGINS": "https://d.test"})
    assert cfg.origins == ("https://d.test",)
    assert load_config({"backends": ["http://a:1"]}, {}).origins == ()
    assert type(cfg).from_dict(cfg.to_dict()).origins == cfg.origins


# ------------------------------------------------------------------ through the gateway


FRONTS = ["aiohttp", "fast"]


@pytest.mark.parametrize("front", FRONTS)
async def test_cors_through_the_gateway(front):
    async with stack(1, front=front, app_kw={"api_keys": ["k"]}) as s, \
            aiohttp.ClientSession() as c:
        pre = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization,content-type"}
        async with c.options(s.url + "/api/chat", headers=pre) as r:  # no key: preflight
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
            assert r.headers["Access-Control-Allow-Methods"] == "GET,POST,PUT,PATCH,DELETE,HEAD"
            assert "Authorization" in r.headers["Access-Control-Allow-Headers"].split(",")
            assert r.headers["Access-Control-Max-Age"] == "43200"
        bad = dict(pre, Origin="https://evil.com")
        async with c.options(s.url + "/api/chat", headers=bad) as r:
            assert r.status == 403
            assert "Access-Control-Allow-Origin" not in r.headers
        async with c.post(s.url + "/api/chat", data=CHAT, headers={
                "Origin": "https://evil.com", "Authorization": "Bearer k"}) as r:
            assert r.status == 403  # a simple request from a foreign page is refused too
            assert "Access-Control-Allow-Origin" not in r.headers
        ok = {"Origin": "http://localhost:3000", "Authorization": "Bearer k"}
        async with c.post(s.url + "/api/chat", data=CHAT, headers=ok) as r:
            assert r.status == 200
            assert r.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
            assert r.headers["Vary"] == "Origin"
            assert (await r.json())["message"]["role"] == "assistant"
        async with c.post(s.url + "/api/chat", data=CHAT,
                          headers={"Origin": "http://localhost:3000"}) as r:
            assert r.status == 401  # the error is readable by the page: CORS headers on it
            assert r.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        async with c.post(s.url + "/api/chat", data=CHAT, headers={"Authorization": "Bearer k"}) as r:
            assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers


@pytest.mark.parametrize("front", FRONTS)
async def test_ollama_origins_env_reaches_the_app(front, monkeypatch):
    monkeypatch.setenv("OLLAMA_ORIGINS", "https://*.example.com")
    async with stack(1, front=front) as s, aiohttp.ClientSession() as c:
        async with c.post(s.url + "/api/chat", data=CHAT,
                          headers={"Origin": "https://ui.example.com"}) as r:
            assert r.status == 200
            assert r.headers["Access-Control-Allow-Origin"] == "https://ui.example.com"


@pytest.mark.parametrize("front", FRONTS)
async def test_host_check_on_a_loopback_listener(front):
    async with stack(1, front=front, app_kw={"listener_loopback": True}) as s, \
            aiohttp.ClientSession() as c:
        for host, status in (("evil.com:11434", 403), ("localhost:11434", 200),
                             ("127.0.0.1", 200), ("rebind.attacker.net", 403)):
            async with c.post(s.url + "/api/chat", data=CHAT, headers={"Host": host}) as r:
                assert r.status == status, host
                if status == 403:
                    assert (await r.json())["error"] == "forbidden: host not allowed"
        async with c.get(s.url + "/", headers={"Host": "evil.com"}) as r:
            assert r.status == 403
    async with stack(1, front=front, app_kw={"listener_loopback": False}) as s, \
            aiohttp.ClientSession() as c:
        async with c.post(s.url + "/api/chat", data=CHAT, headers={"Host": "evil.com"}) as r:
            assert r.status == 200


class _Echo:
    """A dispatcher that answers every request with 200 and counts them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def handle(self, method, path, body, headers, *, query="", tenant=None):
        self.calls.append((method, path))
        return DispatchResponse(200, {"Content-Type": "application/json"}, body=b'{"ok":true}')


async def test_cors_and_host_check_when_mounted():
    d = _Echo()
    parent = web.Application()

    async def own(request: web.Request) -> web.Response:
        return web.Response(text="parent")

    parent.router.add_get("/own", own)
    parent.add_subapp("/ollama", create_app(d, observability=False, listener_loopback=True,
                                            origins=["https://ui.test"]))
    close, url = await serve_app(parent, "aiohttp")
    try:
        async with aiohttp.ClientSession() as c:
            pre = {"Origin": "https://ui.test", "Access-Control-Request-Method": "POST"}
            async with c.options(url + "/ollama/api/chat", headers=pre) as r:
                assert r.status == 204
                assert r.headers["Access-Control-Allow-Origin"] == "https://ui.test"
            async with c.post(url + "/ollama/api/chat", data=CHAT,
                              headers={"Origin": "https://ui.test"}) as r:
                assert r.status == 200
                assert r.headers["Access-Control-Allow-Origin"] == "https://ui.test"
            async with c.post(url + "/ollama/api/chat", data=CHAT,
                              headers={"Origin": "https://evil.com"}) as r:
                assert r.status == 403
            async with c.post(url + "/ollama/api/chat", data=CHAT,
                              headers={"Host": "evil.com"}) as r:
                assert r.status == 403
            async with c.get(url + "/own", headers={"Origin": "https://evil.com"}) as r:
                assert r.status == 200  # the parent's own routes are the parent's business
                assert "Access-Control-Allow-Origin" not in r.headers
        assert d.calls == [("POST", "/api/chat")]
    finally:
        await close()
