"""``tools/bench_fleet.py`` works end to end: a tiny seeded scenario through real processes.

Two emulated hosts with two models, 5 s of traffic at 2 requests/s with fast tokens,
through ``ollamamax serve`` only (the nginx targets in a slow test, when nginx is
installed). What would break: the script not starting or stopping its processes, the
replay not sending the trace's requests (count, models), continued turns sent without
their history (their prompts would be no longer than a first turn's), hosts not
identified from the response headers, model loads not read from the hosts, the JSON
or the markdown table missing. Figures are not asserted (no wall-clock asserts).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import ollamamax
from ollamamax.testing.workload import make_trace, parse_scenario

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "bench_fleet.py"
SCENARIO = ("hosts=2,models=2,duration=5,rate=2,tokens_per_sec=1000,load_delay=0.2,"
            "continue_share=0.8,min_gap=1,seed=5")  # 11 requests, 5 continued (a third turn too)

pytestmark = [pytest.mark.timeout(240),
              pytest.mark.skipif(sys.platform != "linux", reason="the benchmark's pinning and /proc are Linux"),
              pytest.mark.skipif(not SCRIPT.exists(), reason="tools/ is not next to the tests")]


def _free_base(n: int) -> int:
    """A port P with P..P+n-1 free on loopback (checked by binding each)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n >= 65535:
            continue
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    pytest.skip("no run of free ports")


def _run(tmp_path: Path, targets: str) -> tuple[dict, str]:
    out = tmp_path / "fleet.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMAMAX_") or k == "OLLAMAMAX_NO_EXTENSIONS"}
    env["PYTHONPATH"] = str(Path(ollamamax.__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--scenario", SCENARIO, "--targets", targets, "--json", str(out),
         "--base-port", str(_free_base(3)), "--timeout", "30", "--quiet"],
        capture_output=True, text=True, timeout=200, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), proc.stdout


def _check_target(doc: dict, name: str) -> None:
    trace = make_trace(parse_scenario(SCENARIO))
    t = doc["targets"][name]
    outs = t["outcomes"]
    f = t["figures"]
    assert [(o["model"], o["conversation"], o["turn"]) for o in outs] == [
        (r.model, r.conversation, r.turn) for r in trace]
    assert f["errors"] == 0, f["error_samples"]
    assert all(o["ttft"] is not None and 0 < o["ttft"] <= o["total"] for o in outs)
    assert {o["host"] for o in outs} <= {"h0", "h1"}
    assert sum(f["served_per_host"].values()) == len(trace)
    # the hosts' own counts: every request served, at least one load per model requested
    served = sum(s["totals"]["served"] for s in t["host_stats"])
    assert served == len(trace)
    assert f["model_loads"] >= len({r.model for r in trace})
    # a continued turn carries its history (all earlier turns, unless one was still running):
    # its prompt is longer than the first turn's by at least the previous reply (20 tokens)
    first = {o["conversation"]: o["prompt_eval_count"] for o in outs if o["turn"] == 0}
    later = [o for o in outs if o["turn"] > 0]
    assert later, "the scenario should have continued turns"
    assert all(o["history_turns"] == o["turn"] or o["overlapped"] for o in later)
    with_history = [o for o in later if o["history_turns"]]
    assert with_history
    assert all(o["prompt_eval_count"] > first[o["conversation"]] + 20 * o["history_turns"] for o in with_history)

def test_bench_fleet_through_the_gateway(tmp_path: Path) -> None:
    doc, stdout = _run(tmp_path, "ollamamax")
    assert doc["scenario"]["hosts"] == 2 and doc["trace_summary"]["requests"] == len(
        make_trace(parse_scenario(SCENARIO)))
    _check_target(doc, "ollamamax")
    assert doc["targets"]["ollamamax"]["gateway_status"]["hosts"]
    assert "| target | TTFT p50 |" in stdout and "| ollamamax |" in stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed")
def test_bench_fleet_through_nginx(tmp_path: Path) -> None:
    doc, stdout = _run(tmp_path, "nginx-rr,nginx-hash")
    for name in ("nginx-rr", "nginx-hash"):
        _check_target(doc, name)
    # consistent hashing on X-Model: each model is served by one host only
    for m, hosts in _hosts_per_model(doc["targets"]["nginx-hash"]["outcomes"]).items():
        assert len(hosts) == 1, (m, hosts)
    assert "nginx-hash: the ring" in stdout


def _hosts_per_model(outs: list[dict]) -> dict[str, set[str]]:
    r: dict[str, set[str]] = {}
    for o in outs:
        r.setdefault(o["model"], set()).add(o["host"])
    return r


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nginx") is None or shutil.which("redis-server") is None
                    or not Path("/usr/lib/nginx/modules/ngx_stream_module.so").exists(),
                    reason="needs nginx with its stream module (libnginx-mod-stream) and redis-server")
def test_bench_fleet_through_two_replicas_and_redis(tmp_path: Path) -> None:
    """What would break: the replicas not started behind the L4 balancer, not given Redis,
    their claims or the fault watcher not reported, a process left running."""
    out = tmp_path / "fleet.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMAMAX_") or k == "OLLAMAMAX_NO_EXTENSIONS"}
    env["PYTHONPATH"] = str(Path(ollamamax.__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--scenario", SCENARIO, "--targets", "ollamamax,replicas:2:redis:kill-redis",
         "--json", str(out), "--base-port", str(_free_base(64)), "--timeout", "30", "--quiet"],
        capture_output=True, text=True, timeout=200, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    _check_target(doc, "replicas:2:redis:kill-redis")
    reps = doc["targets"]["replicas:2:redis:kill-redis"]["replicas"]
    assert reps["k"] == 2 and "redis_killed" in reps["events"] and "redis_restarted" in reps["events"]
    assert {s["replica"] for s in reps["samples"]} == {0, 1}
    assert "Several gateways behind nginx stream" in proc.stdout
