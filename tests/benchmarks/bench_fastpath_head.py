"""Cost of the gateway fast path's request-head parsing, per request.

    python tests/benchmarks/bench_fastpath_head.py

Times ``_FastProtocol._next`` on a typical client request (request line, 5 headers, an
80-byte body): find the head, the hand-over checks, the header regex, the ``CIMultiDict``,
the body slice and the coroutine object for the request (its task is not run here), and
``_head`` building a response head.  Nothing is asserted; this is the figure to beat
before moving the parser to native code.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from ollamamax.dispatch.app import Gateway  # noqa: E402

from ollamamax.dispatch import fastpath  # noqa: E402

REQUEST = (b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1:11434\r\nContent-Type: application/json\r\n"
           b"Accept: application/json\r\nUser-Agent: ollama-python/0.6.3 (x86_64 linux) Python/3.11\r\n"
           b"Content-Length: 80\r\n\r\n" + b"x" * 80)
RESPONSE_HEADERS = {"Content-Type": "application/json; charset=utf-8",
                    "X-Ollamamax-Host": "http://127.0.0.1:11501", "X-Ollamamax-Cold-Load": "0",
                    "X-Ollamamax-Queue-Ms": "0", "X-Ollamamax-Attempts": "1"}


class _Loop:
    """Stands in for the event loop: the request's coroutine is created, then closed."""

    def create_task(self, coro: Any) -> None:
        coro.close()

    def time(self) -> float:
        return 0.0


async def main() -> None:
    shared = fastpath._Shared(Gateway(object()), lambda: None, {}, 75.0, None)  # type: ignore[arg-type]
    shared.loop = _Loop()  # type: ignore[assignment]
    proto = fastpath._FastProtocol(shared)

    class Transport:
        def is_closing(self) -> bool:
            return False

    proto._transport = Transport()  # type: ignore[assignment]
    n = 100_000
    best_next = best_head = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(n):
            proto._buf = bytearray(REQUEST)
            proto.task = None
            proto._next()
        best_next = min(best_next, (time.process_time() - t0) / n)
        t0 = time.process_time()
        for _ in range(n):
            proto._head(200, RESPONSE_HEADERS, b"Content-Length: 300\r\n", False)
        best_head = min(best_head, (time.process_time() - t0) / n)
    assert shared.stats.fast_requests == 5 * n  # every request took the fast path
    print(f"request head parsed (_next): {best_next * 1e6:.2f} us; "
          f"response head built (_head): {best_head * 1e6:.2f} us  (best of 5 x {n})")


if __name__ == "__main__":
    asyncio.run(main())
