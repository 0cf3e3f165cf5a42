"""asv benchmarks for RingQueue / AsyncRingQueue (native vs pure, and stdlib peers).

Conventions follow numpy's asv suite: ``params``/``param_names``, ``setup`` builds the
fixture, ``time_*`` methods time one unit of work.  The implementation is chosen
through ``ollamamax.structures.ring.IMPLEMENTATIONS`` so both are measured in the same run.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading

try:
    from ollamamax.structures import ring as _ring
except ImportError:
    try:  # commits before the structures/ package
        from ollamamax import _ring  # type: ignore[no-redef]
    except ImportError:  # a commit from before this structure: asv shows n/a, not failed
        _ring = None  # type: ignore[assignment]

# Fixed, not filtered by what is built: asv discovers the parameters once and indexes
# into them on every commit, so the list must not change with the commit or the build.
# A missing implementation is skipped in setup (_ns raises NotImplementedError).
IMPLS = ["c", "py"]
ITEM = object()


def _ns(impl: str):
    if _ring is None:
        raise NotImplementedError("ollamamax.structures.ring is not in this commit")  # asv skips
    ns = getattr(_ring, "IMPLEMENTATIONS", {}).get(impl)
    if ns is None:
        raise NotImplementedError(f"implementation {impl!r} not available")  # asv skips
    return ns


class RingPair:
    """One put + one get on a queue holding `fill` items."""

    params = [IMPLS, [0, 512]]
    param_names = ["impl", "fill"]

    def setup(self, impl: str, fill: int) -> None:
        self.q = _ns(impl).RingQueue(1024)
        self.q.put_many([ITEM] * fill)
        self.put, self.get = self.q.try_put, self.q.try_get

    def time_try_put_try_get(self, impl: str, fill: int) -> None:
        put, get = self.put, self.get
        for _ in range(1000):
            put(ITEM)
            get()

    def time_put_nowait_get_nowait(self, impl: str, fill: int) -> None:
        put, get = self.q.put_nowait, self.q.get_nowait
        for _ in range(1000):
            put(ITEM)
            get()


class RingBatch:
    """put_many + get_many of `batch` items."""

    params = [IMPLS, [16, 1000]]
    param_names = ["impl", "batch"]

    def setup(self, impl: str, batch: int) -> None:
        self.q = _ns(impl).RingQueue(1024)
        self.items = [ITEM] * batch

    def time_put_many_get_many(self, impl: str, batch: int) -> None:
        q, items, n = self.q, self.items, len(self.items)
        for _ in range(10):
            q.put_many(items)
            q.get_many(n)


class PeerPair:
    """Reference figures: stdlib containers doing the same put + get."""

    params = [["deque", "queue.Queue", "queue.SimpleQueue", "asyncio.Queue"]]
    param_names = ["peer"]

    def setup(self, peer: str) -> None:
        if peer == "deque":
            d = collections.deque()
            self.put, self.get = d.append, d.popleft
        elif peer == "queue.Queue":
            q = queue.Queue(1024)
            self.put, self.get = q.put, q.get
        elif peer == "queue.SimpleQueue":
            q = queue.SimpleQueue()
            self.put, self.get = q.put, q.get
        else:
            q = asyncio.Queue(1024)
            self.put, self.get = q.put_nowait, q.get_nowait

    def time_put_get(self, peer: str) -> None:
        put, get = self.put, self.get
        for _ in range(1000):
            put(ITEM)
            get()


class ThreadHandoff:
    """One producer thread, one consumer thread, `n` items."""

    params = [IMPLS, ["single", "batch"]]
    param_names = ["impl", "mode"]
    timeout = 120
    n = 100_000

    def setup(self, impl: str, mode: str) -> None:
        self.ns = _ns(impl)

    def time_thread_to_thread(self, impl: str, mode: str) -> None:
        import time

        q = self.ns.RingQueue(4096)
        n = self.n
        sleep = time.sleep
        chunk = [ITEM] * 256

        def producer() -> None:
            left = n
            while left:
                k = q.put_many(chunk[: min(256, left)]) if mode == "batch" else int(q.try_put(ITEM))
                if k:
                    left -= k
                else:
                    sleep(0)

        def consumer() -> None:
            left = n
            miss = object()
            while left:
                if mode == "batch":
                    k = len(q.get_many(256))
                else:
                    k = 0 if q.try_get(miss) is miss else 1
                if k:
                    left -= k
                else:
                    sleep(0)

        threads = [threading.Thread(target=consumer), threading.Thread(target=producer)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)

    def time_thread_to_asyncio(self, impl: str, mode: str) -> None:
        import time

        ns, n = self.ns, self.n

        async def main() -> None:
            q = ns.AsyncRingQueue(4096)

            def producer() -> None:
                for _ in range(n):
                    while True:
                        try:
                            q.put_nowait(ITEM)
                            break
                        except ns.QueueFull:
                            time.sleep(0)

            t = threading.Thread(target=producer)
            t.start()
            for _ in range(n):
                await q.get()
            t.join(60)

        asyncio.run(main())


class RingMemory:
    params = [IMPLS]
    param_names = ["impl"]

    def setup(self, impl: str) -> None:
        self.ns = _ns(impl)

    def peakmem_full_queue_100k(self, impl: str) -> None:
        q = self.ns.RingQueue(100_000)
        q.put_many([ITEM] * 100_000)

    def track_capacity_rounding(self, impl: str) -> int:
        return self.ns.RingQueue(1000).capacity

    track_capacity_rounding.unit = "items"  # type: ignore[attr-defined]
