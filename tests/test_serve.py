"""``ollamamax serve`` as a subprocess: readiness line, serving, SIGTERM drain, --workers."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

import ollamamax
from ollamamax.testing import FakeOllama

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]

REPO = Path(__file__).resolve().parents[1]
URL_RE = re.compile(rb"serving (http://\S+)")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMAMAX_")}
    env["PYTHONPATH"] = str(Path(ollamamax.__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    if "OLLAMAMAX_NO_EXTENSIONS" in os.environ:
        env["OLLAMAMAX_NO_EXTENSIONS"] = os.environ["OLLAMAMAX_NO_EXTENSIONS"]
    return env


class Serve:
    """An ``ollamamax serve`` subprocess; ``url`` once it printed its readiness line."""

    def __init__(self, *argv: str, nofile: tuple[int, int] | None = None,
                 log_level: str = "warning") -> None:
        self.argv = argv
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.banner = b""
        self.nofile = nofile  # RLIMIT_NOFILE (soft, hard) the process starts with
        self.log_level = log_level

    async def start(self, timeout: float = 30.0) -> Serve:
        preexec = None
        if self.nofile is not None:
            import resource

            nofile = self.nofile

            def preexec() -> None:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ollamamax", "serve", "--log-level", self.log_level, *self.argv,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(),
            preexec_fn=preexec)
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            await self.kill()
            raise
        m = URL_RE.search(line)
        if not m:
            err = await self.stderr()
            raise AssertionError(f"no URL line: {line!r}; stderr: {err!r}")
        self.banner = line
        self.url = m.group(1).decode()
        return self

    async def stderr(self) -> bytes:
        assert self.proc is not None and self.proc.stderr is not None
        try:
            return await asyncio.wait_for(self.proc.stderr.read(), 10)
        except asyncio.TimeoutError:
            return b"<timeout>"

    async def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@pytest.fixture
async def host():
    h = FakeOllama(models=["llama3.2"], load_delay=0.02, tokens_per_sec=0, num_parallel=4,
                   host_id="serve-host", seed=1)
    await h.start()
    try:
        yield h
    finally:
        await h.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_prints_url_serves_and_exits_0_on_sigterm(host):
    srv = await Serve("--backend", host.url, "--listen", "127.0.0.1:0").start()
    try:
        assert srv.banner.startswith(b"ollamamax: serving http://127.0.0.1:")
        async with aiohttp.ClientSession() as s:
            async with s.get(srv.url + "/") as r:
                assert r.status == 200 and await r.text() == "Ollama is running"
            async with s.post(srv.url + "/api/generate", json={
                    "model": "llama3.2", "prompt": "hi", "stream": False}) as r:
                assert r.status == 200 and (await r.json())["done"] is True
        srv.proc.send_signal(signal.SIGTERM)
        assert await srv.wait() == 0
    finally:
        await srv.kill()


async def test_sigterm_lets_an_in_flight_stream_finish(host):
    host.tokens_per_sec = 20.0  # ~2 s for 40 tokens
    host.response_tokens = (40, 40)
    srv = await Serve("--backend", host.url, "--listen", "127.0.0.1:0",
                      "--grace-period", "20").start()
    try:
        async with aiohttp.ClientSession() as s:
            r = await s.post(srv.url + "/api/generate", json={"model": "llama3.2", "prompt": "x"})
            first = await asyncio.wait_for(r.content.readline(), 10)
            assert json.loads(first)["done"] is False
            srv.proc.send_signal(signal.SIGTERM)
            # it stops accepting new connections while the stream is still running
            refused = False
            for _ in range(100):
                conn = aiohttp.TCPConnector(force_close=True)
                async with aiohttp.ClientSession(connector=conn) as s2:
                    try:
                        async with s2.get(srv.url + "/api/version"):
                            pass
                    except aiohttp.ClientConnectionError:
                        refused = True
                        break
                await asyncio.sleep(0.02)
            assert refused
            rest = await asyncio.wait_for(r.read(), 20)
            lines = [json.loads(x) for x in rest.splitlines()]
            assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 40
            r.release()
        assert await srv.wait() == 0
    finally:
        await srv.kill()


async def test_ipv6_listen(host):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    srv = await Serve("--backend", host.url, "--listen", "[::1]:0").start()
    try:
        assert srv.url.startswith("http://[::1]:")
        async with aiohttp.ClientSession() as s:
            async with s.get(srv.url + "/api/version") as r:
                assert r.status == 200
        srv.proc.send_signal(signal.SIGINT)
        assert await srv.wait() == 0
    finally:
        await srv.kill()


async def test_port_in_use_exits_1(host):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        srv = Serve("--backend", host.url, "--listen", f"127.0.0.1:{port}")
        srv.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ollamamax", "serve", *srv.argv,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env())
        out, err = await asyncio.wait_for(srv.proc.communicate(), 30)
    assert srv.proc.returncode == 1
    assert b"cannot listen on" in err


async def test_api_keys_from_the_command_line(host):
    srv = await Serve("--backend", host.url, "--listen", "127.0.0.1:0", "--api-key", "k").start()
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(srv.url + "/api/tags") as r:
                assert r.status == 401
            async with s.get(srv.url + "/api/tags", headers={"Authorization": "Bearer k"}) as r:
                assert r.status == 200
        srv.proc.send_signal(signal.SIGTERM)
        assert await srv.wait() == 0
    finally:
        await srv.kill()


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balancing + /proc")
async def test_two_workers_serve_one_port(host):
    port = _free_port()
    srv = await Serve("--backend", host.url, "--listen", f"127.0.0.1:{port}",
                      "--workers", "2").start(timeout=60)
    try:
        assert srv.url == f"http://127.0.0.1:{port}"
        pids = set()
        for _ in range(60):  # a new connection each time; the kernel spreads them
            conn = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=conn) as s:
                async with s.get(srv.url + "/api/version") as r:
                    assert r.status == 200
                    pids.add(int(r.headers["X-Ollamamax-Worker"]))
            if len(pids) == 2:
                break
        assert len(pids) == 2
        assert all(_ppid(p) == srv.proc.pid for p in pids)  # both are the supervisor's children
        srv.proc.send_signal(signal.SIGTERM)
        assert await srv.wait(40) == 0
        for p in pids:  # the workers are gone too
            assert not os.path.exists(f"/proc/{p}") or _zombie_or_gone(p)
    finally:
        await srv.kill()


def _zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _children(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if _ppid(int(entry)) == pid and not _zombie_or_gone(int(entry)):
                    out.add(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
async def test_supervisor_restarts_a_crashed_worker(host):
    port = _free_port()
    srv = await Serve("--backend", host.url, "--listen", f"127.0.0.1:{port}",
                      "--workers", "2").start(timeout=60)
    try:
        before = _children(srv.proc.pid)
        assert len(before) == 2
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        after: set[int] = set()
        for _ in range(300):  # bounded: up to ~30 s for the replacement to appear
            after = _children(srv.proc.pid)
            if len(after) == 2 and victim not in after:
                break
            await asyncio.sleep(0.1)
        assert len(after) == 2 and victim not in after
        # the replacement serves too (it may still be booting: bounded retries)
        (new,) = after - before
        seen: set[int] = set()
        for _ in range(300):
            conn = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=conn) as s:
                async with s.get(srv.url + "/api/version") as r:
                    assert r.status == 200
                    seen.add(int(r.headers["X-Ollamamax-Worker"]))
            if new in seen:
                break
            await asyncio.sleep(0.02)
        assert new in seen
        srv.proc.send_signal(signal.SIGTERM)
        assert await srv.wait(40) == 0
    finally:
        await srv.kill()


async def test_grace_period_is_bounded(host):
    host.tokens_per_sec = 5.0  # a 200-token stream would take 40 s
    host.response_tokens = (200, 200)
    srv = await Serve("--backend", host.url, "--listen", "127.0.0.1:0",
                      "--grace-period", "0.5").start()
    try:
        async with aiohttp.ClientSession() as s:
            r = await s.post(srv.url + "/api/generate", json={"model": "llama3.2", "prompt": "x"})
            await asyncio.wait_for(r.content.readline(), 10)
            srv.proc.send_signal(signal.SIGTERM)
            assert await srv.wait(15) == 0  # did not wait for the 40 s stream
            # the stream was ended, not completed: its last line is the in-band error
            rest = await asyncio.wait_for(r.read(), 10)
            assert json.loads(rest.splitlines()[-1])["error"].startswith(
                "ollamamax gateway shutting down")
            r.release()
        # the host's slot was released when the gateway cut the stream
        for _ in range(100):
            if host.stats()["totals"]["in_flight"] == 0:
                break
            await asyncio.sleep(0.05)
        assert host.stats()["totals"]["in_flight"] == 0
    finally:
        await srv.kill()


async def test_second_signal_skips_the_grace_period(host):
    host.tokens_per_sec = 5.0
    host.response_tokens = (200, 200)
    srv = await Serve("--backend", host.url, "--listen", "127.0.0.1:0",
                      "--grace-period", "60").start()
    try:
        async with aiohttp.ClientSession() as s:
            r = await s.post(srv.url + "/api/generate", json={"model": "llama3.2", "prompt": "x"})
            await asyncio.wait_for(r.content.readline(), 10)
            srv.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            srv.proc.send_signal(signal.SIGTERM)
            assert await srv.wait(15) == 1
            r.close()
    finally:
        await srv.kill()


# ------------------------------------------------------------------ descriptors, grace


def _nofile_of(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no 'Max open files' line")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/<pid>/limits")
async def test_start_up_raises_the_soft_descriptor_limit_to_the_hard_one(host):
    srv = await Serve("--backend", host.url, "--listen", "127.0.0.1:0", nofile=(256, 1024),
                      log_level="info").start()
    try:
        assert _nofile_of(srv.proc.pid) == (1024, 1024)
        srv.proc.send_signal(signal.SIGTERM)
        assert await srv.wait() == 0
        err = (await srv.stderr()).decode()
        # both values logged, and the connection cap derived from the raised one:
        # 1024 - 96 for the process - (2 x 8 slots + 4) for the host = 908
        assert "descriptor limit (RLIMIT_NOFILE): soft 256 -> 1024, hard 1024; " \
               "at most 908 client connections (derived)" in err
    finally:
        await srv.kill()


async def _request(port: int, raw: bytes, timeout: float = 10.0) -> bytes:
    """Send one request on a new connection; the status line of the answer."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(raw)
        return (await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)).strip()
    finally:
        writer.close()


async def _status(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> dict:
    writer.write(b"GET /ollamamax/status HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    return json.loads(await asyncio.wait_for(reader.readexactly(length), 10))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_NOFILE in preexec_fn")
async def test_idle_connections_cannot_exhaust_descriptors_or_eject_hosts():
    """Under a hard limit of 256 descriptors, 300 idle client connections: new clients still
    get an answer (503 while the cap is reached, then 200 once some idle ones leave), and the
    gateway's own descriptor shortage is never charged to a host (all stay healthy).  Before,
    the gateway ran out of descriptors: new clients were never answered."""
    hosts = [FakeOllama(models=["llama3.2"], load_delay=0.0, tokens_per_sec=0, num_parallel=4,
                        host_id=f"fd-{i}", seed=i) for i in range(3)]
    for h in hosts:
        await h.start()
    args = [a for h in hosts for a in ("--backend", h.url)]
    srv = await Serve(*args, "--listen", "127.0.0.1:0", nofile=(256, 256)).start()
    port = int(srv.url.rsplit(":", 1)[1])
    generate = json.dumps({"model": "llama3.2", "prompt": "hi", "stream": False}).encode()
    post = (b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(generate)) + generate
    idle: list[asyncio.StreamWriter] = []
    try:
        watch = await asyncio.open_connection("127.0.0.1", port)  # kept for the status
        before = await _status(*watch)
        assert [h["healthy"] for h in before["hosts"]] == [True] * 3
        for _ in range(300):
            idle.append((await asyncio.open_connection("127.0.0.1", port))[1])
        # the idle ones over the cap are refused (reset at accept, or 503 after 1 s without a
        # request line) and let go within 2 s; wait until that is over
        deadline = asyncio.get_running_loop().time() + 10
        while asyncio.get_running_loop().time() < deadline:
            try:
                if await _request(port, post, timeout=2) == b"HTTP/1.1 503 Service Unavailable":
                    break
            except (ConnectionError, asyncio.IncompleteReadError):  # aborted at accept
                pass
            await asyncio.sleep(0.2)
        # the cap is reached: a new client is answered 503 at once (not left hanging)
        answers = await asyncio.gather(*(_request(port, post) for _ in range(10)))
        assert all(a == b"HTTP/1.1 503 Service Unavailable" for a in answers), answers
        for w in idle[:150]:  # half of the idle clients leave
            w.close()
        del idle[:150]
        await asyncio.sleep(0.5)
        # requests that need upstream connections (descriptors) are served again
        answers = await asyncio.gather(*(_request(port, post) for _ in range(20)))
        assert answers.count(b"HTTP/1.1 200 OK") == 20, answers
        after = await _status(*watch)
        assert [h["healthy"] for h in after["hosts"]] == [True] * 3, after["hosts"]
        assert after["ejections"] == {}
        assert after["http"]["rejected"] > 0
        watch[1].close()
        srv.proc.send_signal(signal.SIGTERM)
        assert await srv.wait() == 0
    finally:
        for w in idle:
            w.close()
        await srv.kill()
        for h in hosts:
            await h.stop()


async def test_grace_expiry_ends_a_stream_with_an_error_line_and_logs_the_grace(host):
    """SIGTERM with a grace period of 0.5 s during a long stream: the stream's last line is
    the in-band error (nothing truncated), and the log says 0.5 s, not "0 s" or "1 s"."""
    host.tokens_per_sec = 20.0
    host.response_tokens = (2000, 2000)
    srv = await Serve("--backend", host.url, "--listen", "127.0.0.1:0", "--grace-period", "0.5",
                      log_level="info").start()
    try:
        async with aiohttp.ClientSession() as s, s.post(
                srv.url + "/api/generate", json={"model": "llama3.2", "prompt": "x"}) as r:
            first = await asyncio.wait_for(r.content.readline(), 10)
            assert json.loads(first)["done"] is False
            srv.proc.send_signal(signal.SIGTERM)
            rest = await asyncio.wait_for(r.read(), 20)  # raises if the stream is cut
        lines = [json.loads(x) for x in rest.splitlines() if x.strip()]
        assert lines[-1] == {
            "error": "ollamamax gateway shutting down: the grace period of 0.5 s ended"}
        assert all(x["done"] is False for x in lines[:-1])
        assert await srv.wait() == 0
        err = (await srv.stderr()).decode()
        assert "SIGTERM: stopping (grace period 0.5 s)" in err
        assert "grace period of 0.5 s over: ending 1 request(s) in flight with an error" in err
    finally:
        await srv.kill()
