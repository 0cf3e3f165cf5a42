"""FakeOllama's memory-based residency (``vram=``, ``ollamamax mock --vram``).

Ollama's scheduler (server/sched.go, ``processPending``) loads a cold model only when it
fits beside the resident ones (``OLLAMA_MAX_LOADED_MODELS`` and memory); otherwise it
unloads a runner chosen by ``findRunnerToUnload`` (one with no request referencing it
first) and waits on ``unloadedCh`` until that runner is gone; a runner with requests is
never unloaded under them. The emulator's victim is the least recently used idle model.

Sizes come from the model table: a ``:1b`` tag is 600,012,345 bytes, ``:2b`` twice that
(Q4_K_M at 0.6 bytes a parameter, plus a small header), as ``/api/tags`` reports them.
With ``VRAM`` below, two 1b models fit, or one 2b model, but never three 1b or 2b + 1b.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from ollamamax.testing import FakeOllama
from ollamamax.testing.cli import parse_bytes

SMALL = 600_012_345
BIG = 1_200_012_345
VRAM = 1_250_000_000


def gen(model: str, **kw) -> dict:
    return {"model": model, "prompt": "hello there", "stream": False, **kw}


async def post(session: aiohttp.ClientSession, url: str, body) -> tuple[int, dict]:
    async with session.post(url, json=body) as r:
        return r.status, await r.json(content_type=None)


async def ps(session: aiohttp.ClientSession, h: FakeOllama) -> dict[str, dict]:
    async with session.get(h.url + "/api/ps") as r:
        return {m["name"]: m for m in (await r.json())["models"]}


async def until(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def evictions(h: FakeOllama) -> dict[str, int]:
    return {name: row["evictions"] for name, row in h.stats()["models"].items() if row["evictions"]}


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


async def test_evicts_lru_idle_models_until_the_new_one_fits(session):
    models = ["s1:1b", "s2:1b", "s3:1b", "big:2b"]
    async with FakeOllama(models, load_delay=0.01, tokens_per_sec=0, max_loaded_models=4, vram=VRAM) as h:
        url = h.url + "/api/generate"
        for m in ("s1:1b", "s2:1b"):
            assert (await post(session, url, gen(m)))[0] == 200
        assert sorted(h.loaded_models()) == ["s1:1b", "s2:1b"]  # two fit; the count limit (4) is not what binds
        assert (await post(session, url, gen("s3:1b")))[0] == 200
        assert sorted(h.loaded_models()) == ["s2:1b", "s3:1b"]  # s1 was the least recently used
        assert (await post(session, url, gen("s2:1b")))[0] == 200  # s2 now more recent than s3
        assert (await post(session, url, gen("big:2b")))[0] == 200
        assert h.loaded_models() == ["big:2b"]  # both small ones had to go
        assert evictions(h) == {"s1:1b": 1, "s2:1b": 1, "s3:1b": 1}
        assert (await post(session, url, gen("s1:1b")))[0] == 200
        assert h.loaded_models() == ["s1:1b"]
        assert evictions(h) == {"s1:1b": 1, "s2:1b": 1, "s3:1b": 1, "big:2b": 1}
        rows = await ps(session, h)
        assert rows["s1:1b"]["size"] == rows["s1:1b"]["size_vram"] == SMALL  # fits: all of it on the "GPU"


async def test_busy_model_is_never_evicted(session):
    """big needs all the room: the idle s2 goes at once, the busy s1 only after its reply."""
    async with FakeOllama(["s1:1b", "s2:1b", "big:2b"], load_delay=0.01, tokens_per_sec=20, response_tokens=(8, 8),
                          max_loaded_models=4, vram=VRAM) as h:  # fmt: skip
        url = h.url + "/api/generate"
        h.tokens_per_sec = 0
        assert (await post(session, url, gen("s2:1b")))[0] == 200
        h.tokens_per_sec = 20  # s1's reply takes 0.4 s
        t_s1 = asyncio.create_task(post(session, url, gen("s1:1b")))
        await until(lambda: h.stats()["models"].get("s1:1b", {}).get("in_flight") == 1)
        t_big = asyncio.create_task(post(session, url, gen("big:2b")))
        await until(lambda: h.stats()["models"].get("big:2b", {}).get("queued") == 1)
        await asyncio.sleep(0.1)
        assert h.loaded_models() == ["s1:1b"]  # s2 evicted, s1 busy: big waits
        assert evictions(h) == {"s2:1b": 1}
        (s1, _), (sb, b) = await asyncio.gather(t_s1, t_big)
        assert s1 == sb == 200 and b["load_duration"] > 0.2e9  # waited for s1's reply, then loaded
        assert h.loaded_models() == ["big:2b"]
        assert evictions(h) == {"s2:1b": 1, "s1:1b": 1}


async def test_model_bigger_than_vram_loads_alone_partly_offloaded(session):
    async with FakeOllama(["s1:1b", "huge:4b"], load_delay=0, tokens_per_sec=0, max_loaded_models=3, vram=VRAM) as h:
        url = h.url + "/api/generate"
        assert (await post(session, url, gen("s1:1b")))[0] == 200
        assert (await post(session, url, gen("huge:4b")))[0] == 200
        assert h.loaded_models() == ["huge:4b"]
        row = (await ps(session, h))["huge:4b"]
        assert row["size"] == h.lookup("huge:4b").size == 2_400_012_345
        assert row["size_vram"] == VRAM  # the rest is "on the CPU", as a partial offload reports
        assert (await post(session, url, gen("s1:1b")))[0] == 200
        assert h.loaded_models() == ["s1:1b"]


async def test_no_vram_limit_by_default(session):
    async with FakeOllama(["s1:1b", "huge:4b", "big:2b"], load_delay=0, tokens_per_sec=0, max_loaded_models=3) as h:
        url = h.url + "/api/generate"
        for m in ("s1:1b", "huge:4b", "big:2b"):
            assert (await post(session, url, gen(m)))[0] == 200
        assert len(h.loaded_models()) == 3 and evictions(h) == {}
        assert all(r["size"] == r["size_vram"] for r in (await ps(session, h)).values())


def test_parse_bytes():
    assert parse_bytes("0") == 0
    assert parse_bytes("1250000000") == VRAM
    assert parse_bytes("8GB") == 8 * 10**9
    assert parse_bytes("1.5 GiB") == 3 * 2**29
    assert parse_bytes("512mib") == 512 * 2**20
    for bad in ("", "GB", "12 apples", "-1"):
        with pytest.raises(ValueError):
            parse_bytes(bad)
