"""``ollamamax serve``: the gateway process in front of Ollama hosts.

::

    ollamamax serve --backend http://gpu1:11434 --backend http://gpu2:11434 \\
        --listen 127.0.0.1:11434 --strategy least-loaded

Settings come from the command line, the environment (``OLLAMAMAX_BACKENDS=url1,url2``,
``OLLAMAMAX_<KEY>``) and a TOML file (``--config``), in that order of precedence; see
:mod:`ollamamax.ops.config`.  Bad configuration exits with code 2.

Lifecycle: the soft descriptor limit (``RLIMIT_NOFILE``) is raised to the hard limit, as
nginx's ``worker_rlimit_nofile`` does, and the client connection cap is derived from it
(:func:`connection_limit`); the dispatcher starts (one initial refresh of every host), the
listener binds, and the URL is printed on stdout.  SIGTERM or SIGINT stop accepting
connections, give in-flight requests up to ``--grace-period`` seconds to finish (what is left
then ends with an in-band error line, or 503), close the host pools and exit 0; a second
signal cuts the grace period short (exit 1).  ``--workers N`` starts N worker
processes on one port (SO_REUSEPORT, each with its own Dispatcher); the parent waits for
all of them to be ready, prints the URL, forwards SIGTERM/SIGINT as SIGTERM, restarts a
worker that crashes after start-up (at most 5 times a minute) and exits when they have all
exited.  uvloop is used when installed (``--loop``).  The listener is
:func:`ollamamax.frontends.fastpath.start_server`: a lean HTTP/1.1 fast path for the common
request shape in front of the aiohttp application from ``create_app``, which answers
everything else.

This module's top level imports only argparse (the CLI builds every subcommand's parser).
"""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "connection_limit", "main", "raise_nofile_limit"]

_READY_FD_ENV = "_OLLAMAMAX_READY_FD"
_MAX_RESTARTS_PER_MINUTE = 5
# descriptors kept for the process itself: listening sockets, log files, the event loop,
# and connections being refused over the cap (fastpath.REJECT_BACKLOG)
_OWN_DESCRIPTORS = 64 + 32
_POOL_EXTRA_PER_HOST = 4  # idle keep-alive connections a host's pool keeps beyond its slots
_UNLIMITED_NOFILE = 1 << 20


_EPILOG = """\
precedence: command line > environment > TOML file (--config) > defaults.
Every setting has an environment variable OLLAMAMAX_<SETTING> (e.g. OLLAMAMAX_STRATEGY,
OLLAMAMAX_BACKENDS=url1,url2, OLLAMAMAX_API_KEYS=k1,k2) and a TOML key of the same name
with underscores; [[hosts]] tables in the file add per-host url, name, weight,
max_concurrency, headers, num_parallel, max_loaded_models and vram.  See examples/ollamamax.toml.  Bad configuration exits 2.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    a = parser.add_argument
    a("--backend", action="append", metavar="URL",
      help="Ollama host base URL, e.g. http://gpu1:11434 (repeatable; env OLLAMAMAX_BACKENDS)")
    a("--config", metavar="PATH", help="TOML config file (env OLLAMAMAX_CONFIG)")
    a("--listen", metavar="HOST:PORT",
      help="address to listen on, e.g. 127.0.0.1:11434 or [::1]:11434 (default 127.0.0.1:11434)")
    a("--strategy", help="least-loaded (default), p2c, round-robin, latency, affinity")
    a("--workers", type=int, metavar="N", help="worker processes sharing the port (default 1)")
    a("--api-key", action="append", metavar="KEY",
      help="require 'Authorization: Bearer KEY' (repeatable; env OLLAMAMAX_API_KEYS)")
    a("--admin-key", action="append", metavar="KEY",
      help="key allowed to pull/push/create/copy/delete (repeatable; env OLLAMAMAX_ADMIN_KEYS)")
    a("--max-body-size", metavar="SIZE", help="request body limit, e.g. 256MiB (default 1GiB)")
    a("--origins", metavar="LIST",
      help="origins browsers may call from, comma-separated, '*' wildcards, added to Ollama's "
           "defaults (localhost/127.0.0.1/0.0.0.0 any port, app://, file://, tauri://, "
           "vscode-webview://, vscode-file://); OLLAMA_ORIGINS is added too")
    a("--access-log", action=argparse.BooleanOptionalAction, default=None,
      help="one logfmt line per request on the ollamamax.access logger, stderr (default on)")
    a("--redis", dest="redis_url", metavar="URL",
      help="redis://, rediss:// or unix:// URL (password or ACL user in it): several gateways share "
           "the fleet scheduler's state; without it each process decides alone (env OLLAMAMAX_REDIS_URL; "
           "needs pip install 'ollamamax[redis]')")
    a("--redis-prefix", metavar="PREFIX", help="prefix of every Redis key, so two fleets can share one "
                                                "Redis (default ollamamax)")
    a("--auto-pull", action=argparse.BooleanOptionalAction, default=None,
      help="pull a model that no host has to one host, then serve it")
    a("--queue-size", type=int, metavar="N", help="gateway wait-queue capacity (default 1024)")
    a("--queue-timeout", type=float, metavar="SECONDS",
      help="longest wait for a host slot before 503 (default 30)")
    a("--max-in-flight", type=int, metavar="N",
      help="default in-flight requests per host (default 8)")
    a("--grace-period", type=float, metavar="SECONDS",
      help="time in-flight requests get to finish after SIGTERM (default 30)")
    a("--connect-timeout", type=float, metavar="SECONDS",
      help="time to open a connection to a host (default 5)")
    a("--first-byte-timeout", type=float, metavar="SECONDS",
      help="time from sending a request to a host to its first byte (default 300)")
    a("--idle-timeout", type=float, metavar="SECONDS",
      help="longest gap between two chunks of a host's stream (default 120)")
    a("--send-timeout", type=float, metavar="SECONDS",
      help="a client that accepts no bytes for this long is disconnected (default 60)")
    a("--body-timeout", type=float, metavar="SECONDS",
      help="a request body must arrive within this long of its head (default 60)")
    a("--max-connections", type=int, metavar="N",
      help="client connections at once; beyond, 503 (default 0: from the descriptor limit)")
    a("--cache-bytes", metavar="SIZE", help="response cache budget, e.g. 256MiB (default)")
    a("--cache-scope", help="tenant (default: API keys never share cache hits) or shared")
    a("--log-level", help="debug, info (default), warning, error, critical")
    a("--loop", help="event loop: auto (uvloop when installed, default), asyncio, uvloop")
    a("--gc-freeze", action=argparse.BooleanOptionalAction, default=None,
      help="gc.freeze() once started, so start-up objects are never scanned again")
    a("--gc-threshold", metavar="N[,N[,N]]",
      help="cyclic GC thresholds, e.g. 50000,20,20 (default: Python's 700,10,10)")
    a("--check-config", action="store_true",
      help="print the resolved configuration (keys redacted) and exit")


# --------------------------------------------------------------------------- limits


def raise_nofile_limit() -> tuple[int, int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (nginx's ``worker_rlimit_nofile``):
    ``(soft before, soft now, hard)``.  Where the hard limit is "unlimited" (macOS), the
    highest of a few common values the kernel accepts.  No ``resource`` module (Windows):
    ``(0, 0, 0)``."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 0, 0, 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    inf = resource.RLIM_INFINITY
    if soft == inf:
        return soft, soft, hard
    candidates = [hard] if hard != inf else [_UNLIMITED_NOFILE, 65536, 10240]
    for target in candidates:
        if target <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            continue
        return soft, target, hard
    return soft, soft, hard


def connection_limit(cfg, nofile: int) -> int:  # type: ignore[no-untyped-def]
    """The client connection cap: ``max_connections`` when set, else what the descriptor
    limit ``nofile`` leaves after room for upstream connections (two per host slot, plus a
    pool's idle extras, per host) and for the process itself (96)."""
    if cfg.max_connections:
        return int(cfg.max_connections)
    if nofile <= 0 or nofile >= _UNLIMITED_NOFILE * 64:  # unknown or "unlimited"
        nofile = _UNLIMITED_NOFILE
    default_slots = cfg.dispatcher.max_in_flight_per_host
    upstream = sum(2 * (h.max_concurrency or default_slots) + _POOL_EXTRA_PER_HOST
                   for h in cfg.hosts)
    return max(nofile // 4, nofile - _OWN_DESCRIPTORS - upstream, 1)


# --------------------------------------------------------------------------- main


def main(args: argparse.Namespace) -> int:
    import os
    import sys

    from .config import ConfigError, load_config

    try:
        cfg = load_config(vars(args), os.environ)
    except ConfigError as exc:
        print(f"ollamamax serve: error: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(cfg.to_json(redact=True))
        return 0
    _setup_logging(cfg.log_level, cfg.access_log)
    if cfg.workers > 1:
        return _supervise(cfg)
    return _run(cfg, worker=False)


def _setup_logging(level: str, access_log: bool = True) -> None:
    import logging

    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    from ..frontends.accesslog import ACCESS_LOGGER, AccessLineFormatter, BufferedLineHandler

    # no log format here names a thread, a process name or a task: a record skips them
    logging.logThreads = False
    logging.logMultiprocessing = False
    if hasattr(logging, "logAsyncioTasks"):  # Python >= 3.12
        setattr(logging, "logAsyncioTasks", False)
    access = logging.getLogger(ACCESS_LOGGER)
    if access_log:
        # its own line format (all logfmt, whatever --log-level says), on stderr, written in
        # batches (64 KiB or 1 s, as nginx's access_log buffer=/flush=)
        if not access.handlers:
            handler = BufferedLineHandler()
            handler.setFormatter(AccessLineFormatter())
            access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False
    else:
        access.disabled = True


def _loop_factory(kind: str):  # type: ignore[no-untyped-def]
    import asyncio

    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def _run(cfg, *, worker: bool, ready_fd: int | None = None) -> int:  # type: ignore[no-untyped-def]
    import asyncio
    import sys

    try:
        factory = _loop_factory(cfg.loop)
    except ImportError:
        print("ollamamax serve: error: --loop uvloop but uvloop is not installed", file=sys.stderr)
        return 2
    import logging

    log = logging.getLogger("ollamamax.serve")
    before, nofile, hard = raise_nofile_limit()
    max_connections = connection_limit(cfg, nofile)
    if nofile == before and (hard < 0 or hard > before):  # pragma: no cover - kernel refused
        log.warning("could not raise the descriptor limit (RLIMIT_NOFILE) above %d", before)
    log.info("descriptor limit (RLIMIT_NOFILE): soft %d -> %d, hard %s; at most %d client "
             "connections%s", before, nofile, "unlimited" if hard < 0 else hard,
             max_connections, "" if cfg.max_connections else " (derived)")
    loop = factory()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(_serve(cfg, worker=worker, ready_fd=ready_fd,
                                              max_connections=max_connections))
    except KeyboardInterrupt:  # pragma: no cover - signals are handled inside
        return 1
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:  # whatever is left (as asyncio.run does)
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


async def _serve(cfg, *, worker: bool, ready_fd: int | None,  # type: ignore[no-untyped-def]
                 max_connections: int | None = None) -> int:
    import asyncio
    import logging
    import os
    import signal
    import sys

    from aiohttp import web

    from ..dispatch import Dispatcher
    from ..frontends.accesslog import ACCESS_LOGGER, GatewayAccessLogger
    from ..frontends.fastpath import start_server
    from ..frontends.rules import listener_is_loopback
    from .app import create_app

    log = logging.getLogger("ollamamax.serve")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main_task = asyncio.current_task()
    signals_seen = 0

    def on_signal(signame: str) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.info("%s: stopping (grace period %g s)", signame, cfg.grace_period)
            stop.set()
        elif main_task is not None:
            log.warning("%s again: exiting without waiting", signame)
            main_task.cancel()

    # A supervised worker leaves SIGINT (a terminal's Ctrl-C reaches the whole group) to the
    # parent, which forwards it as one SIGTERM.
    handled = (signal.SIGTERM,) if worker else (signal.SIGTERM, signal.SIGINT)
    for sig in handled:
        loop.add_signal_handler(sig, on_signal, sig.name)
    if worker:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        parent = os.getppid()

        async def watch_parent() -> None:  # exit if the supervisor dies without telling us
            while not stop.is_set():
                await asyncio.sleep(1.0)
                if os.getppid() != parent:
                    log.warning("supervisor %d is gone; stopping", parent)
                    stop.set()

        parent_watch = asyncio.ensure_future(watch_parent())
    else:
        parent_watch = None

    try:
        async with Dispatcher(cfg.hosts, strategy=cfg.dispatcher.strategy,
                              config=cfg.dispatcher) as dispatcher:
            try:
                for h in dispatcher.status().get("hosts", ()):
                    if not h.get("healthy", True):
                        log.warning("backend %s is not reachable yet (%s); it will be retried",
                                    h.get("url"), h.get("error") or "no answer")
            except Exception:  # pragma: no cover - status is informational here
                log.debug("could not read dispatcher status", exc_info=True)
            app = create_app(dispatcher, api_keys=cfg.api_keys, admin_keys=cfg.admin_keys,
                             max_body_size=cfg.max_body_size, send_timeout=cfg.send_timeout,
                             body_timeout=cfg.body_timeout, origins=cfg.origins,
                             # the Host check (DNS-rebinding guard) is on for a loopback
                             # listener, as Ollama's allowedHostsMiddleware
                             listener_loopback=listener_is_loopback(cfg.listen_host))
            extra: dict[str, str] = {}
            if worker:
                extra["X-Ollamamax-Worker"] = str(os.getpid())

                async def tag_worker(request: web.Request, response: web.StreamResponse) -> None:
                    response.headers.update(extra)

                app.on_response_prepare.append(tag_worker)
            try:
                server = await start_server(
                    app, cfg.listen_host, cfg.listen_port,
                    reuse_port=True if worker else None, backlog=1024, extra_headers=extra,
                    shutdown_timeout=cfg.grace_period, max_connections=max_connections,
                    access_log=logging.getLogger(ACCESS_LOGGER) if cfg.access_log else None,
                    access_log_class=GatewayAccessLogger,
                )
            except OSError as exc:
                print(f"ollamamax serve: error: cannot listen on {cfg.listen}: {exc}",
                      file=sys.stderr, flush=True)
                return 1
            try:
                if cfg.gc_freeze or cfg.gc_threshold is not None:
                    from .gcstats import tune_gc

                    tuning = tune_gc(cfg.gc_freeze, cfg.gc_threshold)
                    log.info("GC tuned: %s", tuning)
                port = server.port
                url = cfg.url(port)
                if ready_fd is not None:
                    try:
                        os.write(ready_fd, f"{os.getpid()} {url}\n".encode())
                    except OSError:  # a restarted worker's supervisor is not listening
                        pass
                    os.close(ready_fd)
                    ready_fd = None
                if not worker:
                    print(f"ollamamax: serving {url} -> {len(cfg.hosts)} backend(s), "
                          f"strategy {cfg.dispatcher.strategy}", flush=True)
                log.info("listening on %s", url)
                await stop.wait()
            finally:
                await server.close(cfg.grace_period)  # stop listening; wait <= grace for in-flight requests
        log.info("stopped")
        return 0
    except asyncio.CancelledError:
        return 1
    finally:
        if parent_watch is not None:
            parent_watch.cancel()
        for sig in handled:
            loop.remove_signal_handler(sig)


# ------------------------------------------------------------------ worker processes


def _worker_entry() -> int:
    """Entry point of a worker process: configuration arrives as JSON on stdin."""
    import json
    import os
    import sys

    from .config import GatewayConfig

    cfg = GatewayConfig.from_dict(json.loads(sys.stdin.read()))
    _setup_logging(cfg.log_level, cfg.access_log)
    ready_fd = int(os.environ.pop(_READY_FD_ENV))
    return _run(cfg, worker=True, ready_fd=ready_fd)


def _supervise(cfg) -> int:  # type: ignore[no-untyped-def]
    import dataclasses
    import json
    import logging
    import os
    import select
    import signal
    import socket
    import subprocess
    import sys
    import time

    log = logging.getLogger("ollamamax.serve")
    if not hasattr(socket, "SO_REUSEPORT"):
        print("ollamamax serve: error: --workers > 1 needs SO_REUSEPORT (Linux, BSD, macOS)",
              file=sys.stderr)
        return 2

    # Resolve port 0 once so every worker binds the same port; hold it until they are up.
    family = socket.AF_INET6 if ":" in cfg.listen_host else socket.AF_INET
    reserve = socket.socket(family, socket.SOCK_STREAM)
    try:
        reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserve.bind((cfg.listen_host, cfg.listen_port))
    except OSError as exc:
        reserve.close()
        print(f"ollamamax serve: error: cannot listen on {cfg.listen}: {exc}", file=sys.stderr)
        return 1
    port = reserve.getsockname()[1]
    wcfg = dataclasses.replace(cfg, listen_port=port, workers=1)
    payload = json.dumps(wcfg.to_dict()).encode()

    stopping = False
    signals_seen = 0

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping, signals_seen
        signals_seen += 1
        stopping = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def spawn() -> tuple[subprocess.Popen[bytes], int]:
        r, w = os.pipe()
        env = dict(os.environ, **{_READY_FD_ENV: str(w)})
        proc = subprocess.Popen(
            [sys.executable, "-c",
             "import sys; from ollamamax.ops.serve import _worker_entry; "
             "sys.exit(_worker_entry())"],
            stdin=subprocess.PIPE, pass_fds=(w,), env=env,
        )
        os.close(w)
        assert proc.stdin is not None
        proc.stdin.write(payload)
        proc.stdin.close()
        return proc, r

    def signal_all(procs: list[subprocess.Popen[bytes]], sig: int) -> None:
        for p in procs:
            if p.poll() is None:
                try:
                    p.send_signal(sig)
                except ProcessLookupError:  # pragma: no cover - raced with exit
                    pass

    def reap(procs: list[subprocess.Popen[bytes]], deadline: float) -> None:
        for p in procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %d did not stop in time; killing it", p.pid)
                p.kill()
                p.wait()

    procs: list[subprocess.Popen[bytes]] = []
    try:
        # ---- start-up: wait until every worker reports ready (or one fails)
        pending: dict[int, subprocess.Popen[bytes]] = {}
        for _ in range(cfg.workers):
            p, r = spawn()
            procs.append(p)
            pending[r] = p
        buffers: dict[int, bytes] = {r: b"" for r in pending}
        deadline = time.monotonic() + 120.0
        while pending and not stopping:
            if time.monotonic() > deadline:
                print("ollamamax serve: error: workers did not start in 120 s", file=sys.stderr)
                stopping = True
                break
            try:
                ready, _, _ = select.select(list(pending), [], [], 0.2)
            except InterruptedError:  # pragma: no cover - PEP 475 retries select
                continue
            for r in ready:
                data = os.read(r, 4096)
                buffers[r] += data
                if b"\n" in buffers[r] or not data:
                    os.close(r)
                    p = pending.pop(r)
                    if not data and b"\n" not in buffers[r]:
                        print(f"ollamamax serve: error: worker {p.pid} failed to start "
                              f"(exit code {p.wait()})", file=sys.stderr)
                        stopping = True
        for r in pending:
            os.close(r)
        if stopping:
            signal_all(procs, signal.SIGTERM)
            reap(procs, time.monotonic() + cfg.grace_period + 10.0)
            return 0 if signals_seen else 1
        reserve.close()
        print(f"ollamamax: serving {cfg.url(port)} -> {len(cfg.hosts)} backend(s), "
              f"strategy {cfg.dispatcher.strategy}, {cfg.workers} workers "
              f"(pids {' '.join(str(p.pid) for p in procs)})", flush=True)

        # ---- supervise: restart crashed workers; stop on a signal
        restarts: list[float] = []
        while not stopping:
            time.sleep(0.2)
            for i, p in enumerate(procs):
                code = p.poll()
                if code is None or stopping:
                    continue
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 60.0] + [now]
                if len(restarts) > _MAX_RESTARTS_PER_MINUTE:
                    print(f"ollamamax serve: error: workers keep exiting (last: {p.pid}, code "
                          f"{code}); giving up", file=sys.stderr)
                    signal_all(procs, signal.SIGTERM)
                    reap(procs, time.monotonic() + cfg.grace_period + 10.0)
                    return 1
                log.warning("worker %d exited with code %s; restarting it", p.pid, code)
                newp, r = spawn()
                os.close(r)
                procs[i] = newp
        signal_all(procs, signal.SIGTERM)
        deadline = time.monotonic() + cfg.grace_period + 10.0
        # A second signal is forwarded too, which makes the workers skip the grace period.
        forwarded = 1
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if signals_seen > forwarded:
                forwarded = signals_seen
                signal_all(procs, signal.SIGTERM)
            time.sleep(0.05)
        reap(procs, deadline)
        # A worker still booting when the signal came dies of it before it could install
        # its handler; it had served nothing, so that counts as a clean stop too.
        codes = [p.returncode for p in procs]
        return 0 if all(c in (0, -signal.SIGTERM) for c in codes) else 1
    finally:
        reserve.close()
        for s, h in old.items():
            signal.signal(s, h)
        for p in procs:
            if p.poll() is None:  # pragma: no cover - only on unexpected errors above
                p.kill()
                p.wait()
