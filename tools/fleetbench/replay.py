"""Open-loop replay of a seeded trace through one target, as chat clients would send it.

Owns :func:`replay` and :class:`Outcome` (what one request measured). Each request of the
trace starts at its ``at`` whatever the others do (open loop), as a streaming ``/api/chat``
with the model also in an ``X-Model`` header (for nginx's consistent hashing; every
target gets it). A continued turn carries its conversation's real history: the earlier
user messages and the replies this target actually returned, in turn order.

When a continued turn is due while an earlier turn of its conversation is still running
(a slow target), the default sends it anyway, with the turns finished so far as its
history (``overlapped``, counted): every target then gets the same arrivals, and a slow
one is not spared load by its own slowness (coordinated omission). With ``hold=True`` it
waits for the previous turn instead, as one person at one chat window would (``held``
seconds, counted); that is closed-loop per conversation. A turn that failed leaves no
trace in the history. Times are from the moment the request is sent: TTFT to the first
NDJSON line, total to the end of the stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp

from ollamamax.testing.workload import TraceRequest


@dataclass
class Outcome:
    index: int
    at: float  # scheduled, seconds from the start
    model: str
    conversation: int
    turn: int
    lag: float = 0.0  # how late the driver started it (seconds)
    held: float = 0.0  # waited for the conversation's previous turn (seconds; hold mode)
    overlapped: bool = False  # sent while an earlier turn of its conversation was still running
    history_turns: int = 0  # earlier turns whose messages it carried
    ttft: float | None = None
    total: float | None = None
    status: int = 0
    error: str = ""  # "" = success; else http NNN | in-band | connection | timeout | protocol | abandoned
    detail: str = ""
    host: str = ""
    prompt_eval_count: int | None = None
    prompt_eval_duration: float | None = None
    load_duration: float | None = None
    eval_count: int | None = None

    @property
    def ok(self) -> bool:
        return not self.error

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("at", "lag", "held", "ttft", "total", "prompt_eval_duration", "load_duration"):
            if isinstance(d[k], float):
                d[k] = round(d[k], 6)
        return d


async def _exchange(session: aiohttp.ClientSession, url: str, r: TraceRequest, out: Outcome, body: bytes,
                    t0: float, reply: list[str], host_name: Callable[[str], str]) -> bool:
    """POST and read the stream into ``out`` and ``reply``; True when it ended with done."""
    async with session.post(url + "/api/chat", data=body,
                            headers={"Content-Type": "application/json", "X-Model": r.model}) as resp:
        out.status = resp.status
        out.host = host_name(resp.headers.get("X-Ollamamax-Host") or resp.headers.get("X-Ollama-Host-Id") or "")
        if resp.status != 200:
            out.error, out.detail = f"http {resp.status}", (await resp.text())[:200]
            return False
        async for line in resp.content:
            if not line.strip():
                continue
            if out.ttft is None:
                out.ttft = time.monotonic() - t0
            try:
                obj = json.loads(line)
            except ValueError:
                out.error, out.detail = "protocol", line[:200].decode(errors="replace")
                return False
            if "error" in obj:
                out.error, out.detail = "in-band", str(obj["error"])[:200]
                return False
            msg = obj.get("message") or {}
            if msg.get("content"):
                reply.append(msg["content"])
            if obj.get("done"):
                out.eval_count = obj.get("eval_count")
                out.prompt_eval_count = obj.get("prompt_eval_count")
                if obj.get("prompt_eval_duration") is not None:
                    out.prompt_eval_duration = obj["prompt_eval_duration"] / 1e9
                if obj.get("load_duration") is not None:
                    out.load_duration = obj["load_duration"] / 1e9
                out.total = time.monotonic() - t0
                return True
    out.error, out.detail = "protocol", "stream ended before done"
    return False


async def _one(session: aiohttp.ClientSession, url: str, r: TraceRequest, out: Outcome,
               history: list[dict[str, str]], timeout: float, host_name: Callable[[str], str]) -> str | None:
    """Send one turn; returns the assistant's reply text on success."""
    body = json.dumps({"model": r.model, "messages": [*history, {"role": "user", "content": r.user}],
                       "stream": True}).encode()
    t0 = time.monotonic()
    reply: list[str] = []
    try:
        ok = await asyncio.wait_for(_exchange(session, url, r, out, body, t0, reply, host_name), timeout)
    except asyncio.TimeoutError:
        out.error, out.detail = "timeout", f"no complete reply in {timeout:.0f} s"
        return None
    except (aiohttp.ClientError, ConnectionError) as exc:
        out.error, out.detail = "connection", repr(exc)[:200]
        return None
    return "".join(reply) if ok else None


async def replay(url: str, trace: Sequence[TraceRequest], *, timeout: float = 120.0, hold: bool = False,
                 host_name: Callable[[str], str] = str, progress: Callable[[int, int], None] | None = None,
                 ) -> list[Outcome]:
    """Replay ``trace`` against ``url``; one :class:`Outcome` per request, in trace order.
    Bounded: each request by ``timeout`` (plus, with ``hold``, its wait for the previous
    turn, itself bounded by that turn's), the whole replay by the trace's span plus
    ``timeout`` times the longest conversation (once without ``hold``), after which what
    is left is cancelled and counted as ``abandoned``."""
    outcomes = [Outcome(i, r.at, r.model, r.conversation, r.turn) for i, r in enumerate(trace)]
    finished_turns: dict[int, dict[int, tuple[str, str]]] = {}  # conversation -> turn -> (user, reply)
    previous: dict[int, asyncio.Future[None]] = {}  # conversation -> its latest turn's end
    loop = asyncio.get_running_loop()
    finished = 0
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None),
                                    auto_decompress=False)

    async def run(r: TraceRequest, out: Outcome, before: asyncio.Future[None] | None,
                  mine: asyncio.Future[None]) -> None:
        nonlocal finished
        try:
            if before is not None and not before.done():
                if hold:
                    t_hold = time.monotonic()
                    await asyncio.wait([before], timeout=timeout + 5)
                    out.held = time.monotonic() - t_hold
                else:
                    out.overlapped = True
            done = finished_turns.setdefault(r.conversation, {})
            history: list[dict[str, str]] = []
            for k in sorted(t for t in done if t < r.turn):
                history += [{"role": "user", "content": done[k][0]}, {"role": "assistant", "content": done[k][1]}]
            out.history_turns = len(history) // 2
            reply = await _one(session, url, r, out, history, timeout, host_name)
            if reply is not None:
                done[r.turn] = (r.user, reply)
        finally:
            mine.set_result(None)
            finished += 1
            if progress is not None:
                progress(finished, len(trace))

    tasks: list[asyncio.Task[None]] = []
    start = loop.time()
    try:
        for r, out in zip(trace, outcomes):
            delay = start + r.at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            out.lag = max(0.0, loop.time() - (start + r.at))
            mine: asyncio.Future[None] = loop.create_future()
            tasks.append(asyncio.create_task(run(r, out, previous.get(r.conversation), mine)))
            previous[r.conversation] = mine
        longest = max((r.turn + 1 for r in trace), default=1) if hold else 1
        _, pending = await asyncio.wait(tasks, timeout=(timeout + 5) * longest + 5) if tasks else (set(), set())
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=10)
        for out in outcomes:
            if not out.error and out.total is None:
                out.error, out.detail = "abandoned", "still running when the replay's bound expired"
    finally:
        for t in tasks:
            t.cancel()
        await session.close()
    return outcomes
