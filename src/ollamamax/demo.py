"""``ollamamax demo``: three emulated Ollama hosts, the real gateway, a mixed workload, tables.

Everything runs in this process on loopback:

1. three :class:`~ollamamax.testing.FakeOllama` hosts with different models and realistic
   delays (cold loads of 0.6-1.4 s, 220-400 tokens/s, 2-4 parallel slots, 1-2 resident
   models; some models on several hosts);
2. the gateway (``create_app`` on aiohttp, an ephemeral port) in front of a
   :class:`~ollamamax.dispatch.Dispatcher` over them;
3. a workload over HTTP through the gateway: chat and generate (streamed and not), embed,
   a few requests for a model nobody has, and one multi-turn conversation; halfway through,
   one host is killed to show fail-over (``--no-fault`` to skip);
4. per-host and per-model tables: requests, cold loads, retries, p50/p99 time to first token.

Options: ``--duration`` (seconds the workload is spread over), ``--requests``, ``--seed``,
``--strategy``, ``--concurrency``.  Exit code 0 when the workload ran (expected errors,
i.e. the unknown model and streams cut by the fault, are part of the show).
"""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "main", "run_demo"]

_STRATEGIES = ("least-loaded", "p2c", "round-robin", "latency", "affinity")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--duration", type=float, default=15.0, metavar="SECONDS",
      help="spread the workload over this many seconds (default 15)")
    a("--requests", type=int, default=150, metavar="N", help="number of requests (default 150)")
    a("--seed", type=int, default=0, help="random seed for the workload and the hosts (default 0)")
    a("--strategy", default="least-loaded", choices=_STRATEGIES,
      help="balancing strategy (default least-loaded)")
    a("--concurrency", type=int, default=12, metavar="N",
      help="most requests in flight at once (default 12)")
    a("--no-fault", action="store_true", help="do not kill a host halfway through")


def main(args: argparse.Namespace) -> int:
    import asyncio
    import sys

    if args.duration <= 0 or args.requests < 1 or args.concurrency < 1:
        print("ollamamax demo: error: --duration, --requests and --concurrency must be positive",
              file=sys.stderr)
        return 2
    import logging

    # The killed host's in-flight handlers fail noisily in aiohttp's server log; that is
    # the fault being shown, not a problem: keep the demo's output to the tables.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    try:
        result = asyncio.run(run_demo(
            duration=args.duration, requests=args.requests, seed=args.seed,
            strategy=args.strategy, concurrency=args.concurrency, fault=not args.no_fault,
        ))
    except KeyboardInterrupt:
        return 130
    print(result["report"])
    return 0 if result["ok"] > 0 else 1


# ------------------------------------------------------------------------- the run

_HOSTS = (
    # name, models, load_delay, tokens_per_sec, num_parallel, max_loaded, preload
    ("gpu-a", ("llama3.2", "qwen3:8b", "nomic-embed-text"), 0.6, 320.0, 4, 2, ("llama3.2",)),
    ("gpu-b", ("llama3.2", "gemma3", "nomic-embed-text"), 1.0, 220.0, 2, 2, ("nomic-embed-text",)),
    ("gpu-c", ("qwen3:8b", "gemma3", "llama3.2"), 1.4, 400.0, 3, 1, ()),
)
_FAULT_HOST = "gpu-c"
_CHAT_MODELS = (("llama3.2", 0.45), ("qwen3:8b", 0.30), ("gemma3", 0.25))
_EMBED_MODEL = "nomic-embed-text"
_UNKNOWN_MODEL = "llama9:70b"
_WORDS = ("why", "is", "the", "sky", "blue", "explain", "tensor", "cache", "routing", "gpu",
          "latency", "prompt", "river", "mountain", "quantum", "bread", "recipe", "poem")


class _Result:
    __slots__ = ("kind", "model", "stream", "status", "host", "cold", "attempts", "ttft",
                 "total", "error", "cut", "started")

    def __init__(self, kind: str, model: str, stream: bool) -> None:
        self.kind, self.model, self.stream = kind, model, stream
        self.status = 0
        self.host = "-"
        self.cold = False
        self.attempts = 0
        self.ttft: float | None = None
        self.total = 0.0
        self.error: str | None = None
        self.cut = False  # a stream that ended with an in-band error line
        self.started = 0.0


def _plan(n: int, rng) -> list[tuple[str, str, bool]]:  # type: ignore[no-untyped-def]
    """(kind, model, stream) for each request: a fixed mix, shuffled."""
    specs: list[tuple[str, str, bool]] = []
    models = [m for m, _ in _CHAT_MODELS]
    weights = [w for _, w in _CHAT_MODELS]
    for i in range(n):
        x = rng.random()
        if i % 40 == 7:
            specs.append((rng.choice(("chat", "generate", "embed")), _UNKNOWN_MODEL, False))
        elif x < 0.40:
            specs.append(("chat", rng.choices(models, weights)[0], True))
        elif x < 0.55:
            specs.append(("chat", rng.choices(models, weights)[0], False))
        elif x < 0.68:
            specs.append(("generate", rng.choices(models, weights)[0], True))
        elif x < 0.78:
            specs.append(("generate", rng.choices(models, weights)[0], False))
        else:
            specs.append(("embed", _EMBED_MODEL, False))
    return specs


def _body(kind: str, model: str, stream: bool, rng) -> tuple[str, dict]:  # type: ignore[no-untyped-def,type-arg]
    words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12)))
    opts = {"num_predict": rng.randint(12, 40)}
    if kind == "chat":
        return "/api/chat", {"model": model, "stream": stream, "options": opts,
                             "messages": [{"role": "user", "content": words}]}
    if kind == "generate":
        return "/api/generate", {"model": model, "prompt": words, "stream": stream,
                                 "options": opts}
    inputs = [words] if rng.random() < 0.5 else [words, words[::-1]]
    return "/api/embed", {"model": model, "input": inputs}


async def _send(session, url: str, path: str, body: dict, res: _Result,  # type: ignore[no-untyped-def,type-arg]
                headers: dict[str, str] | None = None) -> None:
    import json
    import time

    import aiohttp

    from .wire.response import HEADER_ATTEMPTS, HEADER_COLD, HEADER_HOST

    t0 = time.perf_counter()
    res.started = t0
    try:
        async with session.post(url + path, json=body, headers=headers) as r:
            res.status = r.status
            res.host = r.headers.get(HEADER_HOST, "-")
            res.cold = r.headers.get(HEADER_COLD) == "1"
            try:
                res.attempts = int(r.headers.get(HEADER_ATTEMPTS, "0"))
            except ValueError:
                res.attempts = 0
            if r.status == 200 and body.get("stream"):
                async for line in r.content:
                    if res.ttft is None:
                        res.ttft = time.perf_counter() - t0
                    if line.startswith(b'{"error"'):
                        res.cut = True
                        res.error = json.loads(line).get("error", "stream error")
            else:
                data = await r.read()
                res.ttft = time.perf_counter() - t0
                if r.status >= 400:
                    try:
                        res.error = json.loads(data).get("error", data.decode())
                    except ValueError:
                        res.error = data.decode("utf-8", "replace")
    except (aiohttp.ClientError, OSError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    res.total = time.perf_counter() - t0


class _Progress:
    """A plain stderr progress bar (redrawn in place on a terminal, a few lines otherwise)."""

    def __init__(self, total: int, stream=None) -> None:  # type: ignore[no-untyped-def]
        import sys
        import time

        self.total = total
        self.done = 0
        self.note = ""
        self.out = stream or sys.stderr
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.t0 = time.perf_counter()
        self._last = -1.0
        self._last_quarter = -1

    def step(self, note: str | None = None) -> None:
        self.done += 1
        if note:
            self.note = note
        self.draw()

    def draw(self, force: bool = False) -> None:
        import time

        now = time.perf_counter()
        if self.tty:
            if not force and now - self._last < 0.08 and self.done < self.total:
                return
            self._last = now
            width = 30
            filled = int(width * self.done / max(1, self.total))
            bar = "#" * filled + "-" * (width - filled)
            self.out.write(f"\r[{bar}] {self.done:4d}/{self.total} {now - self.t0:5.1f}s "
                           f"{self.note[:40]:<40}")
            self.out.flush()
        else:
            quarter = 4 * self.done // max(1, self.total)
            if quarter != self._last_quarter or force:
                self._last_quarter = quarter
                self.out.write(f"progress: {self.done}/{self.total} requests, "
                               f"{now - self.t0:.1f}s {self.note}\n")
                self.out.flush()

    def close(self) -> None:
        if self.tty:
            self.draw(force=True)
            self.out.write("\n")
            self.out.flush()


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    idx = min(len(v) - 1, max(0, int(round(q * len(v) + 0.5)) - 1))
    return v[idx]


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.0f}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
    lines = [fmt(headers), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows]
    return "\n".join(lines)


async def run_demo(*, duration: float = 15.0, requests: int = 150, seed: int = 0,
                   strategy: str = "least-loaded", concurrency: int = 12, fault: bool = True,
                   progress: bool = True) -> dict:  # type: ignore[type-arg]
    """Run the demo; returns ``{"report": str, "ok": int, "results": [...], ...}``."""
    import asyncio
    import random
    import time

    import aiohttp
    from aiohttp import web

    from .dispatch import Dispatcher, DispatcherConfig, HostConfig
    from .ops.app import create_app
    from .testing import FakeOllama

    rng = random.Random(seed)
    hosts: dict[str, FakeOllama] = {}
    for i, (name, models, load, tps, par, maxl, pre) in enumerate(_HOSTS):
        hosts[name] = FakeOllama(models=models, load_delay=load, tokens_per_sec=tps,
                                 num_parallel=par, max_loaded_models=maxl, preload=pre,
                                 host_id=name, seed=seed * 10 + i)
    started: list[FakeOllama] = []
    runner: web.AppRunner | None = None
    killed_at: float | None = None
    try:
        for h in hosts.values():
            await h.start()
            started.append(h)
        config = DispatcherConfig(strategy=strategy, refresh_interval=1.0, connect_timeout=1.0,
                                  eject_cooldown=1.0)
        host_cfgs = [HostConfig(url=h.url, name=name) for name, h in hosts.items()]
        async with Dispatcher(host_cfgs, strategy=strategy, config=config) as dispatcher:
            runner = web.AppRunner(create_app(dispatcher), handler_cancellation=True,
                                   access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            url = f"http://127.0.0.1:{runner.addresses[0][1]}"

            specs = _plan(requests, rng)
            results: list[_Result] = []
            conv_hosts: list[str] = []
            bar = _Progress(len(specs) + 4) if progress else None
            sem = asyncio.Semaphore(concurrency)
            t_start = time.perf_counter()
            span = duration * 0.85  # arrivals stop a little early so the tail can drain
            conn = aiohttp.TCPConnector(limit=concurrency + 4)
            timeout = aiohttp.ClientTimeout(total=max(30.0, duration * 2))

            async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:

                async def one(i: int, spec: tuple[str, str, bool]) -> None:
                    delay = t_start + span * i / len(specs) + rng.random() * 0.05 \
                        - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    kind, model, stream = spec
                    path, body = _body(kind, model, stream, rng)
                    res = _Result(kind, model, stream)
                    async with sem:
                        await _send(session, url, path, body, res)
                    results.append(res)
                    if bar:
                        bar.step()

                async def conversation() -> None:
                    # one user, four turns, each turn carries the whole history
                    messages: list[dict[str, str]] = []
                    for turn in range(4):
                        await asyncio.sleep(max(0.0, t_start + span * (0.1 + 0.2 * turn)
                                                - time.perf_counter()))
                        messages.append({"role": "user", "content": f"turn {turn}: tell me more"})
                        res = _Result("chat", "llama3.2", True)
                        await _send(session, url, "/api/chat",
                                    {"model": "llama3.2", "messages": list(messages),
                                     "stream": True, "options": {"num_predict": 16}}, res)
                        results.append(res)
                        conv_hosts.append(res.host)
                        messages.append({"role": "assistant", "content": "sure"})
                        if bar:
                            bar.step("conversation turn %d -> %s" % (turn + 1, res.host))

                async def inject_fault() -> None:
                    nonlocal killed_at
                    await asyncio.sleep(max(0.0, t_start + span * 0.5 - time.perf_counter()))
                    # kill it while it is busy, if that happens soon, to show retries/cuts
                    victim = hosts[_FAULT_HOST]
                    deadline = time.perf_counter() + span * 0.15
                    while (victim.stats()["totals"]["in_flight"] == 0
                           and time.perf_counter() < deadline):
                        await asyncio.sleep(0.01)
                    await victim.kill()
                    killed_at = time.perf_counter() - t_start
                    if bar:
                        bar.note = f"killed {_FAULT_HOST} at {killed_at:.1f}s"
                        bar.draw(force=True)

                tasks = [asyncio.ensure_future(one(i, s)) for i, s in enumerate(specs)]
                tasks.append(asyncio.ensure_future(conversation()))
                if fault:
                    tasks.append(asyncio.ensure_future(inject_fault()))
                try:
                    await asyncio.gather(*tasks)
                finally:
                    for t in tasks:
                        t.cancel()
                wall = time.perf_counter() - t_start
            if bar:
                bar.close()
            host_stats = {name: h.stats() for name, h in hosts.items()}
    finally:
        if runner is not None:
            await runner.cleanup()
        for h in started:
            await h.stop()

    report = _report(results, host_stats, conv_hosts, strategy=strategy, wall=wall,
                     killed_at=killed_at, t_start=t_start)
    ok = sum(1 for r in results if r.status == 200 and not r.error)
    return {"report": report, "ok": ok, "results": results, "host_stats": host_stats,
            "conversation_hosts": conv_hosts, "killed_at": killed_at, "wall": wall}


def _report(results: list[_Result], host_stats: dict, conv_hosts: list[str], *,  # type: ignore[type-arg]
            strategy: str, wall: float, killed_at: float | None, t_start: float) -> str:
    out: list[str] = []
    ok = [r for r in results if r.status == 200 and not r.error]
    unknown = [r for r in results if r.model == _UNKNOWN_MODEL]
    cut = [r for r in results if r.cut]
    failed = [r for r in results if r.error and r.model != _UNKNOWN_MODEL and not r.cut]
    out.append("")
    out.append(f"ollamamax demo: {len(results)} requests in {wall:.1f}s through the gateway "
               f"(strategy {strategy}), 3 emulated hosts")
    out.append(f"  ok {len(ok)}, unknown-model 404s {len(unknown)} (expected), "
               f"streams cut by the fault {len(cut)}, other errors {len(failed)}")
    retried = [r for r in results if r.attempts > 1]
    if killed_at is not None:
        fault_models = {m for h in _HOSTS if h[0] == _FAULT_HOST for m in h[1]}
        after = [r for r in results if r.started - t_start > killed_at
                 and r.model in fault_models and r.status == 200 and not r.error]
        elsewhere = sorted({r.host for r in after})
        out.append(f"  fault: {_FAULT_HOST} was killed at {killed_at:.1f}s; "
                   f"{len(retried)} requests were retried on another host before answering; "
                   f"afterwards {len(after)} requests for its models were served by "
                   f"{', '.join(elsewhere) or 'no one'}")
    out.append("")

    # per host
    names = [h[0] for h in _HOSTS]
    rows = []
    for name in names + ["-"]:
        rs = [r for r in results if r.host == name]
        if name == "-" and not rs:
            continue
        ttft = [r.ttft for r in rs if r.ttft is not None and r.status == 200]
        st = host_stats.get(name, {}).get("totals", {})
        state = "killed" if (killed_at is not None and name == _FAULT_HOST) else "up"
        if name == "-":
            state = "-"
        rows.append([
            name if name != "-" else "(gateway)", state, str(len(rs)),
            str(sum(1 for r in rs if r.status == 200 and not r.error)),
            str(sum(1 for r in rs if r.cold)),
            str(sum(max(0, r.attempts - 1) for r in rs)),
            _ms(_pct(ttft, 0.5)), _ms(_pct(ttft, 0.99)),
            str(st.get("served", "-")) if name != "-" else "-",
            str(st.get("loads", "-")) if name != "-" else "-",
        ])
    out.append("per host (as the gateway saw them; served/loads as each host counted them)")
    out.append(_table(["host", "state", "requests", "ok", "cold", "retries", "ttft p50 ms",
                       "ttft p99 ms", "served", "loads"], rows))
    out.append("")

    # per model
    models = sorted({r.model for r in results})
    rows = []
    for m in models:
        rs = [r for r in results if r.model == m]
        ttft = [r.ttft for r in rs if r.ttft is not None and r.status == 200]
        used = sorted({r.host for r in rs if r.host != "-"})
        rows.append([
            m, str(len(rs)), str(sum(1 for r in rs if r.status == 200 and not r.error)),
            str(sum(1 for r in rs if r.status >= 400 or r.error)),
            str(sum(1 for r in rs if r.cold)), str(sum(max(0, r.attempts - 1) for r in rs)),
            _ms(_pct(ttft, 0.5)), _ms(_pct(ttft, 0.99)), ",".join(used) or "-",
        ])
    out.append("per model (time to first token measured by the client, through the gateway)")
    out.append(_table(["model", "requests", "ok", "errors", "cold", "retries", "ttft p50 ms",
                       "ttft p99 ms", "hosts"], rows))
    out.append("")
    if conv_hosts:
        distinct = sorted(set(conv_hosts))
        note = ("stayed on one host" if len(distinct) == 1
                else f"used {len(distinct)} hosts")
        if strategy != "affinity":
            note += " (try --strategy affinity to pin conversations)"
        out.append(f"conversation (4 turns, growing history): {' -> '.join(conv_hosts)}: {note}")
    if failed:
        out.append("")
        out.append("unexpected errors (first 5):")
        for r in failed[:5]:
            out.append(f"  {r.kind} {r.model}: status {r.status}: {r.error}")
    return "\n".join(out)
