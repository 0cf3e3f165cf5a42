"""The engine: one emulated host's model-level behaviour, with no HTTP in it.

Owns: the knobs of a host (pace, prompt evaluation rate, load delay, slots, queue, memory,
keep_alive, fault rates, seed, answer lengths), its model table (present models, pulls,
copies, creations, deletions, uploaded blobs), its use of the scheduler (``_scheduler``:
acquire, release, load or unload) and of a runner's prompt-cache slots
(``_promptcache``), the fault decisions (busy, ``fail_rate``, ``midstream_fail_rate``),
planning an answer (``_generation``), pacing tokens, the duration metrics of a reply and
the embedding vectors. A decision that ends a request raises :class:`HttpError` (status
and Ollama's text). It must not import aiohttp, read request bodies or build responses:
the route modules do that through :class:`~._httphost.HttpHost`, which extends this class.
Every duration is measured on the running event loop's clock (:meth:`Engine.now`), so a
virtual-time loop (``_virtualtime``) runs the engine with no real waiting.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..wire.ollama import BUSY_MESSAGE
from ._errors import FAIL_MSG, NO_VISION_MSG, HttpError
from ._generation import TOOL_CALL_MODES, Plan, plan_generation, seed_for
from ._goformat import go_dumps, parse_keep_alive
from ._models import ModelInfo, ModelName, make_model, parse_name
from ._promptcache import reply_tokens, take_slot
from ._scheduler import QueueFullError, Runner, Scheduler

__all__ = ["Engine"]


class Engine:
    """The model-level state and decisions of one emulated host (see :class:`~._server.FakeOllama`
    for what each knob means; the knobs are plain attributes, read when they are used).

    ``scheduler`` is the current :class:`~._scheduler.Scheduler` (a new one per process
    start, see :meth:`fresh_scheduler`).
    """

    def __init__(
        self,
        models: Sequence[str] = ("llama3.2",),
        *,
        tokens_per_sec: float = 50.0,
        load_delay: float = 2.0,
        num_parallel: int = 1,
        max_queue: int = 512,
        max_loaded_models: int = 1,
        keep_alive: str | float = "5m",
        fail_rate: float = 0.0,
        midstream_fail_rate: float = 0.0,
        seed: int | None = None,
        preload: Sequence[str] = (),
        capabilities: Mapping[str, Sequence[str]] | None = None,
        response_tokens: tuple[int, int] = (8, 24),
        pull_delay: float = 0.0,
        prompt_eval_tps: float = 0.0,
        vram: int = 0,
        tool_calls: str = "always",
    ) -> None:
        if isinstance(models, str):
            models = [m.strip() for m in models.split(",") if m.strip()]
        self.tokens_per_sec = float(tokens_per_sec)
        self.load_delay = float(load_delay)
        self.num_parallel = int(num_parallel)
        self.max_queue = int(max_queue)
        self.max_loaded_models = int(max_loaded_models)
        ka = parse_keep_alive(keep_alive)
        self.default_keep_alive: float = 300.0 if ka is None else ka
        self.fail_rate = float(fail_rate)
        self.fail_message = FAIL_MSG  # the 500's text (default: a runner crash, as Ollama words it)
        self.midstream_fail_rate = float(midstream_fail_rate)
        self.seed = seed
        self.response_tokens = (int(response_tokens[0]), int(response_tokens[1]))
        if self.response_tokens[0] < 0 or self.response_tokens[1] < self.response_tokens[0]:
            raise ValueError("response_tokens must be (lo, hi) with 0 <= lo <= hi")
        self.pull_delay = float(pull_delay)
        if prompt_eval_tps < 0:
            raise ValueError("prompt_eval_tps must be >= 0")
        self.prompt_eval_tps = float(prompt_eval_tps)  # 0: no prompt cache, the old timing
        self.vram = int(vram)
        if tool_calls not in TOOL_CALL_MODES:
            raise ValueError(f"tool_calls must be one of {', '.join(TOOL_CALL_MODES)}, not {tool_calls!r}")
        self.tool_calls = tool_calls  # when a model offered tools calls one (_generation.TOOL_CALL_MODES)
        self.capabilities = dict(capabilities) if capabilities else None
        self.busy = False
        self._rng = random.Random(seed)
        self.models: dict[str, ModelInfo] = {}
        for m in models:
            self.add_model(m)
        self._preload = tuple(preload)
        for m in self._preload:
            if self.lookup(m) is None:
                self.add_model(m)
        self._blobs: set[str] = set()
        self._emb_cache: dict[tuple[Any, ...], np.ndarray] = {}
        self._emb_json_cache: dict[tuple[Any, ...], str] = {}
        self.scheduler = self._new_scheduler()

    # ------------------------------------------------------------------ model table

    def add_model(self, name: str) -> ModelInfo:
        """Make ``name`` present on this host (as if pulled)."""
        mn = parse_name(name)
        if mn is None:
            raise ValueError(f"invalid model name {name!r}")
        info = make_model(mn, self.capabilities)
        self.models[mn.key] = info
        return info

    def lookup(self, name: str) -> ModelInfo | None:
        mn = parse_name(name)
        if mn is None:
            return None
        return self.models.get(mn.key)

    def _new_scheduler(self) -> Scheduler:
        return Scheduler(
            num_parallel=self.num_parallel,
            max_loaded_models=self.max_loaded_models,
            max_queue=self.max_queue,
            default_keep_alive=self.default_keep_alive,
            load_delay_fn=lambda: self.load_delay,
            vram=self.vram,
        )

    def now(self) -> float:
        """Now, on the running event loop's clock (the scheduler's)."""
        return self.scheduler.now()

    def fresh_scheduler(self) -> None:
        """A new process: a new scheduler (the counters carry over), the ``preload`` models loaded."""
        old = self.scheduler
        self.scheduler = self._new_scheduler()
        self.scheduler.stats = old.stats  # counters survive restarts; loaded state does not
        for m in self._preload:
            info = self.lookup(m)
            if info is not None:
                self.scheduler.preload(info)

    def model_stats(self) -> tuple[dict[str, Any], dict[str, int]]:
        """Per model and in total: requests ``in_flight`` and ``queued`` now; ``served``,
        ``rejected_503``, ``failed``; ``loads`` (every load that started, once, even if it
        was cancelled) and ``evictions`` (unloads to make room for another model; not
        keep-alive expiry, not an explicit unload or delete)."""
        sched = self.scheduler
        per: dict[str, Any] = {}
        tot = {"in_flight": 0, "queued": 0, "served": 0, "rejected_503": 0, "loads": 0, "evictions": 0, "failed": 0}
        for key in sorted(set(sched.stats) | set(sched.runners)):
            r = sched.runners.get(key)
            st = sched.stat(key)
            info = r.info if r is not None else self.models.get(key)
            name = info.display if info is not None else key
            row = {
                "in_flight": r.in_flight if r else 0,
                "queued": len(r.waiters) if r else 0,
                "served": st.served,
                "rejected_503": st.rejected_503,
                "loads": st.loads,
                "evictions": st.evictions,
                "failed": st.failed,
                "loaded": bool(r and r.loaded),
            }
            per[name] = row
            for k in tot:
                tot[k] += row[k]
        return per, tot

    def loaded_models(self) -> list[str]:
        return [r.info.display for r in self.scheduler.runners.values() if r.loaded]

    def mark_pulled(self, mn: ModelName) -> None:
        """A pull finished: the model is present (or its modification time is now)."""
        if mn.key not in self.models:
            self.models[mn.key] = make_model(mn, self.capabilities)
        else:
            self.models[mn.key].modified_ns = time.time_ns()

    def copy_model(self, info: ModelInfo, dmn: ModelName) -> None:
        """``/api/copy``: ``dmn`` becomes a model with the capabilities and parent of ``info``."""
        new = make_model(dmn, {dmn.key: info.capabilities})
        new.parent_model = info.parent_model
        self.models[dmn.key] = new

    def delete_model(self, mn: ModelName) -> None:
        """``/api/delete`` of a present model: gone from the table, unloaded once idle."""
        info = self.models.pop(mn.key)
        self.scheduler.expire(info)

    def create_model(self, mn: ModelName, caps: Sequence[str] | None, body: Mapping[str, Any]) -> None:
        """``/api/create``: the new model, with its source's capabilities and the request's ``system`` and ``from``."""
        info = make_model(mn, {mn.key: caps} if caps is not None else self.capabilities)
        if isinstance(body.get("system"), str):
            info.system = body["system"]
        if body.get("from"):
            info.parent_model = str(body["from"])
        self.models[mn.key] = info

    def has_blob(self, digest: str) -> bool:
        """Whether the host has this blob (uploaded, or a layer of a present model)."""
        return digest in self._blobs or any(d == digest for i in self.models.values() for d, _ in i.layers)

    def add_blob(self, digest: str) -> None:
        """``POST /api/blobs/<digest>``: the host has this blob from now on."""
        self._blobs.add(digest)

    # ------------------------------------------------------------------ inference

    def resolve(self, name: str, *, not_found: str) -> ModelInfo:
        """Find a local model or raise the right 404 (``not_found`` is a format with {name})."""
        mn = parse_name(name)
        if mn is None:
            if not name:
                raise HttpError(404, not_found.format(name=name))
            raise HttpError(400, "invalid model name")
        info = self.models.get(mn.key)
        if info is None:
            raise HttpError(404, not_found.format(name=name))
        return info

    def check_think(self, info: ModelInfo, model: str, think: bool | str | None) -> bool:
        """Whether the reply thinks; 400 if thinking was asked of a model without it."""
        if think is None:
            return info.has("thinking")
        if think is False:
            return False
        if not info.has("thinking"):
            raise HttpError(400, f'"{model}" does not support thinking')
        return True

    def pre_schedule_faults(self, info: ModelInfo) -> None:
        if self.busy:
            self.scheduler.stat(info.key).rejected_503 += 1
            raise HttpError(503, BUSY_MESSAGE)
        if self.fail_rate > 0 and self._rng.random() < self.fail_rate:
            self.scheduler.stat(info.key).failed += 1
            raise HttpError(500, self.fail_message)

    async def acquire(self, info: ModelInfo, keep_alive: float | None, plan: Plan | None = None) -> tuple[Runner, float]:
        """A slot on a loaded runner: (runner, seconds waited for the load). With a ``plan``
        that has prompt tokens (prompt cache on), the plan also takes the runner's cache
        slot with the longest prefix of its prompt (``plan.slot``, ``plan.cached``)."""
        try:
            runner, load_wait = await self.scheduler.acquire(info, keep_alive)
        except QueueFullError:
            raise HttpError(503, BUSY_MESSAGE) from None
        if plan is not None and plan.prompt_tokens is not None:
            got = take_slot(runner.slots, plan.prompt_tokens)
            if got is not None:
                plan.slot, plan.cached = got
        return runner, load_wait

    def release(self, runner: Runner, ok: bool, plan: Plan | None = None) -> None:
        """The request is over. A completed reply leaves its prompt and its tokens in its
        cache slot (a failed or abandoned one leaves what was evaluated before it stopped)."""
        if plan is not None and plan.slot is not None:
            slot, plan.slot = plan.slot, None
            if ok and plan.prompt_tokens is not None:
                slot.tokens = plan.prompt_tokens + reply_tokens(plan)
            slot.in_use = False
        if ok:
            self.scheduler.stat(runner.info.key).served += 1
        self.scheduler.release(runner)

    def midstream_fail_at(self, n_events: int, plan: Plan) -> int:
        """Index of the event after which an in-band error replaces the rest (-1: no failure)."""
        if self.midstream_fail_rate > 0 and self._rng.random() < self.midstream_fail_rate:
            plan.failed = True
            self.scheduler.stat(plan.model_key).failed += 1
            return self._rng.randint(1, max(1, n_events - 1)) if n_events > 1 else 0
        return -1

    async def load_or_unload(self, info: ModelInfo, keep_alive: float | None) -> str:
        """Empty prompt / messages: load the model (or unload it with keep_alive 0)."""
        if keep_alive == 0:
            self.scheduler.expire(info)
            return "unload"
        runner, _ = await self.acquire(info, keep_alive)
        self.scheduler.release(runner)
        return "load"

    async def pace(self, t_gen: float, upto: int) -> None:
        """Sleep until token number ``upto`` (1-based) is due at the current rate."""
        tps = self.tokens_per_sec
        if tps <= 0:
            return
        due = t_gen + upto / tps
        delay = due - self.now()
        if delay > 0:
            await asyncio.sleep(delay)

    def batch_end(self, t_gen: float, i: int, n: int) -> int:
        """How many events (from index i) are due now; at least one."""
        tps = self.tokens_per_sec
        if tps <= 0:
            return n
        due = int((self.now() - t_gen) * tps)
        return min(n, max(i + 1, due))

    def plan(
        self,
        info: ModelInfo,
        *,
        text: str,
        last_user: str | None,
        last_role: str | None,
        think: bool,
        fmt: Any,
        tools: Sequence[Any] | None,
        options: Mapping[str, Any] | None,
        num_predict: int | None = None,
        stop: Any = None,
        prompt_tokens: list[str] | None = None,
    ) -> Plan:
        """Plan the answer. ``prompt_tokens`` (given when the prompt cache is on, see
        ``_promptcache``) make the prompt's size its token count and let :meth:`acquire`
        find its cached prefix."""
        if options:
            np_ = options.get("num_predict")
            if isinstance(np_, int) and not isinstance(np_, bool) and num_predict is None:
                num_predict = np_
            if stop is None:
                stop = options.get("stop")
        if num_predict is not None and num_predict < 0:
            num_predict = None
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list):
            stop = None
        seed = self.seed
        if options and isinstance(options.get("seed"), int):
            seed = (seed or 0) ^ options["seed"]
        plan = plan_generation(
            seed=seed,
            model_key=info.key,
            text=text,
            last_user=last_user,
            last_role=last_role,
            think=think,
            fmt=fmt,
            tools=tools,
            num_predict=num_predict,
            stop=[s for s in stop if isinstance(s, str)] if stop else None,
            response_tokens=self.response_tokens,
            tool_calls_mode=self.tool_calls,
        )
        plan.model_key = info.key
        if prompt_tokens is not None:
            plan.prompt_tokens = prompt_tokens
            plan.prompt_eval_count = len(prompt_tokens)
        return plan

    def metrics(self, t0: float, load_wait: float, t_acq: float, plan: Plan, t_gen: float, t_end: float) -> dict[str, int]:
        """The duration/count fields, in Go order (nanoseconds).

        As Ollama's runners, ``prompt_eval_count`` is the whole prompt, cached tokens
        included (``NewSequence`` counts the inputs before ``LoadCacheSlot`` trims them;
        ollama/ollama#5371 made that the API's rule), while ``prompt_eval_duration`` is the
        time of the tokens actually evaluated. With the prompt cache on, the cached part
        is reported as ``prompt_eval_cached_count`` (Ollama 0.33+, ollama/ollama#17943).
        """
        load_ns = int(load_wait * 1e9) if load_wait > 0 else max(1000, int((t_acq - t0) * 1e9) // 4)
        pe_ns = self.prompt_eval_seconds(plan)
        ev_ns = max(1000, int((t_end - t_gen) * 1e9))
        total = max(int((t_end - t0) * 1e9), load_ns + int(pe_ns * 1e9) + ev_ns)
        out = {
            "total_duration": total,
            "load_duration": load_ns,
            "prompt_eval_count": plan.prompt_eval_count,
        }
        if plan.prompt_tokens is not None:
            out["prompt_eval_cached_count"] = plan.cached
        out["prompt_eval_duration"] = max(1000, int(pe_ns * 1e9))
        if plan.eval_count:
            out["eval_count"] = plan.eval_count
            out["eval_duration"] = ev_ns
        return out

    def prompt_eval_seconds(self, plan: Plan) -> float:
        """How long evaluating the plan's uncached prompt tokens takes: ``tokens /
        prompt_eval_tps`` with the prompt cache on; else (the old timing) 10x the
        generation rate, or 2 us a token unpaced."""
        count = plan.prompt_eval_count - plan.cached
        if self.prompt_eval_tps > 0:
            return count / self.prompt_eval_tps
        tps = self.tokens_per_sec
        if tps <= 0:
            return count * 2e-6
        return count / (tps * 10.0)

    async def first_token_wait(self, plan: Plan) -> float:
        """Prompt evaluation time (slept when paced or when the prompt cache is on); then the
        plan's cache slot holds the whole prompt. Returns the generation start."""
        if self.prompt_eval_tps > 0 or self.tokens_per_sec > 0:
            await asyncio.sleep(self.prompt_eval_seconds(plan))
        slot = plan.slot
        if slot is not None and plan.prompt_tokens is not None:
            slot.tokens = list(plan.prompt_tokens)
        return self.now()

    def resolve_chat(self, model: str, tools: Any) -> ModelInfo:
        """The model checks of a chat request (/api/chat and /v1/chat/completions), in order."""
        if not model.strip():
            raise HttpError(400, "model is required")
        info = self.resolve(model, not_found="model '{name}' not found")
        if not info.has("completion"):
            raise HttpError(400, f'"{model}" does not support chat')
        if tools and not info.has("tools"):
            raise HttpError(400, f"{info.name.full} does not support tools")
        return info

    async def refuse_images(self, info: ModelInfo, keep_alive: float | None) -> None:
        """Images for a model without a vision projector: as Ollama, the model loads, then
        its runner refuses with a 500 (``model/model.go``, ``ErrNoVisionModel``; every host
        gives the same answer: the request's fault, not the host's)."""
        runner, _ = await self.acquire(info, keep_alive)
        self.release(runner, ok=False)
        raise HttpError(500, NO_VISION_MSG)

    def reply_id(self, prefix: str) -> str:
        """A reply id such as ``chatcmpl-123`` (from the seeded random source the faults use)."""
        return f"{prefix}-{self._rng.randint(0, 999)}"

    # ------------------------------------------------------------------ embeddings

    def embed_vector(self, info: ModelInfo, text: str, dims: int | None = None, normalise: bool = True) -> np.ndarray:
        """Deterministic vector for (seed, model, text); cached (a bounded dict, FIFO)."""
        ck = (info.key, text, dims, normalise)
        hit = self._emb_cache.get(ck)
        if hit is not None:
            return hit
        v = self._make_vector(info, text, dims, normalise)
        if len(self._emb_cache) >= 4096:
            self._emb_cache.pop(next(iter(self._emb_cache)))
        self._emb_cache[ck] = v
        return v

    def embed_json(self, info: ModelInfo, text: str, dims: int | None = None) -> str:
        """The JSON array text of :meth:`embed_vector` (normalised), cached."""
        ck = (info.key, text, dims)
        hit = self._emb_json_cache.get(ck)
        if hit is None:
            hit = go_dumps(self.vector_json(self.embed_vector(info, text, dims)))
            if len(self._emb_json_cache) >= 4096:
                self._emb_json_cache.pop(next(iter(self._emb_json_cache)))
            self._emb_json_cache[ck] = hit
        return hit

    def _make_vector(self, info: ModelInfo, text: str, dims: int | None, normalise: bool) -> np.ndarray:
        dim = info.embedding_length
        rng = np.random.default_rng(seed_for(self.seed, info.key, text))
        v = rng.standard_normal(dim)
        if dims is not None and 0 < dims < dim:
            v = v[:dims]
        if normalise:
            v = v / (np.linalg.norm(v) or 1.0)
            return v.astype(np.float32)
        return v * 0.5

    @staticmethod
    def vector_json(v: np.ndarray) -> list[float]:
        """float32 values as short decimal numbers (about 8 significant digits)."""
        return np.round(v.astype(np.float64), 9).tolist()

    async def run_embedding(self, info: ModelInfo, keep_alive: float | None, inputs: list[str], dims: int | None, normalise: bool = True) -> tuple[list[np.ndarray], float, float]:
        self.pre_schedule_faults(info)
        t0 = self.now()
        runner, load_wait = await self.acquire(info, keep_alive)
        ok = False
        try:
            if self.tokens_per_sec > 0:
                words = sum(len(t.split()) + 1 for t in inputs)
                await asyncio.sleep(words / (self.tokens_per_sec * 50.0))
            vecs = [self.embed_vector(info, t, dims, normalise) for t in inputs]
            ok = True
            return vecs, load_wait, t0
        finally:
            self.release(runner, ok)

