"""Leak checks in a fresh subprocess: RSS after 1M put/get pairs (plus blocking calls and
queue churn), weakrefs after drop."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ollamamax

# the directory holding the ollamamax being tested (site-packages in CI, src/ in dev),
# so subprocesses run the same build (native modules included) as this process
SRC = str(Path(ollamamax.__file__).resolve().parents[1])

SCRIPT = textwrap.dedent(
    """
    import gc, os, sys, weakref
    from ollamamax.structures import ring as _ring

    ns = _ring.IMPLEMENTATIONS[sys.argv[1]]
    if ns is None:
        print("SKIP")
        raise SystemExit(0)
    page = os.sysconf("SC_PAGE_SIZE")

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    class Obj:
        __slots__ = ("__weakref__", "n")
        def __init__(self, n):
            self.n = n

    def churn(q, n):
        put, get = q.try_put, q.try_get
        for i in range(n):
            put(Obj(i))
            get()
        for i in range(n // 1000):
            q.put_many([Obj(j) for j in range(100)])
            q.get_many(100)
        q.put_many(Obj(j) for j in range(10))
        q.get_many(10)
        try:
            q.get_nowait()
        except ns.QueueEmpty:
            pass
        for _ in range(q.capacity):
            q.put_nowait(Obj(0))
        for _ in range(1000):
            try:
                q.put_nowait(Obj(1))
            except ns.QueueFull:
                pass
        q.get_many(q.capacity)
        put, get = q.put, q.get
        for i in range(n // 10):
            put(Obj(i))
            get(timeout=1.0)
        for i in range(n // 1000):
            try:
                q.get(timeout=0)
            except ns.QueueEmpty:
                pass
            assert q.get_many(5, timeout=0.0) == []
            r = ns.RingQueue(2)  # each queue allocates (and must free) its wake-up locks
            r.put(Obj(0), timeout=None)
            r.put_many([Obj(1), Obj(2)], timeout=0.0)
            try:
                r.put(Obj(3), timeout=0)
            except ns.QueueFull:
                pass
            r.get_many(2, timeout=None)
        for _ in range(n // 10):
            ns.RingQueue(2)  # 100k queues: leaked locks would show in RSS

    q = ns.RingQueue(1024)
    churn(q, 100_000)  # warm up allocators
    gc.collect()
    before = rss()
    churn(q, 1_000_000)
    gc.collect()
    grown = rss() - before

    objs = [Obj(i) for i in range(500)]
    refs = [weakref.ref(o) for o in objs]
    q2 = ns.RingQueue(1000)
    q2.put_many(objs)
    q3 = ns.RingQueue(7)
    for o in objs[:7]:
        q3.put_nowait(o)
    del objs, o
    alive_inside = sum(r() is not None for r in refs)
    del q2, q3
    gc.collect()
    alive_after = sum(r() is not None for r in refs)
    print(grown, alive_inside, alive_after)
    """
)


@pytest.mark.parametrize("kind", ["c", "py"], ids=["native", "pure"])
@pytest.mark.timeout(240)
def test_no_leak_in_subprocess(kind: str) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, kind],
        capture_output=True,
        text=True,
        timeout=200,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip()
    if out == "SKIP":
        pytest.skip("native _ring_c not built")
    grown, alive_inside, alive_after = map(int, out.split())
    assert alive_inside == 500
    assert alive_after == 0, "objects dropped with the queue were not freed"
    assert grown < 4 * 1024 * 1024, f"RSS grew by {grown / 1e6:.1f} MB over 1M put/get pairs"
