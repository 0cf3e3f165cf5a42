"""The official ``ollama`` and ``openai`` Python clients against FakeOllama.

Sync clients talk to an emulator running on a background thread's loop
(``ThreadedFakeOllama``); async clients share the test's loop.
"""

from __future__ import annotations

import json

import ollama
import openai
import pytest

from ollamamax.testing import FakeOllama, ThreadedFakeOllama

MODELS = ["llama3.2", "qwen3:8b", "nomic-embed-text"]
BUSY = "server busy, please try again.  maximum pending requests exceeded"
USER = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(scope="module")
def threaded():
    with ThreadedFakeOllama(MODELS, load_delay=0, tokens_per_sec=0, max_loaded_models=3, seed=3) as h:
        yield h


@pytest.fixture
def client(threaded):
    c = ollama.Client(host=threaded.url)
    yield c
    c.close()


@pytest.fixture
def oai(threaded):
    c = openai.OpenAI(base_url=threaded.url + "/v1", api_key="unused", max_retries=0)
    yield c
    c.close()


# ------------------------------------------------------------------ ollama, sync


def test_ollama_chat(client):
    r = client.chat(model="llama3.2", messages=USER)
    assert r.done and r.done_reason == "stop" and r.message.role == "assistant" and r.message.content
    assert r.eval_count and r.total_duration and r.load_duration is not None
    parts = list(client.chat(model="llama3.2", messages=USER, stream=True))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content for p in parts) == r.message.content


def test_ollama_chat_thinking_and_tools(client):
    r = client.chat(model="qwen3:8b", messages=USER, think=True)
    assert r.message.thinking and r.message.content

    def get_weather(city: str) -> str:
        """Get the weather.

        Args:
            city: the city
        """
        return "sunny"

    r = client.chat(model="llama3.2", messages=[{"role": "user", "content": "call get_weather for Oslo"}], tools=[get_weather])
    assert r.message.tool_calls and r.message.tool_calls[0].function.name == "get_weather"
    assert isinstance(r.message.tool_calls[0].function.arguments["city"], str)


def test_ollama_generate_and_structured(client):
    r = client.generate(model="llama3.2", prompt="hello")
    assert r.response and r.context and r.done_reason == "stop"
    parts = list(client.generate(model="llama3.2", prompt="hello", stream=True))
    assert "".join(p.response for p in parts) == r.response
    schema = {"type": "object", "properties": {"answer": {"type": "string"}, "n": {"type": "integer"}}}
    r = client.generate(model="llama3.2", prompt="hello", format=schema)
    v = json.loads(r.response)
    assert isinstance(v["answer"], str) and isinstance(v["n"], int)


def test_ollama_embed(client):
    r = client.embed(model="nomic-embed-text", input=["a", "b"])
    assert len(r.embeddings) == 2 and len(r.embeddings[0]) == 768
    r2 = client.embeddings(model="nomic-embed-text", prompt="a")
    assert len(r2.embedding) == 768


def test_ollama_list_ps_show(client):
    names = {m.model for m in client.list().models}
    assert {"llama3.2:latest", "qwen3:8b", "nomic-embed-text:latest"} <= names
    client.generate(model="llama3.2", prompt="warm up")
    ps = client.ps()
    assert any(m.model == "llama3.2:latest" and m.expires_at is not None and m.size_vram for m in ps.models)
    show = client.show("qwen3:8b")
    assert "thinking" in show.capabilities and show.modelinfo["general.architecture"] == "qwen3"


def test_ollama_pull_copy_delete_create(client):
    progress = list(client.pull("tinyllama", stream=True))
    assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
    assert any(p.total and p.completed == p.total for p in progress)
    assert client.pull("smollm2:135m").status == "success"
    assert client.copy("llama3.2", "copy-of-llama").status == "success"
    assert client.delete("copy-of-llama").status == "success"
    assert client.create(model="mybot", from_="llama3.2", system="be brief").status == "success"
    with pytest.raises(ollama.ResponseError) as ei:
        list(client.pull("nosuchmodel", stream=True))
    assert ei.value.error == "pull model manifest: file does not exist" and ei.value.status_code == -1
    with pytest.raises(ollama.ResponseError) as ei:
        client.pull("nosuchmodel")
    assert ei.value.status_code == 500


def test_ollama_errors(client, threaded):
    with pytest.raises(ollama.ResponseError) as ei:
        client.chat(model="nosuch", messages=USER)
    assert (ei.value.status_code, ei.value.error) == (404, "model 'nosuch' not found")
    with pytest.raises(ollama.ResponseError) as ei:
        client.embed(model="nosuch", input="x")
    assert (ei.value.status_code, ei.value.error) == (404, 'model "nosuch" not found, try pulling it first')
    with pytest.raises(ollama.ResponseError) as ei:
        client.chat(model="llama3.2", messages=USER, think=True)
    assert (ei.value.status_code, ei.value.error) == (400, '"llama3.2" does not support thinking')
    with pytest.raises(ollama.ResponseError) as ei:
        client.generate(model="nomic-embed-text", prompt="x")
    assert ei.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as ei:
        client.show("nosuch")
    assert (ei.value.status_code, ei.value.error) == (404, "model 'nosuch:latest' not found")
    threaded.call(lambda e: setattr(e, "busy", True))
    try:
        with pytest.raises(ollama.ResponseError) as ei:
            client.chat(model="llama3.2", messages=USER)
        assert (ei.value.status_code, ei.value.error) == (503, BUSY)
    finally:
        threaded.call(lambda e: setattr(e, "busy", False))
    threaded.call(lambda e: setattr(e, "midstream_fail_rate", 1.0))
    try:
        with pytest.raises(ollama.ResponseError) as ei:
            list(client.chat(model="llama3.2", messages=USER, stream=True))
        assert ei.value.status_code == -1
    finally:
        threaded.call(lambda e: setattr(e, "midstream_fail_rate", 0.0))


# ------------------------------------------------------------------ ollama, async


async def test_ollama_async_client():
    async with FakeOllama(MODELS, load_delay=0, tokens_per_sec=0, max_loaded_models=3) as h:
        c = ollama.AsyncClient(host=h.url)
        try:
            r = await c.chat(model="llama3.2", messages=USER)
            assert r.message.content
            parts = [p async for p in await c.chat(model="qwen3:8b", messages=USER, stream=True)]
            assert parts[-1].done and any(p.message.thinking for p in parts)
            g = await c.generate(model="llama3.2", prompt="x")
            assert g.response
            e = await c.embed(model="nomic-embed-text", input="x")
            assert len(e.embeddings[0]) == 768
            assert (await c.list()).models and (await c.ps()).models
            assert (await c.show("llama3.2")).capabilities == ["completion", "tools"]
            with pytest.raises(ollama.ResponseError) as ei:
                await c.generate(model="nosuch", prompt="x")
            assert ei.value.status_code == 404
            h.fail_rate = 1.0
            with pytest.raises(ollama.ResponseError) as ei:
                await c.chat(model="llama3.2", messages=USER)
            assert ei.value.status_code == 500
        finally:
            await c.close()


# ------------------------------------------------------------------ openai, sync


def test_openai_chat(oai):
    r = oai.chat.completions.create(model="llama3.2", messages=USER)
    assert r.object == "chat.completion" and r.choices[0].message.content and r.choices[0].finish_reason == "stop"
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    chunks = list(oai.chat.completions.create(model="llama3.2", messages=USER, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_openai_tools_and_completions(oai):
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}}]
    r = oai.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "get_time please"}], tools=tools)
    tc = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and tc and tc[0].function.name == "get_time"
    assert isinstance(json.loads(tc[0].function.arguments), dict)
    c = oai.completions.create(model="llama3.2", prompt="once upon a time", max_tokens=5)
    assert c.choices[0].finish_reason == "length" and c.usage.completion_tokens == 5


def test_openai_embeddings(oai):
    b64 = oai.embeddings.create(model="nomic-embed-text", input=["a", "b"])  # SDK default: base64
    flt = oai.embeddings.create(model="nomic-embed-text", input=["a", "b"], encoding_format="float")
    assert len(b64.data) == 2 and len(b64.data[0].embedding) == 768
    assert all(abs(x - y) < 1e-6 for x, y in zip(b64.data[0].embedding, flt.data[0].embedding))
    d = oai.embeddings.create(model="nomic-embed-text", input="a", dimensions=32)
    assert len(d.data[0].embedding) == 32


def test_openai_models(oai):
    ids = [m.id for m in oai.models.list()]
    assert "llama3.2:latest" in ids
    m = oai.models.retrieve("qwen3:8b")
    assert m.id == "qwen3:8b" and m.owned_by == "library"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("nosuch")


def test_openai_errors(oai, threaded):
    with pytest.raises(openai.NotFoundError) as ei:
        oai.chat.completions.create(model="nosuch", messages=USER)
    assert ei.value.status_code == 404 and "model 'nosuch' not found" in ei.value.message
    with pytest.raises(openai.BadRequestError) as ei:
        oai.chat.completions.create(model="llama3.2", messages=[])
    assert "[] is too short - 'messages'" in ei.value.message
    threaded.call(lambda e: setattr(e, "fail_rate", 1.0))
    try:
        with pytest.raises(openai.InternalServerError):
            oai.chat.completions.create(model="llama3.2", messages=USER)
    finally:
        threaded.call(lambda e: setattr(e, "fail_rate", 0.0))
    threaded.call(lambda e: setattr(e, "busy", True))
    try:
        with pytest.raises(openai.APIStatusError) as ei:
            oai.chat.completions.create(model="llama3.2", messages=USER)
        assert ei.value.status_code == 503
    finally:
        threaded.call(lambda e: setattr(e, "busy", False))
    threaded.call(lambda e: setattr(e, "midstream_fail_rate", 1.0))
    try:
        # Ollama's OpenAI layer turns a mid-stream failure into an empty delta and ends the
        # stream without [DONE]: the SDK raises nothing, the answer is just cut short
        chunks = list(oai.chat.completions.create(model="llama3.2", messages=USER, stream=True))
        assert chunks[-1].choices[0].delta.content == "" and chunks[-1].choices[0].finish_reason is None
    finally:
        threaded.call(lambda e: setattr(e, "midstream_fail_rate", 0.0))


# ------------------------------------------------------------------ openai, async


async def test_openai_async():
    async with FakeOllama(MODELS, load_delay=0, tokens_per_sec=0) as h:
        async with openai.AsyncOpenAI(base_url=h.url + "/v1", api_key="x", max_retries=0) as c:
            r = await c.chat.completions.create(model="qwen3:8b", messages=USER)
            assert r.choices[0].message.content
            stream = await c.chat.completions.create(model="llama3.2", messages=USER, stream=True)
            text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
            assert text
            e = await c.embeddings.create(model="nomic-embed-text", input="x")
            assert len(e.data[0].embedding) == 768
