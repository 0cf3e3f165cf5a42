"""Cost of the gateway fast path's request-head parsing, per request.

    python tests/benchmarks/bench_fastpath_head.py

Times :func:`ollamamax.frontends.request_head.parse_request_head` on a typical client
request head (request line and 5 headers): the hand-over checks, the header parse and the
``CIMultiDict``.  Nothing is asserted; this is the figure to compare when the parser
changes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from ollamamax.frontends.request_head import parse_request_head  # noqa: E402

HEAD = (b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1:11434\r\nContent-Type: application/json\r\n"
        b"Accept: application/json\r\nUser-Agent: ollama-python/0.6.3 (x86_64 linux) Python/3.11\r\n"
        b"Content-Length: 80")


def main() -> None:
    assert parse_request_head(HEAD, 1 << 20) is not None  # the fast path serves it
    n = 100_000
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(n):
            parse_request_head(HEAD, 1 << 20)
        best = min(best, (time.process_time() - t0) / n)
    print(f"request head parsed (parse_request_head): {best * 1e6:.2f} us  (best of 5 x {n})")


if __name__ == "__main__":
    main()
