"""The embedded API (``d.chat()`` ...) returns what ``ollama.AsyncClient`` returns from a real host."""

from __future__ import annotations

from typing import Any

import ollama
import pytest

from ollamamax.dispatch import Dispatcher, ResponseError
from ollamamax.testing import FakeOllama

pytestmark = pytest.mark.timeout(60)

MSGS = [{"role": "user", "content": "tell me something"}]


def official(obj: Any) -> dict[str, Any]:
    return obj.model_dump(exclude_none=True, by_alias=True)


def same_shape(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert set(theirs) <= set(ours), set(theirs) - set(ours)


@pytest.fixture
async def pair() -> Any:
    async with FakeOllama(
        models=["llama3.2", "nomic-embed-text"],
        preload=["llama3.2"],
        tokens_per_sec=0,
        load_delay=0.01,
        seed=3,
        max_loaded_models=2,
    ) as host:
        client = ollama.AsyncClient(host=host.url)
        async with Dispatcher([host.url]) as d:
            yield d, client, host
        await client._client.aclose()


async def test_chat_and_generate_match_official_client(pair: Any) -> None:
    d, client, _host = pair
    ours = await d.chat(model="llama3.2", messages=MSGS)
    theirs = official(await client.chat(model="llama3.2", messages=MSGS))
    same_shape(ours, theirs)
    assert ours["message"]["content"] == theirs["message"]["content"]
    assert ours["message"]["role"] == "assistant" and ours["done"] is True

    ours_parts = [p async for p in await d.chat(model="llama3.2", messages=MSGS, stream=True)]
    theirs_parts = [official(p) async for p in await client.chat(model="llama3.2", messages=MSGS, stream=True)]
    assert len(ours_parts) == len(theirs_parts)
    assert "".join(p["message"]["content"] for p in ours_parts) == "".join(
        p["message"]["content"] for p in theirs_parts
    )
    for o, t in zip(ours_parts, theirs_parts):
        same_shape(o, t)

    ours = await d.generate(model="llama3.2", prompt="hello", options={"num_predict": 5})
    theirs = official(await client.generate(model="llama3.2", prompt="hello", options={"num_predict": 5}))
    same_shape(ours, theirs)
    assert ours["response"] == theirs["response"] and ours["done_reason"] == theirs["done_reason"]
    parts = [p async for p in await d.generate(model="llama3.2", prompt="hello", stream=True)]
    assert parts[-1]["done"] is True


async def test_embed_list_ps_show_match_official_client(pair: Any) -> None:
    d, client, _host = pair
    ours = await d.embed(model="nomic-embed-text", input=["a", "b"])
    theirs = official(await client.embed(model="nomic-embed-text", input=["a", "b"]))
    same_shape(ours, theirs)
    assert ours["embeddings"] == theirs["embeddings"]
    ours = await d.embeddings(model="nomic-embed-text", prompt="a")
    theirs = official(await client.embeddings(model="nomic-embed-text", prompt="a"))
    assert ours["embedding"] == theirs["embedding"]

    ours = await d.list()
    theirs = await client.list()
    assert sorted(m["model"] for m in ours["models"]) == sorted(m.model for m in theirs.models)
    for m in ours["models"]:
        assert {"model", "modified_at", "size", "digest", "details"} <= set(m)
    ours = await d.ps()
    theirs = await client.ps()
    assert sorted(m["model"] for m in ours["models"]) == sorted(m.model for m in theirs.models)
    ours = await d.show("llama3.2")
    theirs = official(await client.show("llama3.2"))
    same_shape(ours, theirs)
    assert ours["capabilities"] == theirs["capabilities"]


async def test_errors_raise_response_error_like_official_client(pair: Any) -> None:
    d, client, _host = pair
    with pytest.raises(ollama.ResponseError) as theirs:
        await client.chat(model="nosuch", messages=MSGS)
    with pytest.raises(ResponseError) as ours:
        await d.chat(model="nosuch", messages=MSGS)
    assert str(ours.value) == str(theirs.value)
    assert ours.value.status_code == theirs.value.status_code == 404
    assert ours.value.error == theirs.value.error

    with pytest.raises(ollama.ResponseError) as theirs:
        await client.embed(model="nosuch", input="x")
    with pytest.raises(ResponseError) as ours:
        await d.embed(model="nosuch", input="x")
    assert str(ours.value) == str(theirs.value)

    with pytest.raises(ResponseError) as ours:
        async for _ in await d.chat(model="nosuch", messages=MSGS, stream=True):
            pass
    assert ours.value.status_code == 404


async def test_in_band_stream_error_raises_with_status_minus_one(pair: Any) -> None:
    d, _client, host = pair
    d.config.eject_after_failures = 1000  # keep the host in rotation
    host.midstream_fail_rate = 1.0
    host.response_tokens = (20, 20)
    with pytest.raises(ResponseError) as ours:
        async for _ in await d.chat(model="llama3.2", messages=MSGS, stream=True):
            pass
    assert ours.value.status_code == -1
    assert d.hosts[0].in_flight == 0


def test_response_error_mirrors_official() -> None:
    for text, code in [('{"error":"boom"}', 500), ("plain text", 404), ('{"error":{"message":"m"}}', 400)]:
        ours = ResponseError(text, code)
        theirs = ollama.ResponseError(text, code)
        if "message" not in text:
            assert str(ours) == str(theirs)
            assert ours.error == theirs.error
        else:
            assert ours.error == "m"
    assert ResponseError("x").status_code == -1
