"""The emulator against Ollama's own behaviour, one test (or a few) per fix:

* keep-alive after a ``keep_alive: 0`` unload (server/sched.go ``load``/``expireRunner``),
* tool calls whenever tools are offered (the default) and the ``tool_calls`` switch,
* how a ``/v1`` stream ends when the model fails mid-reply (middleware/openai.go
  ``ChatWriter``/``CompleteWriter``, openai/openai.go ``ToChunks``/``ToCompleteChunk``),
* images sent to a model without vision (model/model.go ``ErrNoVisionModel``: 500).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import time
from datetime import datetime

import aiohttp
import pytest

from ollamamax.testing import FakeOllama
from ollamamax.testing.cli import add_arguments

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "the city"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["location", "unit"],
        },
    },
}
MAGIC = {  # LangChain's standard tool-calling test
    "type": "function",
    "function": {
        "name": "magic_function",
        "description": "Applies a magic function to an input.",
        "parameters": {"type": "object", "properties": {"input": {"type": "integer"}}, "required": ["input"]},
    },
}
BOSTON = [{"role": "user", "content": "What's the weather in Boston?"}]


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


async def post(session: aiohttp.ClientSession, url: str, body: dict) -> tuple[int, bytes]:
    async with session.post(url, json=body) as r:
        return r.status, await r.read()


async def jpost(session: aiohttp.ClientSession, url: str, body: dict) -> tuple[int, dict]:
    status, data = await post(session, url, body)
    return status, json.loads(data)


def sse_events(data: bytes) -> list[str]:
    text = data.decode()
    assert text.endswith("\n\n")
    events = text.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events)
    return [e[len("data: "):] for e in events]


async def ps_expiry(session: aiohttp.ClientSession, host: FakeOllama) -> float:
    """Seconds until the one loaded model's keep-alive expires, as /api/ps reports it."""
    async with session.get(host.url + "/api/ps") as r:
        (row,) = (await r.json())["models"]
    return datetime.fromisoformat(row["expires_at"]).timestamp() - time.time()


# --------------------------------------------------------------------------- 1. keep-alive


@pytest.mark.parametrize("route", ["/api/generate", "/api/chat", "/v1/chat/completions"])
async def test_fresh_load_after_unload_gets_the_default_keep_alive(session, route):
    """server/sched.go ``load()``: a new runner's ``sessionDuration`` is the request's
    keep_alive or else ``envconfig.KeepAlive()``; the 0 of an unload lived on the runner
    that ``expireRunner`` ended. So after ``{"keep_alive": 0}`` the next plain request loads
    the model once and it stays loaded with the default (5m), on every route."""
    async with FakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=0) as h:
        msgs = [{"role": "user", "content": "hi"}]
        body = {"model": "llama3.2", "prompt": "hi"} if route == "/api/generate" else {"model": "llama3.2", "messages": msgs}
        body["stream"] = False
        assert (await post(session, h.url + route, body))[0] == 200
        s, b = await jpost(session, h.url + "/api/generate", {"model": "llama3.2", "keep_alive": 0})
        assert (s, b["done_reason"]) == (200, "unload") and h.loaded_models() == []
        for _ in range(3):
            assert (await post(session, h.url + route, body))[0] == 200
            assert h.loaded_models() == ["llama3.2:latest"]
        assert h.stats()["models"]["llama3.2:latest"]["loads"] == 2
        assert 240 < await ps_expiry(session, h) <= 300
        # a request's own keep_alive still wins on the next load
        await post(session, h.url + "/api/generate", {"model": "llama3.2", "keep_alive": 0})
        assert (await post(session, h.url + route, {**body, "keep_alive": "1h"}))[0] == 200
        assert 3500 < await ps_expiry(session, h) <= 3600


async def test_unload_while_busy_then_default_again(session):
    """``expireRunner`` on a busy runner sets its duration to 0: it unloads when its last
    request ends. The load after that starts from the default again."""
    async with FakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=100, response_tokens=(20, 20)) as h:
        gen = {"model": "llama3.2", "prompt": "hi", "stream": False}
        busy = asyncio.create_task(post(session, h.url + "/api/generate", gen))
        while h.stats()["totals"]["in_flight"] == 0:
            await asyncio.sleep(0.005)
        s, b = await jpost(session, h.url + "/api/generate", {"model": "llama3.2", "keep_alive": 0})
        assert b["done_reason"] == "unload"
        assert (await busy)[0] == 200
        assert h.loaded_models() == []  # unloaded once the request in flight finished
        assert (await post(session, h.url + "/api/generate", gen))[0] == 200
        await asyncio.sleep(0.05)
        assert h.loaded_models() == ["llama3.2:latest"]
        assert 240 < await ps_expiry(session, h) <= 300


# --------------------------------------------------------------------------- 2. tool calls


async def test_tool_called_when_not_named_native(session):
    """Tools offered, last message from the user: the model calls a tool even when the
    message does not name it (LangChain's suite asks "What's the weather in Boston?")."""
    async with FakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=0, seed=3) as h:
        body = {"model": "llama3.2", "messages": BOSTON, "tools": [WEATHER], "stream": False}
        s, b = await jpost(session, h.url + "/api/chat", body)
        assert s == 200 and b["message"]["content"] == "" and b["done_reason"] == "stop"
        (call,) = b["message"]["tool_calls"]
        assert call["id"].startswith("call_")
        assert call["function"] == {"index": 0, "name": "get_weather", "arguments": {"location": "Boston", "unit": "celsius"}}
        # streamed: one line carries the call, the last line is done
        s, raw = await post(session, h.url + "/api/chat", {**body, "stream": True})
        lines = [json.loads(x) for x in raw.decode().splitlines()]
        assert [x["message"]["tool_calls"] for x in lines if "tool_calls" in x["message"]] == [[call]]
        assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"


async def test_tool_called_when_not_named_openai(session):
    async with FakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=0, seed=3) as h:
        body = {"model": "llama3.2", "messages": BOSTON, "tools": [WEATHER]}
        s, b = await jpost(session, h.url + "/v1/chat/completions", body)
        assert s == 200
        ch = b["choices"][0]
        assert ch["finish_reason"] == "tool_calls" and ch["message"]["content"] == ""
        (call,) = ch["message"]["tool_calls"]
        assert (call["index"], call["type"], call["function"]["name"]) == (0, "function", "get_weather")
        assert json.loads(call["function"]["arguments"]) == {"location": "Boston", "unit": "celsius"}
        s, raw = await post(session, h.url + "/v1/chat/completions", {**body, "stream": True})
        events = sse_events(raw)
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        deltas = [c["choices"][0]["delta"] for c in chunks]
        (streamed,) = [d["tool_calls"] for d in deltas if "tool_calls" in d]
        assert streamed[0]["function"]["name"] == "get_weather" and json.loads(streamed[0]["function"]["arguments"])["location"] == "Boston"
        assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_tool_arguments_langchain_magic_function(session):
    async with FakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=0) as h:
        msgs = [{"role": "user", "content": "What is the value of magic_function(3)? Use the tool."}]
        s, b = await jpost(session, h.url + "/v1/chat/completions", {"model": "llama3.2", "messages": msgs, "tools": [MAGIC]})
        (call,) = b["choices"][0]["message"]["tool_calls"]
        assert call["function"]["name"] == "magic_function" and json.loads(call["function"]["arguments"]) == {"input": 3}


async def test_named_tool_wins_and_tool_results_get_text(session):
    async with FakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=0) as h:
        msgs = [{"role": "user", "content": "please call magic_function on 7"}]
        body = {"model": "llama3.2", "messages": msgs, "tools": [WEATHER, MAGIC], "stream": False}
        s, b = await jpost(session, h.url + "/api/chat", body)
        assert [(c["function"]["name"], c["function"]["arguments"]) for c in b["message"]["tool_calls"]] == [("magic_function", {"input": 7})]
        follow = msgs + [{"role": "assistant", "content": "", "tool_calls": b["message"]["tool_calls"]},
                         {"role": "tool", "content": "42", "tool_name": "magic_function"}]
        s, b = await jpost(session, h.url + "/api/chat", {**body, "messages": follow})
        assert "tool_calls" not in b["message"] and b["message"]["content"]


async def test_tool_calls_switch(session):
    """``tool_calls``: "always" (default), "named" (the old behaviour), "never"; a knob that
    may change while running, also ``ollamamax mock --tool-calls``."""
    async with FakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=0, tool_calls="named") as h:
        url = h.url + "/api/chat"
        body = {"model": "llama3.2", "messages": BOSTON, "tools": [WEATHER], "stream": False}
        s, b = await jpost(session, url, body)
        assert "tool_calls" not in b["message"] and b["message"]["content"]
        named = {**body, "messages": [{"role": "user", "content": "use get_weather for Oslo"}]}
        s, b = await jpost(session, url, named)
        assert b["message"]["tool_calls"][0]["function"]["arguments"]["location"] == "Oslo"
        h.tool_calls = "never"
        for req in (body, named):
            s, b = await jpost(session, url, req)
            assert "tool_calls" not in b["message"] and b["message"]["content"]
        s, b = await jpost(session, h.url + "/v1/chat/completions", {**named, "stream": False})
        assert b["choices"][0]["finish_reason"] == "stop" and "tool_calls" not in b["choices"][0]["message"]
        h.tool_calls = "always"
        s, b = await jpost(session, url, body)
        assert b["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    with pytest.raises(ValueError, match="tool_calls"):
        FakeOllama(tool_calls="sometimes")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).tool_calls == "always"
    assert parser.parse_args(["--tool-calls", "never"]).tool_calls == "never"
    with pytest.raises(SystemExit):
        parser.parse_args(["--tool-calls", "sometimes"])


def test_tool_arguments_by_type():
    from ollamamax.testing._generation import tool_arguments

    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "count": {"type": "integer", "minimum": 10},
            "ratio": {"type": "number", "maximum": 0.5},
            "flag": {"type": "boolean"},
            "mode": {"enum": ["fast", "slow"]},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "where": {"$ref": "#/$defs/Place"},
            "when": {"type": "string", "format": "date"},
            "maybe": {"anyOf": [{"type": "null"}, {"type": "integer"}]},
            "optional": {"type": "string"},
        },
        "required": ["name", "count", "ratio", "flag", "mode", "tags", "where", "when", "maybe"],
        "$defs": {"Place": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}}, "required": ["city"]}},
    }
    args = tool_arguments(schema, random.Random(0), "Book it in Paris.", ["book"])
    assert args == {
        "name": "Paris", "count": 10, "ratio": 0.5, "flag": True, "mode": "fast", "tags": ["Paris", "Paris"],
        "where": {"city": "Paris"}, "when": "2026-01-15", "maybe": 1,
    }  # fmt: skip
    # numbers come from the message when they fit the bounds; no required list: every property
    free = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 5}, "x": {"type": "number"}}}
    assert tool_arguments(free, random.Random(0), "try 12 then 4 or 2.5") == {"n": 4, "x": 12.0}
    assert tool_arguments(None, random.Random(0)) == {}
    word = tool_arguments({"type": "object", "properties": {"q": {"type": "string"}}}, random.Random(0), "hello")["q"]
    assert isinstance(word, str) and word


# --------------------------------------------------------------------------- 3. /v1 mid-stream failure


async def test_v1_chat_stream_failure_ends_with_empty_delta(session):
    """middleware/openai.go: mid-stream, ``streamResponse`` writes ``{"error": ...}`` through
    ``ChatWriter.Write``; the status is 200, so ``writeResponse`` decodes it as an empty
    ``api.ChatResponse`` and ``openai.ToChunks`` makes one chunk of it (empty delta, empty
    model, no finish reason). ``Done`` is false: no ``[DONE]``; the error text is lost."""
    async with FakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=0, response_tokens=(12, 12), midstream_fail_rate=1.0) as h:
        body = {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "stream": True, "stream_options": {"include_usage": True}}
        async with session.post(h.url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
            raw = await r.read()
        events = sse_events(raw)
        assert "[DONE]" not in events and b'"error"' not in raw
        chunks = [json.loads(e) for e in events]
        assert 2 <= len(chunks) <= 12
        first, last = chunks[0], chunks[-1]
        assert first["model"] == "llama3.2" and first["choices"][0]["delta"]["content"]
        assert last == {
            "id": first["id"], "object": "chat.completion.chunk", "created": first["created"], "model": "",
            "system_fingerprint": "fp_ollama", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        }  # fmt: skip
        assert all(c["choices"][0]["finish_reason"] is None for c in chunks)  # no finish chunk, no usage chunk
        assert h.stats()["totals"]["failed"] == 1


async def test_v1_completions_stream_failure_ends_with_empty_text(session):
    """middleware/openai.go ``CompleteWriter``: the error line becomes an empty
    ``openai.ToCompleteChunk`` (Go field order: choices before model; with include_usage a
    zero usage on it), and no ``[DONE]``."""
    async with FakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=0, response_tokens=(12, 12), midstream_fail_rate=1.0) as h:
        for include_usage in (False, True):
            body = {"model": "llama3.2", "prompt": "once", "stream": True, "stream_options": {"include_usage": include_usage}}
            status, raw = await post(session, h.url + "/v1/completions", body)
            assert status == 200
            events = sse_events(raw)
            assert "[DONE]" not in events and b'"error"' not in raw
            first, last = json.loads(events[0]), events[-1]
            usage = ',"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}' if include_usage else ""
            assert last == (
                '{"id":"' + first["id"] + '","object":"text_completion","created":' + str(first["created"])
                + ',"choices":[{"text":"","index":0,"finish_reason":null}],"model":"","system_fingerprint":"fp_ollama"' + usage + "}"
            )  # fmt: skip


async def test_v1_stream_failure_with_the_openai_sdk():
    """What an OpenAI SDK user sees: no exception, a reply cut short."""
    openai = pytest.importorskip("openai")
    async with FakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=0, response_tokens=(12, 12), midstream_fail_rate=1.0) as h:
        async with openai.AsyncOpenAI(base_url=h.url + "/v1", api_key="x", max_retries=0) as c:
            stream = await c.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "x"}], stream=True)
            chunks = [ch async for ch in stream]
        assert chunks and chunks[-1].choices[0].delta.content == "" and chunks[-1].choices[0].finish_reason is None


# --------------------------------------------------------------------------- 4. images without vision

NO_VISION = "this model is missing data required for image input"


async def test_images_to_a_model_without_vision_get_500(session):
    """model/model.go ``ErrNoVisionModel``: the runner refuses the images after the model
    loaded; routes.go passes the runner error on as a 500 with its text (not a 400
    capability error), on the native and the OpenAI routes."""
    img = base64.b64encode(b"\x89PNG fake").decode()
    async with FakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=0) as h:
        s, b = await jpost(session, h.url + "/api/generate", {"model": "llama3.2", "prompt": "what is it", "images": [img]})
        assert (s, b) == (500, {"error": NO_VISION})
        assert h.loaded_models() == ["llama3.2:latest"]  # it loaded before the runner refused
        msgs = [{"role": "user", "content": "what is it", "images": [img]}]
        s, b = await jpost(session, h.url + "/api/chat", {"model": "llama3.2", "messages": msgs, "stream": False})
        assert (s, b) == (500, {"error": NO_VISION})
        parts = [{"type": "text", "text": "what"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64," + img}}]
        s, b = await jpost(session, h.url + "/v1/chat/completions", {"model": "llama3.2", "messages": [{"role": "user", "content": parts}], "stream": True})
        assert (s, b) == (500, {"error": {"message": NO_VISION, "type": "api_error", "param": None, "code": None}})
