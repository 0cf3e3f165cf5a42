"""The text and JSON report of ``ollamamax bench``: owns the table (header, one row per level,
the cells and their number formats), the banner above it, the error summary below it, the
run metadata, and the JSON document written by ``--json``.  It must not measure, print or
decide exit codes (the command prints the strings returned here), and imports nothing but the
standard library and its sibling modules at module level.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .request import DEFAULT_PROMPT, NATIVE_PATHS, OPENAI_PATHS
from .results import LevelResult

if TYPE_CHECKING:
    import argparse

__all__ = ["HEAD", "cells", "errors_cell", "format_banner", "format_header", "format_row", "metadata",
           "summary_lines", "write_json"]


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


HEAD = ("conc", "req/s", "p50 ms", "p90 ms", "p99 ms", "ttft p50", "ttft p99", "tok/s", "tok/s/req", "ok", "errors")
_WIDTHS = (6, 9, 9, 9, 9, 9, 9, 9, 10, 8)


def cells(r: LevelResult) -> list[str]:
    """The table cells of one level except the errors (shared with the plot's table)."""
    lat = r.latency_ms()
    ttft = r.ttft_ms()
    return [str(r.concurrency) + ("*" if r.interrupted else ""), _fmt_rate(r.requests_per_s),
            _fmt_ms(lat[0]), _fmt_ms(lat[1]), _fmt_ms(lat[2]), _fmt_ms(ttft[0]), _fmt_ms(ttft[1]),
            _fmt_rate(r.tokens_per_s), _fmt_rate(r.tps_request_median()), str(r.ok)]


def format_header() -> str:
    return "".join(h.rjust(w) for h, w in zip(HEAD, _WIDTHS)) + "  " + HEAD[-1]


def errors_cell(r: LevelResult) -> str:
    """The errors cell: ``0``, or the count and the count of each kind, most frequent first."""
    if not r.errors:
        return "0"
    kinds = ", ".join(f"{k}: {n}" for k, n in sorted(r.error_kinds.items(), key=lambda kv: -kv[1]))
    return f"{r.errors} ({kinds})"


def format_row(r: LevelResult) -> str:
    return "".join(c.rjust(w) for c, w in zip(cells(r), _WIDTHS)) + "  " + errors_cell(r)


def format_banner(url: str, *, openai: bool, endpoint: str, model: str, stream: bool, duration: float,
                  warmup: float) -> str:
    """The line above the table: what is loaded, and how."""
    path = (OPENAI_PATHS if openai else NATIVE_PATHS)[endpoint]
    return (f"ollamamax bench: POST {url.rstrip('/')}{path}  model {model}  "
            f"{'stream' if stream else 'no stream'}  {duration:g}s per level after {warmup:g}s warm-up  "
            f"(closed loop; see --help on coordinated omission)")


def summary_lines(results: list[LevelResult], *, url: str, model: str) -> list[str]:
    """The lines below the table: interrupted level, errors by kind with a sample, no success at all."""
    lines: list[str] = []
    total_ok = sum(r.ok for r in results)
    kinds: dict[str, int] = {}
    samples: dict[str, str] = {}
    for r in results:
        for k, n in r.error_kinds.items():
            kinds[k] = kinds.get(k, 0) + n
        for k, m in r.error_samples.items():
            samples.setdefault(k, m)
    if any(r.interrupted for r in results):
        lines.append("* interrupted level: partial results")
    if kinds:
        total_err = sum(kinds.values())
        lines.append(f"errors: {total_err} in the measured windows")
        for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {k}: {n}  (e.g. {samples.get(k, '')})")
    if results and total_ok == 0:
        lines.append(f"no successful request at {url} (model {model!r}); see the errors above")
    return lines


def metadata(args: argparse.Namespace, *, model: str, levels: list[int], duration: float, warmup: float,
             timeout: float) -> dict[str, Any]:
    import datetime
    import os
    import platform
    import shlex
    import sys

    from .._version import __version__

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
    from ..structures.hist import LatencyHistogram

    # the selected class comes from the compiled module (``..._hist_c``) or its pure twin (``..._hist_py``)
    return LatencyHistogram.__module__.endswith("_c")


def write_json(path: str, meta: dict[str, Any], results: list[LevelResult]) -> None:
    """The ``--json`` document: the metadata and one object per level (raises OSError)."""
    import json

    doc = {"metadata": meta, "levels": [r.to_dict() for r in results]}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
