"""Memory of a proxy per idle upstream connection and per in-flight stream.

    python memprobe.py idle    --url http://127.0.0.1:P --pid PID --backend-ports B1,B2 --n 256
    python memprobe.py streams --url http://127.0.0.1:P --pid PID --backend-ports B1,B2 --n 256

Both read the proxy's RSS (``VmRSS`` of /proc/PID/status) before and after, and count the
proxy's ESTABLISHED TCP sockets to the backend ports (its fds matched against
/proc/net/tcp), so the divisor is the number of upstream connections really opened.

``idle``: warm-up (16 concurrent requests, twice), then N concurrent non-streaming
requests, each on its own client connection with ``Connection: close``.  The backends
must be slow enough (e.g. emulator at 4 tokens/s) that all N overlap, so the proxy opens
N upstream connections; when all have been answered and the client sockets are closed,
those upstream connections sit idle in the proxy's keep-alive pool.
-> (RSS after - RSS before) / (new upstream connections).

``streams``: warm-up (16 streams opened and dropped, twice), then N streamed requests held open against a very slow
backend (1 token/s, long answers): once every stream has delivered its first line the
RSS is read, then every client socket is closed.
-> (RSS while holding - RSS before) / N   (includes the client-side connection, the
request state and the upstream connection of each stream).

Prints one JSON object.  Every wait is bounded (``--timeout``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "Why is the sky blue?"}]}


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def upstream_conns(pid: int, ports: set[int]) -> int:
    """ESTABLISHED TCP sockets of ``pid`` whose remote port is one of ``ports``."""
    inodes = _socket_inodes(pid)
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] != "01":  # ESTABLISHED
                        continue
                    rport = int(parts[2].rsplit(":", 1)[1], 16)
                    if rport in ports and parts[9] in inodes:
                        n += 1
        except FileNotFoundError:
            continue
    return n


def _request(host: str, port: int, body: bytes, path: str = "/api/chat") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


async def _one_whole(host: str, port: int, body: bytes) -> int:
    r, w = await asyncio.open_connection(host, port)
    try:
        w.write(_request(host, port, body))
        data = await r.read()  # until EOF (Connection: close)
    finally:
        w.close()
        await w.wait_closed()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status


async def _open_stream(host: str, port: int, body: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    r, w = await asyncio.open_connection(host, port)
    w.write(_request(host, port, body))
    head = await r.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    buf = b""
    while b'"done"' not in buf:  # first NDJSON line (inside the first chunk)
        chunk = await r.read(65536)
        if not chunk:
            break
        buf += chunk
    return r, w, status


async def _drain(r: asyncio.StreamReader) -> None:
    while await r.read(65536):  # keep reading so the proxy never blocks on us
        pass


async def _settle(pid: int) -> int:
    await asyncio.sleep(1.0)
    return rss_kib(pid)


async def run(a: argparse.Namespace) -> dict:
    from urllib.parse import urlsplit

    u = urlsplit(a.url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    ports = {int(p) for p in a.backend_ports.split(",")}
    whole = json.dumps(dict(CHAT, stream=False)).encode()
    streamed = json.dumps(dict(CHAT, stream=True)).encode()
    pid, n = a.pid, a.n

    async def whole_batch(k: int) -> list[int]:
        return await asyncio.gather(*(_one_whole(host, port, whole) for _ in range(k)))

    for _ in range(2):  # warm-up: the code paths run once, the allocator has its arenas
        if a.mode == "idle":
            st = await whole_batch(16)
        else:  # 16 streams opened, first line read, then dropped (cancels them upstream)
            held = await asyncio.gather(*(_open_stream(host, port, streamed) for _ in range(16)))
            st = [s for _, _, s in held]
            for _, w, _ in held:
                w.close()
        if any(s != 200 for s in st):
            raise RuntimeError(f"warm-up answered {st}")
    rss0 = await _settle(pid)
    conns0 = upstream_conns(pid, ports)
    t0 = time.monotonic()
    if a.mode == "idle":
        st = await whole_batch(n)
        bad = sum(s != 200 for s in st)
        rss1 = await _settle(pid)
        conns1 = upstream_conns(pid, ports)
        opened = conns1 - conns0
        return {
            "mode": "idle", "n": n, "bad": bad, "rss0_kib": rss0, "rss1_kib": rss1,
            "upstream_conns_before": conns0, "upstream_conns_after": conns1,
            "seconds": round(time.monotonic() - t0, 2),
            "kib_per_conn": round((rss1 - rss0) / opened, 2) if opened > 0 else None,
        }
    held = await asyncio.gather(*(_open_stream(host, port, streamed) for _ in range(n)))
    drains = [asyncio.ensure_future(_drain(r)) for r, _, _ in held]
    bad = sum(s != 200 for _, _, s in held)
    rss1 = await _settle(pid)
    conns1 = upstream_conns(pid, ports)
    for d in drains:
        d.cancel()
    for _, w, _ in held:
        w.close()
    await asyncio.gather(*drains, return_exceptions=True)
    return {
        "mode": "streams", "n": n, "bad": bad, "rss0_kib": rss0, "rss1_kib": rss1,
        "upstream_conns_before": conns0, "upstream_conns_during": conns1,
        "seconds": round(time.monotonic() - t0, 2),
        "kib_per_stream": round((rss1 - rss0) / n, 2),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=("idle", "streams"))
    p.add_argument("--url", required=True)
    p.add_argument("--pid", type=int, required=True, help="proxy process whose RSS is read")
    p.add_argument("--backend-ports", required=True, help="comma-separated backend ports")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--timeout", type=float, default=60.0)
    a = p.parse_args()
    print(json.dumps(asyncio.run(asyncio.wait_for(run(a), a.timeout))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
