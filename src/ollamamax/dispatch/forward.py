"""Forwarding one inference request: attempts, retries, the first-byte rule, and whose
fault a failure was.

For a request with its candidates, :meth:`Forwarder.forward` asks placement for a host
(or a wait), takes the slot through admission, and sends the original bytes upstream.
A failure before the first byte is retried on another host with jittered backoff, within
``max_attempts`` and, after a timeout, a 5xx or a 503, the **retry budget** (such retries
in progress at most ``retry_budget_ratio`` of the requests in progress, at least
``retry_budget_min``: Envoy's retry budget, so an outage cannot multiply the load).  A
retry after a refused or broken connection is failover and is not budgeted: the host it
leaves did no work for it.  Once the first byte is on its way
to the client nothing is retried, and a failure becomes one in-band error line
(``upstream.streams``), so output is never duplicated.

**Whose fault** (what ``fleet.health`` is told):

* connection refused or reset, a timeout, an answer that is not HTTP: the host's;
* a 5xx whose text says the host's runner failed (Ollama's own wording for a crashed,
  out-of-memory or unloadable runner, ``llm/server.go``): the host's;
* any other 5xx is *unattributed* at first.  The request moves to another host: if that
  host answers the same status and text, the failure is the **request's** (e.g. images
  sent to a text-only model: every host says 500 "this model is missing data required
  for image input"), the answer goes to the client at once and no host is charged; if it
  succeeds, the first host is charged.  With no other host to ask, nobody is charged;
  the failure-rate detector still sees it;
* 503 busy is nobody's fault (another host is tried); the gateway's own exhaustion
  (descriptors, memory) is never a host's: the client gets 503 at once;
* an attempt that a host's ejection or failed probe abandons before its first byte
  (:meth:`Forwarder.abandon_waiting`) moves to another host at once, uncharged.

A stream's end releases its slot and is accounted (``_finish_stream``).  The response
headers are the host's end-to-end headers plus the ``X-Ollamamax-*`` ones.  This module
acts on decisions; it does not make them (placement does) and it does not build error
texts (``replies``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..fleet.health import CONNECT, HOST_5XX, RESET, TIMEOUT, Health
from ..fleet.hosts import HostState
from ..fleet.learning import Ewma
from ..fleet.residency import Residency, Resident
from ..fleet.snapshot import SnapshotStore
from ..placement.router import Router
from ..placement.strategies import RoutingKey
from ..structures.exceptions import QueueFull
from ..upstream.client import (
    UPSTREAM_ERRORS,
    RawResponse,
    TraceCtx,
    Upstream,
    describe_error,
)
from ..upstream.http1 import (
    BadResponse,
    ConnectFailed,
    Disconnected,
    HostGone,
    LocalResourceError,
)
from ..upstream.streams import PassThrough
from ..wire.errors import JSON_CONTENT_TYPE, NDJSON_CONTENT_TYPE, SSE_CONTENT_TYPE
from ..wire.response import (
    HEADER_ATTEMPTS,
    HEADER_CACHE,
    HEADER_COLD,
    HEADER_HOST,
    HEADER_QUEUE_MS,
    NOT_FORWARDED,
    DispatchResponse,
)
from ..wire.routes import Route
from . import replies
from .accounting import METRICS_BYTES, Accounting
from .admission import Admission, LoadFailed
from .cache import CachedResponse, ResponseCache
from .config import DispatcherConfig

__all__ = ["Forwarder", "Request"]

log = logging.getLogger("ollamamax.dispatch")

class Request:
    """Everything about one inference request the dispatcher needs across attempts."""

    __slots__ = (
        "route",
        "method",
        "path",
        "body",
        "headers",
        "query",
        "obj",
        "name",
        "model",
        "key",
        "cache_key",
        "cache_header",
        "cands",
        "panic",
        "t0",
    )

    def __init__(
        self, route: Route, method: str, path: str, body: bytes, headers: Mapping[str, str] | None, query: str,
        t0: float,
    ) -> None:
        self.route = route
        self.method = method
        self.path = path
        self.body = body
        self.headers = headers
        self.query = query
        self.obj: dict[str, Any] = {}
        self.name = ""  # the model as the client spelled it
        self.model = ""  # normalised
        self.key: RoutingKey | None = None
        self.cache_key: tuple[str, str, bytes] | None = None
        self.cache_header = False
        self.cands: list[HostState] = []
        self.panic = False  # cands include ejected hosts on purpose (see directory)
        self.t0 = t0  # arrival (the dispatcher's clock)


# failure kinds beyond fleet.health's host-side ones
BUSY = "busy"  # 503: the host is saturated; nobody's fault
MISSING = "missing"  # 404: the host no longer has the model
LOCAL = "local"  # the gateway ran out of descriptors or memory
MOVED = "moved"  # abandoned before the first byte because the host went down
UNATTRIBUTED = "unattributed"  # a 5xx that may be the request's fault
# Retries after these are failover, outside the retry budget: the failed host did no work
# for the request (refused, dropped, or taken out of rotation, or no longer has the model),
# so moving it adds no load to that host.  Retries after a timeout, a 5xx or a 503 cost
# the hosts work or feed an overload: those are budgeted.
_FAILOVER = frozenset({CONNECT, RESET, MOVED, MISSING})

# Ollama's wording for a failed runner (llm/server.go, llama runner / llama-server errors,
# the scheduler's load errors): a 5xx carrying one of these is the host's fault.
_RUNNER_FAILURES = (
    "runner process has terminated",
    "runner process no longer running",
    "process has terminated",
    "llama runner",
    "llama-server",
    "model requires more system memory",
    "out of memory",
    "unable to allocate",
    "cudamalloc failed",
    "cuda error",
    "no suitable llama servers found",
    "error starting the external llama server",
    "timed out waiting for llama runner",
    "error loading model",
    "an error was encountered while running the model",
)


def error_text(body: bytes) -> str:
    """The message of an error body or line (Ollama's or OpenAI's shape; else the text)."""
    line = body.strip()
    if line.startswith(b"data: "):
        line = line[6:]
    try:
        obj = json.loads(line)
    except ValueError:
        return line[:500].decode(errors="replace")
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        err = err.get("message")
    return err if isinstance(err, str) else line[:500].decode(errors="replace")


def is_runner_failure(text: str) -> bool:
    low = text.lower()
    return any(p in low for p in _RUNNER_FAILURES)


def _transport_kind(exc: BaseException) -> str:
    if isinstance(exc, HostGone):
        return MOVED
    if isinstance(exc, LocalResourceError):
        return LOCAL
    if isinstance(exc, ConnectFailed):
        return CONNECT
    if isinstance(exc, (Disconnected, BadResponse)):
        return RESET
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return TIMEOUT
    return RESET


class _Failure:
    """One failed upstream attempt (the slot is already released).  ``kind`` says whose
    fault it was as far as known (see the module docstring)."""

    __slots__ = ("host", "status", "body", "message", "kind", "content_type")

    def __init__(
        self,
        host: HostState,
        kind: str,
        *,
        status: int = 0,
        body: bytes = b"",
        message: str = "",
        content_type: str = JSON_CONTENT_TYPE,
    ) -> None:
        self.host = host
        self.kind = kind
        self.status = status
        self.body = body
        self.message = message
        self.content_type = content_type

    @property
    def busy(self) -> bool:
        return self.kind == BUSY

    def same_answer(self, other: _Failure) -> bool:
        """Two hosts said the same thing: the same status and the same error text."""
        return self.status == other.status and error_text(self.body) == error_text(other.body)


class _StreamCtx:
    """What the forwarder needs back when a pass-through stream ends."""

    __slots__ = ("host", "resident", "req", "t0", "t_first", "cold", "queue_s", "trace", "probe")

    def __init__(
        self, host: HostState, resident: Resident | None, req: Request, t0: float, t_first: float, cold: bool,
        queue_s: float, trace: TraceCtx, probe: bool,
    ) -> None:
        self.host = host
        self.resident = resident
        self.probe = probe
        self.req = req
        self.t0 = t0
        self.t_first = t_first
        self.cold = cold
        self.queue_s = queue_s
        self.trace = trace


def _cacheable_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if not k.startswith("X-Ollamamax-")}


class Forwarder:
    def __init__(
        self,
        config: DispatcherConfig,
        hosts: Sequence[HostState],
        store: SnapshotStore,
        upstreams: Sequence[Upstream],
        router: Router,
        admission: Admission,
        health: Health,
        accounting: Accounting,
        cache: ResponseCache,
        streams: set[Any],
        refresh_soon: Callable[[HostState], None],
        residency: Residency,
        service: dict[str, Ewma],
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.hosts = hosts
        self.store = store
        self.upstreams = upstreams
        self.router = router
        self.admission = admission
        self.health = health
        self.accounting = accounting
        self.cache = cache
        self.streams = streams
        self.refresh_soon = refresh_soon
        self.residency = residency
        self.service = service  # model -> seconds a request holds a slot (EWMA)
        self.clock = clock
        # (host index, model) -> time to first byte when a slot was free (probes compare)
        self._ttft_base: dict[tuple[int, str], Ewma] = {}
        # id(upstream header tuple) -> (that tuple, its end-to-end headers), see _resp_headers
        self._kept_headers: dict[int, tuple[Any, dict[str, str]]] = {}
        # retry budget: requests inside forward(), and their attempts after the first
        self.active = 0
        self.active_retries = 0
        # host index -> attempts sent there that have no first byte yet
        self._awaiting: list[set[TraceCtx]] = [set() for _ in hosts]

    # -- replies that need the fleet's numbers ------------------------------------------
    def busy(self, route: Route | None, **kw: Any) -> DispatchResponse:
        return replies.busy(route, replies.retry_after(self.hosts, self.admission.waiting), **kw)

    def no_healthy(self, route: Route, name: str, model: str, **kw: Any) -> DispatchResponse:
        holders = self.store.current.by_model.get(model, ())
        return replies.no_healthy(route, name, replies.no_healthy_retry(self.hosts, holders, self.clock()), **kw)

    # -- health bookkeeping --------------------------------------------------------------
    def _charge(self, h: HostState, kind: str, detail: str) -> None:
        """The host's own failure."""
        self.health.record_failure(h, kind, detail)

    def _charge_unattributed(self, f: _Failure) -> None:
        """An earlier 5xx turned out to be the host's (another host did better): it is
        already in the host's failure share; nothing more to count."""
        self.accounting.host_faults += 1

    def abandon_waiting(self, h: HostState) -> int:
        """``h`` went down: every attempt on it still waiting for its first byte fails at once
        with :class:`HostGone` and moves to another host.  Returns how many moved."""
        waiting = self._awaiting[h.index]
        n = 0
        for trace in list(waiting):
            resp = trace.response
            if resp is not None:
                resp.abort(HostGone(f"host {h.name} was taken out of rotation"))
                n += 1
        return n

    def _served(self, r: Resident | None, model: str, seconds: float) -> None:
        """A request of ``model`` held its slot ``seconds``: the planner's service time."""
        if r is None:
            return
        r.served += 1
        e = self.service.get(model)
        if e is None:
            e = self.service[model] = Ewma()
        e.add(seconds)

    def retry_budget(self) -> int:
        """Retries that may be in progress at once now."""
        c = self.config
        return max(c.retry_budget_min, int(c.retry_budget_ratio * self.active))

    # -- the request -------------------------------------------------------------------
    def _usable(self, h: HostState, panic: bool) -> bool:
        return not h.down or (panic and not h.unreachable)

    async def forward(self, req: Request) -> DispatchResponse:
        self.active += 1  # the retry budget scales with the requests in progress
        try:
            return await (self._forward_loaded(req) if req.route.loads_model else self._forward_plain(req))
        finally:
            self.active -= 1

    async def _forward_plain(self, req: Request) -> DispatchResponse:
        """A route that does not load the model (show, push): any healthy host that has it,
        the least loaded first, retried on another before the first byte."""
        tried: set[int] = set()
        last: _Failure | None = None
        attempts = 0
        while attempts < self.config.max_attempts:
            pool = [h for h in req.cands if h.index not in tried and self._usable(h, req.panic)]
            if not pool:
                break
            h = min(pool, key=HostState.load_ratio)
            h.in_flight += 1
            attempts += 1
            result = await self._attempt(h, None, req, attempts, 0.0, False)
            if isinstance(result, DispatchResponse):
                return result
            tried.add(h.index)
            last = result
            if result.kind == LOCAL:
                return self.busy(req.route, attempts=attempts)
        return self._exhausted(req, last, attempts, 0.0)

    async def _forward_loaded(self, req: Request) -> DispatchResponse:
        """An inference route: a slot on a loaded copy of the model, now or after a wait in
        the model's queue (while the scheduler loads a copy, if none has room)."""
        cfg = self.config
        router = self.router
        adm = self.admission
        acc = self.accounting
        clock = self.clock
        hosts = self.hosts
        copies = self.residency.holders
        tried: frozenset[int] = frozenset()
        attempts = 0
        queue_s = 0.0
        last: _Failure | None = None
        suspect: _Failure | None = None  # an unattributed 5xx waiting for a second opinion
        now = clock()
        deadline = now + cfg.queue_timeout
        key = req.key
        model = req.model
        panic = req.panic
        assert key is not None
        while attempts < cfg.max_attempts:
            retry = attempts > 0
            budgeted = False
            if retry:
                if not any(h.index not in tried and self._usable(h, panic) for h in req.cands):
                    if last is None or not last.busy:
                        break
                    tried = frozenset()  # every host was busy: any may take it now
                budgeted = last is None or last.kind not in _FAILOVER
                if budgeted:
                    if self.active_retries >= self.retry_budget():
                        acc.retries_denied += 1
                        log.debug("retry of %s %s denied by the retry budget", req.path, model)
                        break
                    self.active_retries += 1  # held from here until this attempt ends
                now = clock()
            try:
                r, probe = router.choose(copies(model), hosts, key, now, panic=panic, exclude=tried)
                cold = False
                if r is not None and probe:
                    adm.take_probe(r)
                elif r is None or not adm.try_take(r, panic):
                    t_wait = clock()
                    if adm.full() or deadline <= t_wait:
                        return self.busy(req.route, queue_s=queue_s, attempts=attempts,
                                         cache="miss" if req.cache_header else None)
                    try:
                        r, probe = await adm.wait(model, deadline - t_wait, t_wait, exclude=tried, panic=panic)
                    except (QueueFull, TimeoutError, asyncio.TimeoutError):
                        queue_s += clock() - t_wait
                        return self.busy(req.route, queue_s=queue_s, attempts=attempts,
                                         cache="miss" if req.cache_header else None)
                    except LoadFailed as exc:
                        # the load it waited for could not reach its host: that was this
                        # request's attempt there (the scheduler charged the host)
                        queue_s += clock() - t_wait
                        attempts += 1
                        if retry:
                            acc.retries += 1
                        tried = tried | {exc.host}
                        last = _Failure(hosts[exc.host], exc.kind, message=exc.message)
                        continue
                    queue_s += clock() - t_wait
                    cold = r.since >= t_wait  # it waited for this copy to load: measured, not guessed
                h = hosts[r.host]
                attempts += 1
                if retry:
                    acc.retries += 1
                result = await self._attempt(h, r, req, attempts, queue_s, cold, probe)
            finally:
                if budgeted:
                    self.active_retries -= 1
            if isinstance(result, DispatchResponse):
                if suspect is not None and result.status < 500:
                    self._charge_unattributed(suspect)  # another host did better
                return result
            tried = tried | {h.index}
            kind = result.kind
            log.debug("attempt %d of %s %s on %s failed (%s): %s", attempts, req.path, model, h.name, kind,
                      result.message or result.status)
            if kind == LOCAL:
                return self.busy(req.route, queue_s=queue_s, attempts=attempts,
                                 cache="miss" if req.cache_header else None)
            if kind == MISSING:
                self.residency.forget(r, self.clock())  # the host no longer has the model
            if kind == UNATTRIBUTED:
                if suspect is not None and suspect.host is not h and suspect.same_answer(result):
                    # two hosts gave the same answer: it is the request's, not theirs
                    acc.request_faults += 1
                    self.health.forgive(suspect.host)
                    self.health.forgive(h)
                    last = result
                    break
                if suspect is not None:
                    self._charge_unattributed(suspect)
                suspect = result
            last = result
            if attempts < cfg.max_attempts:
                base = cfg.retry_backoff * (2 ** (attempts - 1))
                await asyncio.sleep(base * random.uniform(0.5, 1.5))
        return self._exhausted(req, last, attempts, queue_s)

    def _exhausted(self, req: Request, last: _Failure | None, attempts: int, queue_s: float) -> DispatchResponse:
        route = req.route
        cache_kw: dict[str, Any] = {"cache": "miss"} if req.cache_header else {}
        if last is None:
            return self.no_healthy(route, req.name, req.model, attempts=attempts, queue_s=queue_s, **cache_kw)
        kw: dict[str, Any] = dict(host=last.host.name, attempts=attempts, queue_s=queue_s, **cache_kw)
        self.accounting.count(req.path, req.model, last.host.name, last.status or 502)
        if last.busy:
            return self.busy(route, **kw)
        if last.status:
            h = replies.base_headers(**kw)
            h["Content-Type"] = last.content_type
            return DispatchResponse(last.status, h, body=last.body)
        return replies.error(
            route, 502, f"all {attempts} upstream attempts failed; last: {last.host.name}: {last.message}", **kw
        )

    def _failed_5xx(self, h: HostState, status: int, body: bytes, content_type: str, message: str) -> _Failure:
        """A 5xx (or an error line before the first token): the host's when its text says its
        runner failed, else unattributed until another host is asked."""
        text = error_text(body)
        if is_runner_failure(text):
            self._charge(h, HOST_5XX, text)
            return _Failure(h, HOST_5XX, status=status, body=body, message=message, content_type=content_type)
        self.health.record_unattributed(h, text)
        return _Failure(h, UNATTRIBUTED, status=status, body=body, message=message, content_type=content_type)

    def _release(self, h: HostState, r: Resident | None, probe: bool = False, ttft: float | None = None) -> None:
        """Give back the slot an attempt held (a copy's, or only the host's for a route
        that loads nothing); a probe's first byte says whether the host ran it alongside."""
        now = self.clock()
        if r is None:
            h.in_flight -= 1
            return
        if probe and r.probing:
            r.probe_result(self._ran_alongside(r, ttft) if ttft is not None else False, now)
            if r.in_flight <= r.slots:
                self.admission.grant(r.model)
        self.admission.release(r, now)

    def _ran_alongside(self, r: Resident, ttft: float) -> bool | None:
        """Whether the host served a probe alongside the copy's other requests.  Had it
        queued the probe behind them, its first byte would have come only after one of them
        ended: a first byte before any ended says it ran alongside.  A first byte later than
        an idle copy's usual time to first byte plus a third of a service says it queued.
        Between the two it cannot tell (None): a short answer may have ended meanwhile."""
        if r.probe_clean:
            return True
        base = self._ttft_base.get((r.host, r.model))
        svc = self.service.get(r.model)
        if base is None or base.value is None or svc is None or svc.value is None:
            return None
        return False if ttft >= base.value + 0.3 * svc.value else None

    async def _attempt(self, h: HostState, r: Resident | None, req: Request, attempts: int, queue_s: float,
                       cold: bool, probe: bool = False) -> DispatchResponse | _Failure:
        """One try on host ``h``, holding a slot of ``r`` (or only of the host, for a route
        that loads nothing).  Releases the slot unless a stream is returned (then the stream
        releases it)."""
        cfg = self.config
        model = req.model
        trace = TraceCtx()
        awaiting = self._awaiting[h.index]
        awaiting.add(trace)
        clock = self.clock
        t0 = clock()
        resp: RawResponse | None = None
        first = b""
        body = b""
        streaming = False
        try:
            # one timer bounds head + first chunk (or whole body): time to first byte;
            # the response cancels it itself once the first body bytes are read
            resp = await self.upstreams[h.index].send(
                req.method,
                req.path,
                req.body,
                req.headers,
                query=req.query,
                trace=trace,
                timeout=cfg.first_byte_timeout,
            )
            ctype = resp.content_type
            streaming = resp.status == 200 and (
                ctype.startswith(NDJSON_CONTENT_TYPE) or ctype.startswith(SSE_CONTENT_TYPE)
            )
            if streaming:
                first = await resp.readany()
            else:
                body = await resp.read()
            t_first = clock()
            if probe and r is not None:
                r.probe_clean = r.served == r.probe_mark  # nothing here ended before it began
        except asyncio.CancelledError:
            if resp is not None:
                resp.close()
            self._release(h, r, probe)
            raise
        except UPSTREAM_ERRORS as exc:
            if resp is not None:
                resp.close()
            self._release(h, r, probe)
            kind = _transport_kind(exc)
            message = describe_error(exc, f"no answer within {cfg.first_byte_timeout:g} s")
            if kind not in (MOVED, LOCAL):
                self._charge(h, kind, message)
            return _Failure(h, kind, message=message)
        finally:
            awaiting.discard(trace)

        status = resp.status
        ttft = t_first - t0
        if r is not None and not probe and status == 200:
            base = self._ttft_base.get((h.index, model))
            if base is None:
                base = self._ttft_base[(h.index, model)] = Ewma()
            base.add(ttft)
        if streaming and first.startswith(b'{"error"'):
            # The host failed before producing anything: nothing went to the client yet.
            resp.close()
            self._release(h, r, probe)
            line = first.split(b"\n", 1)[0]
            return self._failed_5xx(h, 500, line, JSON_CONTENT_TYPE, "error before first token")
        if not streaming:
            resp.release()
            if status >= 500:
                ctype = resp.headers.get("Content-Type", JSON_CONTENT_TYPE)
                self._release(h, r, probe)
                if status == 503:
                    return _Failure(h, BUSY, status=status, body=body, content_type=ctype)
                return self._failed_5xx(h, status, body, ctype, f"HTTP {status}")
            if status == 404 and req.route.kind == "model":
                # The snapshot said this host has the model; it no longer does.
                self._release(h, r, probe)
                self.refresh_soon(h)
                return _Failure(
                    h, MISSING, status=404, body=body, content_type=resp.headers.get("Content-Type", JSON_CONTENT_TYPE)
                )
        headers = self._resp_headers(resp, h, cold, queue_s, attempts, "miss" if req.cache_header else None)
        if not streaming:
            self._release(h, r, probe, ttft)
            self.health.record_success(h)
            t_end = clock()
            self._served(r, model, t_end - t0)
            self.accounting.answered(
                h, req.path, model, status, t_arrival=req.t0, t_sent=t0, t_first=t_first,
                t_end=t_end, queue_s=queue_s, connect_s=trace.connect_s,
                tail=body[-METRICS_BYTES:], cold=cold,
            )
            if status == 200:
                if req.cache_key is not None:
                    self.cache.put(req.cache_key, CachedResponse(status, _cacheable_headers(headers), body, None))
                if req.key is not None:
                    self.router.observe(req.key, h)
            return DispatchResponse(status, headers, body=body)
        if not first:  # empty stream: nothing to pass through
            resp.release()
            self._release(h, r, probe, ttft)
            self.health.record_success(h)
            return DispatchResponse(status, headers, body=b"")
        st = PassThrough(
            resp,
            first,
            idle=cfg.idle_timeout,
            sse=ctype.startswith(SSE_CONTENT_TYPE),
            label=f"upstream host {h.name}",
            collect=req.cache_key is not None,
            on_finish=self._finish_stream,
            ctx=_StreamCtx(h, r, req, t0, t_first, cold, queue_s, trace, probe),
        )
        self.streams.add(st)
        return DispatchResponse(status, headers, stream=st, _close=st.aclose)

    def _resp_headers(
        self, resp: RawResponse, h: HostState, cold: bool, queue_s: float, attempts: int, cache: str | None
    ) -> dict[str, str]:
        pairs = resp.header_list
        # the upstream client hands out the same header tuple for every answer with the
        # same head bytes: the filtered copy is kept per tuple (by identity)
        cached = self._kept_headers.get(id(pairs))
        if cached is not None and cached[0] is pairs:
            out = cached[1].copy()
        else:
            kept = {k: v for k, v in pairs if k.lower() not in NOT_FORWARDED}
            if len(self._kept_headers) >= 64:
                self._kept_headers.clear()
            self._kept_headers[id(pairs)] = (pairs, kept)
            out = kept.copy()
        out[HEADER_HOST] = h.name
        out[HEADER_COLD] = "1" if cold else "0"
        out[HEADER_QUEUE_MS] = f"{queue_s * 1000.0:.0f}" if queue_s else "0"
        out[HEADER_ATTEMPTS] = replies.small_int(attempts)
        if cache is not None:
            out[HEADER_CACHE] = cache
        return out

    def _finish_stream(self, st: PassThrough, ok: bool | None, error: str) -> None:
        """Called once when a pass-through stream ends (ok True), fails (False) or is
        closed by the consumer (None): release the slot, then account."""
        self.streams.discard(st)
        c: _StreamCtx = st.ctx
        h, req = c.host, c.req
        self._release(h, c.resident, c.probe, c.t_first - c.t0)
        t_end = self.clock()
        if ok is None:  # consumer went away
            self.accounting.count(req.path, req.model, h.name, 499)
            return
        tail = st.tail
        last_line = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        host_error = last_line.startswith(b'{"error"') or last_line.startswith(b'data: {"error"')
        if ok and st.sse and not host_error and not tail.endswith(b"data: [DONE]\n\n"):
            # Ollama's OpenAI layer ends a failed stream with an empty delta and no [DONE]
            # (middleware/openai.go ChatWriter.writeResponse): the host failed, quietly
            host_error, last_line = True, b'{"error":"the host ended the stream without [DONE]"}'
        if not ok:  # the host's connection failed or fell silent mid-stream
            self._charge(h, RESET, error)
            self.accounting.count(req.path, req.model, h.name, 502)
            return
        if host_error:  # the host ended the stream with an error line
            text = error_text(last_line)
            if is_runner_failure(text):
                self._charge(h, HOST_5XX, text)
            else:
                self.health.record_unattributed(h, text)
            self.accounting.count(req.path, req.model, h.name, 500)
            return
        self.health.record_success(h)
        self._served(c.resident, req.model, t_end - c.t0)
        self.accounting.answered(
            h, req.path, req.model, 200, t_arrival=req.t0, t_sent=c.t0, t_first=c.t_first, t_end=t_end,
            queue_s=c.queue_s, connect_s=c.trace.connect_s, tail=tail[-METRICS_BYTES:], cold=c.cold,
        )
        if req.key is not None:
            self.router.observe(req.key, h)
        if req.cache_key is not None and st.chunks is not None:
            headers = {"Content-Type": st.content_type or NDJSON_CONTENT_TYPE}
            self.cache.put(req.cache_key, CachedResponse(200, headers, None, tuple(st.chunks)))
