"""Processes of a fleet benchmark: emulated hosts, gateways and nginx, on loopback.

Owns :class:`Procs` (every process a run started, by PID, with its log; started under
``taskset`` when a CPU is given; stopped with SIGTERM, a bounded wait, then SIGKILL;
nothing else is ever signalled), the command lines of ``ollamamax mock`` and ``ollamamax
serve`` for a :class:`~ollamamax.testing.workload.Scenario`, and the nginx configurations
(round-robin and consistent hashing on the ``X-Model`` header; keep-alive upstream,
``proxy_buffering off``, as ``tools/bench_gateway/proxy.conf.in``). Readiness checks and
stats reads are bounded polls over plain HTTP (aiohttp).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

TREE = Path(__file__).resolve().parents[2]  # the source tree these tools belong to


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid


def tree_env(src: Path) -> dict[str, str]:
    """The environment of a child: ``src`` first on PYTHONPATH, no stray OLLAMAMAX_* settings
    (the native/pure switch excepted)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMAMAX_")}
    if "OLLAMAMAX_NO_EXTENSIONS" in os.environ:
        env["OLLAMAMAX_NO_EXTENSIONS"] = os.environ["OLLAMAMAX_NO_EXTENSIONS"]
    env["PYTHONPATH"] = str(src) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def has_native(src: Path) -> bool:
    return any((src / "ollamamax").glob("_*_c*.so")) or any((src / "ollamamax" / "structures").glob("_*_c*.so"))


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` and its descendants (clock ticks), 0 when gone."""
    total = 0
    todo = [pid]
    seen: set[int] = set()
    while todo and len(seen) < 256:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            f = stat.rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
            for task in Path(f"/proc/{p}/task").iterdir():
                kids = (task / "children").read_text().split()
                todo.extend(int(k) for k in kids)
        except (OSError, ValueError, IndexError):
            continue
    return total


class Procs:
    """Every process this run started; :meth:`stop_all` stops them, last started first."""

    def __init__(self, tmp: Path, cpu: int | None) -> None:
        self.tmp = tmp
        self.cpu = cpu
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], *, env: dict[str, str] | None = None) -> Proc:
        log = self.tmp / f"{name}.log"
        pre = ["taskset", "-c", str(self.cpu)] if self.cpu is not None else []
        with open(log, "wb") as out:
            popen = subprocess.Popen(pre + argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True)
        p = Proc(name, popen, log)
        self.procs.append(p)
        return p

    def log_tail(self, p: Proc, n: int = 30) -> str:
        try:
            return "\n".join(p.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    async def wait_ready(self, p: Proc, url: str, *, timeout: float = 30.0, check: Any = None) -> None:
        """Poll ``url`` (GET) until it answers 200 (and ``check(json)`` is true when given)."""
        deadline = time.monotonic() + timeout
        last = ""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
            while time.monotonic() < deadline:
                if p.popen.poll() is not None:
                    raise RuntimeError(f"{p.name} exited with {p.popen.returncode}; its log:\n{self.log_tail(p)}")
                try:
                    async with s.get(url) as r:
                        body = await r.read()
                        if r.status == 200 and (check is None or check(json.loads(body))):
                            return
                        last = f"{r.status} {body[:200]!r}"
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                    last = repr(exc)
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{p.name} not ready at {url} after {timeout:.0f} s ({last}); its log:\n{self.log_tail(p)}")

    async def wait_port(self, p: Proc, port: int, *, timeout: float = 10.0) -> None:
        """Wait until something accepts TCP connections on 127.0.0.1:``port`` (e.g. Redis)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if p.popen.poll() is not None:
                raise RuntimeError(f"{p.name} exited with {p.popen.returncode}; its log:\n{self.log_tail(p)}")
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError(f"{p.name} not listening on {port} after {timeout:.0f} s; its log:\n{self.log_tail(p)}")

    def stop(self, p: Proc, grace: float = 10.0) -> None:
        if p.popen.poll() is None:
            try:
                p.popen.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.popen.wait(grace)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait(5)
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in reversed(list(self.procs)):
            self.stop(p)


# ------------------------------------------------------------------------- command lines


def mock_argv(scenario: Any, port: int, host_id: str, *, models: tuple[str, ...] | None = None) -> list[str]:
    """``ollamamax mock`` for one host of ``scenario``; ``--prompt-eval-tps`` and ``--vram`` only
    when set (older emulators do not have them)."""
    s = scenario
    argv = [sys.executable, "-m", "ollamamax", "mock", "--port", str(port), "--host-id", host_id,
            "--models", ",".join(models or s.models), "--max-loaded-models", str(s.max_loaded_models),
            "--num-parallel", str(s.num_parallel), "--load-delay", str(s.load_delay),
            "--tokens-per-sec", str(s.tokens_per_sec), "--response-tokens", f"{s.response_tokens},{s.response_tokens}",
            "--seed", str(s.seed)]
    if s.prompt_eval_tps:
        argv += ["--prompt-eval-tps", str(s.prompt_eval_tps)]
    if s.vram:
        argv += ["--vram", str(s.vram)]
    return argv


def serve_argv(port: int, backends: list[str], extra: list[str]) -> list[str]:
    argv = [sys.executable, "-m", "ollamamax", "serve", "--listen", f"127.0.0.1:{port}", "--log-level", "warning"]
    for b in backends:
        argv += ["--backend", b]
    return argv + extra


def gateway_ready(n_hosts: int) -> Any:
    """A check of ``/ollamamax/status``: every host healthy and listing its models."""

    def check(doc: Any) -> bool:
        hosts = doc.get("hosts", []) if isinstance(doc, dict) else []
        return len(hosts) == n_hosts and all(h.get("healthy") and h.get("models") for h in hosts)

    return check


NGINX_CONF = """\
# {what} (tools/fleetbench/procs.py)
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx_body;
    proxy_temp_path {tmp}/nginx_tmp;
    fastcgi_temp_path {tmp}/nginx_fcgi;
    uwsgi_temp_path {tmp}/nginx_uwsgi;
    scgi_temp_path {tmp}/nginx_scgi;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    upstream ollama {{
{balance}{servers}
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location / {{
            proxy_pass http://ollama;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
        }}
    }}
}}
"""


def nginx_conf(tmp: Path, port: int, host_ports: list[int], *, hash_model: bool) -> str:
    """nginx round-robin, or ``hash $http_x_model consistent``, over the hosts. First-byte and
    send timeouts are 300 s, the gateway's first-byte timeout, so neither proxy cuts a long
    wait the other would not."""
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in host_ports)
    balance = "        hash $http_x_model consistent;\n" if hash_model else ""
    what = "nginx, consistent hash on X-Model" if hash_model else "nginx, round-robin"
    return NGINX_CONF.format(what=what, tmp=tmp, port=port, servers=servers, balance=balance)


def nginx_argv(tmp: Path, conf: Path) -> list[str]:
    return ["nginx", "-p", str(tmp), "-e", str(tmp / "nginx.err"), "-c", str(conf)]


async def get_json(url: str, timeout: float = 5.0) -> Any:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s, s.get(url) as r:
            if r.status != 200:
                return None
            return await r.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return None
