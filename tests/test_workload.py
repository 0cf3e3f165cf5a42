"""Seeded fleet traces (``ollamamax.testing.workload``) say what their scenario says.

The simulator and ``tools/bench_fleet.py`` compare routers by replaying the same trace, so
a trace that silently differs from its scenario (the wrong rate, popularity that is not
Zipf, a burst at the wrong time, a continued turn on another model, a trace that changes
between runs) would make every comparison wrong.  Statistical checks use traces long
enough that the tolerances sit at four standard deviations or more.
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections import Counter, defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollamamax.testing.workload import (
    DEFAULT_MODELS,
    MODEL_POOL,
    Scenario,
    TraceRequest,
    add_scenario_arguments,
    make_trace,
    model_shares,
    parse_scenario,
    popularity_order,
    rate_at,
    summary,
)


def test_defaults_are_the_issues_scenario() -> None:
    s = Scenario()
    assert (s.hosts, s.models, s.popularity, s.rate, s.duration, s.continue_share) == (
        4, ("llama3.2", "qwen3:0.6b", "mistral", "gemma3", "phi4", "llava"), "zipf:1.0", 10.0, 60.0, 0.5)
    assert (s.max_loaded_models, s.num_parallel, s.load_delay, s.tokens_per_sec, s.response_tokens) == (
        1, 2, 1.5, 100.0, 20)
    assert (s.prompt_eval_tps, s.vram, s.bursts, s.shift_at) == (0.0, 0, (), ())
    assert s.requests_expected == pytest.approx(600.0)


# ----------------------------------------------------------------------- determinism


def test_same_seed_same_trace_other_seed_other_trace() -> None:
    s = Scenario(seed=3)
    a, b = make_trace(s), make_trace(Scenario(seed=3))
    assert a == b and [r.user for r in a] == [r.user for r in b]
    c = make_trace(Scenario(seed=4))
    assert [r.at for r in c] != [r.at for r in a]


def test_trace_is_sorted_and_inside_the_duration() -> None:
    t = make_trace(Scenario(duration=30, seed=1))
    ats = [r.at for r in t]
    assert ats == sorted(ats) and 0 <= ats[0] and ats[-1] < 30
    assert all(isinstance(r, TraceRequest) for r in t)


def test_each_aspect_draws_from_its_own_stream() -> None:
    """Changing the conversation mix leaves arrival times and models alone, so a sweep over
    one knob compares like with like."""
    a = make_trace(Scenario(seed=9, continue_share=0.2))
    b = make_trace(Scenario(seed=9, continue_share=0.8, max_turns=20))
    assert [(r.at, r.model) for r in a] == [(r.at, r.model) for r in b]
    assert [r.turn for r in a] != [r.turn for r in b]


# -------------------------------------------------------------------------- arrivals


def test_poisson_rate_and_exponential_gaps() -> None:
    s = Scenario(rate=20.0, duration=600.0, seed=5)
    t = make_trace(s)
    n = len(t)
    assert abs(n - 12_000) < 4 * math.sqrt(12_000)  # Poisson: sd = sqrt(mean)
    gaps = [b.at - a.at for a, b in itertools.pairwise(t)]
    mean = sum(gaps) / len(gaps)
    sd = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps))
    assert mean == pytest.approx(1 / 20.0, rel=0.05)
    assert sd / mean == pytest.approx(1.0, abs=0.05)  # exponential: coefficient of variation 1
    # counts per second: Poisson, so variance / mean (index of dispersion) is close to 1
    per_s = Counter(int(r.at) for r in t)
    counts = [per_s.get(i, 0) for i in range(600)]
    m = sum(counts) / 600
    var = sum((c - m) ** 2 for c in counts) / 599
    assert 0.8 < var / m < 1.2


def test_bursts_multiply_the_rate_inside_their_window_only() -> None:
    s = Scenario(rate=10.0, duration=400.0, bursts=((100.0, 100.0, 3.0), (300.0, 50.0, 0.0)), seed=2)
    assert rate_at(s, 50) == 10 and rate_at(s, 150) == 30 and rate_at(s, 320) == 0 and rate_at(s, 399) == 10
    assert s.requests_expected == pytest.approx(10 * 100 + 30 * 100 + 10 * 100 + 0 + 10 * 50)
    t = make_trace(s)
    before = sum(1 for r in t if r.at < 100)
    burst = sum(1 for r in t if 100 <= r.at < 200)
    lull = sum(1 for r in t if 300 <= r.at < 350)
    assert abs(before - 1000) < 4 * math.sqrt(1000)
    assert abs(burst - 3000) < 4 * math.sqrt(3000)
    assert lull == 0


def test_overlapping_bursts_multiply() -> None:
    s = Scenario(bursts=((10, 20, 2.0), (20, 20, 3.0)))
    assert [rate_at(s, x) for x in (5, 15, 25, 35, 45)] == [10, 20, 60, 30, 10]


# ------------------------------------------------------------------------ popularity


@pytest.mark.parametrize("popularity", ["zipf:1.0", "zipf:0.5", "flat"])
def test_model_shares_follow_the_popularity(popularity: str) -> None:
    s = Scenario(popularity=popularity, rate=50.0, duration=400.0, seed=11)
    expected = model_shares(s)
    t = make_trace(s)
    got = Counter(r.model for r in t)
    n = len(t)
    for m, p in expected.items():
        sd = math.sqrt(p * (1 - p) / n)
        assert abs(got[m] / n - p) < 4 * sd, (m, got[m] / n, p)


def test_zipf_weights_are_one_over_rank() -> None:
    shares = model_shares(Scenario(popularity="zipf:1.0"))
    h = sum(1 / k for k in range(1, 7))
    assert list(shares.values()) == pytest.approx([1 / (k * h) for k in range(1, 7)])
    assert list(shares) == list(DEFAULT_MODELS)
    flat = model_shares(Scenario(popularity="flat", models=4))
    assert list(flat.values()) == pytest.approx([0.25] * 4)


def test_popularity_shift_permutes_the_order_at_its_time() -> None:
    s = Scenario(rate=40.0, duration=200.0, shift_at=(100.0,), seed=7)
    orders = popularity_order(s)
    assert [t for t, _ in orders] == [0.0, 100.0]
    (_, first), (_, second) = orders
    assert sorted(first) == sorted(second) and first[0] != second[0]
    t = make_trace(s)
    before = Counter(r.model for r in t if r.at < 100).most_common(1)[0][0]
    after = Counter(r.model for r in t if r.at >= 100).most_common(1)[0][0]
    assert before == first[0] and after == second[0]
    # Zipf holds over the new order after the shift
    late = [r for r in t if r.at >= 100]
    share = Counter(r.model for r in late)
    expected = list(model_shares(s).values())
    for rank, m in enumerate(second):
        p = expected[rank]
        assert abs(share[m] / len(late) - p) < 4 * math.sqrt(p * (1 - p) / len(late))


def test_shifts_are_seeded() -> None:
    s = Scenario(shift_at=(10, 20, 30), seed=1)
    assert popularity_order(s) == popularity_order(Scenario(shift_at=(10, 20, 30), seed=1))
    orders = [o for _, o in popularity_order(s)]
    assert all(a[0] != b[0] for a, b in itertools.pairwise(orders))


# --------------------------------------------------------------------- conversations


def test_continue_share_and_conversation_rules() -> None:
    s = Scenario(rate=20.0, duration=600.0, continue_share=0.5, max_turns=50, min_gap=2.0, seed=3)
    t = make_trace(s)
    cont = sum(1 for r in t if r.turn > 0) / len(t)
    assert cont == pytest.approx(0.5, abs=0.02)
    by_conv: dict[int, list[TraceRequest]] = defaultdict(list)
    for r in t:
        by_conv[r.conversation].append(r)
    assert sorted(by_conv) == list(range(len(by_conv)))  # ids count from 0 in order of first turn
    firsts = [rs[0].at for _, rs in sorted(by_conv.items())]
    assert firsts == sorted(firsts)
    for rs in by_conv.values():
        assert [r.turn for r in rs] == list(range(len(rs)))  # turns in order, none skipped
        assert len({r.model for r in rs}) == 1  # a conversation keeps its model
        assert all(b.at - a.at >= s.min_gap for a, b in itertools.pairwise(rs))


@pytest.mark.parametrize("share", [0.0, 0.2, 0.8])
def test_continue_share_values(share: float) -> None:
    t = make_trace(Scenario(rate=20.0, duration=300.0, continue_share=share, max_turns=100, seed=4))
    cont = sum(1 for r in t if r.turn > 0) / len(t)
    assert cont == pytest.approx(share, abs=0.03)


def test_max_turns_caps_every_conversation() -> None:
    t = make_trace(Scenario(rate=30.0, duration=120.0, continue_share=0.9, max_turns=3, min_gap=0.5, seed=8))
    assert max(r.turn for r in t) == 2
    assert summary(t)["max_turns_seen"] == 3
    only_first = make_trace(Scenario(continue_share=0.9, max_turns=1))
    assert all(r.turn == 0 for r in only_first)


def test_user_messages_have_user_words_words() -> None:
    t = make_trace(Scenario(user_words=40, duration=10))
    assert t and all(len(r.user.split()) == 40 for r in t)
    assert len({r.user for r in t}) == len(t)


def test_summary_counts() -> None:
    t = make_trace(Scenario(seed=2))
    s = summary(t)
    assert s["requests"] == len(t) == s["first"] + s["continued"]
    assert s["first"] == s["conversations"] == sum(1 for r in t if r.turn == 0)
    assert sum(v["requests"] for v in s["per_model"].values()) == len(t)
    assert all(v["requests"] == v["first"] + v["continued"] for v in s["per_model"].values())
    assert next(iter(s["per_model"])) == "llama3.2"
    assert summary([])["requests"] == 0


# ---------------------------------------------------------------- string and CLI forms


def test_parse_scenario() -> None:
    s = parse_scenario("hosts=8,rate=2.5,models=3,popularity=flat,bursts=10:5:3+40:5:0,shift_at=30+45,seed=7")
    assert s.hosts == 8 and s.rate == 2.5 and s.models == MODEL_POOL[:3] and s.popularity == "flat"
    assert s.bursts == ((10.0, 5.0, 3.0), (40.0, 5.0, 0.0)) and s.shift_at == (30.0, 45.0) and s.seed == 7
    assert parse_scenario("models=llama3.2+mistral").models == ("llama3.2", "mistral")
    assert len(parse_scenario("models=50").models) == 50
    assert parse_scenario("continue=0.7,turns=4").continue_share == 0.7
    assert parse_scenario({"hosts": 2, "rate": "3"}) == Scenario(hosts=2, rate=3.0)
    assert parse_scenario("vram=8e9").vram == 8_000_000_000


@pytest.mark.parametrize("bad", ["hosts=0", "rate=0", "nosuch=1", "hosts", "popularity=zipf:-1",
                                 "popularity=pareto", "continue_share=1.5", "bursts=1:2", "bursts=1:-2:3",
                                 "models=a+a", "hosts=1.5", "max_turns=0", "rate=1e9,duration=1e6"])
def test_parse_scenario_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_scenario(bad)


@settings(max_examples=60, deadline=None)
@given(hosts=st.integers(1, 64), n_models=st.integers(1, 45), rate=st.floats(0.01, 50),
       share=st.floats(0, 1), pop=st.sampled_from(["flat", "zipf:1.0", "zipf:0.37", "zipf:2"]),
       bursts=st.lists(st.tuples(st.floats(0, 100), st.floats(0.1, 50), st.floats(0, 5)), max_size=3),
       shifts=st.lists(st.floats(0, 100), max_size=3), seed=st.integers(0, 2**31))
def test_spec_round_trips(hosts: int, n_models: int, rate: float, share: float, pop: str,
                          bursts: list[tuple[float, float, float]], shifts: list[float], seed: int) -> None:
    s = Scenario(hosts=hosts, models=n_models, rate=rate, continue_share=share, popularity=pop,
                 bursts=tuple(bursts), shift_at=tuple(shifts), seed=seed)
    assert parse_scenario(s.spec()) == s
    assert parse_scenario(s.spec(only_changed=True)) == s


def test_from_args_flags_override_the_scenario_string() -> None:
    p = argparse.ArgumentParser()
    add_scenario_arguments(p)
    a = p.parse_args(["--scenario", "hosts=2,rate=3,models=2", "--rate", "5", "--continue-share", "0.25"])
    s = Scenario.from_args(a)
    assert (s.hosts, s.rate, s.continue_share, len(s.models)) == (2, 5.0, 0.25, 2)
    assert Scenario.from_args(p.parse_args([])) == Scenario()
    assert Scenario.from_args(p.parse_args(["--bursts", "1:2:3"])).bursts == ((1.0, 2.0, 3.0),)
