"""Scaling out: replicas of ``ollamamax serve`` share no state, yet route a conversation alike.

The claim (design.md, "Scaling out"): several gateways behind an L4 load balancer need no
shared state for correct routing, because the affinity strategy hashes the conversation
onto a consistent-hash ring built from the host URLs, which every replica computes the
same way.  Here two separate gateway processes front the same three emulated hosts (the
second lists them in another order: the ring is over URLs, not list positions) and
every request must land on the same host whichever gateway took it.

Requests are sent one at a time per gateway: the affinity strategy has a bounded-load
rule (a host far above the mean in-flight load passes a request to the next host on the
ring), so under concurrent load a replica may legitimately divert a key.  With no
competing load that rule never fires and the routing must be identical.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

import ollamamax
from ollamamax.testing import FakeOllama

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]

MODEL = "llama3.2"
SESSION_HEADER = "X-Ollamamax-Session"  # DispatcherConfig.session_header
HOST_HEADER = "X-Ollamamax-Host"  # name of the host that served it (host:port by default)
URL_RE = re.compile(rb"serving (http://\S+)")
N_KEYS = 48  # P(one of 3 hosts gets no key) ~ 3 * (2/3)**48 < 1e-8
N_CONVERSATIONS = 12
N_TURNS = 4


def _env() -> dict[str, str]:
    """The environment of a gateway: the ollamamax under test, no stray OLLAMAMAX_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMAMAX_")}
    env["PYTHONPATH"] = str(Path(ollamamax.__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    if "OLLAMAMAX_NO_EXTENSIONS" in os.environ:
        env["OLLAMAMAX_NO_EXTENSIONS"] = os.environ["OLLAMAMAX_NO_EXTENSIONS"]
    return env


class Gateway:
    """One ``ollamamax serve --strategy affinity`` subprocess."""

    def __init__(self, label: str, backends: list[str]) -> None:
        self.label = label
        self.backends = backends
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""

    async def start(self, timeout: float = 30.0) -> None:
        argv = [sys.executable, "-m", "ollamamax", "serve", "--log-level", "warning",
                "--strategy", "affinity", "--listen", "127.0.0.1:0"]
        for b in self.backends:
            argv += ["--backend", b]
        self.proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env())
        assert self.proc.stdout is not None and self.proc.stderr is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        m = URL_RE.search(line)
        if not m:
            try:
                err = await asyncio.wait_for(self.proc.stderr.read(), 10)
            except asyncio.TimeoutError:
                err = b"<timeout>"
            raise AssertionError(f"gateway {self.label}: no URL line: {line!r}; stderr: {err!r}")
        self.url = m.group(1).decode()

    async def stop(self) -> int | None:
        """SIGTERM, bounded wait, then SIGKILL; returns the exit code of a clean stop."""
        p = self.proc
        if p is None or p.returncode is not None:
            return None if p is None else p.returncode
        p.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(p.wait(), 20)
        except asyncio.TimeoutError:
            p.kill()
            await p.wait()
            return None

    async def kill(self) -> None:
        p = self.proc
        if p is not None and p.returncode is None:
            p.kill()
            await p.wait()


async def _wait_ready(s: aiohttp.ClientSession, gw: Gateway, names: set[str]) -> None:
    """Until the gateway sees every host healthy with the model loaded (bounded: ~15 s)."""
    status: object = None
    for _ in range(150):
        async with s.get(gw.url + "/ollamamax/status") as r:
            assert r.status == 200
            status = await r.json()
        hosts = status["hosts"]  # type: ignore[index]
        ready = {h["name"] for h in hosts
                 if h["healthy"] and any(m.split(":")[0] == MODEL for m in h["loaded"])}
        if ready == names:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"gateway {gw.label} never saw all hosts ready: {status!r}")


@pytest.fixture
async def cluster():
    """Three emulated hosts with the model preloaded and two gateways in front of them."""
    hosts = [FakeOllama([MODEL], load_delay=0, tokens_per_sec=0, num_parallel=4, preload=[MODEL],
                        response_tokens=(4, 8), host_id=f"scale-host-{i}", seed=i)
             for i in range(3)]
    gateways: list[Gateway] = []
    try:
        for h in hosts:
            await h.start()
        urls = [h.url for h in hosts]
        gateways = [Gateway("A", urls), Gateway("B", urls[::-1])]  # same hosts, other order
        await asyncio.gather(*(g.start() for g in gateways))
        by_name = {h.url.split("://", 1)[1]: h for h in hosts}  # default host name: host:port
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
            await asyncio.gather(*(_wait_ready(s, g, set(by_name)) for g in gateways))
            yield s, gateways, by_name
    finally:
        # SIGTERM by PID (bounded wait, then SIGKILL), then the hosts
        codes = await asyncio.gather(*(g.stop() for g in gateways), return_exceptions=True)
        for g in gateways:
            await g.kill()
        for h in hosts:
            await h.stop()
        assert all(c in (0, None) for c in codes), codes


async def _chat(s: aiohttp.ClientSession, gw: Gateway, by_name: dict[str, FakeOllama],
                messages: list[dict], session: str | None = None, openai: bool = False) -> tuple[str, str]:
    """One non-streamed chat through ``gw``; returns (host name, reply text)."""
    headers = {SESSION_HEADER: session} if session is not None else {}
    path = "/v1/chat/completions" if openai else "/api/chat"
    async with s.post(gw.url + path, headers=headers,
                      json={"model": MODEL, "messages": messages, "stream": False}) as r:
        body = await r.json()
        assert r.status == 200, (gw.label, body)
        name = r.headers[HOST_HEADER]
        assert name in by_name, (gw.label, name)
        # the host really served it (its own id header passes through) and at the first try
        assert r.headers.get("X-Ollama-Host-Id") == by_name[name].host_id
        assert r.headers.get("X-Ollamamax-Attempts") == "1", (gw.label, dict(r.headers))
    text = body["choices"][0]["message"]["content"] if openai else body["message"]["content"]
    return name, text


async def test_two_gateways_route_a_session_key_to_the_same_host(cluster):
    s, (a, b), by_name = cluster
    keys = [f"user-{i:03d}" for i in range(N_KEYS)]

    async def drive(gw: Gateway, order: list[str], openai_every: int) -> dict[str, str]:
        seen: dict[str, str] = {}
        for i, k in enumerate(order):  # one at a time: no competing load on this gateway
            msgs = [{"role": "user", "content": f"hello from {gw.label}, turn {i}"}]
            seen[k], _ = await _chat(s, gw, by_name, msgs, session=k,
                                     openai=openai_every > 0 and i % openai_every == 0)
        return seen

    # both gateways at once, each in its own order, with different message contents;
    # B also takes every third key on the OpenAI-compatible route
    via_a, via_b = await asyncio.gather(drive(a, keys, 0), drive(b, keys[::-1], 3))
    differ = {k: (via_a[k], via_b[k]) for k in keys if via_a[k] != via_b[k]}
    assert not differ, f"keys routed differently by the two gateways: {differ}"
    assert len(set(via_a.values())) == 3, via_a  # the keys spread over all three hosts

    # a key keeps its host on a second visit through the other gateway
    for k in keys[:8]:
        name, _ = await _chat(s, b, by_name, [{"role": "user", "content": "again"}], session=k)
        assert name == via_a[k], k


async def test_keyless_conversation_alternating_gateways_stays_on_one_host(cluster):
    s, gateways, by_name = cluster
    first_hosts: list[str] = []
    for c in range(N_CONVERSATIONS):
        messages: list[dict] = [{"role": "user", "content": f"conversation {c}: why is the sky blue?"}]
        served: list[tuple[str, str]] = []
        for turn in range(N_TURNS):  # the history grows; the gateway alternates each turn
            gw = gateways[(c + turn) % 2]
            name, reply = await _chat(s, gw, by_name, messages)
            served.append((gw.label, name))
            messages = messages + [{"role": "assistant", "content": reply},
                                   {"role": "user", "content": f"and then? ({turn})"}]
        assert len({name for _, name in served}) == 1, (c, served)
        first_hosts.append(served[0][1])
    # P(all 12 conversations on one of 3 hosts) = 3 * (1/3)**12 ~ 6e-6
    assert len(set(first_hosts)) > 1, first_hosts


async def test_gateways_stop_cleanly(cluster):
    s, gateways, by_name = cluster
    for gw in gateways:
        await _chat(s, gw, by_name, [{"role": "user", "content": "hi"}], session="k")
    codes = [await gw.stop() for gw in gateways]
    assert codes == [0, 0]
