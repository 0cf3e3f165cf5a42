"""Shared fixtures.

``redis_server`` is a real ``redis-server`` of the test's own (Debian's package), on a
free loopback port with a throwaway directory, stopped by its PID; never a mock.  Outside
CI a test that needs it skips when ``redis-server`` is missing; in CI (``CI`` set) it fails.

``impl`` runs a data-structure test against both implementations: ``native`` (the
Cython/C modules) and ``pure`` (the pure-Python twins).  Each selector module
(``ollamamax.structures.ring``, ``.pool``, ``.lfu``, ``.hist``) publishes
``IMPLEMENTATIONS = {"c": <namespace or None>, "py": <namespace>}`` and ``PUBLIC``
(the names it exports); the fixture resolves a name through them.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

SELECTORS = ("ring", "pool", "lfu", "hist")


class _Impl:
    """Attribute access resolves public names against one implementation."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.native = kind == "c"

    def __getattr__(self, name: str):
        for sel_name in SELECTORS:
            sel = importlib.import_module(f"ollamamax.structures.{sel_name}")
            if name in sel.PUBLIC:
                ns = sel.IMPLEMENTATIONS[self.kind]
                if ns is None:
                    pytest.skip(f"native {sel_name} not available (pure-Python run)")
                return getattr(ns, name)
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"<impl {self.kind}>"


@pytest.fixture(params=["c", "py"], ids=["native", "pure"])
def impl(request: pytest.FixtureRequest) -> _Impl:
    return _Impl(request.param)


@pytest.fixture(params=["fast", "aiohttp"])
def front(request: pytest.FixtureRequest) -> str:
    """Which HTTP front end serves a gateway test: ``fast`` (``fastpath.start_server``, what
    ``ollamamax serve`` runs: the fast path with aiohttp behind it) or ``aiohttp`` (the app
    alone, as when mounted in another aiohttp service)."""
    return request.param


# -- a real Redis ------------------------------------------------------------------
REDIS = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server of the test's own: loopback, no persistence, stopped by its PID."""

    def __init__(self, password: str | None = None) -> None:
        self.port = _free_port()
        self.password = password
        self.dir = tempfile.mkdtemp(prefix="ollamamax-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [REDIS or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--daemonize", "no", "--loglevel", "warning"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if REDIS is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing in CI (.ci/run installs Debian's redis-server)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


