"""Which models each host holds, and will hold: the gateway's residency model.

``/api/ps`` tells what a host had loaded at its last refresh, seconds ago.  The gateway
causes most loads and evictions itself, so it knows them the moment it decides them: a
:class:`Resident` is one model on one host, ``LOADING`` from the moment the scheduler
sends the load, ``LOADED`` once the host answered it, ``UNLOADING`` from the moment the
scheduler decides to evict it (no request is routed to it any more).  A refresh
reconciles (:meth:`Residency.reconcile`): a model the host no longer lists, and that was
loaded before the refresh began and has nothing in flight, is gone (it expired, or
something else evicted it); a model it lists that the gateway did not know of is added.

Each resident also carries what routing needs per (host, model): requests in flight and
**slots** (Ollama's ``OLLAMA_NUM_PARALLEL`` for that model on that host: configured, or
learned by probing one above the current value, see :meth:`Resident.probe_result`; what
was learned outlives the copy: a copy loaded again starts from it, a model new to the host
from the host's learned parallelism), and
each host its **room** (how many models it can hold at once: configured, or learned from
what ``/api/ps`` shows resident together).  Everything is indexed by model, so what a
request reads is proportional to the hosts that hold its model, not to the fleet.

No I/O and no clock reads: callers pass ``now`` (any monotonic clock, the event loop's
in the gateway, a virtual one in the simulator).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["LOADED", "LOADING", "UNLOADING", "Resident", "Residency"]

LOADING = "loading"
LOADED = "loaded"
UNLOADING = "unloading"

FOUND = float("-inf")  # ``since`` of a model found loaded: how long it has been is unknown
# a model another gateway said it unloads, still listed by a refresh begun this long after:
# that unload never happened (its switch was given up), so the model is there to use
HEARSAY_UNLOAD = 2.0
PROBE_BACKOFF = 30.0  # after a probe showed the host queued, try one more slot again this much later
PROBE_TRIES = 3  # probes in a row that cannot tell count as one that showed it queued


class Resident:
    """One model on one host, as the gateway believes it (mutable; event loop only)."""

    __slots__ = (
        "host",
        "model",
        "state",
        "since",
        "ready_at",
        "in_flight",
        "slots",
        "slots_fixed",
        "probing",
        "probe_after",
        "probe_mark",
        "probe_clean",
        "probe_misses",
        "last_used",
        "served",
        "hearsay",
    )

    def __init__(self, host: int, model: str, state: str, now: float, *, slots: int = 1,
                 slots_fixed: bool = False) -> None:
        self.host = host
        self.model = model
        self.state = state
        self.since = now  # when the current state began
        self.ready_at = now  # LOADING: when the load is expected to finish
        self.in_flight = 0
        self.slots = max(1, slots)  # requests the host serves at once for this model
        self.slots_fixed = slots_fixed  # configured: never probed
        self.probing = False  # one request above ``slots`` is out to learn if the host takes it
        self.probe_after = now  # no probe before this
        self.probe_mark = 0  # ``served`` when the probe went out
        self.probe_clean = False  # no other request here ended before the probe's first byte
        self.probe_misses = 0  # probes in a row that could not tell
        self.last_used = now
        self.served = 0  # requests answered here since it was loaded
        # its state is what another gateway said (dispatch.shared), not this one's own
        # action or a refresh: not published back to the others as a fact
        self.hearsay = False

    def may_probe(self, now: float) -> bool:
        """Whether one request above ``slots`` may go out to learn the host's parallelism."""
        return (self.state == LOADED and not self.slots_fixed and not self.probing
                and self.in_flight == self.slots and now >= self.probe_after)

    def probe_result(self, parallel: bool | None, now: float) -> None:
        """The probe's answer: the host ran it alongside the others (``parallel``: one more
        slot), queued it (False: stay, and do not probe again for a while), or it cannot tell
        (None: another answer ended before its first byte, too close to judge; probe again,
        and after ``PROBE_TRIES`` such probes in a row take it as queued)."""
        self.probing = False
        if parallel is None:
            self.probe_misses += 1
            if self.probe_misses < PROBE_TRIES:
                self.probe_after = now
                return
            parallel = False  # it never showed it runs one more: take it as queued
        self.probe_misses = 0
        if parallel:
            self.slots += 1
        self.probe_after = now if parallel else now + PROBE_BACKOFF

    def __repr__(self) -> str:
        return (f"Resident({self.model!r} on #{self.host}, {self.state}, {self.in_flight}/{self.slots}"
                f"{' probing' if self.probing else ''})")


class Residency:
    """Every host's residents, indexed by host and by model, and each host's room."""

    def __init__(self, n_hosts: int, *, room: Sequence[int | None] | None = None,
                 slots: Sequence[int | None] | None = None) -> None:
        self.by_host: list[dict[str, Resident]] = [{} for _ in range(n_hosts)]
        self.by_model: dict[str, dict[int, Resident]] = {}
        cfg_room = list(room) if room is not None else [None] * n_hosts
        self.room_fixed = [r is not None for r in cfg_room]  # configured: not learned
        self.room = [max(1, r) if r is not None else 1 for r in cfg_room]
        # the host was seen to evict a model to make room: ``room`` is its limit (no more
        # exploring whether it holds one more)
        self.room_known = list(self.room_fixed)
        self.slots_cfg = list(slots) if slots is not None else [None] * n_hosts
        # per host: model -> when the gateway last saw it leave (an unload it sent was
        # answered): a refresh that began before then is stale about that model
        self.left: list[dict[str, float]] = [{} for _ in range(n_hosts)]
        # per host: model -> (slots, probe_after) learned of a copy that has since gone, so
        # a copy loaded again starts from what was learned, not from one slot
        self.learned: list[dict[str, tuple[int, float]]] = [{} for _ in range(n_hosts)]

    # -- reading --------------------------------------------------------------------------
    def holders(self, model: str) -> Iterable[Resident]:
        """Every resident of ``model`` (any state)."""
        by = self.by_model.get(model)
        return by.values() if by else ()

    def get(self, host: int, model: str) -> Resident | None:
        return self.by_host[host].get(model)

    # -- what the scheduler decides -----------------------------------------------------
    def add(self, host: int, model: str, state: str, now: float) -> Resident:
        cfg = self.slots_cfg[host]
        r = Resident(host, model, state, now, slots=cfg or 1, slots_fixed=cfg is not None)
        old = self.by_host[host].get(model)
        if old is not None:  # a model that comes back keeps what was learned of it
            r.slots, r.slots_fixed, r.probe_after = old.slots, old.slots_fixed, old.probe_after
        elif cfg is None:
            known = self.learned[host]
            if model in known:  # ... even after it left the host
                r.slots, r.probe_after = known[model]
            elif known:  # a model new to the host: Ollama's parallelism is the server's setting
                r.slots = min(n for n, _ in known.values())
        self.by_host[host][model] = r
        self.by_model.setdefault(model, {})[host] = r
        return r

    def start_load(self, host: int, model: str, now: float, expected: float, *, hearsay: bool = False) -> Resident:
        r = self.by_host[host].get(model)
        if r is None or r.state == UNLOADING:
            r = self.add(host, model, LOADING, now)
        r.state = LOADING
        r.since = now
        r.ready_at = now + expected
        r.hearsay = hearsay
        return r

    def loaded(self, r: Resident, now: float) -> None:
        r.state = LOADED
        r.since = r.last_used = now
        r.served = 0

    def start_unload(self, r: Resident, now: float, *, hearsay: bool = False) -> None:
        """``r`` is being unloaded, by this gateway or (``hearsay``) by another."""
        r.state = UNLOADING
        r.since = now
        if hearsay:
            r.hearsay = True

    def forget(self, r: Resident, now: float | None = None) -> None:
        """``r`` is gone; ``now``: when the gateway saw it go (an unload answered), so a
        refresh that began earlier and still lists it does not bring it back."""
        if now is not None:
            self.left[r.host][r.model] = now
        if not r.slots_fixed:
            self.learned[r.host][r.model] = (r.slots, r.probe_after)
        if self.by_host[r.host].get(r.model) is r:
            del self.by_host[r.host][r.model]
        by = self.by_model.get(r.model)
        if by is not None and by.get(r.host) is r:
            del by[r.host]
            if not by:
                del self.by_model[r.model]

    def room_explored(self, host: int, together: int) -> None:
        """The outcome of loading one model more than ``room`` without evicting first: the
        host then listed ``together`` models.  More than ``room``: it kept them all, so that
        many fit; else it evicted one (whichever it chose, and maybe seen by a refresh
        before this), so ``room`` is its limit."""
        if self.room_fixed[host]:
            return
        if together > self.room[host]:
            self.room[host] = together
        else:
            self.room_known[host] = True

    # -- what a refresh saw --------------------------------------------------------------
    def reconcile(self, host: int, observed: Iterable[str], refreshed_at: float, now: float) -> list[str]:
        """Bring ``host`` in line with the models ``/api/ps`` listed in a refresh that began
        at ``refreshed_at``; returns the models found gone.  What the scheduler changed
        after the refresh began is kept (its own loads and unloads are newer)."""
        seen = set(observed)
        gone = []
        residents = self.by_host[host]
        for r in residents.values():
            if r.model in seen and r.state == LOADING and r.since < refreshed_at:
                self.loaded(r, now)  # loaded by now (its answer may still be on the way)
        # A switch under way (a load, this gateway's or one it joined): a model it evicts
        # may still be listed, serving the requests it had (the host answers an unload at
        # once and lets the model go when they end).  Taken back as loaded, it would get
        # more requests, stay busy, and hold the new model's load off indefinitely.
        switching = any(r.state == LOADING for r in residents.values())
        for r in list(residents.values()):
            if r.model in seen:
                if r.state == LOADED:
                    r.hearsay = False  # the host said so
                elif (r.state == UNLOADING and r.hearsay and not switching
                      and r.since < refreshed_at - HEARSAY_UNLOAD):
                    self.loaded(r, now)  # another gateway's unload never came: it is still there
                    r.hearsay = False
                continue
            if r.since < refreshed_at and r.in_flight == 0 and r.state != LOADING:
                self.forget(r)
                gone.append(r.model)
        left = self.left[host]
        for m in seen:
            if m not in residents and left.get(m, FOUND) < refreshed_at and not switching:
                # found loaded (at start, or loaded by someone else): not a fresh load of
                # the scheduler's, so the planner's dwell does not shield it
                self.add(host, m, LOADED, now).since = FOUND
        if not self.room_fixed[host]:
            together = len(seen)
            if together > self.room[host]:
                self.room[host] = together  # it held that many at once: it has room for them
        return gone
