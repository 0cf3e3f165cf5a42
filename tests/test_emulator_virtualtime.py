"""The emulator's scheduler and engine on virtual time (``VirtualTimeLoop``), with no sockets.

The fleet simulator replays minutes of traffic through the emulator's own scheduling
model in well under a second; that only works if every time the emulator reads, sleeps
or sets a timer on is the event loop's (``loop.time()``), never ``time.monotonic()``. A
single monotonic read left in pacing, in the keep-alive timer or in a duration makes the
virtual figures below wrong (real time barely moves while virtual time jumps).

Rates are powers of two so that every expected time is an exact binary fraction: the
virtual times are compared for equality.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from ollamamax.testing import VirtualTimeLoop
from ollamamax.testing._engine import Engine
from ollamamax.testing._promptcache import chat_tokens
from ollamamax.testing._virtualtime import VirtualTimeDeadlock, run_virtual

LOAD = 2.0  # seconds
TPS = 64.0  # generated tokens per second
PROMPT_TPS = 256.0  # prompt tokens per second
ANSWER = 32  # tokens


async def one_reply(eng: Engine, words: str, keep_alive: float | None = None) -> dict[str, float]:
    """One chat reply through the engine as the HTTP routes drive it; its virtual times."""
    info = eng.lookup("llama3.2")
    assert info is not None
    t0 = eng.now()
    plan = eng.plan(info, text=words, last_user=words, last_role="user", think=False, fmt=None, tools=None, options=None,
                    prompt_tokens=chat_tokens([("user", words)]))  # fmt: skip
    runner, load_wait = await eng.acquire(info, keep_alive, plan)
    t_acq = eng.now()
    t_gen = await eng.first_token_wait(plan)
    await eng.pace(t_gen, plan.eval_count)
    t_end = eng.now()
    metrics = eng.metrics(t0, load_wait, t_acq, plan, t_gen, t_end)
    eng.release(runner, True, plan)
    return {"load": t_acq - t0, "prompt": t_gen - t_acq, "gen": t_end - t_gen, "total": t_end - t0,
            "load_wait": load_wait, "total_ns": metrics["total_duration"], "eval_count": plan.eval_count,
            "prompt_tokens": plan.prompt_eval_count, "cached": plan.cached}  # fmt: skip


def test_load_and_generation_take_exact_virtual_time_and_no_real_time():
    async def main() -> tuple[dict[str, float], dict[str, float], list[str], list[str]]:
        eng = Engine(["llama3.2"], load_delay=LOAD, tokens_per_sec=TPS, prompt_eval_tps=PROMPT_TPS,
                     response_tokens=(ANSWER, ANSWER), keep_alive="5m", seed=1)  # fmt: skip
        cold = await one_reply(eng, "hello there")
        warm = await one_reply(eng, "hello there")  # loaded; the prompt is cached but its last token
        await asyncio.sleep(299.5)
        loaded_before = eng.loaded_models()
        await asyncio.sleep(1.0)  # the 5 minute keep-alive has run out
        return cold, warm, loaded_before, eng.loaded_models()

    wall = time.perf_counter()
    cold, warm, loaded_before, loaded_after = run_virtual(main())
    wall = time.perf_counter() - wall
    assert cold["eval_count"] == ANSWER and cold["prompt_tokens"] == 5 and cold["cached"] == 0
    assert cold["load"] == cold["load_wait"] == LOAD
    assert cold["prompt"] == 5 / PROMPT_TPS
    assert cold["gen"] == ANSWER / TPS
    assert cold["total"] == LOAD + 5 / PROMPT_TPS + ANSWER / TPS  # 2.51953125 s
    assert cold["total_ns"] == 2_519_531_250
    assert warm["load"] == 0 and warm["cached"] == 4 and warm["prompt"] == 1 / PROMPT_TPS
    assert warm["total"] == 1 / PROMPT_TPS + ANSWER / TPS
    assert loaded_before == ["llama3.2:latest"] and loaded_after == []
    assert wall < 30.0  # 303 virtual seconds did not sleep in real time (a few ms in practice; no speed goal)


def test_concurrent_requests_share_one_cold_load_in_virtual_time():
    async def main() -> list[dict[str, float]]:
        eng = Engine(["llama3.2"], load_delay=LOAD, tokens_per_sec=TPS, prompt_eval_tps=PROMPT_TPS,
                     response_tokens=(ANSWER, ANSWER), num_parallel=2, seed=1)  # fmt: skip
        return list(await asyncio.gather(*(one_reply(eng, f"question number {i}") for i in range(3))))

    a, b, c = run_virtual(main())
    # two slots: the first two run together after the shared load, the third after them
    assert a["load"] == b["load"] == LOAD
    assert a["total"] == b["total"] == LOAD + 6 / PROMPT_TPS + ANSWER / TPS
    assert c["load"] == LOAD + 6 / PROMPT_TPS + ANSWER / TPS  # waited for a slot
    # its slot already holds "<s> <|user|> question number": 2 of its 6 prompt tokens are new
    assert (a["cached"], b["cached"], c["cached"]) == (0, 0, 4)
    assert c["total"] == c["load"] + 2 / PROMPT_TPS + ANSWER / TPS


@pytest.mark.timeout(10)  # a loop that spins instead of raising fails here, not hangs
def test_virtual_loop_jumps_to_timers_and_refuses_to_wait_forever():
    loop = VirtualTimeLoop(start=100.0)
    try:
        fired: list[float] = []
        loop.call_later(3600, lambda: fired.append(loop.time()))
        loop.run_until_complete(asyncio.sleep(7200))
        assert fired == [3700.0] and loop.time() == 7300.0

        async def forever() -> None:
            await loop.create_future()  # nothing will ever set it

        with pytest.raises(VirtualTimeDeadlock):
            loop.run_until_complete(forever())
    finally:
        loop.close()


def test_cold_loads_of_different_models_run_one_at_a_time():
    """Ollama loads one model at a time (processPending takes one pending request, and
    load() returns only once llama.Load has the runner up: server/sched.go).  Bug caught:
    the emulator loading every cold model at once, which makes a router that sends many
    cold models to one host look cheaper than it is on a real server."""

    async def load_of(eng: Engine, name: str) -> float:
        info = eng.lookup(name)
        assert info is not None
        t0 = eng.now()
        plan = eng.plan(info, text="hi", last_user="hi", last_role="user", think=False, fmt=None, tools=None,
                        options=None, prompt_tokens=chat_tokens([("user", "hi")]))  # fmt: skip
        runner, _ = await eng.acquire(info, None, plan)
        t = eng.now() - t0
        eng.release(runner, True, plan)
        return t

    async def main() -> list[float]:
        eng = Engine(["llama3.2", "qwen3:0.6b", "mistral"], load_delay=LOAD, tokens_per_sec=TPS,
                     max_loaded_models=3, seed=1)  # fmt: skip
        return list(await asyncio.gather(*(load_of(eng, m) for m in ("llama3.2", "qwen3:0.6b", "mistral"))))

    assert run_virtual(main()) == [LOAD, 2 * LOAD, 3 * LOAD]
