"""The closed load loop of ``ollamamax bench``: owns :func:`run_bench` (validate the request
shape, run each concurrency level in turn, honour ``stop``) and the running of one level
(C workers, warm-up, measurement window, end-of-level drain, interruption), turning each
request's :class:`~.client.Outcome` into a :class:`~.results.LevelResult`.  It must not send
or parse HTTP itself (that is :mod:`.client`), format or print results, or read command-line
arguments; aiohttp and the histogram are imported inside the functions only.

Method (closed loop, per level):

* C workers share one ``aiohttp.TCPConnector(limit=C)``; each sends its next request as
  soon as the previous one finished (no think time).
* The first ``--warmup`` seconds are a warm-up: requests *started* in it are not counted
  (they are reported separately as ``warmup_ok`` / ``warmup_errors``).
* Requests started in the measurement window (``--duration``) are counted; when the window
  closes no new request starts, and those still in flight are awaited (bounded by
  ``--timeout``) and counted too.  ``elapsed`` runs from the end of the warm-up to the last
  counted completion, so requests/s = successful requests / elapsed is exact for a closed
  loop whatever the request length.
* After a connection error a worker pauses ``0.05`` s so a dead URL does not spin a core.

Coordinated omission: a closed loop only sends when a worker is free, so when the server
stalls the generator stalls with it and the requests that *would* have arrived meanwhile
are never timed.  The latencies here are therefore service times at a given concurrency,
not the latency users arriving at a fixed rate would see (for that, use an open-loop,
fixed-rate generator).  Use the levels to see where throughput stops growing and latency
starts to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from .client import Outcome, one_request
from .options import parse_concurrency
from .request import (
    DEFAULT_MODEL,
    DEFAULT_PROMPT,
    ENDPOINTS,
    NATIVE_PATHS,
    OPENAI_PATHS,
    RequestSpec,
)
from .results import LevelResult

if TYPE_CHECKING:
    from .progress import Progress

__all__ = ["CONNECTION_BACKOFF", "run_bench"]

CONNECTION_BACKOFF = 0.05  # seconds a worker pauses after a connection error


class _Level:
    """Book-keeping of one level while it runs (single event loop, no locks)."""

    def __init__(self, result: LevelResult, t_w: float, t_end: float) -> None:
        self.r = result
        self.t_w = t_w
        self.t_end = t_end
        self.last_done = 0.0
        self.in_flight: dict[int, float] = {}  # worker id -> start of its current request

    def add(self, o: Outcome, t_done: float) -> None:
        r = self.r
        if o.t_start < self.t_w:
            if o.kind is None:
                r.warmup_ok += 1
            else:
                r.warmup_errors += 1
            return
        if t_done > self.t_end:
            r.drained += 1
        self.last_done = max(self.last_done, t_done)
        if o.kind is None:
            r.ok += 1
            r.latency_us.record(o.latency_us)
            r.ttft_us.record(o.ttft_us)
            r.output_tokens += o.tokens
            if o.tps > 0:
                r.tps_request.record(o.tps)
        else:
            self.error(o.kind, o.message)

    def error(self, kind: str, message: str) -> None:
        r = self.r
        r.errors += 1
        r.error_kinds[kind] = r.error_kinds.get(kind, 0) + 1
        r.error_samples.setdefault(kind, message)


async def _run_level(
    spec: RequestSpec,
    concurrency: int,
    *,
    warmup: float,
    duration: float,
    timeout: float,
    stop: Any,
    progress: Any,
    index: int,
    count: int,
    counter: list[int],
) -> LevelResult:
    import asyncio
    import re
    import time

    import aiohttp

    from ..structures.hist import LatencyHistogram

    clock = time.perf_counter
    done_re = re.compile(rb'"done"\s*:\s*true')
    result = LevelResult(
        concurrency=concurrency, warmup_s=warmup, duration_s=duration,
        latency_us=LatencyHistogram(), ttft_us=LatencyHistogram(),
        tps_request=LatencyHistogram(lowest=0.01, highest=1e9),
    )
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout))
    try:
        t0 = clock()
        t_w = t0 + warmup
        t_end = t_w + duration
        level = _Level(result, t_w, t_end)

        async def worker(wid: int) -> None:
            while not stop.is_set() and clock() < t_end:
                counter[0] += 1
                level.in_flight[wid] = clock()
                o = await one_request(session, spec, counter[0], done_re)
                del level.in_flight[wid]
                level.add(o, clock())
                if o.kind == "connection" and not stop.is_set():
                    await asyncio.sleep(min(CONNECTION_BACKOFF, max(0.0, t_end - clock())))

        tasks = [asyncio.ensure_future(worker(i)) for i in range(concurrency)]
        deadline = t_end + timeout + 1.0
        try:
            while True:
                pending = [t for t in tasks if not t.done()]
                if not pending:
                    break
                now = clock()
                if stop.is_set():
                    result.interrupted = True
                    level.last_done = max(level.last_done, now)
                    await _cancel(pending)
                    break
                if now > deadline:  # in flight beyond the bound: count them as timeouts
                    for started in list(level.in_flight.values()):
                        if started >= t_w:
                            result.abandoned += 1
                            result.drained += 1
                            level.error("timeout", "still in flight at the end-of-level bound")
                    level.last_done = max(level.last_done, now)
                    await _cancel(pending)
                    break
                if progress is not None:
                    progress.update(index=index, count=count, concurrency=concurrency, elapsed=now - t0,
                                    total=warmup + duration, warming=now < t_w, draining=now >= t_end,
                                    ok=result.ok, errors=result.errors, in_flight=len(level.in_flight))
                await asyncio.wait(pending, timeout=0.1)
        finally:
            await _cancel([t for t in tasks if not t.done()])
        if stop.is_set() and not result.interrupted:  # workers saw the stop before this loop did
            result.interrupted = True
            level.last_done = max(level.last_done, min(clock(), t_end))
        for t in tasks:  # surface unexpected worker failures
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        end = max(level.last_done, t_end) if not result.interrupted else level.last_done
        result.elapsed_s = max(0.0, end - t_w)
    finally:
        await session.close()
        if progress is not None:
            progress.clear()
    return result


async def _cancel(tasks: list[Any]) -> None:
    import asyncio

    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_bench(
    url: str,
    *,
    model: str = DEFAULT_MODEL,
    concurrency: Any = (1, 10, 50),
    duration: float = 10.0,
    warmup: float = 1.0,
    endpoint: str = "chat",
    stream: bool = False,
    openai: bool = False,
    prompt: str = DEFAULT_PROMPT,
    num_predict: int | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
    seed: int | None = None,
    progress: Progress | None = None,
    on_level: Callable[[LevelResult], None] | None = None,
    stop: Any = None,
) -> list[LevelResult]:
    """Run the closed-loop benchmark at each level in ``concurrency``; one result per level.

    ``stop`` (an ``asyncio.Event``) ends the run early: in-flight requests are cancelled,
    the level being run is returned marked ``interrupted`` and later levels are skipped.
    ``on_level`` is called with each result as soon as its level ends.
    """
    import asyncio

    if endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint must be one of {', '.join(ENDPOINTS)}, got {endpoint!r}")
    levels = parse_concurrency(concurrency) if isinstance(concurrency, str) else [int(c) for c in concurrency]
    if not levels or min(levels) < 1:
        raise ValueError("concurrency levels must be >= 1")
    if duration <= 0 or warmup < 0 or timeout <= 0:
        raise ValueError("duration and timeout must be > 0, warmup >= 0")
    if stream and endpoint == "embed":
        raise ValueError("stream does not apply to the embed endpoint")
    base = url.rstrip("/")
    if openai and base.endswith("/v1"):
        base = base[:-3]
    headers = {"Content-Type": "application/json", "User-Agent": "ollamamax-bench"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    spec = RequestSpec(url=base + (OPENAI_PATHS if openai else NATIVE_PATHS)[endpoint], endpoint=endpoint,
                       openai=openai, stream=stream, model=model, prompt=prompt, num_predict=num_predict,
                       seed=seed, headers=headers)
    stop = stop if stop is not None else asyncio.Event()
    counter = [0]
    results: list[LevelResult] = []
    for i, c in enumerate(levels):
        if stop.is_set():
            break
        r = await _run_level(spec, c, warmup=warmup, duration=duration, timeout=timeout, stop=stop,
                             progress=progress, index=i, count=len(levels), counter=counter)
        results.append(r)
        if on_level is not None:
            on_level(r)
    return results
