"""``ollamamax bench``: a closed-loop load generator for any Ollama API endpoint.

Point it at a gateway (``ollamamax serve``), a real Ollama or the emulator
(``ollamamax mock``); for each concurrency level it runs C workers for a fixed time and
prints one table row: requests/s, latency p50/p90/p99, time to first token p50/p99,
tokens/s (aggregate and per request) and errors by kind.

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
* Latencies (microseconds) go into :class:`ollamamax.LatencyHistogram` (relative error
  below 1 %), successes only.  TTFT is the time to the first streamed chunk (NDJSON line /
  SSE event); without ``--stream`` the whole reply is the first chunk, so TTFT = latency.
* Tokens: ``eval_count`` (native) or ``usage.completion_tokens`` (``--openai``); per-request
  tokens/s is ``eval_count / eval_duration`` when the server reports it, else it is
  estimated from the client-side timing (first chunk to end when streaming).
* Errors: ``http <status>`` (a non-200 answer), ``in-band`` (an ``error`` object in a 200
  reply or stream), ``connection`` (refused, reset, closed early), ``timeout``,
  ``protocol`` (a reply that cannot be parsed or a stream cut before its end).  After a
  connection error a worker pauses ``0.05`` s so a dead URL does not spin a core.

Coordinated omission: a closed loop only sends when a worker is free, so when the server
stalls the generator stalls with it and the requests that *would* have arrived meanwhile
are never timed.  The latencies here are therefore service times at a given concurrency,
not the latency users arriving at a fixed rate would see (for that, use an open-loop,
fixed-rate generator).  Use the levels to see where throughput stops growing and latency
starts to.

Only argparse is imported at module level (the ``ollamamax`` command imports every
subcommand's ``add_arguments``); aiohttp, numpy and the histogram load inside :func:`main`.
"""

from __future__ import annotations

import argparse
from typing import Any

from .client import discover_model
from .loop import CONNECTION_BACKOFF, run_bench  # noqa: F401  (CONNECTION_BACKOFF: re-exported)
from .options import UsageError, parse_concurrency, parse_duration
from .progress import Progress
from .request import DEFAULT_MODEL, DEFAULT_PROMPT, ENDPOINTS, NATIVE_PATHS, OPENAI_PATHS
from .results import QUANTILES, LevelResult  # noqa: F401  (QUANTILES: re-exported)

__all__ = ["LevelResult", "add_arguments", "main", "parse_concurrency", "parse_duration", "run_bench"]

_EPILOG = """\
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


# --------------------------------------------------------------------------- argument parsing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
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


# --------------------------------------------------------------------------- output


def _fmt_ms(v: float) -> str:
    if v != v:
        return "-"
    if v < 10:
        return f"{v:.2f}"
    if v < 100:
        return f"{v:.1f}"
    return f"{v:.0f}"


def _fmt_rate(v: float) -> str:
    if v != v:
        return "-"
    return f"{v:.1f}" if v < 1000 else f"{v:.0f}"


_HEAD = ("conc", "req/s", "p50 ms", "p90 ms", "p99 ms", "ttft p50", "ttft p99", "tok/s", "tok/s/req", "ok", "errors")
_WIDTHS = (6, 9, 9, 9, 9, 9, 9, 9, 10, 8)


def format_header() -> str:
    return "".join(h.rjust(w) for h, w in zip(_HEAD, _WIDTHS)) + "  " + _HEAD[-1]


def _errors_cell(r: LevelResult) -> str:
    if not r.errors:
        return "0"
    kinds = ", ".join(f"{k}: {n}" for k, n in sorted(r.error_kinds.items(), key=lambda kv: -kv[1]))
    return f"{r.errors} ({kinds})"


def format_row(r: LevelResult) -> str:
    return "".join(c.rjust(w) for c, w in zip(_cells(r), _WIDTHS)) + "  " + _errors_cell(r)


def metadata(args: argparse.Namespace, *, model: str, levels: list[int], duration: float, warmup: float,
             timeout: float) -> dict[str, Any]:
    import datetime
    import os
    import platform
    import shlex
    import sys

    from .. import __version__

    cmd = ["ollamamax", "bench", args.url, "--model", model, "--endpoint", args.endpoint,
           "--concurrency", ",".join(map(str, levels)), "--duration", args.duration, "--warmup", args.warmup,
           "--timeout", args.timeout]
    if args.stream:
        cmd.append("--stream")
    if args.openai:
        cmd.append("--openai")
    if args.prompt != DEFAULT_PROMPT:
        cmd += ["--prompt", args.prompt]
    if args.num_predict is not None:
        cmd += ["--num-predict", str(args.num_predict)]
    if args.seed is not None:
        cmd += ["--seed", str(args.seed)]
    if args.api_key:
        cmd += ["--api-key", "***"]
    return {
        "tool": f"ollamamax bench {__version__}",
        "url": args.url,
        "endpoint": args.endpoint,
        "api": "openai" if args.openai else "ollama",
        "model": model,
        "stream": bool(args.stream),
        "concurrency": levels,
        "duration_s": duration,
        "warmup_s": warmup,
        "timeout_s": timeout,
        "num_predict": args.num_predict,
        "seed": args.seed,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "histogram": "native" if _native_hist() else "pure",
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "hostname": platform.node(),
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(cmd),
        "argv": sys.argv,
    }


def _native_hist() -> bool:
    from .. import LatencyHistogram

    # the selected class comes from the compiled module (``..._hist_c``) or its pure twin (``..._hist_py``)
    return LatencyHistogram.__module__.endswith("_c")


def write_plot(path: str, results: list[LevelResult], meta: dict[str, Any]) -> None:
    """Charts of the table (throughput, latency, TTFT, tokens/s) plus the table itself, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r.concurrency for r in results]
    lat = [r.latency_ms() for r in results]
    ttft = [r.ttft_ms() for r in results]
    fig = plt.figure(figsize=(12, 9.5))
    gs = fig.add_gridspec(3, 2, height_ratios=[1, 1, 0.35 + 0.09 * len(results)])
    axes = [fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[0, 1]), fig.add_subplot(gs[1, 0]), fig.add_subplot(gs[1, 1])]
    log_x = len(xs) > 1 and max(xs) / min(xs) >= 10
    ax = axes[0]
    ax.plot(xs, [r.requests_per_s for r in results], "o-", color="tab:blue", label="successes")
    if any(r.errors for r in results):
        ax.plot(xs, [r.errors / r.elapsed_s if r.elapsed_s > 0 else float("nan") for r in results], "x--",
                color="tab:red", label="errors")
        ax.legend(loc="upper left")
    ax.set_title("throughput")
    ax.set_ylabel("requests/s")
    ax = axes[1]
    for j, (name, style) in enumerate((("p50", "o-"), ("p90", "s--"), ("p99", "^:"))):
        ax.plot(xs, [v[j] for v in lat], style, label=name)
    ax.set_title("latency")
    ax.set_ylabel("ms")
    ax.legend(loc="upper left")
    ax = axes[2]
    for j, (name, style) in enumerate((("p50", "o-"), ("p99", "^:"))):
        ax.plot(xs, [v[j] for v in ttft], style, label=name)
    ax.set_title("time to first token" + ("" if meta.get("stream") else " (= latency, not streamed)"))
    ax.set_ylabel("ms")
    ax.legend(loc="upper left")
    ax = axes[3]
    ax.plot(xs, [r.tokens_per_s for r in results], "o-", color="tab:green", label="aggregate")
    ax.set_ylabel("aggregate output tokens/s")
    ax2 = ax.twinx()
    ax2.plot(xs, [r.tps_request_median() for r in results], "s--", color="tab:purple", label="per request (p50)")
    ax2.set_ylabel("per-request tokens/s (p50)")
    ax.set_title("tokens/s")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower right")
    for ax in (*axes, ax2):
        ax.set_ylim(0, ax.get_ylim()[1] * 1.15)  # from zero (honest), with room for the legend
        ax.ticklabel_format(axis="y", style="plain", useOffset=False)
    for ax in axes:
        if log_x:
            ax.set_xscale("log")
            ax.set_xlim(min(xs) / 1.4, max(xs) * 1.4)
        else:
            pad = max(1.0, (max(xs) - min(xs)) * 0.08)
            ax.set_xlim(min(xs) - pad, max(xs) + pad)
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
        if log_x:
            ax.minorticks_off()
        ax.set_xlabel("concurrency (closed-loop workers)")
        ax.grid(True, alpha=0.3)
    tab = fig.add_subplot(gs[2, :])
    tab.axis("off")
    rows = []
    for r in results:
        err = _errors_cell(r)
        rows.append(_cells(r) + [err if len(err) < 60 else err[:57] + "..."])
    widths = [0.06, 0.075, 0.07, 0.07, 0.07, 0.07, 0.07, 0.075, 0.08, 0.065, 0.28]
    table = tab.table(cellText=rows, colLabels=list(_HEAD), colWidths=widths, loc="center", cellLoc="right")
    table.auto_set_font_size(False)
    table.set_fontsize(8.5)
    table.scale(1, 1.3)
    api = "OpenAI /v1" if meta.get("api") == "openai" else "Ollama /api"
    fig.suptitle(
        f"ollamamax bench: {meta.get('model')} at {meta.get('url')} ({api} {meta.get('endpoint')}, "
        f"{'stream' if meta.get('stream') else 'no stream'}; {meta.get('duration_s')}s per level, "
        f"warm-up {meta.get('warmup_s')}s)\n"
        f"{meta.get('date')}  Python {meta.get('python')}  {meta.get('machine', {}).get('platform')}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cells(r: LevelResult) -> list[str]:
    lat = r.latency_ms()
    ttft = r.ttft_ms()
    return [str(r.concurrency) + ("*" if r.interrupted else ""), _fmt_rate(r.requests_per_s),
            _fmt_ms(lat[0]), _fmt_ms(lat[1]), _fmt_ms(lat[2]), _fmt_ms(ttft[0]), _fmt_ms(ttft[1]),
            _fmt_rate(r.tokens_per_s), _fmt_rate(r.tps_request_median()), str(r.ok)]


# --------------------------------------------------------------------------- the command


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
    import json
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
    path = (OPENAI_PATHS if args.openai else NATIVE_PATHS)[args.endpoint]
    print(f"ollamamax bench: POST {url.rstrip('/')}{path}  model {model}  "
          f"{'stream' if args.stream else 'no stream'}  {duration:g}s per level after {warmup:g}s warm-up  "
          f"(closed loop; see --help on coordinated omission)", file=out)
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
    kinds: dict[str, int] = {}
    samples: dict[str, str] = {}
    for r in results:
        for k, n in r.error_kinds.items():
            kinds[k] = kinds.get(k, 0) + n
        for k, m in r.error_samples.items():
            samples.setdefault(k, m)
    if any(r.interrupted for r in results):
        print("* interrupted level: partial results", file=out)
    if kinds:
        total_err = sum(kinds.values())
        print(f"errors: {total_err} in the measured windows", file=out)
        for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]):
            print(f"  {k}: {n}  (e.g. {samples.get(k, '')})", file=out)
    if results and total_ok == 0:
        print(f"no successful request at {url} (model {model!r}); see the errors above", file=out)
    out.flush()

    meta = metadata(args, model=model, levels=levels, duration=duration, warmup=warmup, timeout=timeout)
    failed_write = False
    if args.json_out:
        doc = {"metadata": meta, "levels": [r.to_dict() for r in results]}
        try:
            with open(args.json_out, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=2)
                f.write("\n")
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
