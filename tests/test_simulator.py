"""The fleet scheduler, end to end, on the simulator: the real gateway (scheduler, router,
admission, forwarding) against emulated hosts in virtual time, and the simple routers on
the same seeded trace.

These are properties, not speed: virtual time is deterministic, so "the scheduler's TTFT
p99 is below consistent hashing's" is a fact of the decisions, not of the machine.  What
would break them: a planner that thrashes (swaps models back and forth: loads climb toward
round-robin's and p99 toward its), a router that sends requests to hosts that do not hold
the model, waiters that are never granted after a load (errors, or TTFTs at the queue
timeout), prompt-cache affinity lost (continued turns re-read their history elsewhere),
evictions with room to spare, or nondeterminism leaking into the replay.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

import pytest

from ollamamax.testing.simulator import simulate
from ollamamax.testing.workload import Scenario

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_scheduler_beats_every_simple_router_when_models_outnumber_the_room(seed: int) -> None:
    """The issue's fleet (4 hosts, 6 Zipf models, room for 1 each, 1.5 s loads), 30 s."""
    s = Scenario(duration=30, seed=seed)
    ours = simulate(s, "ollamamax").summary()
    hashed = simulate(s, "hash").summary()
    rr = simulate(s, "round-robin").summary()
    floor = simulate(s, "floor").summary()
    assert ours["errors"] == 0 and ours["requests"] == hashed["requests"] > 200
    assert ours["ttft_p99"] < hashed["ttft_p99"], (ours, hashed)
    assert ours["ttft_p50"] < hashed["ttft_p50"] < rr["ttft_p50"], (ours, hashed, rr)
    assert ours["loads"] < rr["loads"] / 2, (ours["loads"], rr["loads"])  # no thrashing
    assert floor["ttft_p99"] <= ours["ttft_p99"]  # the bound holds (the simulator is sane)


# A family of fleets: hosts 2-16, models 2-40, room 1-4, Zipf and flat popularity, bursts and
# popularity shifts.  Hosts configured (the gateway is told num_parallel and room).
FAMILY = [
    "hosts=2,models=2,max_loaded_models=1,rate=5",
    "hosts=2,models=6,max_loaded_models=1,popularity=flat,rate=5",
    "hosts=4,models=12,max_loaded_models=2,rate=10",
    "hosts=4,models=12,max_loaded_models=2,popularity=flat,rate=10",
    "hosts=8,models=12,max_loaded_models=1,rate=20",
    "hosts=8,models=16,max_loaded_models=2,popularity=flat,rate=20",
    "hosts=16,models=40,max_loaded_models=4,rate=40",
    "hosts=3,models=8,max_loaded_models=2,rate=7.5",
    "hosts=2,models=12,max_loaded_models=4,popularity=flat,rate=5",
    "hosts=4,models=6,bursts=10:5:3",
    "hosts=4,models=6,shift_at=15",
]


def test_never_worse_than_consistent_hashing_at_p99_across_a_family_of_fleets() -> None:
    """Bug caught: a policy tuned to one trace (the issue's) that loses to a one-line nginx
    hash on fleets of another shape: more models per place, more room per host, flat
    popularity, bursts, a popularity shift.  (Planted: configured room read as 1 -> p99
    2.65x hash's on the 4-room fleet.)  Told nothing: the next test."""
    from ollamamax.testing.workload import parse_scenario

    ratios = []
    for spec in FAMILY:
        s = parse_scenario(f"{spec},duration=30,seed=0")
        ours = simulate(s, "ollamamax", configure_hosts=True).summary()
        hashed = simulate(s, "hash").summary()
        assert ours["errors"] == 0, spec
        ratios.append((ours["ttft_p99"] / hashed["ttft_p99"], spec))
    assert max(ratios)[0] <= 1.15, ratios  # at worst a little behind, on a small fleet
    assert sum(r < 1.0 for r, _ in ratios) >= len(ratios) - 2, ratios  # and ahead nearly everywhere


def test_told_nothing_it_is_never_worse_than_consistent_hashing_at_p99() -> None:
    """The same family, the gateway told nothing about the hosts (``ollamamax serve``
    without ``[[hosts]]``): it learns slots by probing and room by exploring, and over the
    whole trace, warm-up included, its p99 is at or below hash's.  Bugs caught (each
    planted): waiters never handed a probe, so a batch a load was made for goes out one
    slot at a time (2 hosts x 2 models: 1.12x hash); an exploring load whose eviction a
    refresh saw first taken for room to spare (3 hosts x 8 flat: 1.87x)."""
    from ollamamax.testing.workload import parse_scenario

    ratios = []
    for spec in [*FAMILY, "hosts=3,models=8,max_loaded_models=2,popularity=flat,rate=7.5"]:
        s = parse_scenario(f"{spec},duration=30,seed=0")
        ours = simulate(s, "ollamamax").summary()
        hashed = simulate(s, "hash").summary()
        assert ours["errors"] == 0, spec
        ratios.append((round(ours["ttft_p99"] / hashed["ttft_p99"], 3), spec))
    assert max(ratios)[0] <= 1.0, ratios
    assert sum(r < 1.0 for r, _ in ratios) >= len(ratios) - 1, ratios  # the cold start of 2 x 2 ties


@pytest.mark.parametrize("spec", [
    "hosts=8,models=16,max_loaded_models=2,rate=20",
    "hosts=2,models=12,max_loaded_models=4,popularity=flat,rate=5",
    "hosts=4,models=12,max_loaded_models=2,rate=10",
])
def test_told_nothing_it_learns_the_room_and_then_beats_hashing(spec: str) -> None:
    """Hosts that hold 2-4 models, the gateway told nothing: it learns each host's room by
    exploring (a switch sent without unloading first).  Over a whole 30 s trace the warm-up
    costs it p99 against hash (README); once learned (after 15 s) it must win.  Bug caught:
    room never learned (every host stays at one model), or exploring that thrashes."""
    from ollamamax.testing.simulator import percentile
    from ollamamax.testing.workload import parse_scenario

    s = parse_scenario(f"{spec},duration=60,seed=0")
    ours, hashed = simulate(s, "ollamamax"), simulate(s, "hash")
    after = lambda o: o.at >= 15  # noqa: E731
    p_ours, p_hash = percentile(ours.ttfts(after), 0.99), percentile(hashed.ttfts(after), 0.99)
    assert ours.summary()["errors"] == 0
    assert p_ours is not None and p_hash is not None and p_ours < p_hash, (p_ours, p_hash)


def test_continued_conversations_stay_where_their_prompt_is_cached() -> None:
    """Prompt evaluation at 300 tokens/s with each slot's cache: continued turns on the host
    that served their history skip re-reading it."""
    s = Scenario(duration=30, seed=0, prompt_eval_tps=300)
    ours = simulate(s, "ollamamax").summary()
    hashed = simulate(s, "hash").summary()
    assert ours["errors"] == 0
    assert ours["continued_p50"] * 2 < hashed["continued_p50"], (ours, hashed)


def test_with_room_for_every_model_nothing_is_evicted() -> None:
    s = Scenario(duration=20, seed=1, max_loaded_models=6)
    r = simulate(s, "ollamamax")
    assert r.summary()["errors"] == 0
    assert r.evictions == 0 and r.loads <= s.hosts * len(s.models)


def test_free_room_is_filled_with_copies_of_busy_models() -> None:
    """2 models, room for both on each of 4 hosts, prompt evaluation that makes requests
    long: with one copy per model the busier one queues; round-robin's spread (every host
    loads both) is the reference here, and the scheduler must match it, not trail it."""
    s = Scenario(duration=30, seed=0, models=("llama3.2", "qwen3:0.6b"), max_loaded_models=2,
                 prompt_eval_tps=300, user_words=60)
    ours = simulate(s, "ollamamax", configure_hosts=True)
    rr = simulate(s, "round-robin").summary()
    o = ours.summary()
    assert o["errors"] == 0 and ours.evictions == 0
    assert ours.loads == s.hosts * len(s.models)
    assert o["ttft_p99"] <= 1.25 * rr["ttft_p99"] and o["ttft_p50"] <= 1.1 * rr["ttft_p50"], (o, rr)


def test_the_learning_gateway_is_told_nothing_and_still_serves_everyone() -> None:
    """Without num_parallel / max_loaded_models the gateway learns slots and room (probes,
    exploration); it must not lose requests while it learns."""
    s = Scenario(duration=20, seed=2)
    learned = simulate(s, "ollamamax").summary()
    told = simulate(s, "ollamamax", configure_hosts=True).summary()
    assert learned["errors"] == told["errors"] == 0
    assert learned["ttft_p99"] < simulate(s, "hash").summary()["ttft_p99"]


def test_the_replay_is_deterministic() -> None:
    s = Scenario(duration=10, seed=3)
    a, b = simulate(s, "ollamamax"), simulate(s, "ollamamax")
    assert [(o.ttft, o.host) for o in a.outcomes] == [(o.ttft, o.host) for o in b.outcomes]
    assert a.loads == b.loads


def _simulate_cli(argv: list[str]) -> tuple[int, str]:
    import argparse

    from ollamamax.testing import simcli

    p = argparse.ArgumentParser()
    simcli.add_arguments(p)
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(io.StringIO()):
        code = simcli.main(p.parse_args(argv))
    return code, out.getvalue()


def test_simulate_command_prints_one_row_per_router_and_refuses_unknown_ones() -> None:
    code, text = _simulate_cli(["--duration", "5", "--routers", "ollamamax,hash", "--json"])
    assert code == 0
    rows = json.loads(text)["rows"]
    assert [r["router"] for r in rows] == ["ollamamax", "hash"]
    assert all(r["errors"] == 0 and r["requests"] > 0 for r in rows)
    code, text = _simulate_cli(["--duration", "5", "--sweep-hosts", "1,4", "--routers", "ollamamax",
                                "--target-p99", "30"])
    assert code == 0 and "| 1 | ollamamax |" in text and "| 4 | ollamamax |" in text
    assert "fewest hosts meeting TTFT p99 <= 30 s with ollamamax: 1" in text
    assert _simulate_cli(["--routers", "nginx"])[0] == 2
