"""The placement planner's rules, each on a hand-built fleet view (pure: no I/O, no clock).

Each test names the rule it pins and the realistic bug it catches."""

from __future__ import annotations

from ollamamax.placement.planner import (Demand, FleetView, HostPlan, Load, PlannerPolicy, ResidentView, next_deadline,
                                         plan)

MODELS = frozenset({"a", "b", "c", "d"})
LOAD = 1.5


def res(model: str, *, in_flight: int = 0, slots: int = 2, idle: float = 10.0, age: float = 30.0,
        state: str = "loaded", size: int = 0) -> ResidentView:
    return ResidentView(model, state, in_flight, slots, 0.0 if in_flight else idle, age, size)


def host(i: int, *residents: ResidentView, room: int = 1, up: bool = True, present: frozenset[str] = MODELS,
         room_known: bool = True, vram: int | None = None, sizes: dict[str, int] | None = None) -> HostPlan:
    return HostPlan(i, up, room, tuple(residents), present, {m: LOAD for m in present}, LOAD,
                    room_known=room_known, vram=vram, sizes=sizes or {})


def demand(model: str, rate: float = 0.0, queued: int = 0, oldest: float = 0.0, service: float = 0.3,
           stranded: int = 0) -> Demand:
    return Demand(model, queued, oldest, rate, service, stranded)


def view(*hosts: HostPlan, demands: list[Demand], now: float = 100.0) -> FleetView:
    return FleetView(now, tuple(hosts), {d.model: d for d in demands})


POL = PlannerPolicy()


def only(loads: list[Load]) -> Load:
    assert len(loads) == 1, loads
    return loads[0]


def test_a_cold_model_goes_to_free_room_first() -> None:
    # bug caught: evicting when another host has room
    v = view(host(0, res("a")), host(1, room=1), demands=[demand("a", 1.0), demand("b", 0.5, queued=1)])
    ld = only(plan(v, POL))
    assert (ld.model, ld.host, ld.evict) == ("b", 1, ())


def test_never_evict_a_model_with_requests_in_flight() -> None:
    # bug caught: choosing the victim by rate alone; the busy host would drop a running request's model
    v = view(host(0, res("a", in_flight=1)), host(1, res("c", in_flight=2)),
             demands=[demand("a", 0.1), demand("c", 0.1), demand("b", 5.0, queued=9, oldest=60.0)])
    assert plan(v, POL) == []


def test_never_evict_a_model_with_requests_waiting() -> None:
    # bug caught: a model whose slot just freed (nothing in flight) but has a queue looks idle
    v = view(host(0, res("a")), demands=[demand("a", 0.1, queued=1, oldest=0.01),
                                          demand("b", 5.0, queued=9, oldest=60.0)])
    assert [ld for ld in plan(v, POL) if ld.model == "b"] == []


def test_a_model_just_loaded_stays_for_its_dwell() -> None:
    # bug caught: thrash, evicting a model before its batch and followers are served
    pol = PlannerPolicy(dwell=1.0)
    young = res("a", age=0.5 * LOAD)
    v = view(host(0, young), demands=[demand("a", 0.1), demand("b", 1.0, queued=3, oldest=30.0)])
    assert plan(v, pol) == []
    old = res("a", age=2 * LOAD)
    v = view(host(0, old), demands=[demand("a", 0.1), demand("b", 1.0, queued=3, oldest=30.0)])
    assert only(plan(v, pol)).evict == ("a",)


DEADLINE = POL.patience * LOAD


def test_a_switch_waits_for_the_cold_models_deadline_then_happens() -> None:
    # bug caught: switching for the first request of a rarely used model (greedy thrash,
    # and the resident loses its host for nothing while the batch could still grow), or
    # never switching (the cold request waits out its whole deadline in the gateway)
    hosts = (host(0, res("a")),)
    early = view(*hosts, demands=[demand("a", 1.0), demand("b", 0.5, queued=2, oldest=DEADLINE - 0.05)])
    assert plan(early, POL) == []  # the resident serves on; b's requests gather
    due = view(*hosts, demands=[demand("a", 1.0), demand("b", 0.5, queued=2, oldest=DEADLINE + 0.01)])
    ld = only(plan(due, POL))
    assert (ld.model, ld.evict) == ("b", ("a",))
    assert "due after" in ld.reason


def test_a_big_batch_switches_at_once() -> None:
    # bug caught: a crowd of waiting requests held back until the deadline of its oldest
    hosts = (host(0, res("a")),)
    crowd = view(*hosts, demands=[demand("a", 1.0), demand("b", 0.2, queued=40, oldest=0.05)])
    assert only(plan(crowd, POL)).model == "b"  # worth 0.2 + 40/10 > 3x a's: one switch serves them all


def test_a_model_in_steady_use_is_not_evicted_at_anothers_deadline_until_it_starves() -> None:
    # bug caught: evicting the fleet's busiest model for a rare one's single request; its
    # next requests come long before a reload finishes, so the switch makes the next one
    # (and, the other way, a rare model that never gets a host while the busy one stays)
    hot = 1.5 * POL.protect / LOAD  # requests per second: 1.5x protect requests per load
    hosts = (host(0, res("a")),)
    due = view(*hosts, demands=[demand("a", hot), demand("b", 0.5, queued=1, oldest=DEADLINE + 0.1)])
    assert plan(due, POL) == []
    # starving: its pressure (0.6 + wait/load) passes hysteresis x a's worth
    wait = (POL.hysteresis * hot - 0.6) * LOAD + 0.1
    starving = view(*hosts, demands=[demand("a", hot), demand("b", 0.5, queued=1, oldest=wait)])
    assert only(plan(starving, POL)).evict == ("a",)


def test_hysteresis_keeps_similar_models_from_swapping() -> None:
    # bug caught: evicting a resident at once for a model that is only somewhat more popular
    hosts = (host(0, res("a")),)
    v = view(*hosts, demands=[demand("a", 1.0), demand("b", 2.5, queued=1, oldest=0.1)])
    assert plan(v, POL) == []
    v = view(*hosts, demands=[demand("a", 1.0), demand("b", 3.5, queued=1, oldest=0.1)])
    assert only(plan(v, POL)).model == "b"


def test_next_deadline_is_when_the_oldest_cold_request_falls_due() -> None:
    # bug caught: the gateway plans only on its tick, so every deferred switch starts up to
    # a tick late, and that lateness lands on the slowest requests
    hosts = (host(0, res("a")), host(1, res("c")))
    v = view(*hosts, demands=[demand("a", 1.0), demand("b", 0.5, queued=1, oldest=0.2),
                              demand("d", 0.5, queued=3, oldest=0.5)])
    assert abs(next_deadline(v, POL) - (DEADLINE - 0.5)) < 1e-9
    served = view(*hosts, demands=[demand("a", 1.0, queued=2, oldest=5.0)])  # a copy takes them
    assert next_deadline(served, POL) is None
    past = view(*hosts, demands=[demand("b", 0.5, queued=1, oldest=DEADLINE + 1)])  # already due
    assert next_deadline(past, POL) is None


def test_the_cheapest_victim_is_evicted() -> None:
    # bug caught: evicting the first idle resident found instead of the least requested
    v = view(host(0, res("a")), host(1, res("c")),
             demands=[demand("a", 3.0), demand("c", 0.2), demand("b", 1.0, queued=2, oldest=2.0)])
    ld = only(plan(v, POL))
    assert (ld.host, ld.evict) == (1, ("c",))
    assert "evicts idle c" in ld.reason


def test_a_hot_model_is_replicated_when_its_copies_cannot_keep_up() -> None:
    # bug caught: a single copy of the hot model queues while another host sits idle
    v = view(host(0, res("a", in_flight=2)), host(1, room=1),
             demands=[demand("a", 20.0, queued=20, oldest=1.0, service=0.5)])
    ld = only(plan(v, POL))
    assert (ld.model, ld.host) == ("a", 1)


def test_a_passing_queue_is_not_replicated() -> None:
    # bug caught: the batch a load just took looks like overload and costs a second load
    v = view(host(0, res("a", in_flight=2)), host(1, room=1),
             demands=[demand("a", 0.5, queued=20, oldest=1.0, service=0.5)])
    assert [ld for ld in plan(v, POL) if not ld.preload] == []


def test_no_second_load_while_a_copy_is_loading() -> None:
    # bug caught: every planning pass while a load runs starts another copy for the same queue
    v = view(host(0, res("a", state="loading", age=0.2)), host(1, room=1),
             demands=[demand("a", 5.0, queued=30, oldest=1.0)])
    assert plan(v, POL) == []


def test_configured_room_is_respected() -> None:
    # bug caught: treating a host with room 2 that holds 2 as having room
    full = host(0, res("a"), res("c"), room=2)
    v = view(full, demands=[demand("a", 5.0), demand("c", 5.0), demand("b", 0.1, queued=1, oldest=0.1)])
    assert plan(v, POL) == []
    roomy = host(0, res("a"), room=2)
    v = view(roomy, demands=[demand("a", 5.0), demand("b", 0.1, queued=1, oldest=0.1)])
    ld = only(plan(v, POL))
    assert (ld.model, ld.evict) == ("b", ())


def test_memory_budget_evicts_until_the_model_fits() -> None:
    # bug caught: counting models only, so a big model is sent where it does not fit
    sizes = {"a": 4, "c": 4, "b": 6}
    h = host(0, res("a", size=4), res("c", size=4), room=3, vram=10, sizes=sizes)
    v = view(h, demands=[demand("a", 0.5), demand("c", 0.2), demand("b", 5.0, queued=5, oldest=5.0)])
    ld = only(plan(v, POL))
    assert ld.model == "b" and ld.evict == ("c",)  # 4 + 6 fits in 10 once c goes
    h = host(0, res("a", size=4), room=3, vram=10, sizes=sizes)
    v = view(h, demands=[demand("a", 0.5), demand("b", 5.0, queued=5, oldest=5.0)])
    assert only(plan(v, POL)).evict == ()


def test_one_load_at_a_time_per_host_and_none_on_a_host_that_is_down() -> None:
    # bug caught: two models sent to one host at once; a load sent to an unreachable host
    v = view(host(0, room=2), host(1, room=2, up=False),
             demands=[demand("b", 1.0, queued=1, oldest=1.0), demand("c", 1.0, queued=1, oldest=0.5)])
    loads = plan(v, POL)
    assert [(ld.model, ld.host) for ld in loads] == [("b", 0)]


def test_a_model_only_goes_where_it_is_on_disk() -> None:
    # bug caught: loading a model on a host that does not have it (404 every time)
    v = view(host(0, room=1, present=frozenset({"a"})), host(1, room=1),
             demands=[demand("b", 1.0, queued=1, oldest=1.0)])
    assert only(plan(v, POL)).host == 1


def test_preload_fills_free_room_with_the_most_requested_model_nobody_holds() -> None:
    # bug caught: free room left empty while a requested model has no copy
    v = view(host(0, res("a")), host(1, room=1), demands=[demand("a", 2.0), demand("b", 1.0), demand("c", 0.5)])
    ld = only(plan(v, POL))
    assert (ld.model, ld.host, ld.preload) == ("b", 1, True)
    assert plan(v, PlannerPolicy(preload=False)) == []


def test_preload_never_evicts_a_model_for_one_barely_more_popular() -> None:
    # bug caught: preloading churns the fleet when every host is full
    v = view(host(0, res("a")), demands=[demand("a", 1.0), demand("b", 1.5)])
    assert plan(v, POL) == []


def test_free_room_takes_a_copy_more_of_the_busiest_model() -> None:
    # bug caught: with room for every model (say 2 models, 2 places per host) the fleet
    # keeps one copy of each, and a busy model queues on it while other hosts sit empty
    v = view(host(0, res("a"), res("b"), room=2), host(1, room=2),
             demands=[demand("a", 4.0, service=0.5), demand("b", 0.1)])
    ld = only(plan(v, POL))
    assert (ld.model, ld.host, ld.evict, ld.preload) == ("a", 1, (), True)
    # never by evicting, and not for a model whose slots are mostly idle
    assert plan(view(host(0, res("a")), host(1, res("c")), demands=[demand("a", 4.0, service=0.5),
                                                                  demand("c", 0.0)]), POL) == []
    assert plan(view(host(0, res("a")), host(1, room=1), demands=[demand("a", 0.2, service=0.5)]), POL) == []


def test_waiting_requests_that_no_copy_can_serve_get_a_new_copy() -> None:
    # bug caught: a request that failed on the only loaded copy waits for it forever
    v = view(host(0, res("a", in_flight=1)), host(1, room=1),
             demands=[demand("a", 0.5, queued=1, oldest=0.5, stranded=1)])
    ld = only(plan(v, POL))
    assert (ld.model, ld.host) == ("a", 1)


def test_room_not_known_is_explored_without_unloading() -> None:
    # bug caught: never learning that a host holds more than one model
    v = view(host(0, res("a"), room=1, room_known=False),
             demands=[demand("a", 0.1), demand("b", 2.0, queued=3, oldest=3.0)])
    ld = only(plan(v, POL))
    assert ld.explore and ld.evict == ("a",)
    v = view(host(0, res("a"), room=1), demands=[demand("a", 0.1), demand("b", 2.0, queued=3, oldest=3.0)])
    assert not only(plan(v, POL)).explore


def test_plan_is_pure_and_deterministic() -> None:
    # bug caught: hidden state between passes (e.g. a cache keyed by the view) or randomness
    v = view(host(0, res("a")), host(1, res("c")), host(2, room=1),
             demands=[demand("a", 3.0), demand("c", 0.2), demand("b", 1.0, queued=2, oldest=2.0),
                      demand("d", 0.7)])
    first = plan(v, POL)
    assert first == plan(v, POL) == plan(v, POL)
    assert {ld.model for ld in first} == {"b", "d"}
