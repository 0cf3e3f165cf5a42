"""Run a FakeOllama on a background thread's event loop (for synchronous clients).

Owns: :class:`ThreadedFakeOllama`, the thread and its event loop, and handing calls over
to that loop (:meth:`ThreadedFakeOllama.run`, :meth:`ThreadedFakeOllama.call`). It must
not emulate anything itself: every behaviour is the :class:`~._server.FakeOllama` it
starts, and it must not touch that object from the calling thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ._server import FakeOllama

__all__ = ["ThreadedFakeOllama"]

T = TypeVar("T")


class ThreadedFakeOllama:
    """``with ThreadedFakeOllama(models=[...], load_delay=0) as host: host.url``

    All keyword arguments go to :class:`FakeOllama`. ``host.emulator`` is the FakeOllama
    itself; change its attributes through :meth:`call` (it lives on another thread).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args
        self._kwargs = kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.emulator: FakeOllama | None = None

    def __enter__(self) -> ThreadedFakeOllama:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self.emulator is not None
        return self.emulator.url

    @property
    def port(self) -> int:
        assert self.emulator is not None
        return self.emulator.port

    def start(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            return
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        loop = asyncio.new_event_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)

            async def boot() -> None:
                self.emulator = FakeOllama(*self._args, **self._kwargs)
                await self.emulator.start()

            try:
                loop.run_until_complete(boot())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                ready.set_exception(exc)
                loop.close()
                return
            ready.set_result(None)
            try:
                loop.run_forever()
            finally:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-ollama", daemon=True)
        self._thread.start()
        try:
            ready.result(timeout)
        except BaseException:
            self._thread.join(timeout)
            self._thread = None
            raise

    def run(self, coro_fn: Callable[[FakeOllama], Awaitable[T]], timeout: float = 30.0) -> T:
        """Run ``await coro_fn(emulator)`` on the emulator's loop and return its result."""
        assert self._loop is not None and self.emulator is not None
        emu = self.emulator
        return asyncio.run_coroutine_threadsafe(_call(coro_fn, emu), self._loop).result(timeout)

    def call(self, fn: Callable[[FakeOllama], T], timeout: float = 30.0) -> T:
        """Run ``fn(emulator)`` on the emulator's loop (to change settings safely)."""

        async def wrapped(emu: FakeOllama) -> T:
            return fn(emu)

        return self.run(wrapped, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None or self._loop is None:
            return
        try:
            self.run(lambda emu: emu.stop(), timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            self._thread = None


async def _call(fn: Callable[[FakeOllama], Awaitable[T]], emu: FakeOllama) -> T:
    return await fn(emu)
