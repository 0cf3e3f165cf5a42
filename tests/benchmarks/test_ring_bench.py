"""pytest-benchmark suite for RingQueue/AsyncRingQueue vs stdlib and third-party peers.

Run: ``python -m pytest tests/benchmarks/test_ring_bench.py -m bench``.
Compare groups with ``--benchmark-group-by=group``; nothing is asserted about speed.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time

import pytest

from ollamamax.structures import ring as _ring

pytestmark = pytest.mark.bench

ITEM = object()
IMPLS = [pytest.param(k, id=("native" if k == "c" else "pure")) for k in ("c", "py")]


def _ns(kind: str):
    ns = _ring.IMPLEMENTATIONS[kind]
    if ns is None:
        pytest.skip("native _ring_c not built")
    return ns


def _pairs(put, get, n: int = 1000) -> None:
    for _ in range(n):
        put(ITEM)
        get()


@pytest.mark.benchmark(group="pair")
@pytest.mark.parametrize("kind", IMPLS)
def test_ring_pair(benchmark, kind: str) -> None:
    q = _ns(kind).RingQueue(1024)
    benchmark(_pairs, q.try_put, q.try_get)


@pytest.mark.benchmark(group="pair")
@pytest.mark.parametrize("kind", IMPLS)
def test_ring_pair_nowait(benchmark, kind: str) -> None:
    q = _ns(kind).RingQueue(1024)
    benchmark(_pairs, q.put_nowait, q.get_nowait)


@pytest.mark.benchmark(group="pair")
def test_deque_pair(benchmark) -> None:
    d = collections.deque()
    benchmark(_pairs, d.append, d.popleft)


@pytest.mark.benchmark(group="pair")
def test_queue_queue_pair(benchmark) -> None:
    q = queue.Queue(1024)
    benchmark(_pairs, q.put, q.get)


@pytest.mark.benchmark(group="pair")
def test_simplequeue_pair(benchmark) -> None:
    q = queue.SimpleQueue()
    benchmark(_pairs, q.put, q.get)


@pytest.mark.benchmark(group="pair")
def test_asyncio_queue_pair(benchmark) -> None:
    q = asyncio.Queue(1024)
    benchmark(_pairs, q.put_nowait, q.get_nowait)


@pytest.mark.benchmark(group="pair")
@pytest.mark.parametrize("kind", IMPLS)
def test_async_ring_nowait_pair(benchmark, kind: str) -> None:
    q = _ns(kind).AsyncRingQueue(1024)
    benchmark(_pairs, q.put_nowait, q.get_nowait)


@pytest.mark.benchmark(group="batch-1000")
@pytest.mark.parametrize("kind", IMPLS)
def test_ring_batch(benchmark, kind: str) -> None:
    q = _ns(kind).RingQueue(1024)
    items = [ITEM] * 1000

    def run() -> None:
        q.put_many(items)
        q.get_many(1000)

    benchmark(run)


@pytest.mark.benchmark(group="batch-1000")
def test_deque_batch(benchmark) -> None:
    d = collections.deque()
    items = [ITEM] * 1000

    def run() -> None:
        d.extend(items)
        [d.popleft() for _ in range(1000)]

    benchmark(run)


def _handoff(put, get_one, n: int) -> None:
    def producer() -> None:
        for _ in range(n):
            put(ITEM)

    def consumer() -> None:
        for _ in range(n):
            get_one()

    ts = [threading.Thread(target=consumer), threading.Thread(target=producer)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)


N_THREAD = 50_000


@pytest.mark.benchmark(group="thread-to-thread")
@pytest.mark.parametrize("kind", IMPLS)
def test_ring_thread_handoff(benchmark, kind: str) -> None:
    ns = _ns(kind)

    def run() -> None:
        q = ns.RingQueue(4096)
        miss = object()
        sleep = time.sleep

        def put(x: object) -> None:
            while not q.try_put(x):
                sleep(0)

        def get_one() -> None:
            while q.try_get(miss) is miss:
                sleep(0)

        _handoff(put, get_one, N_THREAD)

    benchmark.pedantic(run, rounds=3, iterations=1)


@pytest.mark.benchmark(group="thread-to-thread")
def test_simplequeue_thread_handoff(benchmark) -> None:
    def run() -> None:
        q = queue.SimpleQueue()
        _handoff(q.put, q.get, N_THREAD)

    benchmark.pedantic(run, rounds=3, iterations=1)


@pytest.mark.benchmark(group="thread-to-thread")
def test_queue_thread_handoff(benchmark) -> None:
    def run() -> None:
        q = queue.Queue(4096)
        _handoff(q.put, q.get, N_THREAD)

    benchmark.pedantic(run, rounds=3, iterations=1)


@pytest.mark.benchmark(group="thread-to-asyncio")
@pytest.mark.parametrize("kind", IMPLS)
def test_async_ring_thread_to_loop(benchmark, kind: str) -> None:
    ns = _ns(kind)

    def run() -> None:
        async def main() -> None:
            q = ns.AsyncRingQueue(4096)

            def producer() -> None:
                for _ in range(N_THREAD):
                    while True:
                        try:
                            q.put_nowait(ITEM)
                            break
                        except ns.QueueFull:
                            time.sleep(0)

            t = threading.Thread(target=producer)
            t.start()
            for _ in range(N_THREAD):
                await q.get()
            t.join(60)

        asyncio.run(main())

    benchmark.pedantic(run, rounds=3, iterations=1)


@pytest.mark.benchmark(group="thread-to-asyncio")
def test_janus_thread_to_loop(benchmark) -> None:
    janus = pytest.importorskip("janus")

    def run() -> None:
        async def main() -> None:
            q = janus.Queue(4096)

            def producer() -> None:
                for _ in range(N_THREAD // 5):
                    q.sync_q.put(ITEM)

            t = threading.Thread(target=producer)
            t.start()
            for _ in range(N_THREAD // 5):
                await q.async_q.get()
            t.join(60)
            q.close()
            await q.wait_closed()

        asyncio.run(main())

    # janus moves N_THREAD // 5 items per round: scale its mean by 5 when comparing
    benchmark.extra_info["items"] = N_THREAD // 5
    benchmark.pedantic(run, rounds=3, iterations=1)
