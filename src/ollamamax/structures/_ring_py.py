"""Pure-Python RingQueue and AsyncRingQueue: the executable specification.

``RingQueue(capacity)`` is a bounded FIFO with the same API and semantics as the
native ``ollamamax.structures._ring_c.RingQueue``:

* ``try_put(item) -> bool`` / ``try_get(default=None)`` never raise for full/empty;
  ``put_nowait`` raises :class:`~ollamamax.QueueFull`, ``get_nowait`` raises
  :class:`~ollamamax.QueueEmpty`.
* ``capacity`` is exactly what was asked for and ``full()``/``try_put`` honour it
  (the native ring rounds its slot array up to a power of two internally and keeps
  a separate occupancy bound).
* ``put_many(items) -> int`` stores items in order until the queue is full.  For a
  ``list`` or ``tuple`` it stores the first ``n`` and returns ``n``: ``items[n:]``
  did not fit and were not touched.  Any other iterable is pulled one item at a
  time, only while the queue has room, so nothing is taken from it that is not
  stored -- unless another producer fills the last slot between the room check and
  the store: then :class:`QueueFull` is raised with ``.item`` (the pulled item, not
  stored) and ``.count`` (how many were stored before it).
* ``get_many(max_items) -> list`` removes up to ``max_items`` oldest items.
* ``get(timeout=None)`` / ``put(item, timeout=None)`` block while the queue is
  empty / full (the GIL is released while waiting); when ``timeout`` seconds pass
  they raise :class:`QueueEmpty` / :class:`QueueFull`.  ``timeout=None`` waits
  without limit, ``0`` does not wait; a negative or NaN timeout is a ValueError.
  ``get_many(max_items, timeout=0)`` and ``put_many(items, timeout=0)`` take the
  same ``timeout`` (default: never wait): ``get_many`` waits for at least one item
  (``[]`` when it expires); ``put_many`` waits for room whenever the queue is full
  and returns how many it stored before the timeout expired.  Non-blocking calls
  (``try_put``, ``get_nowait``, ...) wake blocked ones.
* ``len()``, ``empty()``, ``full()`` are snapshots when other threads are active.

Thread safety (this twin): it relies on single ``deque`` operations being atomic
in CPython (under the GIL, and under a per-object critical section in free-threaded
builds).  Capacity is enforced with slot tokens: a producer takes a token
(``tokens.pop()``) before it appends, a consumer returns one after ``popleft()``,
so at most ``capacity`` items are ever inside and the steady state takes no lock.
A ``threading.Lock`` only guards minting the first ``capacity`` tokens and the
"full" answer.  Blocking calls wait on two ``threading.Condition`` objects sharing
one ``RLock``; the fast paths only test a waiter count (announced under that lock
before the waiter re-checks the queue, so no wake-up is lost).  Between a producer's token and its append (or a consumer's popleft
and its token return) another thread may briefly see the queue fuller than
``len()`` says -- the same transient window as the native ring's claimed slots.

``AsyncRingQueue(maxsize)`` follows the :class:`asyncio.Queue` API on top of a
``RingQueue`` (``_ring_type``; the native namespace binds the native ring):

* waiters (``await get()`` on empty, ``await put()`` on full) are woken in FIFO
  order.  A wake-up is only a signal: the item stays in the ring until the woken
  coroutine takes it, so a cancelled ``get`` (``asyncio.timeout``, task
  cancellation) never loses an item; a woken waiter that is cancelled passes its
  wake-up on to the next waiter, and a woken waiter that finds the item already
  taken (by a ``get_nowait`` that barged in) waits again at the *front* of the line.
* ``put_nowait``/``get_nowait`` may be called from any thread.  When a waiter
  exists and the caller is not the loop's thread, one coalesced
  ``loop.call_soon_threadsafe`` wakes as many waiters as there are items (or free
  slots); with no waiter the cost is the ring operation plus one truthiness test.
* ``maxsize`` must be >= 1 (unlike asyncio.Queue, 0 does not mean unbounded).
  ``task_done``/``join`` are not provided.
"""

from __future__ import annotations

import asyncio
import threading
from asyncio.events import _get_running_loop
from collections import deque
from collections.abc import Iterable
from itertools import repeat
from math import inf
from time import monotonic
from typing import Any, Generic, TypeVar

from .exceptions import QueueEmpty, QueueFull

__all__ = ["AsyncRingQueue", "QueueEmpty", "QueueFull", "RingQueue"]

T = TypeVar("T")

_EMPTY: Any = object()  # sentinel: "nothing was taken"


def _check_int(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    n = value.__index__()  # type: ignore[attr-defined]
    if n < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {n}")
    return n


# Same limit as the native ring (OMX_RING_MAX_CAPACITY on 64-bit builds).
_MAX_CAPACITY = 1 << 60


def _deadline(timeout: float | None) -> float:
    """monotonic() + timeout; ``inf`` for None (validates like the native ring)."""
    if timeout is None:
        return inf
    if isinstance(timeout, (str, bytes)):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    t = float(timeout)
    if not t >= 0.0:  # also rejects NaN
        raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
    return monotonic() + t


class RingQueue(Generic[T]):
    """Bounded multi-producer/multi-consumer FIFO (pure-Python twin).

    Capacity is enforced with slot tokens: a producer must take a token before it
    appends, a consumer gives one back after it pops.  Tokens circulate through a
    deque (``pop``/``append`` are atomic), so the steady state takes no lock; a lock
    only guards minting the first ``capacity`` tokens (and the "full" answer).
    """

    __slots__ = (
        "_append",
        "_cap",
        "_d",
        "_getters",
        "_items",
        "_minted",
        "_lock",
        "_popleft",
        "_putters",
        "_room",
        "_tokens",
        "_tpop",
        "_tput",
        "__weakref__",
    )

    def __init__(self, capacity: int) -> None:
        cap = _check_int(capacity, "capacity", 1)
        if cap > _MAX_CAPACITY:
            raise ValueError(f"capacity too large: {cap}")
        self._cap = cap
        self._d: deque[T] = deque()
        self._append = self._d.append
        self._popleft = self._d.popleft
        self._tokens: deque[None] = deque()  # free slots already minted
        self._tpop = self._tokens.pop
        self._tput = self._tokens.append
        self._minted = 0  # tokens ever created (<= capacity), guarded by _lock
        self._lock = threading.Lock()
        # Blocking calls: waiter counts (changed only under the conditions' lock)
        # and the conditions they sleep on.  An RLock: a waiter that re-checks the
        # queue under the lock may itself wake the other side.
        wait_lock = threading.RLock()
        self._items = threading.Condition(wait_lock)  # getters wait for items
        self._room = threading.Condition(wait_lock)  # putters wait for room
        self._getters = 0
        self._putters = 0

    def _take_token(self) -> bool:
        try:
            self._tpop()
            return True
        except IndexError:
            with self._lock:
                if self._minted >= self._cap:
                    return False
                self._minted += 1
                return True

    @property
    def capacity(self) -> int:
        """The capacity given to the constructor."""
        return self._cap

    def __len__(self) -> int:
        return len(self._d)

    def empty(self) -> bool:
        """True if the queue holds no item (a snapshot under concurrency)."""
        return not self._d

    def full(self) -> bool:
        """True if the queue holds ``capacity`` items (a snapshot under concurrency)."""
        return len(self._d) >= self._cap

    def try_put(self, item: T) -> bool:
        """Append ``item``; return False (and keep nothing) if the queue is full."""
        try:
            self._tpop()
        except IndexError:
            if not self._take_token():
                return False
        self._append(item)
        if self._getters:
            self._wake(self._items)
        return True

    def try_get(self, default: Any = None) -> Any:
        """Remove and return the oldest item, or ``default`` if the queue is empty."""
        try:
            item = self._popleft()
        except IndexError:
            return default
        self._tput(None)
        if self._putters:
            self._wake(self._room)
        return item

    def put_nowait(self, item: T) -> None:
        """Append ``item``; raise :class:`QueueFull` if the queue is full."""
        if not self._take_token():
            raise QueueFull(f"RingQueue is full (capacity {self._cap})")
        self._append(item)
        if self._getters:
            self._wake(self._items)

    def get_nowait(self) -> T:
        """Remove and return the oldest item; raise :class:`QueueEmpty` if empty."""
        try:
            item = self._popleft()
        except IndexError:
            raise QueueEmpty("RingQueue is empty") from None
        self._tput(None)
        if self._putters:
            self._wake(self._room)
        return item

    # -- blocking ------------------------------------------------------------
    @staticmethod
    def _wake(cond: threading.Condition, n: int = 1) -> None:
        with cond:
            cond.notify(n)

    def _wait(self, for_items: bool, deadline: float) -> bool:
        """Sleep until woken (True: retry) or ``deadline`` (False: timed out)."""
        cond = self._items if for_items else self._room
        with cond:
            if for_items:
                self._getters += 1
            else:
                self._putters += 1
            try:
                # re-check after announcing: a producer (consumer) that acted
                # before the announcement is seen here, any later one wakes us
                if (len(self._d) > 0) if for_items else (len(self._d) < self._cap):
                    return True
                left = deadline - monotonic()
                if left <= 0.0:
                    return False
                return cond.wait(None if left == inf else left)
            finally:
                if for_items:
                    self._getters -= 1
                else:
                    self._putters -= 1

    def get(self, timeout: float | None = None) -> T:
        """Remove and return the oldest item, waiting while the queue is empty.

        Raises :class:`QueueEmpty` when ``timeout`` seconds pass (None: no limit).
        """
        deadline = _deadline(timeout)
        while True:
            item = self.try_get(_EMPTY)
            if item is not _EMPTY:
                return item
            if not self._wait(True, deadline):
                item = self.try_get(_EMPTY)
                if item is _EMPTY:
                    raise QueueEmpty("RingQueue.get timed out")
                return item

    def put(self, item: T, timeout: float | None = None) -> None:
        """Append ``item``, waiting while the queue is full.

        Raises :class:`QueueFull` when ``timeout`` seconds pass (item not stored).
        """
        deadline = _deadline(timeout)
        while True:
            if self.try_put(item):
                return
            if not self._wait(False, deadline):
                if self.try_put(item):
                    return
                raise QueueFull(f"RingQueue.put timed out (capacity {self._cap})")

    def put_many(self, items: Iterable[T], timeout: float | None = 0) -> int:
        """Append items in order until full; return how many were stored (see module doc).

        ``timeout``: seconds to wait for room whenever the queue is full (default
        ``0``: never wait; ``None``: no limit).
        """
        waits = timeout is None or timeout != 0
        deadline = _deadline(timeout) if waits else 0.0
        if type(items) is list or type(items) is tuple:
            n = len(items)
            k = self._put_run(items, 0, n)
            while waits and k < n:
                woken = self._wait(False, deadline)
                k += self._put_run(items, k, n)
                if not woken:
                    break
            return k
        count = 0
        it = iter(items)
        while True:
            while len(self._d) >= self._cap:
                if (not waits or not self._wait(False, deadline)) and len(self._d) >= self._cap:
                    return count
            try:
                item = next(it)
            except StopIteration:
                break
            while not self._take_token():
                if waits and self._wait(False, deadline):
                    continue
                exc = QueueFull(f"RingQueue became full while put_many held an item ({count} stored)")
                exc.item = item  # type: ignore[attr-defined]
                exc.count = count  # type: ignore[attr-defined]
                raise exc
            self._append(item)
            if self._getters:
                self._wake(self._items)
            count += 1
        return count

    def _put_run(self, items: list[T] | tuple[T, ...], start: int, n: int) -> int:
        """Store the longest run of items[start:n] that fits; return its length."""
        k = start
        take = self._take_token
        while k < n and take():
            k += 1
        if k > start:
            # one deque.extend: the run is contiguous, like the native batch push
            self._d.extend(items if (start == 0 and k == n) else items[start:k])
            if self._getters:
                self._wake(self._items, k - start)
        return k - start

    def get_many(self, max_items: int, timeout: float | None = 0) -> list[T]:
        """Remove and return up to ``max_items`` of the oldest items, in order.

        ``timeout``: seconds to wait for at least one item while the queue is
        empty (default ``0``: never wait; ``None``: no limit); ``[]`` when it expires.
        """
        n = _check_int(max_items, "max_items", 0)
        waits = timeout is None or timeout != 0
        deadline = _deadline(timeout) if waits else 0.0
        out: list[T] = []
        if n == 0:
            return out
        popleft = self._popleft
        woken = True
        while True:
            try:
                for _ in range(min(n, self._cap)):
                    out.append(popleft())
            except IndexError:
                pass
            if out:
                self._tokens.extend(repeat(None, len(out)))
                if self._putters:
                    self._wake(self._room, len(out))
                return out
            if not waits or not woken:
                return out
            woken = self._wait(True, deadline)

    def __repr__(self) -> str:
        return f"<RingQueue size={len(self._d)} capacity={self._cap}>"


class AsyncRingQueue(Generic[T]):
    """asyncio.Queue-like bounded FIFO on a RingQueue, fed from any thread (see module doc)."""

    _ring_type: Any = RingQueue

    __slots__ = (
        "_getters",
        "_loop",
        "_maxsize",
        "_putters",
        "_ring",
        "_try_get",
        "_try_put",
        "_wake_pending",
        "__weakref__",
    )

    def __init__(self, maxsize: int) -> None:
        self._ring = self._ring_type(_check_int(maxsize, "maxsize", 1))
        self._maxsize: int = self._ring.capacity
        self._try_put = self._ring.try_put
        self._try_get = self._ring.try_get
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_pending = False

    # -- state ---------------------------------------------------------------
    @property
    def maxsize(self) -> int:
        """Number of items allowed in the queue."""
        return self._maxsize

    def qsize(self) -> int:
        """Number of items in the queue (a snapshot under concurrency)."""
        return len(self._ring)

    def empty(self) -> bool:
        return self._ring.empty()

    def full(self) -> bool:
        return self._ring.full()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} maxsize={self._maxsize} qsize={len(self._ring)} "
            f"getters={len(self._getters)} putters={len(self._putters)}>"
        )

    # -- non-blocking, any thread -------------------------------------------
    def put_nowait(self, item: T) -> None:
        """Put ``item`` without blocking (any thread); raise QueueFull if full."""
        if not self._try_put(item):
            raise QueueFull(f"AsyncRingQueue is full (maxsize {self._maxsize})")
        if self._getters:
            self._notify(self._getters)

    def get_nowait(self) -> T:
        """Remove and return an item (any thread); raise QueueEmpty if empty."""
        item = self._try_get(_EMPTY)
        if item is _EMPTY:
            raise QueueEmpty("AsyncRingQueue is empty")
        if self._putters:
            self._notify(self._putters)
        return item

    # -- awaiting (loop thread) ----------------------------------------------
    async def put(self, item: T) -> None:
        """Put ``item``, waiting for a free slot if the queue is full."""
        if not self._try_put(item):
            await self._wait(self._putters, item)
        if self._getters:
            self._notify(self._getters)

    async def get(self) -> T:
        """Remove and return an item, waiting until one is available."""
        item = self._try_get(_EMPTY)
        if item is _EMPTY:
            item = await self._wait(self._getters, _EMPTY)
        if self._putters:
            self._notify(self._putters)
        return item

    async def _wait(self, waiters: deque[asyncio.Future[None]], item: Any) -> Any:
        """Wait in line on ``waiters`` until the ring operation succeeds.

        Getters call with ``item=_EMPTY`` and get the item; putters pass the item.
        """
        loop = self._bind_loop()
        getting = item is _EMPTY
        got: Any = _EMPTY
        front = False
        while True:
            fut: asyncio.Future[None] = loop.create_future()
            if front:
                waiters.appendleft(fut)
            else:
                waiters.append(fut)
            # Re-try after joining the line: a producer/consumer on another thread
            # may have acted between our failed attempt and the append above, and
            # seen no waiter to wake.
            if getting:
                got = self._try_get(_EMPTY)
                done = got is not _EMPTY
            else:
                done = self._try_put(item)
            if not done:
                try:
                    await fut
                except BaseException:
                    self._leave(waiters, fut)
                    raise
                if getting:
                    got = self._try_get(_EMPTY)
                    done = got is not _EMPTY
                else:
                    done = self._try_put(item)
                if not done:
                    front = True  # the slot/item was taken by someone who did not wait
                    continue
            else:
                self._leave(waiters, fut)
            return got if getting else None

    def _leave(self, waiters: deque[asyncio.Future[None]], fut: asyncio.Future[None]) -> None:
        """Remove ``fut`` from the line; if it had been woken, pass the wake-up on."""
        woken = fut.done() and not fut.cancelled()
        fut.cancel()
        try:
            waiters.remove(fut)
        except ValueError:
            pass
        if woken and waiters:
            self._wake(waiters, 1 if self._available(waiters) > 0 else 0)

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError(f"{self!r} is bound to a different event loop")
        return loop

    # -- wake-ups -------------------------------------------------------------
    def _notify(self, waiters: deque[asyncio.Future[None]]) -> None:
        loop = self._loop
        if loop is None:
            return
        if _get_running_loop() is loop:
            self._wake(waiters, 1)
        elif not self._wake_pending:
            self._wake_pending = True
            try:
                loop.call_soon_threadsafe(self._wake_from_thread)
            except RuntimeError:  # loop closed: nobody left to wake
                self._wake_pending = False

    def _wake_from_thread(self) -> None:
        # Clear the flag first: a thread that saw it set had already done its ring
        # operation, so the counts read below include it.
        self._wake_pending = False
        if self._getters:
            self._wake(self._getters, self._available(self._getters))
        if self._putters:
            self._wake(self._putters, self._available(self._putters))

    def _available(self, waiters: deque[asyncio.Future[None]]) -> int:
        """Items (for getters) or free slots (for putters) right now."""
        if waiters is self._getters:
            return len(self._ring)
        return self._maxsize - len(self._ring)

    @staticmethod
    def _wake(waiters: deque[asyncio.Future[None]], n: int) -> None:
        """Wake the first ``n`` live waiters, in FIFO order."""
        while n > 0 and waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                n -= 1
