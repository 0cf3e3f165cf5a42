"""Several gateways behind an L4 balancer, for ``tools/bench_fleet.py --replicas``.

A target ``replicas:K:redis`` (or ``:alone``, and with ``:kill-redis`` or ``:kill-replica``)
runs K ``ollamamax serve`` processes in front of the same hosts, an nginx ``stream`` block
balancing TCP connections round-robin over them (nginx's stream module: Debian's
``libnginx-mod-stream``), and, with ``redis``, one ``redis-server`` they all use.  During the
replay a watcher polls every replica's ``/ollamamax/status`` (its Redis state and how many
other replicas it sees) and carries out the fault, if any:

* ``kill-redis``: Redis is SIGKILLed at :data:`REDIS_DOWN_AT` of the trace and started again
  (empty) at :data:`REDIS_BACK_AT`;
* ``kill-replica``: the last replica is SIGKILLed at :data:`REPLICA_KILL_AT`; requests in
  flight on its connections fail (the L4 balancer does not retry them), new connections go
  to the others.

Loopback only; every process is started through ``Procs`` (stopped by PID).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

from . import procs as P

REDIS_DOWN_AT = 0.33  # shares of the trace's duration
REDIS_BACK_AT = 0.58
REPLICA_KILL_AT = 0.5
WATCH_EVERY = 0.5  # seconds between two polls of the replicas' status
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"

STREAM_CONF = """\
# nginx stream: round-robin per TCP connection over {n} gateways (tools/fleetbench/replicas.py)
{load}daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx-stream.pid;
error_log {tmp}/nginx-stream.err warn;
events {{ worker_connections 4096; }}
stream {{
    upstream gateways {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        proxy_pass gateways;
        proxy_connect_timeout 2s;
        proxy_timeout 300s;
    }}
}}
"""


def parse(target: str) -> tuple[int, bool, str]:
    """``replicas:K:redis|alone[:kill-redis|:kill-replica]`` -> (K, redis, fault)."""
    parts = target.split(":")
    if len(parts) not in (3, 4) or parts[0] != "replicas" or not parts[1].isdigit() or int(parts[1]) < 1 \
            or parts[2] not in ("redis", "alone"):
        raise ValueError(f"not a replicas target: {target!r}")
    fault = parts[3] if len(parts) == 4 else ""
    if fault not in ("", "kill-redis", "kill-replica") or (fault == "kill-redis" and parts[2] != "redis") \
            or (fault == "kill-replica" and int(parts[1]) < 2):
        raise ValueError(f"bad fault in {target!r}")
    return int(parts[1]), parts[2] == "redis", fault


def label(target: str) -> str:
    k, redis, fault = parse(target)
    return f"ollamamax x{k} {'+ Redis' if redis else 'alone'}" + (f", {fault}" if fault else "")


def stream_available() -> str:
    """Empty when nginx can run a stream block here, else why not."""
    if not shutil.which("nginx"):
        return "nginx not found (apt-get install nginx-light libnginx-mod-stream)"
    if not Path(STREAM_MODULE).exists():
        return f"nginx's stream module is missing ({STREAM_MODULE}: apt-get install libnginx-mod-stream)"
    return ""


def stream_conf(tmp: Path, port: int, gateway_ports: list[int]) -> str:
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in gateway_ports)
    return STREAM_CONF.format(n=len(gateway_ports), load=f"load_module {STREAM_MODULE};\n", tmp=tmp, port=port,
                              servers=servers)


def redis_argv(port: int, tmp: Path) -> list[str]:
    d = tmp / f"redis-{port}"
    d.mkdir(exist_ok=True)
    return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(d), "--daemonize", "no", "--loglevel", "warning"]


class Watch:
    """Polls the replicas' status during a replay and carries out the fault at its time."""

    def __init__(self, procs: P.Procs, urls: list[str], duration: float, fault: str,
                 redis: tuple[P.Proc, list[str]] | None, victim: P.Proc | None) -> None:
        self.procs = procs
        self.urls = urls
        self.duration = duration
        self.fault = fault
        self.redis = redis
        self.victim = victim
        self.samples: list[dict[str, Any]] = []  # {t, replica, state, peers}
        self.events: dict[str, float] = {}

    async def run(self, t0: float) -> None:
        down_at = REDIS_DOWN_AT * self.duration if self.fault == "kill-redis" else None
        back_at = REDIS_BACK_AT * self.duration if self.fault == "kill-redis" else None
        kill_at = REPLICA_KILL_AT * self.duration if self.fault == "kill-replica" else None
        while True:  # cancelled when the replay ends
            t = time.monotonic() - t0
            if down_at is not None and t >= down_at and "redis_killed" not in self.events and self.redis:
                self.redis[0].popen.kill()
                self.events["redis_killed"] = t
            if back_at is not None and t >= back_at and "redis_restarted" not in self.events and self.redis:
                self.redis = (self.procs.start("redis-again", self.redis[1]), self.redis[1])
                self.events["redis_restarted"] = t
            if kill_at is not None and t >= kill_at and "replica_killed" not in self.events and self.victim:
                self.victim.popen.kill()
                self.events["replica_killed"] = t
            for i, url in enumerate(self.urls):
                if self.victim is not None and "replica_killed" in self.events and i == len(self.urls) - 1:
                    continue
                doc = await P.get_json(url + "/ollamamax/status", timeout=WATCH_EVERY)
                sh = (doc or {}).get("shared") or {}
                self.samples.append({"t": round(t, 2), "replica": i, "state": sh.get("state"),
                                     "peers": sh.get("peers")})
            await asyncio.sleep(WATCH_EVERY)

    def summary(self, k: int) -> dict[str, Any]:
        """When the replicas saw each change: Redis down and back (every live replica), a
        killed replica gone from the others' picture."""
        out: dict[str, Any] = dict(self.events)

        def first_time(after: float, pred: Any) -> float | None:
            by_t: dict[float, list[dict[str, Any]]] = {}
            for s in self.samples:
                if s["t"] >= after:
                    by_t.setdefault(s["t"], []).append(s)
            for t in sorted(by_t):
                if by_t[t] and all(pred(s) for s in by_t[t]):
                    return round(t - after, 2)
            return None

        if "redis_killed" in self.events:
            out["all_down_after_s"] = first_time(self.events["redis_killed"], lambda s: s["state"] == "down")
        if "redis_restarted" in self.events:
            out["all_up_again_after_s"] = first_time(self.events["redis_restarted"],
                                                     lambda s: s["state"] == "up" and s["peers"] == k - 1)
        if "replica_killed" in self.events:
            out["peer_gone_after_s"] = first_time(self.events["replica_killed"], lambda s: s["peers"] == k - 2)
        return out
