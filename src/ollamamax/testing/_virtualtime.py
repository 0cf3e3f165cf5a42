"""An asyncio event loop on virtual time: sleeps and timers take no real time.

Owns: :class:`VirtualTimeLoop` and :func:`run_virtual`. It must not know anything of the
emulator or of Ollama: it is a plain event loop that the emulator's scheduler and engine
(which read time only from the running loop) and the fleet simulator run on.

How it works. An asyncio loop's ``_run_once`` runs what is ready, then asks its selector
to wait for I/O until the next timer is due (``select(timeout)``), then runs the timers
that are due by ``loop.time()``. Here ``time()`` returns a counter, and the selector's
``select(timeout)`` adds ``timeout`` to that counter and returns no events at once. So a
coroutine that sleeps 2 s resumes immediately, with ``loop.time()`` exactly 2 s later;
callbacks run in the order their (virtual) times dictate, as they would in real time on
an infinitely fast machine.

Limits:

* No real I/O. Sockets, pipes, subprocesses and anything that waits on a file descriptor
  never become ready (the selector reports nothing): no aiohttp, no FakeOllama server.
* No threads. ``run_in_executor``, ``to_thread`` and ``call_soon_threadsafe`` from another
  thread finish in real time, which the loop does not wait for: a coroutine awaiting one
  either sees the loop race ahead in virtual time or, with nothing else scheduled, fails.
* Nothing left to wait for is an error: when no callback is ready and no timer is set,
  a real loop would block forever; this one raises :class:`VirtualTimeDeadlock`.
* Time is a float of seconds (from 0.0 by default): sums of durations that are not exact
  binary fractions drift by the float's rounding, a nanosecond per about 10^6 seconds.
* CPU time spent in callbacks is not counted: virtual time only moves at ``select``.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["VirtualTimeDeadlock", "VirtualTimeLoop", "run_virtual"]

T = TypeVar("T")


class VirtualTimeDeadlock(RuntimeError):
    """The loop has nothing ready and no timer set: in real time it would block forever."""


class _VirtualSelector(selectors.SelectSelector):
    """Keeps registrations (the loop's self-pipe) but never waits: ``select`` moves the clock."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._vloop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise VirtualTimeDeadlock("virtual-time loop: nothing is ready and no timer is set (real I/O or threads?)")
        if timeout > 0:
            self._vloop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` is virtual: it jumps to the next timer instead of waiting.

    ``loop = VirtualTimeLoop(); loop.run_until_complete(main())`` (or :func:`run_virtual`);
    inside, ``asyncio.sleep``, ``call_later``/``call_at`` and ``wait_for`` timeouts all
    take no real time. ``start`` is the virtual time at creation. See the module's
    docstring for the limits (no real I/O, no threads).
    """

    def __init__(self, start: float = 0.0) -> None:
        self._virtual_now = float(start)
        super().__init__(selector=_VirtualSelector(self))
        self._clock_resolution = 1e-9  # timers due within a nanosecond of now run now

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Move the clock forward (the selector does it; tests may too, between steps)."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._virtual_now += seconds


def run_virtual(main: Coroutine[Any, Any, T], *, start: float = 0.0) -> T:
    """Run ``main`` to completion on a new :class:`VirtualTimeLoop` (then close it), as
    ``asyncio.run`` does on a real loop: the remaining tasks are cancelled first."""
    loop = VirtualTimeLoop(start)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
