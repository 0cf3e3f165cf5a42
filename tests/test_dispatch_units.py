"""Unit tests of the dispatcher's pieces (no network)."""

from __future__ import annotations

import asyncio
import json

import pytest

from ollamamax import QueueFull
from ollamamax.dispatch import HostConfig
from ollamamax.dispatch.admission import Admission
from ollamamax.dispatch.cache import ResponseCache
from ollamamax.dispatch.merged import parse_time as _parse_time
from ollamamax.dispatch.merged import version_key as _version_key
from ollamamax.fleet.config import host_name_from_url
from ollamamax.fleet.health import (
    CONNECT,
    FAILURE_RATE,
    HOST_5XX,
    RESET,
    TIMEOUT,
    UNREACHABLE,
    Health,
    HealthPolicy,
)
from ollamamax.fleet.hosts import HostState
from ollamamax.fleet.residency import LOADED, Residency, Resident
from ollamamax.placement.strategies import (
    AffinityStrategy,
    HashRing,
    RoundRobinStrategy,
    RoutingKey,
    chat_prefix_hashes,
    make_strategy,
    stable_hash,
)
from ollamamax.wire.names import display_name, normalize_model
from ollamamax.wire.ollama import go_json_error
from ollamamax.wire.routes import ROUTES, lookup
from ollamamax.wire.validate import is_zero_keep_alive


def mk_hosts(n: int, cap: int = 2) -> list[HostState]:
    hosts = []
    for i in range(n):
        url = f"http://10.0.0.{i + 1}:11434"
        h = HostState(index=i, config=HostConfig(url), name=host_name_from_url(url), url=url, capacity=cap)
        h.down = h.unreachable = False
        hosts.append(h)
    return hosts


@pytest.mark.parametrize(
    ("name", "norm"),
    [
        ("llama3.2", "llama3.2:latest"),
        ("Llama3.2:Latest", "llama3.2:latest"),
        ("registry.ollama.ai/library/qwen3:8b", "qwen3:8b"),
        ("library/gemma3", "gemma3:latest"),
        ("me/model", "me/model:latest"),
        ("host:5000/me/model", "host:5000/me/model:latest"),
    ],
)
def test_normalize_model(name: str, norm: str) -> None:
    assert normalize_model(name) == norm


def test_display_name_keeps_case() -> None:
    assert display_name("NoSuch") == "NoSuch:latest"
    assert display_name("registry.ollama.ai/library/x:1b") == "x:1b"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("{", "unexpected EOF"),
        ('{"a": "b', "unexpected EOF"),
        ("x", "invalid character 'x' looking for beginning of value"),
        ("{x", "invalid character 'x' looking for beginning of object key string"),
        ('{"a" 1}', "invalid character '1' after object key"),
        ('{"a": 1 "b": 2}', "invalid character '\"' after object key:value pair"),
        ("[1 2]", "invalid character '2' after array element"),
    ],
)
def test_go_json_error(doc: str, message: str) -> None:
    with pytest.raises(json.JSONDecodeError) as exc:
        json.loads(doc)
    assert go_json_error(exc.value) == message


def test_zero_keep_alive_forms() -> None:
    for v in (0, 0.0, "0", "0s", "0m", "0h0m0s"):
        assert is_zero_keep_alive(v), v
    for v in (None, False, 1, "5m", "-1", -1, "x", [0]):
        assert not is_zero_keep_alive(v), v


def test_parse_time_and_version_key() -> None:
    a = _parse_time("2026-01-01T00:00:00.123456789Z")
    b = _parse_time("2026-01-01T01:00:00+01:00")
    assert abs(a - b - 0.123456) < 1e-3
    assert _parse_time("2318-01-01T00:00:00Z") > a
    assert _parse_time("garbage") == 0.0 and _parse_time(None) == 0.0
    assert _version_key("0.10.1") > _version_key("0.9.20")
    assert _version_key("0.0.0-rc1") == (0, 0, 0)


def test_routes_table() -> None:
    assert lookup("POST", "/api/chat").kind == "model"  # type: ignore[union-attr]
    assert lookup("GET", "/api/chat") is None
    assert lookup("GET", "/v1/models/llama3.2").kind == "v1_model"  # type: ignore[union-attr]
    assert lookup("HEAD", "/api/blobs/sha256:abc").kind == "blobs"  # type: ignore[union-attr]
    assert lookup("DELETE", "/api/delete").kind == "delete"  # type: ignore[union-attr]
    assert lookup("GET", "/nope") is None


def mk_fleet(n: int, cap: int = 2, slots: int = 1, model: str = "m") -> tuple[list[HostState], Residency, list[Resident]]:
    """``n`` hosts with ``model`` loaded on each (``slots`` slots per copy)."""
    hosts = mk_hosts(n, cap)
    res = Residency(n, slots=[slots] * n)
    return hosts, res, [res.add(i, model, LOADED, 0.0) for i in range(n)]


async def test_admission_slots_fifo_timeout_and_cancel() -> None:
    hosts, res, (a, b) = mk_fleet(2)
    adm = Admission(hosts, res, queue_size=3)
    assert adm.try_take(a) and not adm.try_take(a)  # one slot per copy
    assert adm.try_take(b)
    w1 = asyncio.create_task(adm.wait("m", 5, 1.0, exclude=frozenset({1})))  # only A
    w2 = asyncio.create_task(adm.wait("m", 5, 2.0))  # either
    w3 = asyncio.create_task(adm.wait("m", 5, 3.0, exclude=frozenset({0})))  # only B
    await asyncio.sleep(0)
    assert adm.waiting == 3 and adm.queued("m") == 3 and adm.oldest("m") == 1.0
    with pytest.raises(QueueFull):
        await adm.wait("m", 5, 4.0)
    adm.release(a, 5.0)  # -> w1 (head of the queue, accepts A)
    assert (await w1).resident is a
    adm.release(b, 6.0)  # -> w2 (older than w3, accepts B)
    assert (await w2).resident is b
    adm.release(a, 7.0)  # w3 refuses A: the slot stays free, w3 keeps its place
    assert a.in_flight == 0 and not w3.done() and a.last_used == 7.0
    adm.release(b, 8.0)
    assert (await w3).resident is b
    assert adm.waiting == 0 and adm.queued("m") == 0 and not adm.queues
    # timeout
    with pytest.raises((TimeoutError, asyncio.TimeoutError)):
        await adm.wait("m", 0.01, 9.0, exclude=frozenset({0}))
    # cancellation of a waiter that was just granted gives the slot back
    assert adm.try_take(a)  # both copies busy: the waiter waits
    t = asyncio.create_task(adm.wait("m", 5, 10.0))
    await asyncio.sleep(0)
    assert not t.done()
    adm.release(b, 11.0)  # grants t
    assert b.in_flight == 1
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    assert b.in_flight == 0 and adm.try_take(b)
    adm.release(b, 12.0)
    adm.release(a, 12.0)
    assert a.in_flight == 0 and b.in_flight == 0 and hosts[0].in_flight == 0 and hosts[1].in_flight == 0


async def test_admission_down_host_not_granted_until_it_comes_back() -> None:
    hosts, res, (r,) = mk_fleet(1, cap=1)
    (a,) = hosts
    adm = Admission(hosts, res, queue_size=4)
    assert adm.try_take(r)
    t = asyncio.create_task(adm.wait("m", 5, 0.0))
    await asyncio.sleep(0)
    a.down = True
    assert adm.stranded("m") == 1  # its only copy is on a down host
    adm.release(r, 1.0)
    await asyncio.sleep(0)
    assert not t.done() and r.in_flight == 0
    assert not adm.try_take(r)
    assert adm.try_take(r, panic=True)  # panic: an ejected but reachable host serves
    adm.release(r, 1.5)
    await asyncio.sleep(0)
    assert not t.done()  # the waiter did not ask for panic
    a.down = a.unreachable = False
    assert adm.stranded("m") == 0
    adm.grant("m")
    assert (await t).resident is r


async def test_admission_the_host_cap_hands_slots_across_models() -> None:
    """A host at its cap holds back waiters of its other models too; the slot freed by one
    model goes to the oldest waiter of another resident model."""
    hosts = mk_hosts(1, cap=1)
    res = Residency(1, slots=[2])
    rm, rn = res.add(0, "m", LOADED, 0.0), res.add(0, "n", LOADED, 0.0)
    adm = Admission(hosts, res, queue_size=4)
    assert adm.try_take(rm) and not adm.try_take(rn)  # the host's cap, not n's slots
    t = asyncio.create_task(adm.wait("n", 5, 1.0))
    await asyncio.sleep(0)
    adm.release(rm, 2.0)
    assert (await t).resident is rn and hosts[0].in_flight == 1


async def test_admission_stale_waiters_do_not_pile_up_and_stranded_counts_only_live_ones() -> None:
    hosts, res, (a, b) = mk_fleet(2)
    adm = Admission(hosts, res, queue_size=2)
    adm.try_take(a)
    adm.try_take(b)
    for i in range(10):  # granted through B each time: nothing stale stays behind
        t = asyncio.create_task(adm.wait("m", 5, float(i)))
        await asyncio.sleep(0)
        adm.release(b, float(i))
        assert (await t).resident is b
    assert not adm.queues and adm.waiting == 0
    # a waiter that tried both copies is stranded: only a new copy elsewhere serves it
    t = asyncio.create_task(adm.wait("m", 5, 20.0, exclude=frozenset({0, 1})))
    t2 = asyncio.create_task(adm.wait("m", 0.01, 20.0, exclude=frozenset({0, 1})))
    await asyncio.sleep(0.05)
    assert t2.done() and adm.queued("m") == 1 and adm.stranded("m") == 1
    assert adm.by_model(21.0) == {"m": {"waiting": 1, "oldest_s": 1.0}}
    adm.close()
    with pytest.raises(QueueFull):
        await t
    assert not adm.queues and adm.waiting == 0
    with pytest.raises(QueueFull):
        await adm.wait("m", 5, 22.0)


def test_health_ejects_and_doubles_cooldown() -> None:
    clock = [100.0]
    (h,) = hosts = mk_hosts(1)
    health = Health(hosts, HealthPolicy(eject_after_failures=2, eject_cooldown=1.0, eject_max_cooldown=3.0),
                    clock=lambda: clock[0])
    assert not health.record_failure(h, CONNECT)
    health.record_success(h)
    assert not health.record_failure(h, CONNECT)
    assert health.record_failure(h, TIMEOUT)
    assert h.down and h.ejected and not h.unreachable
    assert h.ejected_until - clock[0] == 1.0
    health.probe_failed(h)  # the probe after the cooldown fails: next one later
    assert h.unreachable and h.ejected_until - clock[0] == 2.0
    health.probe_failed(h)
    assert h.ejected_until - clock[0] == 3.0  # doubled, capped
    assert health.reinstate(h) and not h.down and not h.ejected and not h.unreachable
    assert not health.reinstate(h)
    assert health.ejections == {(h.name, TIMEOUT): 1, (h.name, UNREACHABLE): 1}


def test_5xx_never_eject_by_count() -> None:
    """Random runner failures hit every host alike: counting 5xx in a row would eject a
    whole fleet that fails 30% at random.  Only gateway-side failures eject by count."""
    (h,) = hosts = mk_hosts(1)
    health = Health(hosts, HealthPolicy(eject_after_failures=2))
    for _ in range(20):
        assert not health.record_failure(h, HOST_5XX, "llama runner process has terminated")
    assert not h.down and h.window_failed == 20
    assert not health.record_failure(h, RESET) and health.record_failure(h, RESET)


def test_unattributed_5xx_never_eject_in_a_row() -> None:
    """A 5xx that may be the request's fault does not count toward "failures in a row":
    a client sending bad requests cannot eject the host that answers them."""
    (h,) = hosts = mk_hosts(1)
    health = Health(hosts, HealthPolicy(eject_after_failures=2))
    for _ in range(50):
        health.record_unattributed(h)
    assert not h.down and h.consecutive_failures == 0 and h.window_failed == 50


def test_failure_rate_detection_ejects_the_outlier_not_a_uniform_fleet() -> None:
    hosts = mk_hosts(4)
    health = Health(hosts, HealthPolicy(min_requests=10))
    # every host fails 30% (a bad client, or flaky runners everywhere): nobody stands out
    for h in hosts:
        h.window_ok, h.window_failed = 14, 6
    assert health.evaluate() == [] and not any(h.down for h in hosts)
    assert all(h.window_ok == h.window_failed == 0 for h in hosts)  # a new interval
    # one host fails 80% while its peers fail 10%: it is ejected
    for h in hosts:
        h.window_ok, h.window_failed = 18, 2
    hosts[2].window_ok, hosts[2].window_failed = 4, 16
    assert health.evaluate() == [hosts[2]] and hosts[2].ejected
    assert health.ejections == {(hosts[2].name, FAILURE_RATE): 1}
    # too few answers to judge: no ejection however bad
    hosts[3].window_ok, hosts[3].window_failed = 0, 5
    assert health.evaluate() == [] and not hosts[3].down


def test_ejection_is_bounded_but_unreachable_hosts_are_not() -> None:
    hosts = mk_hosts(4)
    health = Health(hosts, HealthPolicy(eject_after_failures=1, max_ejection_percent=50))
    assert health.record_failure(hosts[0], CONNECT)
    assert health.record_failure(hosts[1], CONNECT)
    assert not health.record_failure(hosts[2], CONNECT)  # 2 of 4 ejected already
    assert not hosts[2].down and health.skipped == {hosts[2].name: 1}
    health.probe_failed(hosts[3])  # unreachable: not an ejection, never bounded
    assert hosts[3].down and hosts[3].unreachable
    health.reinstate(hosts[0])
    assert health.record_failure(hosts[2], CONNECT)  # room again
    # at least one host may always be ejected
    (solo,) = one = mk_hosts(1)
    assert Health(one, HealthPolicy(eject_after_failures=1, max_ejection_percent=0)).record_failure(solo, RESET)


def test_hash_ring_is_stable_and_balanced() -> None:
    hosts = mk_hosts(4)
    r1, r2 = HashRing(hosts), HashRing(mk_hosts(4))
    keys = [f"k{i}".encode() for i in range(2000)]
    assert [r1.walk(k) for k in keys] == [r2.walk(k) for k in keys]
    counts = [0] * 4
    for k in keys:
        counts[r1.walk(k)[0]] += 1
    assert min(counts) > 250  # no host starves
    assert stable_hash(b"x") == stable_hash(b"x")  # not Python's randomised hash()
    # removing a host only moves its own keys
    r3 = HashRing(hosts[:3])
    moved = sum(1 for k in keys if r1.walk(k)[0] != 3 and r3.walk(k)[0] != r1.walk(k)[0])
    assert moved == 0


def test_affinity_prefix_memory_and_bounded_load() -> None:
    hosts = mk_hosts(3, cap=4)
    s = AffinityStrategy(hosts)
    msgs = [{"role": "user", "content": "hello"}]
    p1 = RoutingKey("m", prefixes=chat_prefix_hashes("m", msgs))
    first = s.order(hosts, p1)[0]
    s.observe(p1, first)
    longer = [*msgs, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "more"}]
    p2 = RoutingKey("m", prefixes=chat_prefix_hashes("m", longer))
    assert s.order(hosts, p2)[0] is first
    # overload the home host: it moves to the end
    first.in_flight = 4
    assert s.order(hosts, p2)[0] is not first
    assert chat_prefix_hashes("m", "not a list") == []


def test_round_robin_and_factory() -> None:
    hosts = mk_hosts(3)
    rr = RoundRobinStrategy()
    firsts = [rr.order(hosts, RoutingKey("m"))[0].index for _ in range(6)]
    assert firsts == [0, 1, 2, 0, 1, 2]
    for name in ("least-loaded", "p2c", "round-robin", "latency", "affinity"):
        assert make_strategy(name, hosts).name == name
    with pytest.raises(ValueError):
        make_strategy("nope", hosts)


def test_cache_keys() -> None:
    c = ResponseCache(16, None)
    k1 = c.key_for(ROUTES["/api/embed"], "m:latest", {"model": "m", "input": "x", "keep_alive": 5})
    k2 = c.key_for(ROUTES["/api/embed"], "m:latest", {"input": "x", "model": "m"})
    assert k1 == k2
    assert c.key_for(ROUTES["/api/chat"], "m:latest", {"model": "m"}) is None  # not opted in
    g = ResponseCache(16, None, cache_generate=True)
    assert g.key_for(ROUTES["/api/chat"], "m", {"model": "m", "options": {"temperature": 0, "seed": 1}}) is not None
    assert g.key_for(ROUTES["/api/chat"], "m", {"model": "m", "options": {"temperature": 0.5, "seed": 1}}) is None
    assert g.key_for(ROUTES["/v1/chat/completions"], "m", {"model": "m", "temperature": 0, "seed": 1}) is not None
    assert g.key_for(ROUTES["/v1/chat/completions"], "m", {"model": "m", "temperature": 0}) is None
    assert ResponseCache(0, None).key_for(ROUTES["/api/embed"], "m", {}) is None


def test_path_parameters_are_validated() -> None:
    from ollamamax.dispatch.broadcast import DIGEST as _DIGEST
    from ollamamax.dispatch.merged import MODEL_IN_PATH as _MODEL_IN_PATH

    assert _DIGEST.fullmatch("sha256:" + "a" * 64)
    assert not _DIGEST.fullmatch("../pull")
    assert not _DIGEST.fullmatch("sha256:" + "a" * 63)
    assert _MODEL_IN_PATH.fullmatch("llama3.2:latest")
    assert _MODEL_IN_PATH.fullmatch("me/model:7b")
    for bad in ("../api/tags", "a/../b", "x?y", "..", "a/./b"):
        assert not _MODEL_IN_PATH.fullmatch(bad), bad


@pytest.mark.parametrize("name", ["least-loaded", "p2c", "round-robin", "latency", "affinity"])
def test_a_strategys_first_is_the_head_of_its_order(name: str) -> None:
    """The router asks ``first`` (no full sort); ``order`` is the definition.  Bug caught:
    a ``first`` shortcut that disagrees with ``order`` (e.g. max instead of min, weights
    dropped, ties broken the other way)."""
    import random

    hosts = [HostState(index=i, config=HostConfig(f"http://10.0.0.{i}:11434", weight=1 + i % 3),
                       name=f"h{i}", url=f"http://10.0.0.{i}:11434", capacity=8) for i in range(7)]
    rng = random.Random(4)
    for _ in range(200):
        for h in hosts:
            h.in_flight = rng.randrange(9)
        cands = rng.sample(hosts, rng.randrange(1, len(hosts) + 1))
        key = RoutingKey("m", prefixes=[bytes([rng.randrange(4)])] * 3)
        a, b = make_strategy(name, hosts), make_strategy(name, hosts)
        if name == "p2c":  # the same random draws for both
            a.rng, b.rng = random.Random(9), random.Random(9)  # type: ignore[attr-defined]
        assert a.first(list(cands), key) is b.order(list(cands), key)[0]


def test_a_refresh_older_than_an_unload_does_not_bring_the_model_back() -> None:
    # bug caught: a /api/ps answer that left the host before the scheduler's unload was
    # answered listed the evicted model, the residency took it back as loaded, and the
    # router sent its requests there: the host reloaded it in place of the model just
    # loaded for a batch (in the simulator, a third of the fleet's loads were these)
    res = Residency(1, room=[1])
    r = res.add(0, "a", LOADED, 0.0)
    res.start_unload(r, 10.0)
    res.forget(r, 10.5)  # the unload was answered at 10.5
    b = res.start_load(0, "b", 10.5, 1.5)
    res.reconcile(0, ["a"], 10.2, 11.0)  # a refresh begun at 10.2 answers at 11.0, listing a
    assert res.get(0, "a") is None  # the stale listing did not bring it back
    assert res.get(0, "b").state == "loading"
    res.loaded(b, 12.0)  # b's load answered
    res.reconcile(0, ["a"], 12.5, 12.6)  # a refresh begun after a left, and after the switch
    assert res.get(0, "a") is not None and res.get(0, "a").state == LOADED  # the host did reload a


def test_learned_slots_outlive_a_copy_and_seed_a_new_model_on_the_host() -> None:
    # bug caught: every reload of a model started again from one slot and re-probed its
    # way up, so a switching host served its batches at half its parallelism
    res = Residency(2)
    r = res.add(0, "a", LOADED, 0.0)
    r.probe_result(True, 1.0)  # learned: 2 slots
    res.start_unload(r, 5.0)
    res.forget(r, 5.5)
    assert res.start_load(0, "a", 9.0, 1.5).slots == 2  # the same model again: as learned
    assert res.add(0, "b", LOADED, 9.0).slots == 2  # a model new to the host: its parallelism
    assert res.add(1, "a", LOADED, 9.0).slots == 1  # another host: nothing learned there
    fixed = Residency(1, slots=[3])
    g = fixed.add(0, "a", LOADED, 0.0)
    fixed.forget(g, 1.0)
    assert fixed.add(0, "a", LOADED, 2.0).slots == 3 and fixed.learned == [{}]  # configured: never learned


def test_an_unload_another_gateway_announced_but_never_made_is_undone_by_a_refresh() -> None:
    # bug caught: a model marked unloading because another replica said so (hearsay) stays
    # unloading for good when that replica gave its switch up: no request goes there any
    # more, and the host counts as switching, so this replica never plans on it again
    res = Residency(1, room=[1])
    r = res.add(0, "a", LOADED, 0.0)
    res.start_unload(r, 10.0, hearsay=True)
    res.reconcile(0, ["a"], 10.5, 11.0)  # too soon to tell: the unload may be on its way
    assert r.state == "unloading"
    res.reconcile(0, ["a"], 13.0, 13.2)  # still there well after: the unload never came
    assert r.state == LOADED and not r.hearsay
    own = res.add(0, "b", LOADED, 0.0)
    res.start_unload(own, 10.0)  # this gateway's own unload: its answer decides, not a refresh
    res.reconcile(0, ["b"], 13.0, 13.2)
    assert own.state == "unloading"


def test_a_probe_that_cannot_tell_is_tried_again_and_only_a_run_of_them_backs_off() -> None:
    # bug caught: a probe judged before the copy's first answers gave a time to compare
    # with counted as "the host queued it" and stopped probing for 30 s, so a copy loaded
    # for a batch served it at one slot while its host had two
    from ollamamax.fleet.residency import PROBE_BACKOFF, PROBE_TRIES

    res = Residency(1)
    r = res.add(0, "a", LOADED, 0.0)
    for i in range(PROBE_TRIES - 1):
        r.probing = True
        r.probe_result(None, 1.0 + i)
        assert r.slots == 1 and r.probe_after == 1.0 + i and not r.probing  # probe again now
    r.probe_result(None, 5.0)  # a run of them: the host never showed it runs one more
    assert r.slots == 1 and r.probe_after == 5.0 + PROBE_BACKOFF
    r.probe_result(True, 40.0)
    assert r.slots == 2 and r.probe_after == 40.0 and r.probe_misses == 0


async def test_waiters_left_when_a_copy_loads_are_handed_one_probe() -> None:
    # bug caught: only a request arriving at a full copy could probe, never one already
    # waiting, so the batch a load was made for went out one slot at a time until a new
    # arrival happened to probe (p99 of small fleets above consistent hashing's)
    hosts = mk_hosts(1, 8)
    res = Residency(1)
    r = res.start_load(0, "m", 0.0, 1.5)
    adm = Admission(hosts, res, queue_size=8, clock=lambda: 2.0)
    waits = [asyncio.create_task(adm.wait("m", 5, 0.1 * i)) for i in range(3)]
    await asyncio.sleep(0)
    res.loaded(r, 1.5)
    adm.grant("m")
    first, second = await waits[0], await waits[1]
    assert first.resident is r and not first.probe  # its one learned slot
    assert second.resident is r and second.probe and r.probing  # one above it, to learn
    assert not waits[2].done() and r.in_flight == 2 and hosts[0].in_flight == 2
    adm.release(r, 3.0)  # the first ends: the probe holds the copy's one slot, nobody moves
    await asyncio.sleep(0)
    assert not waits[2].done()
    r.probe_result(True, 3.1)  # it ran alongside: two slots
    adm.grant("m")
    assert (await waits[2]) == (r, False)
    # without a clock (as before), waiters never probe
    hs2, res2 = mk_hosts(1, 8), Residency(1)
    r2 = res2.add(0, "m", LOADED, 0.0)
    adm2 = Admission(hs2, res2, queue_size=8)
    assert adm2.try_take(r2)
    w = asyncio.create_task(adm2.wait("m", 5, 1.0))
    await asyncio.sleep(0)
    assert not w.done() and not r2.probing
    w.cancel()


def test_an_explored_host_that_evicted_a_model_a_refresh_saw_go_first_has_known_room() -> None:
    # bug caught: the host evicted another model than the one named, a refresh saw it go
    # before the exploring load's own check, and that check (nothing it still believed
    # loaded was missing) took the host for one with room for one more: room 3 on a
    # 2-model host, and every later load there evicted a model the gateway sent requests to
    res = Residency(1)
    res.room_explored(0, 2)  # the first exploring load: both stayed
    assert res.room == [2] and res.room_known == [False]
    res.room_explored(0, 2)  # the second: still two listed, whichever went
    assert res.room == [2] and res.room_known == [True]
    fixed = Residency(1, room=[1])
    fixed.room_explored(0, 3)
    assert fixed.room == [1]  # configured: not learned


def test_a_model_being_switched_out_is_not_taken_back_while_the_switch_runs() -> None:
    # bug caught (two replicas): the host answers an unload at once but keeps a model that
    # still serves requests (the other replica's); a refresh listed it, the residency took
    # it back as loaded, both replicas routed more requests to it, and the load it was
    # evicted for waited in the host 7 s and more, behind a model that never went idle
    res = Residency(1)
    a = res.add(0, "a", LOADED, 0.0)
    res.start_unload(a, 10.0)
    res.forget(a, 10.1)  # the unload was answered
    b = res.start_load(0, "b", 10.1, 1.5)
    res.reconcile(0, ["a"], 10.5, 10.6)  # begun after the answer, and still lists a: draining
    assert res.get(0, "a") is None and b.state == "loading"
    res.reconcile(0, ["a", "b"], 12.0, 12.1)  # b is loaded: a stays beside it, so room for two
    assert res.get(0, "a") is not None and b.state == LOADED and res.room[0] == 2
    # the same for a switch another replica announced (its load joined, its victim hearsay)
    other = Residency(1)
    x = other.add(0, "x", LOADED, 0.0)
    other.start_unload(x, 10.0, hearsay=True)
    other.start_load(0, "y", 10.0, 1.5, hearsay=True)
    other.reconcile(0, ["x"], 13.0, 13.1)  # well past HEARSAY_UNLOAD, but the switch runs
    assert x.state == "unloading"
