"""Threaded stress: many producers and consumers through one small RingQueue.

Default run: 4 producers and 4 consumers move 250k items each through capacity
1024, mixing single and batch operations.  Checks: every item arrives exactly once,
and per consumer the items of each producer arrive in increasing order.
"""

from __future__ import annotations

import sys
import threading
import time

import pytest

N_PROD = 4
N_CONS = 4
PER_PRODUCER = 250_000
CAPACITY = 1024
TIME_LIMIT = 120.0  # generous: fail clearly instead of hanging
BATCH = 32
SWITCH_INTERVAL = 20e-6  # seconds; the default 5 ms would let each thread run long stretches


def _run(ring_type, per_producer: int, capacity: int, time_limit: float = TIME_LIMIT) -> None:
    q = ring_type(capacity)
    total = N_PROD * per_producer
    deadline = time.monotonic() + time_limit
    remaining = [total]
    remaining_lock = threading.Lock()
    received: list[list[int]] = [[] for _ in range(N_CONS)]
    errors: list[str] = []
    start = threading.Barrier(N_PROD + N_CONS)

    def producer(pid: int) -> None:
        base = pid * per_producer
        i = 0
        try_put, put_many = q.try_put, q.put_many
        start.wait()
        while i < per_producer:
            if (i >> 8) & 1:
                n = put_many(list(range(base + i, base + min(i + BATCH, per_producer))))
            else:
                n = 1 if try_put(base + i) else 0
            if n:
                i += n
            else:
                if time.monotonic() > deadline:
                    errors.append(f"producer {pid} timed out at item {i}")
                    return
                time.sleep(0)

    def consumer(cid: int) -> None:
        out = received[cid]
        append, extend = out.append, out.extend
        try_get, get_many = q.try_get, q.get_many
        miss = object()
        start.wait()
        k = 0
        while remaining[0] > 0:
            k += 1
            if k & 1:
                item = try_get(miss)
                got = 0 if item is miss else 1
                if got:
                    append(item)
            else:
                batch = get_many(BATCH)
                got = len(batch)
                extend(batch)
            if got:
                with remaining_lock:
                    remaining[0] -= got
            else:
                if time.monotonic() > deadline:
                    errors.append(f"consumer {cid} timed out ({remaining[0]} items missing)")
                    return
                time.sleep(0)

    threads = [threading.Thread(target=producer, args=(p,), daemon=True) for p in range(N_PROD)]
    threads += [threading.Thread(target=consumer, args=(c,), daemon=True) for c in range(N_CONS)]
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)  # switch threads often: more interleavings
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()) + 5)
    finally:
        sys.setswitchinterval(old_interval)
    assert not any(t.is_alive() for t in threads), f"threads still running; errors: {errors}"
    assert not errors, errors

    # exactly once
    counts = bytearray(total)
    for out in received:
        for v in out:
            counts[v] += 1
    assert sum(len(out) for out in received) == total
    assert counts.count(1) == total, "some item was lost or duplicated"
    # per consumer, each producer's items in increasing order
    for cid, out in enumerate(received):
        last = [-1] * N_PROD
        for v in out:
            pid = v // per_producer
            assert v > last[pid], f"consumer {cid}: producer {pid} out of order ({v} after {last[pid]})"
            last[pid] = v
    assert len(q) == 0 and q.empty()


def _per_producer(impl) -> int:
    # The pure twin moves the full 250k items per producer in a few seconds on the
    # reference machine (2 cores, Python 3.11); keep the same size for both.
    return PER_PRODUCER


@pytest.mark.timeout(300)
def test_threaded_stress_default(impl) -> None:
    _run(impl.RingQueue, _per_producer(impl), CAPACITY)


@pytest.mark.parametrize("capacity", [1, 3, 100])
def test_threaded_stress_small_capacities(impl, capacity: int) -> None:
    _run(impl.RingQueue, 5_000, capacity)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("capacity", [2, 1000, 4096])
def test_threaded_stress_long(impl, capacity: int) -> None:
    _run(impl.RingQueue, 1_000_000, capacity, time_limit=600.0)
