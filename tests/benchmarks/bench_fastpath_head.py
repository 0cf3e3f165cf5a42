"""Cost of the gateway fast path's request-head parsing, per request.

    python tests/benchmarks/bench_fastpath_head.py [--baseline OLD_request_head.py]

Times :func:`ollamamax.frontends.request_head.parse_request_head` on a typical client
request head (request line and 5 headers): llhttp's parse (through ``httptools``), the
hand-over checks and the ``CIMultiDict``.  With ``--baseline`` (a copy of an earlier
``request_head.py``, e.g. ``git show 0154649:src/ollamamax/frontends/request_head.py >
/tmp/old_head.py``) it times that one too, interleaved in the same run, and prints the
ratio.  Nothing is asserted; this is the figure to compare when the parser changes.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from ollamamax.frontends.request_head import RequestHead, parse_request_head  # noqa: E402

HEAD = (b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1:11434\r\nContent-Type: application/json\r\n"
        b"Accept: application/json\r\nUser-Agent: ollama-python/0.6.3 (x86_64 linux) Python/3.11\r\n"
        b"Content-Length: 80")


def _time(fn, n: int) -> float:
    t0 = time.process_time()
    for _ in range(n):
        fn(HEAD, 1 << 20)
    return (time.process_time() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", help="path of an earlier request_head.py to time against")
    args = ap.parse_args()
    fns = {"parse_request_head": parse_request_head}
    if args.baseline:
        spec = importlib.util.spec_from_file_location("baseline_head", args.baseline)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        fns["baseline"] = mod.parse_request_head
    for name, fn in fns.items():
        got = fn(HEAD, 1 << 20)
        assert got is not None and tuple(got)[:3] == ("POST", "/api/chat", ""), (name, got)  # served
    assert isinstance(parse_request_head(HEAD, 1 << 20), RequestHead)
    n = 50_000
    best = {name: float("inf") for name in fns}
    for _ in range(7):
        for name, fn in fns.items():  # interleaved: the same machine state for both
            best[name] = min(best[name], _time(fn, n))
    for name, t in best.items():
        print(f"request head parsed ({name}): {t * 1e6:.2f} us  (best of 7 x {n})")
    if args.baseline:
        print(f"ratio new/baseline: {best['parse_request_head'] / best['baseline']:.2f}")


if __name__ == "__main__":
    main()
