"""What one concurrency level measured: owns :class:`LevelResult` (counts, error kinds and
samples, the latency / TTFT / per-request tokens/s histograms), the rates and percentiles
derived from it, and its JSON form (:meth:`LevelResult.to_dict`).  It must not measure,
format text or print; it never creates histograms itself (the caller passes them in), so
it imports neither the native histogram nor numpy.

Latencies are in microseconds and cover successes only; :class:`ollamamax.LatencyHistogram`
keeps the relative error below 1 %.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["QUANTILES", "LevelResult"]

QUANTILES = (0.5, 0.9, 0.99)


@dataclass
class LevelResult:
    """What one concurrency level measured (histograms hold successes only, in microseconds)."""

    concurrency: int
    warmup_s: float
    duration_s: float
    elapsed_s: float = 0.0
    ok: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    error_samples: dict[str, str] = field(default_factory=dict)
    drained: int = 0  # counted requests still in flight when the window closed
    abandoned: int = 0  # of those, not finished within the bound (counted as "timeout" errors)
    warmup_ok: int = 0
    warmup_errors: int = 0
    output_tokens: int = 0
    interrupted: bool = False
    latency_us: Any = None  # LatencyHistogram
    ttft_us: Any = None  # LatencyHistogram
    tps_request: Any = None  # LatencyHistogram of per-request tokens/s

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 and self.ok else float("nan")

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.elapsed_s if self.elapsed_s > 0 and self.output_tokens else float("nan")

    def latency_ms(self) -> list[float]:
        """p50, p90, p99 latency in milliseconds (NaN when nothing succeeded)."""
        return [v / 1000.0 for v in self.latency_us.quantiles(QUANTILES)]

    def ttft_ms(self) -> list[float]:
        """p50, p99 time to first token in milliseconds."""
        return [v / 1000.0 for v in self.ttft_us.quantiles((0.5, 0.99))]

    def tps_request_median(self) -> float:
        return self.tps_request.quantile(0.5)

    def to_dict(self) -> dict[str, Any]:
        import base64

        def num(x: float) -> float | None:
            return None if x != x else round(x, 6)

        lat = self.latency_ms()
        ttft = self.ttft_ms()
        return {
            "concurrency": self.concurrency,
            "warmup_s": self.warmup_s,
            "duration_s": self.duration_s,
            "elapsed_s": round(self.elapsed_s, 6),
            "ok": self.ok,
            "errors": self.errors,
            "error_kinds": dict(sorted(self.error_kinds.items())),
            "error_samples": dict(sorted(self.error_samples.items())),
            "drained": self.drained,
            "abandoned": self.abandoned,
            "warmup_ok": self.warmup_ok,
            "warmup_errors": self.warmup_errors,
            "interrupted": self.interrupted,
            "requests_per_s": num(self.requests_per_s),
            "latency_ms": {"p50": num(lat[0]), "p90": num(lat[1]), "p99": num(lat[2]),
                           "mean": num(self.latency_us.mean / 1000.0), "max": num(self.latency_us.max / 1000.0)},
            "ttft_ms": {"p50": num(ttft[0]), "p99": num(ttft[1])},
            "output_tokens": self.output_tokens,
            "tokens_per_s": num(self.tokens_per_s),
            "tokens_per_s_per_request_p50": num(self.tps_request_median()),
            # LatencyHistogram.to_bytes(), base64: merge runs with LatencyHistogram.from_bytes
            "latency_us_histogram": base64.b64encode(self.latency_us.to_bytes()).decode("ascii"),
            "ttft_us_histogram": base64.b64encode(self.ttft_us.to_bytes()).decode("ascii"),
        }
