"""The ``--plot`` chart of ``ollamamax bench``: owns :func:`write_plot`, a PNG of throughput,
latency, TTFT and tokens/s against concurrency plus the report's table.  It must not compute
results or table cells of its own (they come from :mod:`.results` and :mod:`.report`) and
must not import matplotlib at module level: it is optional (``pip install 'ollamamax[plot]'``)
and loaded only when a plot is written.
"""

from __future__ import annotations

from typing import Any

from .report import HEAD, cells, errors_cell
from .results import LevelResult

__all__ = ["write_plot"]


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
        err = errors_cell(r)
        rows.append(cells(r) + [err if len(err) < 60 else err[:57] + "..."])
    widths = [0.06, 0.075, 0.07, 0.07, 0.07, 0.07, 0.07, 0.075, 0.08, 0.065, 0.28]
    table = tab.table(cellText=rows, colLabels=list(HEAD), colWidths=widths, loc="center", cellLoc="right")
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
