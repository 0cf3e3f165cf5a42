"""The emulator's scheduler: loads, slots, eviction, keep-alive, memory.

Owns: the runners of one host process (one per model: loaded or loading, slots in use,
waiters, keep-alive timer, the prompt-cache slots of ``_promptcache``, the memory it
holds), the per-model counters of :meth:`FakeOllama.stats`, and the rules below for who
waits, who is evicted and who is refused. It must not know about requests, HTTP, fault
injection or the model table: the engine (``_engine``) calls it with a
:class:`~._models.ModelInfo` and turns :class:`QueueFullError` into the 503.

Semantics (as Ollama's ``server/sched.go`` + per-runner semaphore, simplified; function
names below are from ``server/sched.go``):

* A model answers only once loaded. Loading takes ``load_delay`` seconds; every request
  that arrives for a model that is loading waits for that one load (shared cold load).
* At most ``num_parallel`` requests per loaded model hold a slot; the rest wait FIFO.
  Embedding-only models get one slot (Ollama forces parallel 1 for them, ``load()``).
* One load at a time: a cold model waits while another model loads (Ollama's
  ``processPending`` takes one pending request at a time, and ``load()`` returns only
  after ``llama.Load`` has brought the runner up).
* Residency: a cold model loads when fewer than ``max_loaded_models`` models are resident
  (loaded or loading) *and* its memory (``ModelInfo.size``) fits in ``vram`` beside them
  (``vram=0``: no memory limit). Otherwise it evicts the least recently used *idle* model
  (no request in flight or waiting), one at a time, until both hold; when no resident
  model is idle it waits, in arrival order, until one becomes idle. Ollama's
  ``processPending`` does the same: it asks ``findRunnerToUnload`` for a victim, which
  prefers a runner with no references, and blocks on ``unloadedCh`` until that runner has
  finished its requests and unloaded; a busy model is never unloaded under a request.
  Two simplifications: the victim is the least recently used idle model (Ollama sorts by
  keep-alive duration, then model path, and takes the first idle one), and a cold model
  waits for a model to become idle instead of marking a busy one to unload when it drains.
* A model larger than all of ``vram`` evicts every other (idle) model and then loads
  alone, partly "on the CPU": ``/api/ps`` reports ``size_vram = vram < size``. Ollama
  loads the first model of an empty server with ``requireFull`` false (partial offload,
  ``processPending`` with ``loadedCount == 0``); the emulator does not slow it down.
* ``max_queue`` bounds the number of *waiting* requests (for a load, an eviction or a
  slot) over the whole host; one more is refused at once with the 503 busy error.
  (Real Ollama only bounds the scheduler channel; counting every waiter is simpler to
  reason about in tests and gives the same 503 under bursts.)
* keep_alive: a request's value is remembered on its runner (the last one wins); the idle
  timer starts when the last in-flight request finishes; 0 unloads at once; ``inf`` never
  expires. The remembered value dies with the runner: after any unload (expiry,
  ``keep_alive: 0``, eviction, deletion) the next load starts from the server default
  unless its request carries a value (``load()`` in ``server/sched.go``: ``sessionDuration``
  is ``envconfig.KeepAlive()`` unless the request sets one).
* Counters (:class:`ModelStats`): ``loads`` counts every load that starts (once, even if
  it is cancelled); ``evictions`` counts unloads made to give room to another model (not
  keep-alive expiry, not an explicit unload or delete).

Time is the running event loop's clock (:meth:`Scheduler.now`), never ``time.monotonic``,
so the same code runs under :class:`~._virtualtime.VirtualTimeLoop` with no sockets. One
scheduler serves one event loop (a process start makes a new one).

Bookkeeping never awaits: every state change ends in :meth:`Scheduler._pump`, which
grants slots and starts loads synchronously. A waiter is a future; a cancelled waiter
(client gone) leaves its queue, or gives its slot back if it was granted in the same
tick.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from typing import Any

from ._goformat import FOREVER
from ._models import ModelInfo
from ._promptcache import Slot, new_slots

__all__ = ["QueueFullError", "Runner", "Scheduler"]


class QueueFullError(Exception):
    pass


class Runner:
    """State of one model on the emulated host."""

    __slots__ = (
        "info",
        "loaded",
        "load_task",
        "in_flight",
        "waiters",
        "keep_alive",
        "timer",
        "idle_since",
        "last_used",
        "loaded_at",
        "expires_override",
        "want_load",
        "parallel",
        "timer_when",
        "size_vram",
        "slots",
    )

    def __init__(self, info: ModelInfo, keep_alive: float) -> None:
        self.info = info
        self.loaded = False
        self.load_task: asyncio.Task[None] | None = None
        self.in_flight = 0
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.keep_alive = keep_alive
        self.timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0  # loop time
        self.last_used = 0.0  # loop time, for LRU
        self.loaded_at = 0.0
        self.want_load = False  # in the scheduler's load queue
        self.parallel = 1  # slots (set by the scheduler)
        self.timer_when = 0.0  # loop time the idle timer fires at
        self.size_vram = 0  # bytes on the "GPU" while resident (/api/ps size_vram)
        self.slots: list[Slot] = []  # prompt-cache slots while loaded (dropped at unload)

    @property
    def resident(self) -> bool:
        return self.loaded or self.load_task is not None

    @property
    def idle(self) -> bool:
        return self.loaded and self.in_flight == 0 and not self.waiters


class ModelStats:
    __slots__ = ("served", "rejected_503", "loads", "failed", "evictions")

    def __init__(self) -> None:
        self.served = 0
        self.rejected_503 = 0
        self.loads = 0  # loads started (a cancelled load counts once)
        self.failed = 0
        self.evictions = 0  # unloaded to make room for another model


class Scheduler:
    def __init__(
        self,
        *,
        num_parallel: int,
        max_loaded_models: int,
        max_queue: int,
        default_keep_alive: float,
        load_delay_fn: Any,
        vram: int = 0,
    ) -> None:
        if num_parallel < 1:
            raise ValueError("num_parallel must be >= 1")
        if max_loaded_models < 1:
            raise ValueError("max_loaded_models must be >= 1")
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        if vram < 0:
            raise ValueError("vram must be >= 0")
        self.num_parallel = num_parallel
        self.max_loaded_models = max_loaded_models
        self.max_queue = max_queue
        self.default_keep_alive = default_keep_alive
        self.vram = int(vram)  # bytes for resident models; 0 = no memory limit
        self._load_delay_fn = load_delay_fn  # () -> seconds (read when a load starts)
        self.runners: dict[str, Runner] = {}
        self.stats: dict[str, ModelStats] = {}
        self.queued = 0
        self._load_queue: deque[Runner] = deque()
        self._closed = False
        self._time: Any = None  # the running loop's time(), bound at first use

    # ------------------------------------------------------------------ helpers

    def now(self) -> float:
        """Now, on the running event loop's clock (virtual under a virtual-time loop)."""
        t = self._time
        if t is None:
            t = self._time = asyncio.get_running_loop().time
        return t()

    def runner(self, info: ModelInfo) -> Runner:
        r = self.runners.get(info.key)
        if r is None:
            r = self.runners[info.key] = Runner(info, self.default_keep_alive)
            # as in Ollama, embedding-only models run with one slot
            r.parallel = 1 if "completion" not in info.capabilities else self.num_parallel
        else:
            r.info = info
        return r

    def stat(self, key: str) -> ModelStats:
        s = self.stats.get(key)
        if s is None:
            s = self.stats[key] = ModelStats()
        return s

    def resident_count(self) -> int:
        return sum(1 for r in self.runners.values() if r.resident)

    def loaded_runners(self) -> list[Runner]:
        return [r for r in self.runners.values() if r.loaded]

    def resident_bytes(self, exclude: Runner | None = None) -> int:
        """Memory held by the resident models (loaded or loading), ``exclude`` left out."""
        return sum(r.info.size for r in self.runners.values() if r.resident and r is not exclude)

    def preload(self, info: ModelInfo) -> None:
        r = self.runner(info)
        if not r.loaded:
            self.stat(info.key).loads += 1
            r.size_vram = self._vram_share(r)
            self._loaded(r)
            self._start_idle(r)

    # ------------------------------------------------------------------ acquire / release

    async def acquire(self, info: ModelInfo, keep_alive: float | None) -> tuple[Runner, float]:
        """Wait for a slot on a loaded runner; returns (runner, seconds spent waiting for load)."""
        r = self.runner(info)
        if keep_alive is not None:
            r.keep_alive = keep_alive
        t0 = self.now()
        if r.loaded and r.in_flight < r.parallel and not r.waiters:
            self._take(r)
            return r, 0.0
        if self.queued >= self.max_queue:
            self.stat(info.key).rejected_503 += 1
            raise QueueFullError()
        was_loaded = r.loaded
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        r.waiters.append(fut)
        self.queued += 1
        if not r.resident and not r.want_load:
            r.want_load = True
            self._load_queue.append(r)
        self._pump()
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # slot was granted but we are going away: give it back
                self.release(r)
            else:
                try:
                    r.waiters.remove(fut)
                    self.queued -= 1
                except ValueError:
                    pass
                if not r.waiters and r.want_load:
                    r.want_load = False
                    try:
                        self._load_queue.remove(r)
                    except ValueError:
                        pass
                self._pump()
            raise
        load_wait = 0.0 if was_loaded else (r.loaded_at - t0 if r.loaded_at > t0 else 0.0)
        return r, load_wait

    def _take(self, r: Runner) -> None:
        # The idle timer is left running: when it fires it re-checks (see _expire). That
        # saves a cancel + reschedule per request on a busy model.
        r.in_flight += 1

    def release(self, r: Runner) -> None:
        if self._closed:
            return  # the host was killed/stopped: close() already zeroed everything
        r.in_flight -= 1
        r.last_used = self.now()
        if r.in_flight == 0 and not r.waiters and r.loaded:
            if r.keep_alive == 0:
                self.unload(r)
            else:
                self._start_idle(r)
        self._pump()

    def _start_idle(self, r: Runner) -> None:
        r.idle_since = self.now()
        if r.keep_alive == 0:
            self.unload(r)
            return
        if math.isinf(r.keep_alive):
            if r.timer is not None:
                r.timer.cancel()
                r.timer = None
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + r.keep_alive
        if r.timer is not None:
            if r.timer_when <= deadline + 1e-3:
                return  # fires no later than needed; _expire re-arms for the rest
            r.timer.cancel()
        r.timer_when = deadline
        r.timer = loop.call_at(deadline, self._expire, r)

    def _expire(self, r: Runner) -> None:
        r.timer = None
        if not r.idle:
            return  # busy again: release() starts a new idle period
        if math.isinf(r.keep_alive):
            return
        remaining = r.idle_since + r.keep_alive - self.now()
        if remaining > 1e-3:
            loop = asyncio.get_running_loop()
            r.timer_when = loop.time() + remaining
            r.timer = loop.call_at(r.timer_when, self._expire, r)
            return
        self.unload(r)
        self._pump()

    def unload(self, r: Runner) -> None:
        """The runner's process ends: its memory, its prompt caches and its remembered
        keep_alive go with it (a later load starts from the default, ``load()``)."""
        if r.timer is not None:
            r.timer.cancel()
            r.timer = None
        if r.load_task is not None:
            r.load_task.cancel()
            r.load_task = None
        r.loaded = False
        r.keep_alive = self.default_keep_alive
        r.slots = []
        r.size_vram = 0

    def expire(self, info: ModelInfo) -> None:
        """Unload ``info`` now, or as soon as its requests finish (``keep_alive: 0`` on an
        empty prompt, or a delete): Ollama's ``expireRunner``, which acts on a loaded runner
        only; a model that is not resident keeps nothing of it."""
        r = self.runners.get(info.key)
        if r is None or not r.resident:
            return
        r.keep_alive = 0
        if r.idle or (r.load_task is not None and not r.waiters):
            self.unload(r)
            self._pump()

    # ------------------------------------------------------------------ the pump

    def _pump(self) -> None:
        if self._closed:
            return
        # 1. grant slots on loaded runners
        for r in self.runners.values():
            if r.loaded:
                while r.waiters and r.in_flight < r.parallel:
                    fut = r.waiters.popleft()
                    self.queued -= 1
                    if fut.done():
                        continue
                    self._take(r)
                    fut.set_result(None)
        # 2. start the next load in order, evicting idle LRU models until it has room; one
        #    load at a time (Ollama's processPending handles one pending request at a time,
        #    and its load() waits in llama.Load until the runner is up: server/sched.go)
        while self._load_queue:
            r = self._load_queue[0]
            if r.resident or not r.waiters:
                self._load_queue.popleft()
                r.want_load = False
                continue
            if any(x.load_task is not None for x in self.runners.values()):
                break  # another model is loading: the rest wait their turn
            if not self._make_room(r):
                break  # wait (in order) until a resident model becomes idle
            self._load_queue.popleft()
            r.want_load = False
            self._start_load(r)

    def _has_room(self, r: Runner) -> bool:
        if self.resident_count() >= self.max_loaded_models:
            return False
        if self.vram <= 0:
            return True
        used = self.resident_bytes(exclude=r)
        # a model bigger than all of vram loads once it is alone (partly on the CPU)
        return used + r.info.size <= self.vram or used == 0

    def _make_room(self, r: Runner) -> bool:
        """Evict idle models, least recently used first, until ``r`` may load; False when
        what is left in the way is busy (in flight, waited for, or still loading)."""
        while not self._has_room(r):
            idle = [x for x in self.runners.values() if x.idle]
            if not idle:
                return False
            victim = min(idle, key=lambda x: x.last_used)
            self.stat(victim.info.key).evictions += 1
            self.unload(victim)
        return True

    def _vram_share(self, r: Runner) -> int:
        """Bytes of ``r`` on the "GPU": all of it, or what a ``vram`` smaller than the model holds."""
        size = r.info.size
        return size if self.vram <= 0 else min(size, self.vram)

    def _loaded(self, r: Runner) -> None:
        r.loaded = True
        r.loaded_at = self.now()
        r.last_used = r.loaded_at
        r.slots = new_slots(r.parallel)  # empty prompt caches, one per parallel slot

    def _start_load(self, r: Runner) -> None:
        delay = float(self._load_delay_fn())
        self.stat(r.info.key).loads += 1
        r.size_vram = self._vram_share(r)
        r.load_task = asyncio.get_running_loop().create_task(self._load(r, delay))

    async def _load(self, r: Runner, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        r.load_task = None
        self._loaded(r)
        if not r.waiters:
            self._start_idle(r)
        self._pump()

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Forget everything (process death): cancel loads, timers and waiters."""
        self._closed = True
        for r in self.runners.values():
            if r.timer is not None:
                r.timer.cancel()
                r.timer = None
            if r.load_task is not None:
                r.load_task.cancel()
                r.load_task = None
            r.loaded = False
            r.slots = []
            while r.waiters:
                fut = r.waiters.popleft()
                if not fut.done():
                    fut.cancel()
            r.in_flight = 0
        self.queued = 0
        self._load_queue.clear()

    def expires_at_ns(self, r: Runner) -> int:
        """When the idle timer will unload ``r`` (as Ollama's /api/ps reports it)."""
        now_wall = time.time_ns()
        if math.isinf(r.keep_alive) or r.keep_alive == FOREVER:
            return now_wall + (292 * 365 * 86400 * 1_000_000_000)
        if r.in_flight or r.waiters:
            return now_wall + int(r.keep_alive * 1e9)
        remaining = r.idle_since + r.keep_alive - self.now()
        return now_wall + int(max(0.0, remaining) * 1e9)
