"""``ollamamax mock`` (subprocess), the ``fake_ollama`` pytest fixture, ThreadedFakeOllama,
and the pure helpers of the emulator (names, durations)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import aiohttp
import pytest

import ollamamax
from ollamamax.testing import FakeOllama, ThreadedFakeOllama
from ollamamax.testing._goformat import parse_go_duration, parse_keep_alive
from ollamamax.testing._models import parse_name
from ollamamax.testing.pytest_plugin import fake_ollama  # noqa: F401 - the fixture under test

# the directory holding the ollamamax being tested (site-packages in CI, src/ in dev),
# so subprocesses run the same build (native modules included) as this process
SRC = str(Path(ollamamax.__file__).resolve().parents[1])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run_mock(argv: list[str], sig: int) -> tuple[str, int, str]:
    proc = subprocess.Popen(
        [sys.executable, *argv, "--port", "0", "--load-delay", "0", "--tokens-per-sec", "0", "--models", "llama3.2,qwen3:8b", "--host-id", "cli-1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split("listening on ")[1].split()[0]
        with urllib.request.urlopen(url + "/", timeout=5) as r:
            assert r.read() == b"Ollama is running"
            assert r.headers["X-Ollama-Host-Id"] == "cli-1"
        req = urllib.request.Request(
            url + "/api/chat",
            data=json.dumps({"model": "qwen3:8b", "messages": [{"role": "user", "content": "x"}], "stream": False}).encode(),
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            assert json.loads(r.read())["done"] is True
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
        return url, proc.returncode, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_cli_serves_and_exits_cleanly(sig):
    url, rc, out = _run_mock(["-m", "ollamamax.testing.cli"], sig)
    assert rc == 0
    assert "stopped" in out


def test_cli_via_ollamamax_command():
    try:
        from ollamamax.cli import build_parser

        build_parser()
    except ImportError as exc:  # another subcommand's module is not there yet
        pytest.skip(f"ollamamax CLI not importable: {exc}")
    url, rc, _ = _run_mock(["-m", "ollamamax", "mock"], signal.SIGTERM)
    assert rc == 0


def test_cli_arguments_are_cheap():
    code = "import sys, argparse; from ollamamax.testing import cli; p = argparse.ArgumentParser(); cli.add_arguments(p); print('aiohttp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=30, check=True).stdout
    assert out.strip() == "False"


def test_cli_bad_arguments():
    p = subprocess.run(
        [sys.executable, "-m", "ollamamax.testing.cli", "--port", "0", "--response-tokens", "x"], capture_output=True, text=True, env=_env(), timeout=30
    )
    assert p.returncode == 2 and "--response-tokens" in p.stderr
    p = subprocess.run([sys.executable, "-m", "ollamamax.testing.cli", "--port", "0", "--models", "bad name!"], capture_output=True, text=True, env=_env(), timeout=30)
    assert p.returncode == 2 and "invalid model name" in p.stderr


def test_cli_vram_and_prompt_eval_tps_reach_the_host():
    proc = subprocess.Popen(
        [sys.executable, "-m", "ollamamax.testing.cli", "--port", "0", "--load-delay", "0", "--tokens-per-sec", "0",
         "--models", "llama3.2:1b,qwen3:2b", "--vram", "1GB", "--max-loaded-models", "3", "--prompt-eval-tps", "1000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert "listening on" in line, line + proc.stderr.read()
        url = line.split("listening on ")[1].split()[0]

        def call(path: str, body: dict | None = None) -> dict:
            data = json.dumps(body).encode() if body is not None else None
            with urllib.request.urlopen(urllib.request.Request(url + path, data=data), timeout=5) as r:
                return json.loads(r.read())

        msgs = [{"role": "user", "content": "hello there"}]
        first = call("/api/chat", {"model": "llama3.2:1b", "messages": msgs, "stream": False})
        msgs += [first["message"], {"role": "user", "content": "and more"}]
        second = call("/api/chat", {"model": "llama3.2:1b", "messages": msgs, "stream": False})
        assert (first["prompt_eval_cached_count"], second["prompt_eval_cached_count"]) == (0, 5 + len(first["message"]["content"].split()))  # <s> <|user|> hello there <|assistant|> + reply
        call("/api/chat", {"model": "qwen3:2b", "messages": msgs[:1], "stream": False, "think": False})
        (row,) = call("/api/ps")["models"]  # 0.6 GB + 1.2 GB do not fit in 1 GB: llama3.2 was evicted
        assert row["name"] == "qwen3:2b" and (row["size"], row["size_vram"]) == (1_200_012_345, 10**9)
        assert call("/_mock/stats")["models"]["llama3.2:1b"]["evictions"] == 1
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_cli_bad_vram():
    p = subprocess.run([sys.executable, "-m", "ollamamax.testing.cli", "--port", "0", "--vram", "lots"], capture_output=True, text=True, env=_env(), timeout=30)
    assert p.returncode == 2 and "--vram" in p.stderr


def test_plugin_without_pytest_asyncio_defines_nothing():
    code = (
        "import sys; sys.modules['pytest_asyncio'] = None\n"
        "import ollamamax.testing.pytest_plugin as p\n"
        "print(hasattr(p, 'fake_ollama'), 'aiohttp' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=30, check=True).stdout
    assert out.split() == ["False", "False"]


# ------------------------------------------------------------------ fixture


async def test_fake_ollama_fixture(fake_ollama):  # noqa: F811
    a = await fake_ollama(models=["llama3.2"], load_delay=0, tokens_per_sec=0)
    b = await fake_ollama(["qwen3:8b"], load_delay=0, host_id="b")
    assert a.running and b.running and a.port != b.port and b.host_id == "b"
    async with aiohttp.ClientSession() as s, s.get(a.url + "/api/tags") as r:
        assert [m["name"] for m in (await r.json())["models"]] == ["llama3.2:latest"]


# ------------------------------------------------------------------ threaded helper / lifecycle


def test_threaded_fake_ollama():
    with ThreadedFakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=0) as h:
        with urllib.request.urlopen(h.url + "/api/version", timeout=5) as r:
            assert json.loads(r.read()) == {"version": "0.32.15"}
        assert h.call(lambda e: e.stats()["requests"]) == 1
    with pytest.raises(OSError):
        urllib.request.urlopen(h.url + "/", timeout=2)


def test_threaded_start_failure_raises():
    with FakeOllamaPortHolder() as port, pytest.raises(OSError):
        ThreadedFakeOllama(port=port).start()


class FakeOllamaPortHolder:
    """Occupy a port with a plain listening socket."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        return self.sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


async def test_start_stop_idempotent_and_restart_after_stop():
    h = FakeOllama(load_delay=0)
    await h.stop()  # not started: no-op
    await h.start()
    await h.start()
    port = h.port
    await h.stop()
    await h.stop()
    await h.kill()
    await h.restart()
    assert h.port == port and h.running
    await h.kill()
    assert not h.running


def test_constructor_validation():
    with pytest.raises(ValueError):
        FakeOllama(["bad name!"])
    with pytest.raises(ValueError):
        FakeOllama(response_tokens=(5, 2))
    with pytest.raises(ValueError):
        FakeOllama(num_parallel=0)
    with pytest.raises(ValueError):
        FakeOllama(keep_alive="10")
    assert FakeOllama("a,b").lookup("B") is not None  # comma string accepted


# ------------------------------------------------------------------ pure helpers


@pytest.mark.parametrize(
    ("text", "secs"),
    [("0", 0.0), ("5m", 300.0), ("1h30m", 5400.0), ("1.5h", 5400.0), ("300ms", 0.3), ("-1m", -60.0), ("2h45m10s", 9910.0), ("10us", 1e-5)],
)
def test_go_durations(text, secs):
    assert math.isclose(parse_go_duration(text), secs)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3600", 'time: missing unit in duration "3600"'),
        ("", 'time: invalid duration ""'),
        ("abc", 'time: invalid duration "abc"'),
        ("5x", 'time: unknown unit "x" in duration "5x"'),
        ("1h5", 'time: missing unit in duration "1h5"'),
    ],
)
def test_go_duration_errors(text, message):
    with pytest.raises(ValueError) as ei:
        parse_go_duration(text)
    assert str(ei.value) == message


def test_keep_alive_values():
    assert parse_keep_alive(None) is None
    assert parse_keep_alive(30) == 30.0
    assert parse_keep_alive(-1) == math.inf
    assert parse_keep_alive("-5m") == math.inf
    assert parse_keep_alive("0") == 0.0
    with pytest.raises(ValueError):
        parse_keep_alive(True)
    with pytest.raises(ValueError):
        parse_keep_alive([1])


def test_model_names():
    n = parse_name("llama3.2")
    assert (n.display, n.full) == ("llama3.2:latest", "registry.ollama.ai/library/llama3.2:latest")
    assert parse_name("me/bot:7b").display == "me/bot:7b"
    assert parse_name("example.com:5000/me/bot").display == "example.com:5000/me/bot:latest"
    assert parse_name("LLAMA3.2:Latest").key == parse_name("llama3.2").key
    for bad in ("", " x", "a b", "a/b/c/d", "x:", ":tag", "a:b:c!"):
        assert parse_name(bad) is None, bad
