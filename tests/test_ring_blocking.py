"""RingQueue blocking API: get/put with timeouts, get_many/put_many with timeouts.

Every test runs against both implementations.  Threads are always joined with a
bound; waits in the tests are short.  Timing is only checked from below (a
timed-out call must have waited), never as a speed assertion.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time

import pytest

from ollamamax.structures.exceptions import QueueEmpty, QueueFull

JOIN = 30.0  # seconds: fail instead of hanging


def _start(fn, *args) -> threading.Thread:
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t


def _join(*threads: threading.Thread) -> None:
    for t in threads:
        t.join(JOIN)
        assert not t.is_alive(), "thread did not finish"


def _wait_until(cond, limit: float = JOIN) -> None:
    end = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.001)


# -- single-threaded semantics ------------------------------------------------


def test_get_put_without_waiting(impl) -> None:
    q = impl.RingQueue(2)
    assert q.put(1) is None
    q.put(2, timeout=0)
    assert q.get() == 1
    assert q.get(timeout=0) == 2
    q.put("x", timeout=None)
    assert q.get(timeout=math.inf) == "x"


def test_get_timeout_raises_empty(impl) -> None:
    q = impl.RingQueue(2)
    with pytest.raises(QueueEmpty):
        q.get(timeout=0)
    t0 = time.monotonic()
    with pytest.raises(QueueEmpty):
        q.get(timeout=0.05)
    assert time.monotonic() - t0 >= 0.04
    assert q.empty()


def test_put_timeout_raises_full_and_keeps_nothing(impl) -> None:
    q = impl.RingQueue(1)
    q.put("a")
    item = object()
    before = sys.getrefcount(item)
    with pytest.raises(QueueFull):
        q.put(item, timeout=0)
    t0 = time.monotonic()
    with pytest.raises(QueueFull):
        q.put(item, timeout=0.05)
    assert time.monotonic() - t0 >= 0.04
    assert sys.getrefcount(item) == before
    assert len(q) == 1 and q.get() == "a"


@pytest.mark.parametrize("bad", [-1, -0.001, float("nan"), -math.inf])
def test_timeout_value_error(impl, bad: float) -> None:
    q = impl.RingQueue(2)
    q.put(1)
    with pytest.raises(ValueError):
        q.get(timeout=bad)
    with pytest.raises(ValueError):
        q.put(2, timeout=bad)
    with pytest.raises(ValueError):
        q.get_many(1, timeout=bad)
    with pytest.raises(ValueError):
        q.put_many([2], timeout=bad)
    assert len(q) == 1  # nothing happened


@pytest.mark.parametrize("bad", ["1", b"1", object(), [1]])
def test_timeout_type_error(impl, bad: object) -> None:
    q = impl.RingQueue(2)
    q.put(1)
    with pytest.raises(TypeError):
        q.get(timeout=bad)
    with pytest.raises(TypeError):
        q.put(2, timeout=bad)
    with pytest.raises(TypeError):
        q.get_many(1, timeout=bad)
    with pytest.raises(TypeError):
        q.put_many([2], timeout=bad)
    assert len(q) == 1


def test_get_many_timeout(impl) -> None:
    q = impl.RingQueue(4)
    assert q.get_many(3, timeout=0.02) == []
    assert q.get_many(0, timeout=None) == []  # nothing asked: no wait
    q.put_many([1, 2, 3])
    assert q.get_many(2, timeout=None) == [1, 2]
    assert q.get_many(5, timeout=0.01) == [3]


def test_put_many_timeout_partial(impl) -> None:
    q = impl.RingQueue(3)
    assert q.put_many([1, 2, 3, 4, 5], timeout=0.02) == 3
    assert q.put_many((6,), timeout=0.01) == 0
    assert q.put_many(iter([7, 8]), timeout=0.01) == 0
    assert q.get_many(10) == [1, 2, 3]


def test_put_many_iterable_not_overconsumed_with_timeout(impl) -> None:
    q = impl.RingQueue(2)
    it = iter(range(10))
    assert q.put_many(it, timeout=0.01) == 2
    assert next(it) == 2  # the third item was not pulled


# -- blocking across threads --------------------------------------------------


def test_get_blocks_until_put(impl) -> None:
    q = impl.RingQueue(2)
    got = []
    t = _start(lambda: got.append(q.get(timeout=JOIN)))
    time.sleep(0.02)
    assert not got
    q.put("hello")
    _join(t)
    assert got == ["hello"]


def test_put_blocks_until_get(impl) -> None:
    q = impl.RingQueue(1)
    q.put(0)
    done = []
    t = _start(lambda: done.append(q.put(1, timeout=JOIN)))
    time.sleep(0.02)
    assert not done
    assert q.get() == 0
    _join(t)
    assert done == [None]
    assert q.get_nowait() == 1


@pytest.mark.parametrize("how", ["try_put", "put_nowait", "put_many_list", "put_many_iter"])
def test_nonblocking_producers_wake_get(impl, how: str) -> None:
    q = impl.RingQueue(4)
    got = []
    t = _start(lambda: got.append(q.get(timeout=JOIN)))
    time.sleep(0.02)
    if how == "try_put":
        assert q.try_put(7)
    elif how == "put_nowait":
        q.put_nowait(7)
    elif how == "put_many_list":
        assert q.put_many([7]) == 1
    else:
        assert q.put_many(iter([7])) == 1
    _join(t)
    assert got == [7]


@pytest.mark.parametrize("how", ["try_get", "get_nowait", "get_many"])
def test_nonblocking_consumers_wake_put(impl, how: str) -> None:
    q = impl.RingQueue(1)
    q.put(0)
    done = []
    t = _start(lambda: done.append(q.put(1, timeout=JOIN)))
    time.sleep(0.02)
    if how == "try_get":
        assert q.try_get() == 0
    elif how == "get_nowait":
        assert q.get_nowait() == 0
    else:
        assert q.get_many(5) == [0]
    _join(t)
    assert q.get(timeout=JOIN) == 1


def test_get_many_blocks_until_items(impl) -> None:
    q = impl.RingQueue(8)
    got = []
    t = _start(lambda: got.append(q.get_many(8, timeout=JOIN)))
    time.sleep(0.02)
    assert q.put_many([1, 2, 3]) == 3
    _join(t)
    assert got and got[0] and got[0] == [1, 2, 3][: len(got[0])]


def test_put_many_waits_for_room(impl) -> None:
    q = impl.RingQueue(4)
    items = list(range(100))
    stored = []
    t = _start(lambda: stored.append(q.put_many(items, timeout=JOIN)))
    out: list[int] = []
    end = time.monotonic() + JOIN
    while len(out) < 100 and time.monotonic() < end:
        out.extend(q.get_many(4, timeout=0.5))
    _join(t)
    assert stored == [100] and out == items


def test_put_many_iterable_waits_for_room(impl) -> None:
    q = impl.RingQueue(3)
    stored = []
    t = _start(lambda: stored.append(q.put_many((i for i in range(50)), timeout=None)))
    out = [q.get(timeout=JOIN) for _ in range(50)]
    _join(t)
    assert stored == [50] and out == list(range(50))


def test_many_getters_woken_by_one_batch(impl) -> None:
    """Wake-ups coalesced by a batch push are passed on: every getter returns."""
    q = impl.RingQueue(16)
    n = 6
    got: list[int] = []
    lock = threading.Lock()

    def getter() -> None:
        x = q.get(timeout=JOIN)
        with lock:
            got.append(x)

    threads = [_start(getter) for _ in range(n)]
    time.sleep(0.05)
    assert q.put_many(list(range(n))) == n
    _join(*threads)
    assert sorted(got) == list(range(n))


def test_many_putters_woken_by_one_batch(impl) -> None:
    q = impl.RingQueue(6)
    assert q.put_many(list(range(6))) == 6
    threads = [_start(q.put, 100 + i, JOIN) for i in range(6)]
    time.sleep(0.05)
    assert q.get_many(6) == list(range(6))
    _join(*threads)
    assert sorted(q.get_many(6)) == [100 + i for i in range(6)]


@pytest.mark.parametrize("capacity", [1, 3, 64])
def test_threads_blocking_exactly_once(impl, capacity: int) -> None:
    """3 producers (put / put_many) and 3 consumers (get / get_many), all blocking."""
    per = 3000 if impl.native else 1000
    n_prod = n_cons = 3
    total = n_prod * per
    q = impl.RingQueue(capacity)
    received: list[list[int]] = [[] for _ in range(n_cons)]
    stop = object()

    def producer(pid: int) -> None:
        base = pid * per
        i = 0
        while i < per:
            if pid == 0:
                q.put(base + i, timeout=JOIN)
                i += 1
            else:
                chunk = list(range(base + i, base + min(i + 7, per)))
                assert q.put_many(chunk, timeout=JOIN) == len(chunk)
                i += len(chunk)

    def consumer(cid: int) -> None:
        out = received[cid]
        while True:
            if cid == 0:
                batch = [q.get(timeout=JOIN)]
            else:
                batch = q.get_many(5, timeout=JOIN)
                assert batch
            for j, x in enumerate(batch):
                if x is stop:
                    # stops come after every item; hand extra ones to the others
                    for _ in range(len(batch) - j - 1):
                        q.put(stop, timeout=JOIN)
                    return
                out.append(x)

    cons = [_start(consumer, c) for c in range(n_cons)]
    prods = [_start(producer, p) for p in range(n_prod)]
    _join(*prods)
    for _ in range(n_cons):
        q.put(stop, timeout=JOIN)
    _join(*cons)
    everything = sorted(x for out in received for x in out)
    assert everything == list(range(total))
    for out in received:  # per producer, FIFO order per consumer
        for pid in range(n_prod):
            mine = [x for x in out if pid * per <= x < (pid + 1) * per]
            assert mine == sorted(mine)


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs POSIX interval timers")
def test_signal_handler_interrupts_blocking_get(impl) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread")

    class Interrupted(Exception):
        pass

    def handler(signum, frame):
        raise Interrupted

    q = impl.RingQueue(1)
    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Interrupted):
            q.get(timeout=None)
        q.put(1)
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Interrupted):
            q.put(2)  # full: waits without limit until the handler raises
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert q.get_nowait() == 1 and q.empty()
    # the queue still works after an interrupted wait
    t = _start(lambda: (time.sleep(0.02), q.put(3)))
    assert q.get(timeout=JOIN) == 3
    _join(t)


def test_signal_handler_that_returns_keeps_waiting(impl) -> None:
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        pytest.skip("needs the main thread and POSIX interval timers")
    calls = []
    old = signal.signal(signal.SIGALRM, lambda s, f: calls.append(s))
    q = impl.RingQueue(1)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.02)
        t = _start(lambda: (time.sleep(0.1), q.put("late")))
        assert q.get(timeout=JOIN) == "late"
        _join(t)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert calls == [signal.SIGALRM]


def test_waiters_do_not_leak_state(impl) -> None:
    """After timeouts and wake-ups, fast paths still behave (no stray wake-ups lost)."""
    q = impl.RingQueue(2)
    for _ in range(5):
        with pytest.raises(QueueEmpty):
            q.get(timeout=0.001)
    got = []
    t = _start(lambda: got.append(q.get(timeout=JOIN)))
    _wait_until(lambda: t.is_alive())
    time.sleep(0.01)
    q.try_put("v")
    _join(t)
    assert got == ["v"] and q.empty()
