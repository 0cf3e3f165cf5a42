"""The emulator's scheduler and engine on virtual time (``VirtualTimeLoop``), with no sockets.

The fleet simulator replays minutes of traffic through the emulator's own scheduling
model in well under a second; that only works if every time the emulator reads, sleeps
or sets a timer on is the event loop's (``loop.time()``), never ``time.monotonic()``. A
single monotonic read left in pacing, in the keep-alive timer or in a duration makes the
virtual figures below wrong (real time barely moves while virtual time jumps).

Times are compared to the nanosecond (the float's rounding of sums is far below that).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from ollamamax.testing import VirtualTimeLoop
from ollamamax.testing._engine import Engine
from ollamamax.testing._virtualtime import VirtualTimeDeadlock, run_virtual

LOAD = 2.0  # seconds
TPS = 64.0  # generated tokens per second (the prompt is evaluated at 10x that)
ANSWER = 32  # tokens


async def one_reply(eng: Engine, words: str, keep_alive: float | None = None) -> dict[str, float]:
    """One chat reply through the engine as the HTTP routes drive it; its virtual times."""
    info = eng.lookup("llama3.2")
    assert info is not None
    t0 = eng.now()
    plan = eng.plan(info, text=words, last_user=words, last_role="user", think=False, fmt=None, tools=None, options=None)
    runner, load_wait = await eng.acquire(info, keep_alive)
    t_acq = eng.now()
    t_gen = await eng.first_token_wait(plan)
    await eng.pace(t_gen, plan.eval_count)
    t_end = eng.now()
    metrics = eng.metrics(t0, load_wait, t_acq, plan, t_gen, t_end)
    eng.release(runner, True)
    return {"load": t_acq - t0, "prompt": t_gen - t_acq, "gen": t_end - t_gen, "total": t_end - t0,
            "load_wait": load_wait, "total_ns": metrics["total_duration"], "eval_count": plan.eval_count,
            "prompt_tokens": plan.prompt_eval_count}  # fmt: skip


def test_load_and_generation_take_exact_virtual_time_and_no_real_time():
    async def main() -> tuple[dict[str, float], dict[str, float], list[str], list[str]]:
        eng = Engine(["llama3.2"], load_delay=LOAD, tokens_per_sec=TPS, response_tokens=(ANSWER, ANSWER), keep_alive="5m", seed=1)
        cold = await one_reply(eng, "hello there")
        warm = await one_reply(eng, "hello there")
        await asyncio.sleep(299.5)
        loaded_before = eng.loaded_models()
        await asyncio.sleep(1.0)  # the 5 minute keep-alive has run out
        return cold, warm, loaded_before, eng.loaded_models()

    wall = time.perf_counter()
    cold, warm, loaded_before, loaded_after = run_virtual(main())
    wall = time.perf_counter() - wall
    prompt = cold["prompt_tokens"] / (TPS * 10)
    assert cold["eval_count"] == ANSWER and cold["prompt_tokens"] == 6
    assert cold["load"] == cold["load_wait"] == LOAD
    assert cold["prompt"] == pytest.approx(prompt, abs=1e-9)
    assert cold["gen"] == pytest.approx(ANSWER / TPS, abs=1e-9)
    assert cold["total"] == pytest.approx(LOAD + prompt + ANSWER / TPS, abs=1e-9)  # 2.509375 s
    assert cold["total_ns"] == pytest.approx(2_509_375_000, abs=1)
    assert warm["load"] == 0 and warm["total"] == pytest.approx(prompt + ANSWER / TPS, abs=1e-9)
    assert loaded_before == ["llama3.2:latest"] and loaded_after == []
    assert wall < 1.0  # 303 virtual seconds; a few milliseconds in practice


def test_concurrent_requests_share_one_cold_load_in_virtual_time():
    async def main() -> list[dict[str, float]]:
        eng = Engine(["llama3.2"], load_delay=LOAD, tokens_per_sec=TPS, response_tokens=(ANSWER, ANSWER), num_parallel=2, seed=1)
        return list(await asyncio.gather(*(one_reply(eng, f"question number {i}") for i in range(3))))

    a, b, c = run_virtual(main())
    one = 7 / (TPS * 10) + ANSWER / TPS  # prompt ("question number i" + 4) and answer
    # two slots: the first two run together after the shared load, the third after them
    assert a["load"] == b["load"] == LOAD
    assert a["total"] == pytest.approx(LOAD + one, abs=1e-9) and b["total"] == a["total"]
    assert c["load"] == pytest.approx(LOAD + one, abs=1e-9)  # waited for a slot
    assert c["total"] == pytest.approx(LOAD + 2 * one, abs=1e-9)


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
