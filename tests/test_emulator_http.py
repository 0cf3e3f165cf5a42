"""FakeOllama wire fidelity: framing, field order, exact error bodies (raw aiohttp client)."""

from __future__ import annotations

import base64
import hashlib
import json
import struct

import aiohttp
import numpy as np
import pytest

from ollamamax.testing import FakeOllama

MODELS = ["llama3.2", "qwen3:8b", "nomic-embed-text", "gemma:2b", "Qwen2.5-Coder:7b", "gemma3:4b"]
JSON_CT = "application/json; charset=utf-8"
METRICS = ["total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration"]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
async def host():
    async with FakeOllama(MODELS, load_delay=0, tokens_per_sec=0, max_loaded_models=3, seed=7, host_id="h1") as h:
        yield h


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


async def call(session, host, method, path, body=None, raw=None):
    kw = {}
    if raw is not None:
        kw["data"] = raw
    elif body is not None:
        kw["json"] = body
    async with session.request(method, host.url + path, **kw) as r:
        return r.status, r.headers, await r.read()


async def jcall(session, host, method, path, body=None, raw=None):
    status, headers, data = await call(session, host, method, path, body, raw)
    return status, json.loads(data) if data else None


def ndjson(data: bytes) -> list[dict]:
    text = data.decode()
    assert text.endswith("\n")
    lines = text.split("\n")[:-1]
    assert all(line for line in lines), "blank line in NDJSON"
    return [json.loads(line) for line in lines]


def sse(data: bytes) -> list[str]:
    text = data.decode()
    assert text.endswith("\n\n")
    events = text.split("\n\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    return [e[len("data: ") :] for e in events]


# ------------------------------------------------------------------ liveness


async def test_root_get_head_version(session, host):
    s, h, b = await call(session, host, "GET", "/")
    assert (s, b, h["Content-Type"]) == (200, b"Ollama is running", "text/plain; charset=utf-8")
    assert h["X-Ollama-Host-Id"] == "h1"
    s, h, b = await call(session, host, "HEAD", "/")
    assert (s, b, h["Content-Length"]) == (200, b"", "17")
    s, h, b = await call(session, host, "GET", "/api/version")
    assert (s, b, h["Content-Type"]) == (200, b'{"version":"0.32.15"}', JSON_CT)


async def test_unknown_route_and_method(session, host):
    for method, path in [("GET", "/nope"), ("GET", "/api/generate"), ("POST", "/api/tags"), ("DELETE", "/")]:
        s, h, b = await call(session, host, method, path)
        assert (s, b) == (404, b"404 page not found")
        assert h["Content-Type"] == "text/plain; charset=utf-8"
        assert h["X-Ollama-Host-Id"] == "h1"


async def test_default_host_id():
    async with FakeOllama(load_delay=0) as h:
        assert h.host_id == f"mock-{h.port}"
        assert h.url == f"http://127.0.0.1:{h.port}"


# ------------------------------------------------------------------ generate / chat framing


async def test_generate_stream_framing_and_final_order(session, host):
    s, h, b = await call(session, host, "POST", "/api/generate", {"model": "llama3.2", "prompt": "hello"})
    assert s == 200 and h["Content-Type"] == "application/x-ndjson"
    assert h.get("Transfer-Encoding") == "chunked"
    objs = ndjson(b)
    for o in objs[:-1]:
        assert list(o) == ["model", "created_at", "response", "done"] and o["done"] is False
        assert o["model"] == "llama3.2" and o["created_at"].endswith("Z")
    final = objs[-1]
    assert list(final) == ["model", "created_at", "response", "done", "done_reason", "context", *METRICS]
    assert final["done"] is True and final["done_reason"] == "stop" and final["response"] == ""
    assert final["eval_count"] == len(objs) - 1
    assert 8 <= final["eval_count"] <= 24
    assert all(isinstance(final[k], int) and final[k] > 0 for k in METRICS)


async def test_generate_non_stream_and_determinism(session, host):
    body = {"model": "llama3.2", "prompt": "same prompt", "stream": False}
    s, a = await jcall(session, host, "POST", "/api/generate", body)
    s2, b = await jcall(session, host, "POST", "/api/generate", body)
    assert s == s2 == 200
    assert a["response"] == b["response"] and a["response"] and not a["response"].startswith(" ")
    assert list(a) == ["model", "created_at", "response", "done", "done_reason", "context", *METRICS]
    # the streamed reply concatenates to the same text
    s, _, raw = await call(session, host, "POST", "/api/generate", {**body, "stream": True})
    assert "".join(o["response"] for o in ndjson(raw)) == a["response"]
    s, c = await jcall(session, host, "POST", "/api/generate", {**body, "prompt": "other prompt"})
    assert c["response"] != a["response"]


async def test_model_echo_and_case_insensitive_lookup(session, host):
    s, b = await jcall(session, host, "POST", "/api/generate", {"model": "LLAMA3.2:Latest", "prompt": "x", "stream": False})
    assert s == 200 and b["model"] == "LLAMA3.2:Latest"
    s, b = await jcall(session, host, "POST", "/api/chat", {"model": "qwen2.5-coder:7b", "messages": [{"role": "user", "content": "x"}], "stream": False})
    assert s == 200


async def test_num_predict_length(session, host):
    s, b = await jcall(session, host, "POST", "/api/generate", {"model": "llama3.2", "prompt": "x", "stream": False, "options": {"num_predict": 3}})
    assert b["done_reason"] == "length" and b["eval_count"] == 3


async def test_chat_stream_framing(session, host):
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
    s, h, b = await call(session, host, "POST", "/api/chat", body)
    assert s == 200 and h["Content-Type"] == "application/x-ndjson"
    objs = ndjson(b)
    for o in objs[:-1]:
        assert list(o) == ["model", "created_at", "message", "done"]
        assert list(o["message"]) == ["role", "content"] and o["message"]["role"] == "assistant"
    final = objs[-1]
    assert list(final) == ["model", "created_at", "message", "done", "done_reason", *METRICS]
    assert final["message"] == {"role": "assistant", "content": ""}
    s, w = await jcall(session, host, "POST", "/api/chat", {**body, "stream": False})
    assert w["message"]["content"] == "".join(o["message"]["content"] for o in objs)
    assert list(w) == ["model", "created_at", "message", "done", "done_reason", *METRICS]


async def test_thinking_default_and_disabled(session, host):
    body = {"model": "qwen3:8b", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    s, b = await jcall(session, host, "POST", "/api/chat", body)
    assert s == 200 and b["message"]["thinking"] and b["message"]["content"]
    assert list(b["message"]) == ["role", "content", "thinking"]
    s, b = await jcall(session, host, "POST", "/api/chat", {**body, "think": False})
    assert "thinking" not in b["message"]
    s, b = await jcall(session, host, "POST", "/api/chat", {**body, "think": "high"})
    assert b["message"]["thinking"]
    # streamed: thinking tokens come first
    s, _, raw = await call(session, host, "POST", "/api/chat", {**body, "stream": True})
    objs = ndjson(raw)[:-1]
    kinds = ["t" if o["message"].get("thinking") else "c" for o in objs]
    assert kinds == sorted(kinds, key=lambda k: k != "t") and "t" in kinds and "c" in kinds
    s, b = await jcall(session, host, "POST", "/api/generate", {"model": "qwen3:8b", "prompt": "x", "stream": False})
    assert b["thinking"] and list(b)[:5] == ["model", "created_at", "response", "thinking", "done"]


async def test_think_errors(session, host):
    s, b = await jcall(session, host, "POST", "/api/chat", {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "think": True})
    assert (s, b) == (400, {"error": '"llama3.2" does not support thinking'})
    s, b = await jcall(session, host, "POST", "/api/generate", {"model": "llama3.2", "prompt": "x", "think": "bogus"})
    assert (s, b) == (400, {"error": 'invalid think value: "bogus" (must be "high", "medium", "low", "max", true, or false)'})
    # think false on a non-thinking model is fine
    s, b = await jcall(session, host, "POST", "/api/chat", {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "think": False, "stream": False})
    assert s == 200


async def test_tool_calls(session, host):
    msgs = [{"role": "user", "content": "Use get_weather for Tokyo"}]
    body = {"model": "llama3.2", "messages": msgs, "tools": [WEATHER_TOOL], "stream": False}
    s, b = await jcall(session, host, "POST", "/api/chat", body)
    assert s == 200
    calls = b["message"]["tool_calls"]
    assert len(calls) == 1 and calls[0]["function"]["name"] == "get_weather"
    assert calls[0]["id"].startswith("call_") and len(calls[0]["id"]) == 13
    args = calls[0]["function"]["arguments"]
    assert args == {"city": "Tokyo"}  # the required property, from the message; optional ones left out
    assert b["message"]["content"] == ""
    # streamed: one chunk carries the calls
    s, _, raw = await call(session, host, "POST", "/api/chat", {**body, "stream": True})
    objs = ndjson(raw)
    assert [o["message"]["tool_calls"] for o in objs if "tool_calls" in o["message"]] == [calls]
    # after the tool answered, the model writes text
    follow = msgs + [{"role": "assistant", "content": "", "tool_calls": calls}, {"role": "tool", "content": "sunny", "tool_name": "get_weather"}]
    s, b = await jcall(session, host, "POST", "/api/chat", {**body, "messages": follow})
    assert "tool_calls" not in b["message"] and b["message"]["content"]
    # tool not mentioned -> the first tool is called anyway (tool_calls="always", the default;
    # "named" and "never" are pinned in test_emulator_parity.py)
    s, b = await jcall(session, host, "POST", "/api/chat", {**body, "messages": [{"role": "user", "content": "hello"}]})
    assert [c["function"]["name"] for c in b["message"]["tool_calls"]] == ["get_weather"]


async def test_tools_unsupported(session, host):
    body = {"model": "gemma:2b", "messages": [{"role": "user", "content": "get_weather"}], "tools": [WEATHER_TOOL]}
    s, b = await jcall(session, host, "POST", "/api/chat", body)
    assert (s, b) == (400, {"error": "registry.ollama.ai/library/gemma:2b does not support tools"})
    # the python client always sends tools: [] -> no check
    s, b = await jcall(session, host, "POST", "/api/chat", {**body, "tools": [], "stream": False})
    assert s == 200


async def test_format_json_and_schema(session, host):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "pet": {"$ref": "#/$defs/Pet"},
            "ok": {"type": "boolean"},
            "kind": {"enum": ["a", "b"]},
        },
        "$defs": {"Pet": {"type": "object", "properties": {"legs": {"type": "number"}}}},
    }
    s, b = await jcall(session, host, "POST", "/api/chat", {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "format": schema, "stream": False})
    v = json.loads(b["message"]["content"])
    assert isinstance(v["name"], str) and isinstance(v["age"], int) and isinstance(v["ok"], bool)
    assert all(isinstance(t, str) for t in v["tags"]) and isinstance(v["pet"]["legs"], float) and v["kind"] in "ab"
    s, b = await jcall(session, host, "POST", "/api/generate", {"model": "llama3.2", "prompt": "x", "format": "json", "stream": False})
    assert isinstance(json.loads(b["response"]), dict)
    s, _, raw = await call(session, host, "POST", "/api/generate", {"model": "qwen3:8b", "prompt": "x", "format": schema})
    assert json.loads("".join(o["response"] for o in ndjson(raw)))["name"]


async def test_capability_errors(session, host):
    s, b = await jcall(session, host, "POST", "/api/generate", {"model": "nomic-embed-text", "prompt": "x"})
    assert (s, b) == (400, {"error": '"nomic-embed-text" does not support generate'})
    s, b = await jcall(session, host, "POST", "/api/chat", {"model": "nomic-embed-text", "messages": [{"role": "user", "content": "x"}]})
    assert (s, b) == (400, {"error": '"nomic-embed-text" does not support chat'})
    s, b = await jcall(session, host, "POST", "/api/generate", {"model": "llama3.2", "prompt": "x", "suffix": "y"})
    assert (s, b) == (400, {"error": '"llama3.2" does not support insert'})
    s, b = await jcall(session, host, "POST", "/api/generate", {"model": "qwen2.5-coder:7b", "prompt": "x", "suffix": "y", "stream": False})
    assert s == 200


NO_VISION = "this model is missing data required for image input"


async def test_vision(session, host):
    """Images for a text-only model: Ollama loads the model, then its runner refuses with a
    500 (model/model.go ErrNoVisionModel), on every route; a vision model answers."""
    img = base64.b64encode(b"\x89PNG fake").decode()
    loads = host.stats()["models"].get("llama3.2:latest", {}).get("loads", 0)
    s, b = await jcall(session, host, "POST", "/api/generate", {"model": "llama3.2", "prompt": "x", "images": [img]})
    assert (s, b) == (500, {"error": NO_VISION})
    assert host.stats()["models"]["llama3.2:latest"]["loads"] == loads + 1  # it loaded first
    msgs = [{"role": "user", "content": "what is this", "images": [img]}]
    s, b = await jcall(session, host, "POST", "/api/chat", {"model": "llama3.2", "messages": msgs})
    assert (s, b) == (500, {"error": NO_VISION})
    s, b = await jcall(session, host, "POST", "/api/chat", {"model": "gemma3:4b", "messages": msgs, "stream": False})
    assert s == 200 and b["message"]["content"]
    bad = [{"role": "user", "content": "x", "images": ["not base64!"]}]
    s, b = await jcall(session, host, "POST", "/api/chat", {"model": "gemma3:4b", "messages": bad})
    assert (s, b) == (400, {"error": "illegal base64 data at input byte 3"})
    parts = [{"type": "text", "text": "what"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64," + img}}]
    s, b = await jcall(session, host, "POST", "/v1/chat/completions", {"model": "llama3.2", "messages": [{"role": "user", "content": parts}]})
    assert s == 500 and b["error"]["message"] == NO_VISION and b["error"]["type"] == "api_error"
    s, b = await jcall(session, host, "POST", "/v1/chat/completions", {"model": "gemma3:4b", "messages": [{"role": "user", "content": parts}]})
    assert s == 200


async def test_capabilities_override():
    async with FakeOllama(["mybot"], capabilities={"mybot": ["completion", "thinking"]}, load_delay=0, tokens_per_sec=0) as h:
        async with aiohttp.ClientSession() as s:
            async with s.post(h.url + "/api/show", json={"model": "mybot"}) as r:
                assert (await r.json())["capabilities"] == ["completion", "thinking"]


@pytest.mark.parametrize(
    ("path", "raw", "message"),
    [
        ("/api/generate", b"", "missing request body"),
        ("/api/generate", b"   ", "missing request body"),
        ("/api/chat", b"", "missing request body"),
        ("/api/embed", b"", "missing request body"),
        ("/api/generate", b"{x", "invalid character 'x' looking for beginning of object key string"),
        ("/api/generate", b"nope", "invalid character 'o' in literal null (expecting 'u')"),
        ("/api/generate", b'{"model":"a",', "unexpected EOF"),
        ("/api/generate", b'{"model" 1}', "invalid character '1' after object key"),
        ("/api/generate", b'{"model":"a" "b"}', "invalid character '\"' after object key:value pair"),
        ("/api/generate", b"[1,2]", "json: cannot unmarshal array into Go value of type api.GenerateRequest"),
        ("/api/generate", b'{"model":1}', "json: cannot unmarshal number into Go struct field GenerateRequest.model of type string"),
        ("/api/generate", b'{"model":"a","stream":"yes"}', "json: cannot unmarshal string into Go struct field GenerateRequest.stream of type bool"),
        ("/api/generate", b'{"model":"a","options":[]}', "json: cannot unmarshal array into Go struct field GenerateRequest.options of type map[string]interface {}"),
        ("/api/chat", b'{"model":"a","messages":{}}', "json: cannot unmarshal object into Go struct field ChatRequest.messages of type []api.Message"),
        ("/api/chat", b'{"model":"a","messages":[{"role":"user","content":5}]}', "json: cannot unmarshal number into Go struct field ChatRequest.messages.content of type string"),
        ("/api/embed", b'{"model":"a","dimensions":1.5}', "json: cannot unmarshal number 1.5 into Go struct field EmbedRequest.dimensions of type int"),
    ],
)
async def test_malformed_bodies(session, host, path, raw, message):
    s, h, b = await call(session, host, "POST", path, raw=raw)
    assert s == 400 and h["Content-Type"] == JSON_CT
    assert json.loads(b) == {"error": message}


async def test_not_found_texts(session, host):
    msg = [{"role": "user", "content": "x"}]
    cases = [
        ("/api/generate", {"model": "nosuch", "prompt": "x"}, 404, "model 'nosuch' not found"),
        ("/api/generate", {"prompt": "x"}, 404, "model '' not found"),
        ("/api/chat", {"model": "nosuch:7b", "messages": msg}, 404, "model 'nosuch:7b' not found"),
        ("/api/chat", {"model": "", "messages": msg}, 400, "model is required"),
        ("/api/embed", {"model": "nosuch", "input": "x"}, 404, 'model "nosuch" not found, try pulling it first'),
        ("/api/embeddings", {"model": "nosuch", "prompt": "x"}, 404, 'model "nosuch" not found, try pulling it first'),
        ("/api/show", {"model": "nosuch"}, 404, "model 'nosuch:latest' not found"),
        ("/api/generate", {"model": "bad name!", "prompt": "x"}, 400, "invalid model name"),
        ("/api/generate", {"model": "llama3.2", "prompt": "x", "top_logprobs": 30}, 400, "top_logprobs must be between 0 and 20"),
        ("/api/generate", {"model": "llama3.2", "prompt": "x", "raw": True, "system": "s"}, 400, "raw mode does not support template, system, or context"),
    ]
    for path, body, status, message in cases:
        assert await jcall(session, host, "POST", path, body) == (status, {"error": message}), (path, body)


async def test_go_html_escaping(session, host):
    s, h, b = await call(session, host, "POST", "/api/generate", {"model": "<b>&", "prompt": "x"})
    assert (s, b) == (400, b'{"error":"invalid model name"}')  # not a valid name: nothing echoed
    # an error that does echo the client's text: <, > and & escaped as Go's encoder does
    s, h, b = await call(session, host, "POST", "/api/generate", {"model": "llama3.2", "prompt": "x", "think": "<b>&"})
    assert s == 400
    assert b.startswith(b'{"error":"invalid think value: \\"\\u003cb\\u003e\\u0026\\" (must be ')
    s, h, b = await call(session, host, "POST", "/api/show", {"model": "llama3.2"})
    assert b"<" not in b and b"\\u003c" in b


async def test_generate_context_and_raw(session, host):
    s, b = await jcall(session, host, "POST", "/api/generate", {"model": "llama3.2", "prompt": "x", "stream": False})
    assert isinstance(b["context"], list) and all(isinstance(t, int) for t in b["context"])
    s, b = await jcall(session, host, "POST", "/api/generate", {"model": "llama3.2", "prompt": "x", "stream": False, "raw": True})
    assert "context" not in b


# ------------------------------------------------------------------ embeddings


async def test_embed(session, host):
    s, h, raw = await call(session, host, "POST", "/api/embed", {"model": "nomic-embed-text", "input": ["a b", "c"]})
    b = json.loads(raw)
    assert s == 200 and list(b) == ["model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"]
    assert len(b["embeddings"]) == 2 and len(b["embeddings"][0]) == 768
    for v in b["embeddings"]:
        assert abs(np.linalg.norm(v) - 1.0) < 1e-5
    s, c = await jcall(session, host, "POST", "/api/embed", {"model": "nomic-embed-text", "input": "a b"})
    assert c["embeddings"][0] == b["embeddings"][0]  # deterministic per input
    s, d = await jcall(session, host, "POST", "/api/embed", {"model": "nomic-embed-text", "input": "a b", "dimensions": 64})
    assert len(d["embeddings"][0]) == 64 and abs(np.linalg.norm(d["embeddings"][0]) - 1.0) < 1e-5
    s, e = await jcall(session, host, "POST", "/api/embed", {"model": "nomic-embed-text", "input": []})
    assert e == {"model": "nomic-embed-text", "embeddings": []}
    s, e = await jcall(session, host, "POST", "/api/embed", {"model": "nomic-embed-text", "input": [1, 2]})
    assert (s, e) == (400, {"error": "invalid input type"})
    # any model answers embeddings (no capability check)
    s, e = await jcall(session, host, "POST", "/api/embed", {"model": "llama3.2", "input": "x"})
    assert s == 200 and len(e["embeddings"][0]) == 3072


async def test_legacy_embeddings(session, host):
    s, b = await jcall(session, host, "POST", "/api/embeddings", {"model": "nomic-embed-text", "prompt": "hello"})
    assert s == 200 and list(b) == ["embedding"] and len(b["embedding"]) == 768
    assert abs(np.linalg.norm(b["embedding"]) - 1.0) > 0.01  # not normalised
    s, b = await jcall(session, host, "POST", "/api/embeddings", {"model": "nomic-embed-text", "prompt": ""})
    assert b == {"embedding": []}


# ------------------------------------------------------------------ model management


async def test_tags_ps_show(session, host):
    s, tags = await jcall(session, host, "GET", "/api/tags")
    names = [m["name"] for m in tags["models"]]
    assert sorted(names) == sorted(["llama3.2:latest", "qwen3:8b", "nomic-embed-text:latest", "gemma:2b", "Qwen2.5-Coder:7b", "gemma3:4b"])  # case as created
    m = next(m for m in tags["models"] if m["name"] == "qwen3:8b")
    assert list(m)[:6] == ["name", "model", "modified_at", "size", "digest", "details"]
    assert len(m["digest"]) == 64 and m["details"]["parameter_size"] == "8B"
    assert list(m["details"]) == ["parent_model", "format", "family", "families", "parameter_size", "quantization_level"]
    s, h, b = await call(session, host, "HEAD", "/api/tags")
    assert s == 200
    s, ps = await jcall(session, host, "GET", "/api/ps")
    assert ps == {"models": []}
    await call(session, host, "POST", "/api/generate", {"model": "llama3.2", "prompt": "x"})
    s, ps = await jcall(session, host, "GET", "/api/ps")
    assert [m["name"] for m in ps["models"]] == ["llama3.2:latest"]
    row = ps["models"][0]
    assert list(row) == ["name", "model", "size", "digest", "details", "expires_at", "size_vram", "context_length"]
    assert row["size_vram"] == row["size"]
    s, show = await jcall(session, host, "POST", "/api/show", {"model": "qwen3:8b"})
    assert show["capabilities"] == ["completion", "tools", "thinking"]
    assert show["model_info"]["general.architecture"] == "qwen3" and "qwen3.context_length" in show["model_info"]
    s, show = await jcall(session, host, "POST", "/api/show", {"name": "nomic-embed-text"})
    assert show["capabilities"] == ["embedding"]


async def test_pull_stream_and_tags(session, host):
    s, h, raw = await call(session, host, "POST", "/api/pull", {"model": "mistral:7b"})
    objs = ndjson(raw)
    statuses = [o["status"] for o in objs]
    assert statuses[0] == "pulling manifest" and statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layer = [o for o in objs if o["status"].startswith("pulling ") and o["status"] != "pulling manifest"]
    assert layer and all(o["digest"].startswith("sha256:") and o["status"] == "pulling " + o["digest"][7:19] for o in layer)
    assert any(o.get("completed") == o["total"] for o in layer)
    s, tags = await jcall(session, host, "GET", "/api/tags")
    assert "mistral:7b" in [m["name"] for m in tags["models"]]
    s, h, raw = await call(session, host, "POST", "/api/pull", {"model": "nosuchmodel"})
    assert s == 200 and ndjson(raw) == [{"status": "pulling manifest"}, {"error": "pull model manifest: file does not exist"}]
    assert await jcall(session, host, "POST", "/api/pull", {"model": "nosuchmodel", "stream": False}) == (
        500,
        {"error": "pull model manifest: file does not exist"},
    )
    assert await jcall(session, host, "POST", "/api/pull", {"model": "phi3", "stream": False}) == (200, {"status": "success"})
    assert await jcall(session, host, "POST", "/api/pull", {"model": "a b"}) == (400, {"error": "invalid model name"})


async def test_push(session, host):
    s, h, raw = await call(session, host, "POST", "/api/push", {"model": "llama3.2"})
    statuses = [o["status"] for o in ndjson(raw)]
    assert statuses[0] == "retrieving manifest" and statuses[-2:] == ["pushing manifest", "success"]
    assert "starting upload" in statuses
    s, h, raw = await call(session, host, "POST", "/api/push", {"model": "nosuch"})
    objs = ndjson(raw)
    assert objs[:2] == [{"status": "retrieving manifest"}, {"status": "couldn't retrieve manifest"}] and "error" in objs[-1]


async def test_copy_delete_create(session, host):
    s, h, b = await call(session, host, "POST", "/api/copy", {"source": "llama3.2", "destination": "mine:v1"})
    assert (s, b) == (200, b"")
    assert host.lookup("mine:v1") is not None
    assert await jcall(session, host, "POST", "/api/copy", {"source": "nosuch", "destination": "x"}) == (404, {"error": 'model "nosuch" not found'})
    s, h, b = await call(session, host, "DELETE", "/api/delete", {"model": "mine:v1"})
    assert (s, b) == (200, b"")
    assert await jcall(session, host, "DELETE", "/api/delete", {"model": "mine:v1"}) == (404, {"error": "model 'mine:v1' not found"})
    s, h, raw = await call(session, host, "POST", "/api/create", {"model": "bot", "from": "qwen3:8b", "system": "be brief"})
    objs = ndjson(raw)
    assert objs[-1] == {"status": "success"} and any(o["status"].startswith("using existing layer sha256:") for o in objs)
    assert any(o["status"].startswith("creating new layer sha256:") for o in objs)
    s, show = await jcall(session, host, "POST", "/api/show", {"model": "bot"})
    assert show["capabilities"] == ["completion", "tools", "thinking"] and show["system"] == "be brief"
    assert await jcall(session, host, "POST", "/api/create", {"model": "bot2"}) == (400, {"error": "neither 'from' or 'files' was specified"})
    s, h, raw = await call(session, host, "POST", "/api/create", {"model": "bot3", "from": "nosuch"})
    assert "error" in ndjson(raw)[-1]
    assert await jcall(session, host, "POST", "/api/create", {"model": "bot3", "from": "nosuch", "stream": False}) == (
        500,
        {"error": "model 'nosuch' not found"},
    )


async def test_blobs(session, host):
    data = b"hello blob"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    s, _, b = await call(session, host, "HEAD", f"/api/blobs/{digest}")
    assert s == 404
    s, _, b = await call(session, host, "POST", f"/api/blobs/{digest}", raw=data)
    assert s == 201
    s, _, b = await call(session, host, "POST", f"/api/blobs/{digest}", raw=data)
    assert s == 200
    s, _, b = await call(session, host, "HEAD", f"/api/blobs/{digest}")
    assert s == 200
    assert await jcall(session, host, "POST", "/api/blobs/sha256:zz", raw=data) == (400, {"error": "invalid digest format"})
    bad = "sha256:" + "0" * 64
    s, b = await jcall(session, host, "POST", f"/api/blobs/{bad}", raw=data)
    assert s == 400 and b["error"] == f'digest mismatch, expected "{bad}", got "{digest}"'


# ------------------------------------------------------------------ /v1 raw


async def test_v1_chat_sse_framing(session, host):
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": True, "stream_options": {"include_usage": True}}
    s, h, raw = await call(session, host, "POST", "/v1/chat/completions", body)
    assert s == 200 and h["Content-Type"] == "text/event-stream"
    events = sse(raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:-2])
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-2])
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(chunks) - 2
    s, b = await jcall(session, host, "POST", "/v1/chat/completions", {**body, "stream": False})
    assert b["object"] == "chat.completion" and b["choices"][0]["finish_reason"] == "stop"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert b["choices"][0]["message"]["content"] == text
    # without include_usage: no usage chunk
    s, h, raw = await call(session, host, "POST", "/v1/chat/completions", {**body, "stream_options": None})
    last = json.loads(sse(raw)[-2])
    assert last["choices"][0]["finish_reason"] == "stop"


async def test_v1_chat_tools_reasoning_format(session, host):
    body = {"model": "qwen3:8b", "messages": [{"role": "user", "content": "get_weather in Paris"}], "tools": [WEATHER_TOOL]}
    s, b = await jcall(session, host, "POST", "/v1/chat/completions", body)
    ch = b["choices"][0]
    assert ch["finish_reason"] == "tool_calls" and ch["message"]["reasoning"]
    call0 = ch["message"]["tool_calls"][0]
    assert call0["type"] == "function" and isinstance(json.loads(call0["function"]["arguments"]), dict)
    s, h, raw = await call(session, host, "POST", "/v1/chat/completions", {**body, "stream": True})
    chunks = [json.loads(e) for e in sse(raw)[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    s, b = await jcall(
        session,
        host,
        "POST",
        "/v1/chat/completions",
        {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}, "max_tokens": 200},
    )
    assert isinstance(json.loads(b["choices"][0]["message"]["content"]), dict)
    s, b = await jcall(session, host, "POST", "/v1/chat/completions", {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
    assert b["choices"][0]["finish_reason"] == "length" and b["usage"]["completion_tokens"] == 2


async def test_v1_errors(session, host):
    msg = [{"role": "user", "content": "x"}]
    s, b = await jcall(session, host, "POST", "/v1/chat/completions", {"model": "nosuch", "messages": msg})
    assert (s, b) == (404, {"error": {"message": "model 'nosuch' not found", "type": "not_found_error", "param": None, "code": None}})
    s, b = await jcall(session, host, "POST", "/v1/chat/completions", {"model": "llama3.2", "messages": []})
    assert (s, b["error"]["message"], b["error"]["type"]) == (400, "[] is too short - 'messages'", "invalid_request_error")
    s, b = await jcall(session, host, "POST", "/v1/chat/completions", raw=b"")
    assert (s, b["error"]["message"]) == (400, "missing request body")
    s, b = await jcall(session, host, "POST", "/v1/embeddings", {"model": "nomic-embed-text", "input": "x", "encoding_format": "hex"})
    assert s == 400 and b["error"]["type"] == "invalid_request_error"
    s, b = await jcall(session, host, "GET", "/v1/models/nosuch")
    assert s == 404 and b["error"]["type"] == "not_found_error"
    host.busy = True
    s, b = await jcall(session, host, "POST", "/v1/chat/completions", {"model": "llama3.2", "messages": msg})
    assert s == 503 and b["error"]["type"] == "api_error"


async def test_v1_completions(session, host):
    body = {"model": "llama3.2", "prompt": "once upon", "stream": True, "stream_options": {"include_usage": True}}
    s, h, raw = await call(session, host, "POST", "/v1/completions", body)
    events = sse(raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["choices"] == []
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-2])
    s, b = await jcall(session, host, "POST", "/v1/completions", {**body, "stream": False})
    assert b["id"].startswith("cmpl-") and b["choices"][0]["text"] == "".join(c["choices"][0]["text"] for c in chunks[:-1])


async def test_v1_embeddings_and_models(session, host):
    s, b = await jcall(session, host, "POST", "/v1/embeddings", {"model": "nomic-embed-text", "input": ["a", "b"], "encoding_format": "base64"})
    assert s == 200 and b["object"] == "list" and [d["index"] for d in b["data"]] == [0, 1]
    vec = struct.unpack("<768f", base64.b64decode(b["data"][0]["embedding"]))
    s, f = await jcall(session, host, "POST", "/v1/embeddings", {"model": "nomic-embed-text", "input": "a"})
    assert np.allclose(vec, f["data"][0]["embedding"], atol=1e-6)
    assert f["usage"]["prompt_tokens"] == f["usage"]["total_tokens"] > 0
    s, m = await jcall(session, host, "GET", "/v1/models")
    assert m["object"] == "list" and {"id": "qwen3:8b", "object": "model", "owned_by": "library"}.items() <= next(
        d for d in m["data"] if d["id"] == "qwen3:8b"
    ).items()
    s, one = await jcall(session, host, "GET", "/v1/models/qwen3:8b")
    assert s == 200 and one["id"] == "qwen3:8b"


async def test_v1_midstream_error(session):
    async with FakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=0, midstream_fail_rate=1.0) as h:
        async with session.post(h.url + "/v1/chat/completions", json={"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "stream": True}) as r:
            events = sse(await r.read())
        # as Ollama's OpenAI layer: an empty delta ends it, no error object, no [DONE]
        last = json.loads(events[-1])
        assert "error" not in last and last["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert "[DONE]" not in events
