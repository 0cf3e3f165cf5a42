"""AsyncRingQueue: asyncio.Queue-like API, FIFO waiters, cancellation, cross-thread wake-ups."""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time

import pytest

from ollamamax.structures.exceptions import QueueEmpty, QueueFull

if sys.version_info >= (3, 11):
    _timeout = asyncio.timeout
else:  # pragma: no cover - Python 3.10
    _timeout = None


async def _settle(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_basic_api(impl) -> None:
    q = impl.AsyncRingQueue(3)
    assert q.maxsize == 3 and q.qsize() == 0 and q.empty() and not q.full()
    await q.put(1)
    q.put_nowait(2)
    await q.put(3)
    assert q.full() and q.qsize() == 3 and not q.empty()
    with pytest.raises(QueueFull):
        q.put_nowait(4)
    assert await q.get() == 1
    assert q.get_nowait() == 2
    assert await q.get() == 3
    with pytest.raises(QueueEmpty):
        q.get_nowait()
    assert "maxsize=3" in repr(q)


def test_keyword_maxsize(impl) -> None:
    assert impl.AsyncRingQueue(maxsize=7).maxsize == 7


@pytest.mark.parametrize("bad", [0, -3])
def test_maxsize_value_error(impl, bad: int) -> None:
    with pytest.raises(ValueError):
        impl.AsyncRingQueue(bad)


@pytest.mark.parametrize("bad", [None, 2.0, "2", True])
def test_maxsize_type_error(impl, bad: object) -> None:
    with pytest.raises(TypeError):
        impl.AsyncRingQueue(bad)


def test_nowait_without_loop(impl) -> None:
    q = impl.AsyncRingQueue(1)
    q.put_nowait("x")  # no loop bound, no waiters: plain ring operation
    assert q.get_nowait() == "x"


async def test_getters_woken_fifo(impl) -> None:
    q = impl.AsyncRingQueue(10)
    results: list[tuple[int, int]] = []

    async def getter(i: int) -> None:
        results.append((i, await q.get()))

    tasks = [asyncio.create_task(getter(i)) for i in range(6)]
    await _settle()
    for v in range(6):
        q.put_nowait(v * 10)
    await asyncio.gather(*tasks)
    assert results == [(i, i * 10) for i in range(6)]


async def test_putters_woken_fifo(impl) -> None:
    q = impl.AsyncRingQueue(2)
    q.put_nowait("a")
    q.put_nowait("b")
    tasks = [asyncio.create_task(q.put(f"p{i}")) for i in range(4)]
    await _settle()
    assert not any(t.done() for t in tasks)
    got = [await q.get() for _ in range(6)]
    await asyncio.gather(*tasks)
    assert got == ["a", "b", "p0", "p1", "p2", "p3"]
    assert q.empty()


async def test_cancelled_woken_getter_passes_item_on(impl) -> None:
    q = impl.AsyncRingQueue(4)
    g1 = asyncio.create_task(q.get())
    g2 = asyncio.create_task(q.get())
    await _settle()
    q.put_nowait("item")  # wakes g1 ...
    g1.cancel()  # ... which is cancelled before it runs
    assert await asyncio.wait_for(g2, 5) == "item"
    assert g1.cancelled()


async def test_cancelled_getter_loses_nothing_when_alone(impl) -> None:
    q = impl.AsyncRingQueue(4)
    g = asyncio.create_task(q.get())
    await _settle()
    q.put_nowait("item")
    g.cancel()
    await asyncio.gather(g, return_exceptions=True)
    if g.cancelled():
        assert q.get_nowait() == "item"
    else:  # it ran before the cancellation landed
        assert g.result() == "item" and q.empty()


async def test_cancellation_storm_loses_no_item(impl) -> None:
    rnd = random.Random(1234)
    q = impl.AsyncRingQueue(8)
    received: list[int] = []

    async def getter() -> None:
        received.append(await q.get())

    tasks: list[asyncio.Task[None]] = []
    put = 0
    for _ in range(300):
        op = rnd.random()
        if op < 0.4:
            tasks.append(asyncio.create_task(getter()))
        elif op < 0.7 and not q.full():
            q.put_nowait(put)
            put += 1
        elif tasks:
            rnd.choice(tasks).cancel()
        if rnd.random() < 0.5:
            await asyncio.sleep(0)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    rest = []
    while not q.empty():
        rest.append(q.get_nowait())
    assert sorted(received + rest) == list(range(put))
    # FIFO overall: what the getters took precedes what is left
    assert received + rest == sorted(received) + sorted(rest)
    assert not q._getters


@pytest.mark.skipif(_timeout is None, reason="asyncio.timeout needs Python 3.11")
async def test_timeout_pattern(impl) -> None:
    q = impl.AsyncRingQueue(2)
    with pytest.raises(TimeoutError):
        async with _timeout(0.01):
            await q.get()
    assert not q._getters  # the timed-out waiter left the line
    q.put_nowait(1)
    async with _timeout(5):
        assert await q.get() == 1
    # deadline on a full queue
    q.put_nowait(1)
    q.put_nowait(2)
    with pytest.raises(TimeoutError):
        async with _timeout(0.01):
            await q.put(3)
    assert not q._putters and q.qsize() == 2
    assert [q.get_nowait(), q.get_nowait()] == [1, 2]


async def test_wait_for_timeout_pattern(impl) -> None:
    q = impl.AsyncRingQueue(2)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(q.get(), 0.01)
    q.put_nowait("late")
    assert await asyncio.wait_for(q.get(), 5) == "late"


async def test_timeout_racing_put_loses_nothing(impl) -> None:
    q = impl.AsyncRingQueue(4)
    loop = asyncio.get_running_loop()
    got = []
    for i in range(50):
        task = asyncio.create_task(asyncio.wait_for(q.get(), 0.001))
        await asyncio.sleep(0)
        loop.call_later(0.001, q.put_nowait, i)
        try:
            got.append(await task)
        except asyncio.TimeoutError:
            pass
        await asyncio.sleep(0.003)
        while not q.empty():
            got.append(q.get_nowait())
    assert got == list(range(50))


async def test_put_nowait_from_thread_wakes_loop(impl) -> None:
    q = impl.AsyncRingQueue(4)
    getter = asyncio.create_task(q.get())
    await _settle()
    t = threading.Thread(target=q.put_nowait, args=("from-thread",))
    t.start()
    assert await asyncio.wait_for(getter, 5) == "from-thread"
    t.join(5)


async def test_thread_producer_stream(impl) -> None:
    q = impl.AsyncRingQueue(16)
    n = 5000
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            deadline = time.monotonic() + 30
            for i in range(n):
                while True:
                    try:
                        q.put_nowait(i)
                        break
                    except QueueFull:
                        if time.monotonic() > deadline:
                            raise TimeoutError("consumer stalled") from None
                        time.sleep(0.0001)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=produce)
    t.start()
    got = []
    async with asyncio.timeout(30) if _timeout else _null():
        for _ in range(n):
            got.append(await q.get())
    t.join(30)
    assert not t.is_alive() and not errors
    assert got == list(range(n))


class _null:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


async def test_get_nowait_from_thread_wakes_putter(impl) -> None:
    q = impl.AsyncRingQueue(1)
    q.put_nowait("first")
    putter = asyncio.create_task(q.put("second"))
    await _settle()
    assert not putter.done()
    t = threading.Thread(target=q.get_nowait)
    t.start()
    await asyncio.wait_for(putter, 5)
    t.join(5)
    assert q.get_nowait() == "second"


async def test_woken_getter_robbed_waits_again_at_front(impl) -> None:
    q = impl.AsyncRingQueue(4)
    order: list[str] = []

    async def getter(name: str) -> None:
        await q.get()
        order.append(name)

    a = asyncio.create_task(getter("a"))
    await _settle()
    b = asyncio.create_task(getter("b"))
    await _settle()
    q.put_nowait(1)  # wakes a
    assert q.get_nowait() == 1  # but a barging get_nowait takes the item
    await _settle()
    assert not a.done() and not b.done()
    q.put_nowait(2)
    await _settle()
    assert order == ["a"]  # a kept its place ahead of b
    q.put_nowait(3)
    await asyncio.wait_for(asyncio.gather(a, b), 5)
    assert order == ["a", "b"]


async def test_cancelled_put_stores_nothing(impl) -> None:
    q = impl.AsyncRingQueue(1)
    q.put_nowait("x")
    p = asyncio.create_task(q.put("never"))
    await _settle()
    p.cancel()
    await asyncio.gather(p, return_exceptions=True)
    assert p.cancelled()
    assert q.get_nowait() == "x"
    assert q.empty() and not q._putters


async def test_cancelled_woken_putter_passes_slot_on(impl) -> None:
    q = impl.AsyncRingQueue(1)
    q.put_nowait("x")
    p1 = asyncio.create_task(q.put("p1"))
    p2 = asyncio.create_task(q.put("p2"))
    await _settle()
    assert q.get_nowait() == "x"  # wakes p1
    p1.cancel()
    await asyncio.wait_for(p2, 5)
    assert q.get_nowait() == "p2"


def test_bound_to_one_loop(impl) -> None:
    q = impl.AsyncRingQueue(1)

    async def wait_get() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(q.get(), 0.01)

    asyncio.run(wait_get())

    async def other_loop() -> None:
        with pytest.raises(RuntimeError, match="different event loop"):
            await q.get()

    asyncio.run(other_loop())


def test_put_nowait_after_loop_closed(impl) -> None:
    q = impl.AsyncRingQueue(2)

    async def leave_waiter() -> None:
        task = asyncio.create_task(q.get())
        await asyncio.sleep(0)
        q._getters.append(asyncio.get_running_loop().create_future())  # a stale waiter
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(leave_waiter())
    t = threading.Thread(target=q.put_nowait, args=(1,))
    t.start()
    t.join(5)
    assert q.get_nowait() == 1


async def test_many_getters_many_thread_producers(impl) -> None:
    q = impl.AsyncRingQueue(32)
    n_threads, per = 4, 500
    got: list[tuple[int, int]] = []

    def produce(tid: int) -> None:
        deadline = time.monotonic() + 30
        for i in range(per):
            while True:
                try:
                    q.put_nowait((tid, i))
                    break
                except QueueFull:
                    if time.monotonic() > deadline:
                        return
                    time.sleep(0.0001)

    async def consume() -> None:
        while True:
            item = await q.get()
            if item is None:
                return
            got.append(item)

    consumers = [asyncio.create_task(consume()) for _ in range(3)]
    threads = [threading.Thread(target=produce, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    loop = asyncio.get_running_loop()
    for t in threads:
        await loop.run_in_executor(None, t.join, 30)
    for _ in consumers:
        await q.put(None)
    await asyncio.wait_for(asyncio.gather(*consumers), 30)
    assert sorted(got) == sorted((t, i) for t in range(n_threads) for i in range(per))
    for tid in range(n_threads):
        mine = [i for t, i in got if t == tid]
        assert mine == sorted(mine)
