"""Probe: `ollamamax serve` under `ulimit -n 1024` (soft = hard) with N idle client
connections, then new clients; prints what they got and whether any host was ejected.

    python tools/probe_descriptors.py [SOURCE_TREE [N_IDLE]]     (defaults: this tree, 1100)

SOURCE_TREE is the checkout whose src/ is served (an older commit's worktree for a before /
after comparison); 3 emulated hosts run in this process.  Loopback only; the gateway is
stopped with SIGTERM at the end.
"""
import asyncio
import json
import os
import re
import sys
from pathlib import Path

TREE = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parents[1])
N_IDLE = int(sys.argv[2]) if len(sys.argv) > 2 else 1100
sys.path.insert(0, TREE + "/src")
from ollamamax.testing import FakeOllama


async def req(port, raw, timeout=10.0):
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        w.write(raw)
        line = await asyncio.wait_for(r.readuntil(b"\r\n"), timeout)
        w.close()
        return line.split(b" ", 2)[1].decode()
    except asyncio.TimeoutError:
        return "timeout"
    except (ConnectionError, asyncio.IncompleteReadError) as e:
        return type(e).__name__

async def status(r, w):
    w.write(b"GET /ollamamax/status HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await r.readuntil(b"\r\n\r\n")
    n = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    return json.loads(await r.readexactly(n))

async def main():
    hosts = [FakeOllama(models=["llama3.2"], load_delay=0, tokens_per_sec=0, num_parallel=4,
                        host_id=f"h{i}") for i in range(3)]
    for h in hosts:
        await h.start()
    args = " ".join(f"--backend {h.url}" for h in hosts)
    env = dict(os.environ, PYTHONPATH=TREE + "/src")
    proc = await asyncio.create_subprocess_shell(
        f"ulimit -n 1024 && exec {sys.executable} -m ollamamax serve {args} --listen 127.0.0.1:0 --log-level info",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    line = await proc.stdout.readline()
    port = int(re.search(rb":(\d+) ->", line).group(1))
    gen = json.dumps({"model": "llama3.2", "prompt": "hi", "stream": False}).encode()
    post = (b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(gen)) + gen
    watch = await asyncio.open_connection("127.0.0.1", port)
    idle = []
    for _ in range(N_IDLE):
        idle.append((await asyncio.open_connection("127.0.0.1", port))[1])
    await asyncio.sleep(3)
    a = await asyncio.gather(*(req(port, post) for _ in range(20)))
    print(f"{N_IDLE} idle connections; 20 new clients got:", {k: a.count(k) for k in set(a)})
    for w in idle[:N_IDLE // 2]:
        w.close()
    await asyncio.sleep(1)
    b = await asyncio.gather(*(req(port, post) for _ in range(50)))
    print(f"after {N_IDLE // 2} idle clients left, 50 new clients got:", {k: b.count(k) for k in set(b)})
    try:
        st = await asyncio.wait_for(status(*watch), 10)
        print("hosts healthy:", [h["healthy"] for h in st["hosts"]], "ejections:", st["ejections"],
              "http:", st.get("http"))
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
        print("status failed:", type(e).__name__)
    proc.terminate()
    await proc.wait()
    err = (await proc.stderr.read()).decode()
    print("\n".join(l for l in err.splitlines() if "descriptor limit" in l or "eject" in l.lower())[:2000])
    for h in hosts:
        await h.stop()

asyncio.run(main())
