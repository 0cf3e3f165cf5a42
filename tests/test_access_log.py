"""The access log: one logfmt line per request, every field present and correct.

``format_access`` is checked on its own (field order, quoting, unknown values), then the
aiohttp front end's ``GatewayAccessLogger`` is checked end to end: a streamed chat and two
errors (a 401 the gateway answers itself, a 404 from the dispatcher) sent over a raw socket,
so the client address and the bytes written are known exactly; and ``ollamamax serve``'s
flags turn it on (default) and off.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re

import pytest
from test_gateway_common import stack

from ollamamax.frontends.accesslog import (
    ACCESS_LOGGER,
    GatewayAccessLogger,
    format_access,
    logfmt_value,
    model_from_body,
)
from ollamamax.ops.config import load_config

pytestmark = pytest.mark.timeout(60)

FIELDS = ["method", "path", "status", "model", "host", "attempts", "queue_ms", "cold", "cache",
          "ttfb_ms", "duration_ms", "bytes", "client"]
_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def parse(line: str) -> dict[str, str]:
    """A logfmt line -> dict, checking it is nothing but key=value pairs."""
    pairs = _PAIR.findall(line)
    assert " ".join(f"{k}={v}" for k, v in pairs) == line, line
    return {k: (json.loads(v) if v.startswith('"') else v) for k, v in pairs}


def test_format_access_has_every_field_in_order():
    line = format_access(
        "POST", "/api/chat", 200,
        {"X-Ollamamax-Host": "gpu1", "X-Ollamamax-Attempts": "2", "X-Ollamamax-Queue-Ms": "15",
         "X-Ollamamax-Cold-Load": "1", "X-Ollamamax-Cache": "miss"},
        0.0123456, 0.8301119, 5120, ("10.0.0.7", 51234), "llama3.2")
    assert line == ("method=POST path=/api/chat status=200 model=llama3.2 host=gpu1 attempts=2 "
                    "queue_ms=15 cold=1 cache=miss ttfb_ms=12.346 duration_ms=830.112 "
                    "bytes=5120 client=10.0.0.7:51234")
    assert list(parse(line)) == FIELDS


def test_unknown_values_are_dashes_and_odd_values_are_quoted():
    line = format_access("GET", '/a b"c\\\n=', 401, {"x-ollamamax-host": "-"}, None, 0.001,
                         None, ("::1", 9), None)
    rec = parse(line)
    assert rec["path"] == '/a b"c\\\n='
    assert "\n" not in line
    assert rec["model"] == "-" and rec["ttfb_ms"] == "-" and rec["bytes"] == "-"
    assert rec["host"] == "-" and rec["attempts"] == "-" and rec["client"] == "[::1]:9"
    assert logfmt_value("") == '""' and logfmt_value("\x01") == '"\\x01"'
    assert logfmt_value("llama3.2:8b") == "llama3.2:8b"


@pytest.mark.parametrize("body, model", [
    (b'{"model":"llama3.2","messages":[]}', "llama3.2"),
    (b'{"messages":[{"content":"say \\"model\\": \\"x\\""}],"model" : "qwen3:8b"}', "qwen3:8b"),
    (b'{"model":"caf\\u00e9"}', "caf\u00e9"),
    (b'{"prompt":"hi"}', None), (b"", None), (b"not json", None),
    (b'{"messages":[{"images":["' + b"A" * 300_000 + b'"]}],"model":"llava","stream":true}',
     "llava"),
])
def test_model_from_body(body, model):
    assert model_from_body(body) == model


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def access():
    logger = logging.getLogger(ACCESS_LOGGER)
    cap = _Capture()
    old = logger.level
    logger.addHandler(cap)
    logger.setLevel(logging.INFO)
    yield cap
    logger.removeHandler(cap)
    logger.setLevel(old)


async def _raw(url: str, request: bytes) -> tuple[bytes, str]:
    """Send one request with Connection: close; (everything received, our address)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    sock = writer.get_extra_info("sockname")
    writer.write(request)
    data = await reader.read()
    writer.close()
    return data, f"{sock[0]}:{sock[1]}"


def _post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n").encode() + body


async def _line(access: _Capture, n: int) -> dict[str, str]:
    for _ in range(100):  # aiohttp logs after the handler returns
        if len(access.lines) >= n:
            break
        await asyncio.sleep(0.01)
    assert len(access.lines) == n, access.lines
    return parse(access.lines[-1])


async def test_streamed_chat_and_errors_each_log_one_complete_line(access, front):
    """On both front ends: the fast path formats its own line, handed-over connections and a
    mounted app log through ``GatewayAccessLogger``."""
    runner_kw = {"access_log": logging.getLogger(ACCESS_LOGGER),
                 "access_log_class": GatewayAccessLogger}
    async with stack(1, front=front, runner_kw=runner_kw, app_kw={"api_keys": ["k"]},
                     tokens_per_sec=200) as s:
        host_name = s.hosts[0].url.removeprefix("http://")
        chat = json.dumps({"model": "llama3.2", "stream": True,
                           "messages": [{"role": "user", "content": "tell me a story"}]}).encode()
        data, me = await _raw(s.url, _post("/api/chat", chat, "Authorization: Bearer k\r\n"))
        assert data.startswith(b"HTTP/1.1 200")
        rec = await _line(access, 1)
        assert list(rec) == FIELDS
        assert rec["method"] == "POST" and rec["path"] == "/api/chat" and rec["status"] == "200"
        assert rec["model"] == "llama3.2"
        assert rec["host"] == host_name
        assert rec["attempts"] == "1" and rec["cache"] == "-"
        assert float(rec["queue_ms"]) >= 0 and rec["cold"] in ("0", "1")
        ttfb, duration = float(rec["ttfb_ms"]), float(rec["duration_ms"])
        assert 0 < ttfb <= duration
        assert duration - ttfb > 5  # the stream took a while after its first byte
        assert int(rec["bytes"]) == len(data)
        assert rec["client"] == me

        # an error the gateway answers itself: no host, no attempt, no body read
        data, me = await _raw(s.url, _post("/api/chat", chat))
        assert data.startswith(b"HTTP/1.1 401")
        rec = await _line(access, 2)
        assert (rec["method"], rec["path"], rec["status"]) == ("POST", "/api/chat", "401")
        assert rec["host"] == "-" and rec["attempts"] == "0" and rec["queue_ms"] == "0"
        assert rec["model"] == "-"
        assert int(rec["bytes"]) == len(data) and rec["client"] == me
        assert 0 <= float(rec["ttfb_ms"]) <= float(rec["duration_ms"])

        # an error from the dispatcher: the model it named is logged
        missing = b'{"model":"nosuch-model","prompt":"hi","stream":false}'
        data, me = await _raw(s.url, _post("/api/generate?x=1", missing,
                                           "Authorization: Bearer k\r\n"))
        assert data.startswith(b"HTTP/1.1 404")
        rec = await _line(access, 3)
        assert (rec["path"], rec["status"], rec["model"]) == ("/api/generate", "404",
                                                              "nosuch-model")
        assert int(rec["bytes"]) == len(data) and rec["client"] == me
        assert list(rec) == FIELDS


def test_serve_flags():
    base = {"backends": ["http://a:1"]}
    assert load_config(base, {}).access_log is True
    assert load_config({**base, "access_log": False}, {}).access_log is False
    assert load_config(base, {"OLLAMAMAX_ACCESS_LOG": "0"}).access_log is False


def test_serve_cli_has_the_flags():
    import argparse

    from ollamamax.ops.serve import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    ns = p.parse_args(["--no-access-log", "--origins", "https://a.test,https://b.test"])
    cfg = load_config(vars(ns) | {"backend": ["http://a:1"]}, {})
    assert cfg.access_log is False and cfg.origins == ("https://a.test", "https://b.test")
    assert p.parse_args([]).access_log is None


async def test_buffered_handler_writes_whole_lines_in_batches():
    """``ollamamax serve``'s access handler: lines wait in a buffer (no write per request)
    and reach the stream in order, complete, when the buffer fills, when its timer fires
    (``flush_after`` after the first waiting line) and at close; ``log_line`` takes the
    same lines straight to it, prefixed as the formatter would."""
    import io

    from ollamamax.frontends.accesslog import AccessLineFormatter, BufferedLineHandler, log_line

    stream = io.StringIO()
    logger = logging.getLogger("ollamamax.access.test-buffered")
    logger.propagate = False
    handler = BufferedLineHandler(stream, buffer_bytes=200, flush_after=0.05)
    handler.setFormatter(AccessLineFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        log_line(logger, "method=GET path=/a")
        logger.info("method=GET path=/b")  # through logging: the same shape
        assert stream.getvalue() == ""  # waiting in the buffer
        await asyncio.sleep(0.2)  # the timer flushed it
        lines = stream.getvalue().splitlines()
        assert [x.split(" ", 2)[2] for x in lines] == ["method=GET path=/a", "method=GET path=/b"]
        assert all(x.startswith("time=") and x.split(" ")[1].startswith("pid=") for x in lines)
        for i in range(10):  # past buffer_bytes: written without waiting for the timer
            log_line(logger, f"method=GET path=/{i}")
        assert len(stream.getvalue().splitlines()) >= 2 + 3
        log_line(logger, "method=GET path=/last")
        handler.close()
        assert stream.getvalue().splitlines()[-1].endswith("path=/last")
        assert len(stream.getvalue().splitlines()) == 13
    finally:
        logger.removeHandler(handler)
