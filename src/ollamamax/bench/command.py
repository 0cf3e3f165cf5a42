"""The ``ollamamax bench`` command: owns its options (:func:`add_arguments`, help text and
epilog), checking them, and :func:`main`, which wires the pieces together (model discovery,
the event loop and SIGINT, :func:`~.loop.run_bench`, printing the report, ``--json`` and
``--plot`` files) and chooses the exit status (0 ok, 1 no success or a file not written, 2 bad
usage, 130 interrupted).  It must not measure, format the report or talk HTTP itself, and
only argparse and the standard library load at module level: the ``ollamamax`` command
imports every subcommand's :func:`add_arguments` to build its parser, so aiohttp, numpy,
uvloop and matplotlib load inside :func:`main` only.
"""

from __future__ import annotations

import argparse

from .client import discover_model
from .loop import run_bench
from .options import UsageError, parse_concurrency, parse_duration
from .plot import write_plot
from .progress import Progress
from .report import (
    format_banner,
    format_header,
    format_row,
    metadata,
    summary_lines,
    write_json,
)
from .request import DEFAULT_MODEL, DEFAULT_PROMPT, ENDPOINTS
from .results import LevelResult

__all__ = ["EPILOG", "add_arguments", "main"]

EPILOG = """\
method: closed loop. Each of C workers sends its next request when the previous one
finished; requests started during --warmup are not counted; requests started during
--duration are counted, and those still in flight when it ends are awaited (up to
--timeout) and counted. requests/s = successes / (warm-up end -> last counted reply).

coordinated omission: a closed loop sends only when a worker is free, so when the server
stalls the load generator stalls too and the requests that would have arrived meanwhile
are never timed. The latencies are service times at concurrency C, not what users
arriving at a fixed rate would see.

TTFT: time to the first streamed chunk (--stream); without --stream it equals latency.
tok/s: aggregate output tokens per second (eval_count, or usage.completion_tokens with
--openai); tok/s/req: median per-request eval_count/eval_duration.
errors: http <status> | in-band (error object in a 200 reply/stream) | connection |
timeout | protocol (unparsable reply, stream cut before its end).

examples:
  ollamamax bench http://127.0.0.1:11434 --model llama3.2 --concurrency 1,4,8 --duration 30s
  ollamamax bench http://127.0.0.1:8000 --stream --json out.json --plot out.png
  ollamamax bench http://127.0.0.1:8000 --openai --stream --api-key sk-...
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    a = parser.add_argument
    a("url", help="base URL of an Ollama API (gateway, Ollama or emulator), e.g. http://127.0.0.1:11434")
    a("--model", default=None, help="model to ask for (default: the first one the server lists)")
    a("--concurrency", default="1,10,50,100,250,500", metavar="C1,C2,...",
      help="comma-separated concurrency levels (default 1,10,50,100,250,500)")
    a("--duration", default="10s", help="measured time per level: 10s, 500ms, 2m or seconds (default 10s)")
    a("--warmup", default="1s", help="warm-up per level, not counted (default 1s; 0 for none)")
    a("--endpoint", default="chat", choices=ENDPOINTS, help="API to load (default chat)")
    a("--stream", action="store_true", help="ask for streamed replies (TTFT then measures the first chunk)")
    a("--openai", action="store_true",
      help="use the OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/embeddings; SSE streams)")
    a("--prompt", default=DEFAULT_PROMPT, help="prompt text; '{n}' is replaced by a request counter (defeats caches)")
    a("--num-predict", type=int, default=None, metavar="N",
      help="cap output tokens (options.num_predict, or max_tokens with --openai; default: server's)")
    a("--seed", type=int, default=None, help="sampling seed sent with each request (options.seed / seed)")
    a("--api-key", default=None, help="send 'Authorization: Bearer KEY'")
    a("--timeout", default="60s",
      help="per-request timeout for the whole reply; also bounds the end-of-level wait (default 60s)")
    a("--json", dest="json_out", default=None, metavar="OUT.json", help="write results and metadata as JSON")
    a("--plot", default=None, metavar="OUT.png", help="draw the results with matplotlib (pip install 'ollamamax[plot]')")
    a("--progress", action=argparse.BooleanOptionalAction, default=None,
      help="progress bar on stderr (default: only when stderr is a terminal)")
    a("--no-uvloop", action="store_true", help="use the default asyncio loop even if uvloop is installed")


def main(args: argparse.Namespace) -> int:
    import asyncio
    import sys

    def fail(msg: str) -> int:
        print(f"ollamamax bench: error: {msg}", file=sys.stderr)
        return 2

    try:
        levels = parse_concurrency(args.concurrency)
        duration = parse_duration(args.duration, name="duration")
        warmup = parse_duration(args.warmup, name="warmup", allow_zero=True)
        timeout = parse_duration(args.timeout, name="timeout")
    except UsageError as exc:
        return fail(str(exc))
    url = args.url.strip()
    if not (url.startswith("http://") or url.startswith("https://")) or len(url.split("://", 1)[1].strip("/")) == 0:
        return fail(f"URL must start with http:// or https:// and name a host, got {args.url!r}")
    if args.stream and args.endpoint == "embed":
        return fail("--stream does not apply to --endpoint embed")
    if args.num_predict is not None and args.num_predict < -2:
        return fail(f"--num-predict must be >= -2 (-1 = no limit), got {args.num_predict}")
    if args.model is not None and not args.model.strip():
        return fail("--model must not be empty")
    import os

    for opt, target in (("--json", args.json_out), ("--plot", args.plot)):
        if target and not os.path.isdir(os.path.dirname(os.path.abspath(target))):
            return fail(f"{opt}: directory of {target!r} does not exist")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return fail("--plot needs matplotlib: pip install 'ollamamax[plot]'")
    if args.progress is None:
        show_progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
    else:
        show_progress = bool(args.progress)

    coro = _main_async(args, url=url, levels=levels, duration=duration, warmup=warmup, timeout=timeout,
                       show_progress=show_progress)
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return int(uvloop.run(coro))
    return int(asyncio.run(coro))


async def _main_async(args: argparse.Namespace, *, url: str, levels: list[int], duration: float, warmup: float,
                      timeout: float, show_progress: bool) -> int:
    import asyncio
    import signal
    import sys

    out = sys.stdout
    err = sys.stderr
    model = args.model
    if model is None:
        model = await discover_model(url, openai=args.openai, endpoint=args.endpoint, api_key=args.api_key)
        if model is None:
            print(f"ollamamax bench: could not list models at {url}; using {DEFAULT_MODEL!r} (pass --model)", file=err)
            model = DEFAULT_MODEL
    print(format_banner(url, openai=args.openai, endpoint=args.endpoint, model=model, stream=args.stream,
                        duration=duration, warmup=warmup), file=out)
    print(format_header(), file=out, flush=True)

    progress = Progress(err, tty=bool(getattr(err, "isatty", lambda: False)())) if show_progress else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = False

    def on_sigint() -> None:
        if not stop.is_set():
            print("\nollamamax bench: interrupted, printing results so far", file=err, flush=True)
        stop.set()

    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
        installed = True
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
        pass

    def on_level(r: LevelResult) -> None:
        print(format_row(r), file=out, flush=True)

    results: list[LevelResult] = []
    try:
        results = await run_bench(
            url, model=model, concurrency=levels, duration=duration, warmup=warmup, endpoint=args.endpoint,
            stream=args.stream, openai=args.openai, prompt=args.prompt, num_predict=args.num_predict,
            api_key=args.api_key, timeout=timeout, seed=args.seed, progress=progress, on_level=on_level, stop=stop,
        )
    except KeyboardInterrupt:  # pragma: no cover - only without a signal handler
        stop.set()
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGINT)

    total_ok = sum(r.ok for r in results)
    for line in summary_lines(results, url=url, model=model):
        print(line, file=out)
    out.flush()

    meta = metadata(args, model=model, levels=levels, duration=duration, warmup=warmup, timeout=timeout)
    failed_write = False
    if args.json_out:
        try:
            write_json(args.json_out, meta, results)
        except OSError as exc:
            print(f"ollamamax bench: cannot write {args.json_out}: {exc}", file=err)
            failed_write = True
        else:
            print(f"wrote {args.json_out}", file=out)
    if args.plot and results:
        try:
            write_plot(args.plot, results, meta)
        except OSError as exc:
            print(f"ollamamax bench: cannot write {args.plot}: {exc}", file=err)
            failed_write = True
        else:
            print(f"wrote {args.plot}", file=out)
    if stop.is_set():
        return 130
    return 0 if total_ok > 0 and not failed_write else 1
