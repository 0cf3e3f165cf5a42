"""FakeOllama's prompt cache (``prompt_eval_tps=``, ``ollamamax mock --prompt-eval-tps``).

What it pins, from Ollama's runners (``runner/ollamarunner/cache.go``, ``LoadCacheSlot``
and ``findLongestCacheSlot``; ``runner/ollamarunner/runner.go``, ``NewSequence``):

* each parallel slot keeps the tokens it processed, the prompt and then the reply;
* a request takes the free slot with the longest common prefix and evaluates only the
  rest; a fully cached prompt still evaluates its last token;
* ``prompt_eval_count`` stays the whole prompt (ollama/ollama#5371: caching must not
  change it), ``prompt_eval_duration`` is the time of the evaluated tokens only, and the
  cached part is ``prompt_eval_cached_count`` (Ollama 0.33+, ollama/ollama#17943);
* unloading a model (or evicting it) drops its caches: a new runner starts empty.

Token counts below follow ``_promptcache.chat_tokens``: ``<s>``, then per message
``<|role|>`` and its words, then ``<|assistant|>``.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from ollamamax.testing import FakeOllama
from ollamamax.testing._promptcache import Slot, chat_tokens, take_slot

TPS = 100.0  # prompt tokens per second
WORDS_A = ["tell", "me", "about", "the", "hosts", "running", "together", "in", "order"]
WORDS_B = ["why", "is", "the", "sky", "blue"]


async def chat(session: aiohttp.ClientSession, h: FakeOllama, messages: list[dict], **kw) -> dict:
    body = {"model": "llama3.2", "messages": messages, "stream": False, **kw}
    async with session.post(h.url + "/api/chat", json=body) as r:
        assert r.status == 200, await r.text()
        return await r.json()


def user(words: list[str]) -> dict:
    return {"role": "user", "content": " ".join(words)}


def turn1_tokens(words: list[str]) -> int:
    return 1 + 1 + len(words) + 1  # <s> <|user|> words <|assistant|>


def assert_evaluated(reply: dict, total: int, cached: int) -> None:
    """The whole prompt is counted, the cached part is reported, only the rest took time."""
    assert reply["prompt_eval_count"] == total
    assert reply["prompt_eval_cached_count"] == cached
    assert reply["prompt_eval_duration"] == pytest.approx((total - cached) / TPS * 1e9, abs=2000)


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


async def test_continued_conversation_evaluates_only_the_new_turn(session):
    async with FakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=0, prompt_eval_tps=TPS, seed=3) as h:
        t0 = time.monotonic()
        r1 = await chat(session, h, [user(WORDS_A)])
        assert time.monotonic() - t0 >= 12 / TPS  # the prompt's evaluation was waited for
        n1 = turn1_tokens(WORDS_A)  # 12
        assert_evaluated(r1, n1, 0)
        reply = r1["message"]["content"]
        history = [user(WORDS_A), {"role": "assistant", "content": reply}, user(WORDS_B)]
        r2 = await chat(session, h, history)
        cached = n1 + len(reply.split())  # the first prompt and the reply, as the slot processed them
        total = cached + 1 + len(WORDS_B) + 1  # <|user|> words <|assistant|>
        assert_evaluated(r2, total, cached)
        assert total - cached == 7
        # the same question again: all of it is cached but the last token is evaluated again
        r3 = await chat(session, h, history)
        assert_evaluated(r3, total, total - 1)


async def test_interleaved_conversations_keep_their_own_slots(session):
    """Two conversations on a 2-slot model: their first turns are in flight together and take
    one slot each; every later turn finds its own history in its own slot (the longest
    prefix), whichever of the two arrives first."""
    async with FakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=0, prompt_eval_tps=25, num_parallel=2, seed=4) as h:
        hists = [[user(WORDS_A)], [user(WORDS_B)]]
        replies = list(await asyncio.gather(*(chat(session, h, x) for x in hists)))  # ~0.5 s each: they overlap
        assert [r["prompt_eval_cached_count"] for r in replies] == [0, 0]
        for rnd, order in enumerate(([1, 0], [0, 1], [1, 0])):
            expect = []
            for i in (0, 1):
                content = replies[i]["message"]["content"]
                expect.append(len(chat_tokens((m["role"], m["content"]) for m in hists[i])) + len(content.split()))
                hists[i] = [*hists[i], {"role": "assistant", "content": content}, user([f"round{rnd}", "go", "on"])]
            for i, r in zip(order, await asyncio.gather(*(chat(session, h, hists[i]) for i in order))):
                replies[i] = r
            for i in (0, 1):
                assert replies[i]["prompt_eval_count"] == len(chat_tokens((m["role"], m["content"]) for m in hists[i]))
                assert replies[i]["prompt_eval_cached_count"] == expect[i], (rnd, i)


async def test_another_host_or_a_reloaded_model_starts_cold(session):
    async with FakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=0, prompt_eval_tps=TPS, seed=5) as h1, \
               FakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=0, prompt_eval_tps=TPS, seed=5) as h2:  # fmt: skip
        r1 = await chat(session, h1, [user(WORDS_A)])
        history = [user(WORDS_A), {"role": "assistant", "content": r1["message"]["content"]}, user(WORDS_B)]
        total = turn1_tokens(WORDS_A) + len(r1["message"]["content"].split()) + 2 + len(WORDS_B)
        assert_evaluated(await chat(session, h2, history), total, 0)  # the other host never saw it
        # unloading drops the caches: the same host evaluates everything again after a reload
        await chat(session, h1, [], keep_alive=0)
        assert h1.loaded_models() == []
        assert_evaluated(await chat(session, h1, history), total, 0)


async def test_eviction_drops_the_cache(session):
    async with FakeOllama(["llama3.2", "qwen3"], load_delay=0, tokens_per_sec=0, prompt_eval_tps=TPS, max_loaded_models=1) as h:
        r1 = await chat(session, h, [user(WORDS_A)])
        history = [user(WORDS_A), {"role": "assistant", "content": r1["message"]["content"]}, user(WORDS_B)]
        await chat(session, h, [user(WORDS_B)], model="qwen3")  # evicts llama3.2
        r2 = await chat(session, h, history)
        assert r2["prompt_eval_cached_count"] == 0


async def test_off_by_default_keeps_the_old_fields(session):
    async with FakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=0) as h:
        r1 = await chat(session, h, [user(WORDS_A)])
        reply = r1["message"]["content"]
        r2 = await chat(session, h, [user(WORDS_A), {"role": "assistant", "content": reply}, user(WORDS_B)])
        assert "prompt_eval_cached_count" not in r2
        assert r2["prompt_eval_count"] == len(WORDS_A) + len(reply.split()) + len(WORDS_B) + 4  # words + 4, as before


def test_take_slot_prefers_the_longest_prefix_even_another_conversations():
    """``findLongestCacheSlot``: the free slot with the longest common prefix wins, ties go
    to the first slot, a held slot is skipped. A new conversation therefore takes a slot
    that shares only ``<s> <|user|>`` with it over an empty one, as Ollama does without
    ``OLLAMA_MULTIUSER_CACHE``."""
    a = chat_tokens([("user", "hello there")])
    b = chat_tokens([("user", "something else")])
    s0, s1 = Slot(), Slot()
    slot, cached = take_slot([s0, s1], a)
    assert (slot, cached) == (s0, 0)  # tie at 0: the first
    s0.tokens, s0.in_use = a + ["general", "kenobi"], False
    slot, cached = take_slot([s0, s1], b)
    assert (slot, cached) == (s0, 2)  # shares "<s> <|user|>"
    assert s0.tokens == a[:2]  # cut back to the prefix; the rest is overwritten
    slot, cached = take_slot([s0, s1], a)
    assert (slot, cached) == (s1, 0)  # s0 is held
    assert take_slot([s0, s1], a) is None
