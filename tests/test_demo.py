"""``ollamamax demo``: runs, prints its tables, exits 0 (short durations here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ollamamax
from ollamamax.demo import _UNKNOWN_MODEL, run_demo

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(ollamamax.__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "ollamamax", "demo", *argv],
                          capture_output=True, text=True, env=env, timeout=90)


def test_demo_command_runs_and_prints_tables():
    r = _run("--duration", "3", "--requests", "40", "--seed", "3")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "per host" in out and "per model" in out
    for name in ("gpu-a", "gpu-b", "gpu-c", "llama3.2", "qwen3:8b", "nomic-embed-text", "gemma3"):
        assert name in out
    assert "killed" in out and "ttft p99 ms" in out
    assert "unexpected errors" not in out, out
    assert "progress:" in r.stderr  # the progress bar goes to stderr


def test_demo_rejects_bad_options():
    r = _run("--requests", "0")
    assert r.returncode == 2 and "must be positive" in r.stderr


async def test_demo_without_fault_serves_everything_exactly_once():
    res = await run_demo(duration=2.0, requests=40, seed=5, strategy="round-robin",
                         fault=False, progress=False)
    results = res["results"]
    assert len(results) == 44  # 40 + the 4 conversation turns
    known = [r for r in results if r.model != _UNKNOWN_MODEL]
    unknown = [r for r in results if r.model == _UNKNOWN_MODEL]
    assert unknown and all(r.status == 404 for r in unknown)
    assert all(r.status == 200 and r.error is None for r in known)
    assert res["ok"] == len(known)
    # the hosts' own counters agree with the client: nothing was served twice
    served = sum(s["totals"]["served"] for s in res["host_stats"].values())
    assert served == len(known)
    assert {r.host for r in known} == {"gpu-a", "gpu-b", "gpu-c"}
    assert len(res["conversation_hosts"]) == 4
    assert "per host" in res["report"]
