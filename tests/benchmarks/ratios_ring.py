"""Ratios of RingQueue/AsyncRingQueue against reference queues, measured in one run.

    python tests/benchmarks/ratios_ring.py [--impl c|py] [--quick]

Prints one table: goal, our figure, the reference figure measured in the same run,
the ratio, and met/missed.  Nothing is asserted; figures depend on the machine.
Timings are the best of several repeats: timeit with process CPU time for the
single-thread figures (other processes on a shared machine do not inflate them),
wall clock for the thread hand-offs (cases interleaved round by round), which
are also given per process-CPU second (rows marked "(cpu)": robust to other
processes' load on a shared machine; the blocking queues burn no CPU waiting).  The
thread hand-off goals use each queue's natural blocking API (RingQueue.put/get,
put_many/get_many with timeout=None; SimpleQueue.put/get); the polling variants
(try_* plus sleep(0)) are reported for information.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import queue
import sys
import threading
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from ollamamax.structures import ring as _ring  # noqa: E402
from ollamamax.structures.exceptions import QueueFull  # noqa: E402

ITEM = object()


def per_op_ns(stmt: str, env: dict, number: int, repeat: int) -> float:
    # CPU time of this process: on a shared machine, time other processes take from
    # us does not count (the single-threaded figures measure work, not waiting).
    t = timeit.repeat(stmt, globals=env, number=number, repeat=repeat, timer=time.process_time)
    return min(t) / number * 1e9


def pair_figures(ns, number: int, repeat: int) -> dict[str, float]:
    d = collections.deque()
    rq = ns.RingQueue(1024)
    qq = queue.Queue(1024)
    aq = asyncio.Queue(1024)
    out = {}
    # interleave the measurements so machine noise hits all of them alike
    for _ in range(repeat):
        for name, env in (
            ("deque", {"a": d.append, "p": d.popleft, "o": ITEM}),
            ("ring", {"a": rq.try_put, "p": rq.try_get, "o": ITEM}),
            ("ring_nowait", {"a": rq.put_nowait, "p": rq.get_nowait, "o": ITEM}),
            ("ring_blocking", {"a": rq.put, "p": rq.get, "o": ITEM}),
            ("queue.Queue", {"a": qq.put, "p": qq.get, "o": ITEM}),
            ("asyncio.Queue", {"a": aq.put_nowait, "p": aq.get_nowait, "o": ITEM}),
        ):
            n = number // 10 if name == "queue.Queue" else number
            t = per_op_ns("a(o); p()", env, n, 1)
            out[name] = min(out.get(name, float("inf")), t)
    return out


def batch_figures(ns, number: int, repeat: int) -> dict[str, float]:
    rq = ns.RingQueue(1024)
    items = [ITEM] * 1000
    env = {"q": rq, "items": items}
    batch = per_op_ns("q.put_many(items); q.get_many(1000)", env, max(1, number // 1000), repeat) / 1000
    env1 = {"a": rq.try_put, "p": rq.try_get, "o": ITEM}
    single = per_op_ns("a(o); p()", env1, number, repeat)
    return {"batch_per_item": batch, "single_per_item": single}


# CPU time of the whole process (both threads) during the last _timed_threads call:
# on a shared machine other processes' load inflates wall time but not this.
_LAST_CPU = [0.0]


def _timed_threads(producer, consumer, timeout: float = 60.0) -> float:
    tc = threading.Thread(target=consumer)
    tp = threading.Thread(target=producer)
    c0 = time.process_time()
    t0 = time.perf_counter()
    tc.start()
    tp.start()
    tp.join(timeout)
    tc.join(timeout)
    if tp.is_alive() or tc.is_alive():
        raise RuntimeError("thread benchmark did not finish in time")
    dt = time.perf_counter() - t0
    _LAST_CPU[0] = time.process_time() - c0
    return dt


def thread_ring_blocking(ns, n: int, capacity: int) -> float:
    """1 producer, 1 consumer, single items through the blocking put/get (the
    natural API, as queue.SimpleQueue's put/get): waiters sleep, no polling."""
    q = ns.RingQueue(capacity)

    def producer() -> None:
        put = q.put
        for _ in range(n):
            put(ITEM)

    def consumer() -> None:
        get = q.get
        for _ in range(n):
            get()

    return n / _timed_threads(producer, consumer)


def thread_ring_batch_blocking(ns, n: int, capacity: int, batch: int = 256) -> float:
    """Batches of ``batch`` through put_many/get_many with timeout=None (blocking)."""
    q = ns.RingQueue(capacity)
    chunk = [ITEM] * batch

    def producer() -> None:
        put_many = q.put_many
        left = n
        while left:
            left -= put_many(chunk if left >= batch else chunk[:left], None)

    def consumer() -> None:
        get_many = q.get_many
        left = n
        while left:
            left -= len(get_many(batch, None))

    return n / _timed_threads(producer, consumer)


def thread_ring_single(ns, n: int, capacity: int) -> float:
    """Polling variant: try_put/try_get, sleep(0) (a GIL hand-off) when full/empty."""
    q = ns.RingQueue(capacity)
    sleep = time.sleep

    def producer() -> None:
        put = q.try_put
        for _ in range(n):
            while not put(ITEM):
                sleep(0)

    def consumer() -> None:
        get = q.try_get
        miss = object()
        for _ in range(n):
            while get(miss) is miss:
                sleep(0)

    return n / _timed_threads(producer, consumer)


def thread_ring_batch(ns, n: int, capacity: int, batch: int = 256) -> float:
    """Polling variant of the batch hand-off (sleep(0) when full/empty)."""
    q = ns.RingQueue(capacity)
    chunk = [ITEM] * batch
    sleep = time.sleep

    def producer() -> None:
        put_many = q.put_many
        left = n
        while left:
            k = put_many(chunk if left >= batch else chunk[:left])
            if k:
                left -= k
            else:
                sleep(0)

    def consumer() -> None:
        get_many = q.get_many
        left = n
        while left:
            k = len(get_many(batch))
            if k:
                left -= k
            else:
                sleep(0)

    return n / _timed_threads(producer, consumer)


def thread_stdlib(qtype, n: int) -> float:
    q = qtype() if qtype is queue.SimpleQueue else qtype(4096)

    def producer() -> None:
        put = q.put
        for _ in range(n):
            put(ITEM)

    def consumer() -> None:
        get = q.get
        for _ in range(n):
            get()

    return n / _timed_threads(producer, consumer)


def thread_to_asyncio_ring(ns, n: int, capacity: int) -> float:
    async def main() -> float:
        q = ns.AsyncRingQueue(capacity)

        def producer() -> None:
            put = q.put_nowait
            sleep = time.sleep
            for _ in range(n):
                while True:
                    try:
                        put(ITEM)
                        break
                    except QueueFull:
                        sleep(0)

        t = threading.Thread(target=producer)
        t0 = time.perf_counter()
        t.start()
        get = q.get
        for _ in range(n):
            await get()
        dt = time.perf_counter() - t0
        t.join(60)
        return n / dt

    return asyncio.run(main())


def thread_to_asyncio_janus(n: int) -> float | None:
    try:
        import janus
    except ImportError:
        return None

    async def main() -> float:
        q = janus.Queue(4096)

        def producer() -> None:
            put = q.sync_q.put
            for _ in range(n):
                put(ITEM)

        t = threading.Thread(target=producer)
        t0 = time.perf_counter()
        t.start()
        get = q.async_q.get
        for _ in range(n):
            await get()
        dt = time.perf_counter() - t0
        t.join(60)
        q.close()
        await q.wait_closed()
        return n / dt

    return asyncio.run(main())


def best(fn, repeat: int, *args) -> float:
    return max(fn(*args) for _ in range(repeat))


def best_interleaved(cases: dict, repeat: int) -> tuple[dict[str, float], dict[str, float]]:
    """Best (highest) throughput per case, the cases taking turns in every round so
    that load from other processes on a shared machine hits all of them alike.
    Returns (items per wall-clock second, items per process-CPU second)."""
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for _ in range(repeat):
        for name, (fn, args) in cases.items():
            _LAST_CPU[0] = 0.0
            wall[name] = max(wall.get(name, 0.0), fn(*args))
            if _LAST_CPU[0] > 0:  # every case takes (…, n, …) with n items at args[1]
                cpu[name] = max(cpu.get(name, 0.0), args[1] / _LAST_CPU[0])
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", choices=["c", "py"], default="c")
    ap.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    ap.add_argument("--capacity", type=int, default=65536,
                    help="ring capacity for the thread hand-off figures (queue.SimpleQueue, the "
                         "reference, is unbounded; default %(default)s)")
    args = ap.parse_args(argv)
    ns = _ring.IMPLEMENTATIONS[args.impl]
    if ns is None:
        print("native _ring_c is not built; run tools/dev_build.sh ring", file=sys.stderr)
        return 2
    number, repeat = (100_000, 3) if args.quick else (1_000_000, 7)
    n_threads = 50_000 if args.quick else 500_000
    t_repeat = 2 if args.quick else 5
    cap = args.capacity

    print(f"ollamamax ring ratios: impl={args.impl} python={sys.version.split()[0]} "
          f"cpus={os.cpu_count()} number={number} repeat={repeat} thread-capacity={cap}")
    p = pair_figures(ns, number, repeat)
    b = batch_figures(ns, number, repeat)
    tt, tt_cpu = best_interleaved({
        "simple": (thread_stdlib, (queue.SimpleQueue, n_threads)),
        "single": (thread_ring_blocking, (ns, n_threads, cap)),
        "batch": (thread_ring_batch_blocking, (ns, n_threads, cap)),
        "single_1k": (thread_ring_blocking, (ns, n_threads, 1024)),
        "batch_1k": (thread_ring_batch_blocking, (ns, n_threads, 1024)),
        "poll_single": (thread_ring_single, (ns, n_threads, cap)),
        "poll_batch": (thread_ring_batch, (ns, n_threads, cap)),
        "queue": (thread_stdlib, (queue.Queue, n_threads // 5)),
    }, t_repeat)
    tt_simple, tt_queue = tt["simple"], tt["queue"]
    tt_single, tt_batch = tt["single"], tt["batch"]
    tt_single_1k, tt_batch_1k = tt["single_1k"], tt["batch_1k"]
    ta_ring = best(thread_to_asyncio_ring, t_repeat, ns, n_threads, cap)
    ta_ring_1k = best(thread_to_asyncio_ring, t_repeat, ns, n_threads, 1024)
    ta_janus = None
    try:
        ta_janus = best(thread_to_asyncio_janus, t_repeat, n_threads // 10)
    except Exception as exc:  # janus API drift: report, don't crash
        print(f"janus measurement failed: {exc!r}")

    rows = []

    def row(goal: str, ours: float, ref: float | None, unit: str, ratio: float | None, met: bool | None) -> None:
        rows.append((goal, f"{ours:,.1f} {unit}", "n/a" if ref is None else f"{ref:,.1f} {unit}",
                     "n/a" if ratio is None else f"{ratio:.2f}x",
                     "n/a" if met is None else ("met" if met else "MISSED")))

    r = p["ring"] / p["deque"]
    row("try_put+try_get <= 1.3x deque append+popleft", p["ring"], p["deque"], "ns", r, r <= 1.3)
    r = p["ring_nowait"] / p["deque"]
    row("(info) put_nowait+get_nowait vs deque", p["ring_nowait"], p["deque"], "ns", r, None)
    r = p["ring_blocking"] / p["deque"]
    row("(info) put+get (blocking API, no wait) vs deque", p["ring_blocking"], p["deque"], "ns", r, None)
    r = p["queue.Queue"] / p["ring"]
    row(">= 30x faster than queue.Queue put+get", p["ring"], p["queue.Queue"], "ns", r, r >= 30)
    r = p["asyncio.Queue"] / p["ring"]
    row(">= 8x faster than asyncio.Queue nowait pair", p["ring"], p["asyncio.Queue"], "ns", r, r >= 8)
    r = b["single_per_item"] / b["batch_per_item"]
    row("put_many/get_many(1000) >= 5x cheaper per item", b["batch_per_item"], b["single_per_item"], "ns/item", r, r >= 5)
    m = 1e6
    r = tt_single / tt_simple
    row("thread->thread single (put/get) >= queue.SimpleQueue", tt_single / m, tt_simple / m, "M/s", r, r >= 1)
    r = tt_batch / tt_simple
    row("thread->thread batch (put_many/get_many) >= SimpleQueue", tt_batch / m, tt_simple / m, "M/s", r,
        r >= 1)
    if "single" in tt_cpu and "simple" in tt_cpu:
        r = tt_cpu["single"] / tt_cpu["simple"]
        row("(cpu) single put/get per CPU-second vs SimpleQueue", tt_cpu["single"] / m, tt_cpu["simple"] / m,
            "M/s", r, r >= 1)
        r = tt_cpu["batch"] / tt_cpu["simple"]
        row("(cpu) batch per CPU-second vs SimpleQueue", tt_cpu["batch"] / m, tt_cpu["simple"] / m, "M/s", r,
            r >= 1)
    r = tt_single_1k / tt_simple
    row("(info) thread->thread single, capacity 1024", tt_single_1k / m, tt_simple / m, "M/s", r, None)
    r = tt_batch_1k / tt_simple
    row("(info) thread->thread batch, capacity 1024", tt_batch_1k / m, tt_simple / m, "M/s", r, None)
    r = tt["poll_single"] / tt_simple
    row("(info) single, polling try_put/try_get+sleep(0)", tt["poll_single"] / m, tt_simple / m, "M/s", r,
        None)
    r = tt["poll_batch"] / tt_simple
    row("(info) batch, polling put_many/get_many+sleep(0)", tt["poll_batch"] / m, tt_simple / m, "M/s", r,
        None)
    r = tt_single / tt_queue
    row("thread->thread single >= 20x queue.Queue", tt_single / m, tt_queue / m, "M/s", r, r >= 20)
    r = tt_batch / tt_queue
    row("thread->thread batch >= 20x queue.Queue", tt_batch / m, tt_queue / m, "M/s", r, r >= 20)
    if ta_janus:
        r = ta_ring / ta_janus
        row("thread->asyncio >= 10x janus", ta_ring / m, ta_janus / m, "M/s", r, r >= 10)
        r = ta_ring_1k / ta_janus
        row("(info) thread->asyncio, capacity 1024", ta_ring_1k / m, ta_janus / m, "M/s", r, None)
    else:
        row("thread->asyncio >= 10x janus", ta_ring / m, None, "M/s", None, None)

    widths = [max(len(x[i]) for x in rows + [("goal", "ours", "reference", "ratio", "result")]) for i in range(5)]
    header = ("goal", "ours", "reference", "ratio", "result")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for x in rows:
        print("  ".join(c.ljust(w) for c, w in zip(x, widths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
