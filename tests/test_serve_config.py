"""Configuration for ``ollamamax serve``: precedence CLI > env > TOML > defaults, and errors."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ollamamax
from ollamamax.dispatch import DispatcherConfig, HostConfig
from ollamamax.ops.config import (
    ConfigError,
    GatewayConfig,
    load_config,
    parse_backend_url,
    parse_listen,
    parse_size,
)
from ollamamax.ops.serve import add_arguments

REPO = Path(__file__).resolve().parents[1]


def cli(*argv: str) -> dict:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return vars(p.parse_args(list(argv)))


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "ollamamax.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


# ----------------------------------------------------------------------- defaults


def test_defaults():
    cfg = load_config(cli("--backend", "http://a:11434"), {})
    assert cfg.hosts == [HostConfig(url="http://a:11434")]
    assert cfg.dispatcher == DispatcherConfig()
    assert (cfg.listen_host, cfg.listen_port) == ("127.0.0.1", 11434)
    assert cfg.workers == 1 and cfg.api_keys == () and cfg.admin_keys == ()
    assert cfg.max_body_size == 1024 * 1024 * 1024
    assert cfg.grace_period == 30.0 and cfg.log_level == "info" and cfg.loop == "auto"
    assert cfg.url() == "http://127.0.0.1:11434"


def test_every_cli_option_maps():
    cfg = load_config(cli(
        "--backend", "http://a:1", "--backend", "https://b.example/ollama/",
        "--listen", "[::1]:8080", "--strategy", "p2c", "--workers", "3",
        "--api-key", "k1", "--api-key", "k2", "--admin-key", "adm",
        "--max-body-size", "1MiB", "--auto-pull", "--queue-size", "7",
        "--queue-timeout", "2.5", "--max-in-flight", "4", "--grace-period", "5",
        "--log-level", "WARNING", "--loop", "asyncio",
    ), {})
    assert [h.url for h in cfg.hosts] == ["http://a:1", "https://b.example/ollama"]
    assert (cfg.listen_host, cfg.listen_port) == ("::1", 8080)
    assert cfg.url() == "http://[::1]:8080"
    d = cfg.dispatcher
    assert (d.strategy, d.auto_pull, d.queue_size, d.queue_timeout, d.max_in_flight_per_host) == (
        "p2c", True, 7, 2.5, 4)
    assert cfg.workers == 3 and cfg.api_keys == ("k1", "k2") and cfg.admin_keys == ("adm",)
    assert cfg.max_body_size == 1024 * 1024 and cfg.grace_period == 5.0
    assert cfg.log_level == "warning" and cfg.loop == "asyncio"


# ----------------------------------------------------------------------- precedence


TOML = """
    backends = ["http://toml1:11434"]
    strategy = "round-robin"
    queue_size = 11
    workers = 2
    max_body_size = "2MB"
    api_keys = ["tk"]

    [dispatcher]
    first_byte_timeout = 12.5
    cache_size = 0
    cache_ttl = 60
    session_header = "X-Conv"

    [[hosts]]
    url = "http://gpu1:11434"
    name = "gpu1"
    weight = 2
    max_concurrency = 16
    headers = { Authorization = "Bearer upstream" }
    num_parallel = 4
    max_loaded_models = 2
    vram = "24GiB"
"""


def test_toml_over_defaults(tmp_path):
    cfg = load_config(cli("--config", write(tmp_path, TOML)), {})
    assert [h.url for h in cfg.hosts] == ["http://toml1:11434", "http://gpu1:11434"]
    gpu1 = cfg.hosts[1]
    assert (gpu1.name, gpu1.weight, gpu1.max_concurrency, dict(gpu1.headers)) == (
        "gpu1", 2.0, 16, {"Authorization": "Bearer upstream"})
    # what the fleet scheduler would otherwise learn (bug caught: the keys parsed and dropped)
    assert (gpu1.num_parallel, gpu1.max_loaded_models, gpu1.vram) == (4, 2, 24 << 30)
    assert cfg.hosts[0].num_parallel is None  # not told: learned
    d = cfg.dispatcher
    assert (d.strategy, d.queue_size, d.first_byte_timeout, d.cache_size, d.cache_ttl,
            d.session_header) == ("round-robin", 11, 12.5, 0, 60.0, "X-Conv")
    assert d.max_attempts == DispatcherConfig().max_attempts  # untouched knobs keep defaults
    assert cfg.workers == 2 and cfg.max_body_size == 2_000_000 and cfg.api_keys == ("tk",)


def test_env_over_toml(tmp_path):
    env = {"OLLAMAMAX_CONFIG": write(tmp_path, TOML), "OLLAMAMAX_STRATEGY": "latency",
           "OLLAMAMAX_QUEUE_SIZE": "22", "OLLAMAMAX_API_KEYS": "e1, e2",
           "OLLAMAMAX_AUTO_PULL": "yes", "OLLAMAMAX_NO_EXTENSIONS": "1"}
    cfg = load_config(cli(), env)
    assert cfg.dispatcher.strategy == "latency" and cfg.dispatcher.queue_size == 22
    assert cfg.dispatcher.auto_pull is True
    assert cfg.api_keys == ("e1", "e2")
    assert cfg.workers == 2  # not in env: from the file
    assert cfg.dispatcher.first_byte_timeout == 12.5


def test_cli_over_env_over_toml(tmp_path):
    env = {"OLLAMAMAX_STRATEGY": "latency", "OLLAMAMAX_QUEUE_SIZE": "22",
           "OLLAMAMAX_WORKERS": "5"}
    cfg = load_config(cli("--config", write(tmp_path, TOML), "--strategy", "affinity",
                          "--no-auto-pull"), env)
    assert cfg.dispatcher.strategy == "affinity"  # CLI
    assert cfg.dispatcher.queue_size == 22  # env
    assert cfg.workers == 5  # env over file
    assert cfg.dispatcher.auto_pull is False  # explicit --no-auto-pull


def test_env_backends_replace_toml_hosts_but_keep_their_settings(tmp_path):
    env = {"OLLAMAMAX_BACKENDS": "http://GPU1:11434/, http://new:11434"}
    cfg = load_config(cli("--config", write(tmp_path, TOML)), env)
    assert [h.url for h in cfg.hosts] == ["http://gpu1:11434", "http://new:11434"]
    assert cfg.hosts[0].name == "gpu1" and cfg.hosts[0].max_concurrency == 16
    assert cfg.hosts[1] == HostConfig(url="http://new:11434")


def test_cli_backends_replace_env_backends():
    cfg = load_config(cli("--backend", "http://c:1"), {"OLLAMAMAX_BACKENDS": "http://e:1"})
    assert [h.url for h in cfg.hosts] == ["http://c:1"]


def test_config_path_cli_over_env(tmp_path):
    good = write(tmp_path, 'backends = ["http://x:1"]\n')
    cfg = load_config(cli("--config", good), {"OLLAMAMAX_CONFIG": str(tmp_path / "missing.toml")})
    assert cfg.hosts[0].url == "http://x:1"


def test_json_round_trip_and_redaction(tmp_path):
    cfg = load_config(cli("--config", write(tmp_path, TOML), "--admin-key", "secret"), {})
    assert GatewayConfig.from_dict(cfg.to_dict()) == cfg
    red = cfg.to_json(redact=True)
    assert "secret" not in red and "upstream" not in red and "tk" not in red


def test_example_config_file_loads():
    cfg = load_config({}, {}, config_path=str(REPO / "examples" / "ollamamax.toml"))
    assert len(cfg.hosts) >= 2


# ----------------------------------------------------------------------- errors


@pytest.mark.parametrize("text, match", [
    ('backends = ["http://a:1"]\nstrategi = "p2c"\n', "unknown key.*strategi"),
    ('backends = ["http://a:1"]\n[dispatcher]\nfirst_byte = 1\n', r"unknown \[dispatcher\] key.*first_byte"),
    ('[[hosts]]\nurl = "http://a:1"\nwieght = 2\n', "unknown key.*wieght"),
    ('[[hosts]]\nname = "x"\n', "'url' is required"),
    ('[[hosts]]\nurl = "http://a:1"\nweight = 0\n', "weight.*> 0"),
    ('[[hosts]]\nurl = "http://a:1"\nheaders = { A = 1 }\n', "headers must be a table of strings"),
    ('[[hosts]]\nurl = "http://a:1"\nnum_parallel = 0\n', "num_parallel.*>= 1"),
    ('[[hosts]]\nurl = "http://a:1"\nmax_loaded_models = "two"\n', "max_loaded_models.*integer"),
    ('[[hosts]]\nurl = "http://a:1"\nvram = "lots"\n', "vram"),
    ('backends = ["http://a:1"]\nworkers = "two"\n', "workers.*integer"),
    ('backends = ["http://a:1"]\nworkers = 0\n', "workers.*>= 1"),
    ('backends = ["http://a:1"]\nauto_pull = "maybe"\n', "auto_pull.*true/false"),
    ('backends = ["http://a:1"]\nstrategy = "random"\n', "strategy.*one of"),
    ('backends = ["http://a:1"]\nqueue_timeout = 0\n', "queue_timeout.*> 0"),
    ('backends = ["http://a:1"]\nqueue_size = 3\n[dispatcher]\nqueue_size = 4\n', "both"),
    ('backends = ["http://a:1", "http://A:1/"]\n', "listed twice"),
    ('[[hosts]]\nurl = "http://a:1"\nname = "n"\n[[hosts]]\nurl = "http://b:1"\nname = "n"\n', "unique"),
    ('backends = "http://a:1"\n', "list of strings"),
    ('backends = [\n', "not valid TOML"),
    ('hosts = 3\n', "array of tables"),
    ('backends = ["http://a:1"]\n[dispatcher]\nmax_attempts = "x"\n', "max_attempts.*integer"),
    ('backends = ["http://a:1"]\n[dispatcher]\ncache_generate = 1\n', "cache_generate.*true/false"),
    ('backends = ["http://a:1"]\nmax_body_size = "lots"\n', "max_body_size"),
    ('backends = []\n', "no backends"),
    ('backends = ["http://a:1"]\n[dispatcher]\nmax_attempts = 0\n', "max_attempts.*>= 1"),
    ('backends = ["http://a:1"]\n[dispatcher]\nidle_timeout = 0\n', "idle_timeout.*> 0"),
    ('backends = ["http://a:1"]\n[dispatcher]\nretry_backoff = -1\n', "retry_backoff.*>= 0"),
    ('backends = ["http://a:1"]\n[dispatcher]\nsession_header = ""\n', "non-empty string"),
])

def test_toml_errors(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(cli("--config", write(tmp_path, text)), {})


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(cli("--config", str(tmp_path / "nope.toml"), "--backend", "http://a:1"), {})


def test_no_backends_anywhere():
    with pytest.raises(ConfigError, match="no backends.*--backend.*OLLAMAMAX_BACKENDS"):
        load_config(cli(), {})


@pytest.mark.parametrize("url, match", [
    ("gpu1:11434", "no scheme.*http://gpu1:11434"),
    ("ftp://gpu1:11434", "scheme must be http or https"),
    ("http://", "no host"),
    ("http://gpu1:99999", "invalid"),
    ("http://gpu1:port", "invalid"),
    ("http://gpu1:11434/?x=1", "query"),
    ("http://user:pw@gpu1:11434", "credentials"),
    ("", "expected a string"),
])
def test_bad_backend_urls(url, match):
    with pytest.raises(ConfigError, match=match):
        parse_backend_url(url)


def test_env_errors_name_the_variable():
    with pytest.raises(ConfigError, match="OLLAMAMAX_WORKERS"):
        load_config(cli("--backend", "http://a:1"), {"OLLAMAMAX_WORKERS": "many"})
    with pytest.raises(ConfigError, match="no scheme"):
        load_config(cli(), {"OLLAMAMAX_BACKENDS": "gpu1:11434"})


@pytest.mark.parametrize("value, expected", [
    ("127.0.0.1:11434", ("127.0.0.1", 11434)), ("[::1]:0", ("::1", 0)),
    ("localhost:80", ("localhost", 80)), ("0.0.0.0:8080", ("0.0.0.0", 8080)),
])
def test_parse_listen(value, expected):
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["11434", ":11434", "::1:80", "[zz]:80", "host:70000", "host:", ""])
def test_parse_listen_errors(value):
    with pytest.raises(ConfigError):
        parse_listen(value)


@pytest.mark.parametrize("value, expected", [
    (100, 100), ("100", 100), ("32MiB", 32 << 20), ("10MB", 10_000_000), ("512k", 512 << 10),
    ("1.5KiB", 1536), ("1G", 1 << 30),
])
def test_parse_size(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", [0, -1, "0", "12XB", "big", True, 1.5, None])
def test_parse_size_errors(value):
    with pytest.raises(ConfigError):
        parse_size(value)


# ----------------------------------------------------------------------- the command


def _run(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMAMAX_")}
    e["PYTHONPATH"] = str(Path(ollamamax.__file__).resolve().parents[1]) + os.pathsep + e.get("PYTHONPATH", "")
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "ollamamax", "serve", *argv],
                          capture_output=True, text=True, env=e, timeout=60)


def test_bad_config_exits_2_with_a_clear_message(tmp_path):
    r = _run()
    assert r.returncode == 2
    assert "error: no backends" in r.stderr
    r = _run("--backend", "gpu1:11434")
    assert r.returncode == 2 and "no scheme" in r.stderr
    r = _run("--config", write(tmp_path, 'backend = ["http://a:1"]\n'))
    assert r.returncode == 2 and "unknown key(s) backend" in r.stderr


def test_check_config_prints_resolved_config_without_secrets():
    r = _run("--check-config", "--api-key", "sekrit", env={"OLLAMAMAX_BACKENDS": "http://a:1",
                                                           "OLLAMAMAX_STRATEGY": "p2c"})
    assert r.returncode == 0, r.stderr
    assert '"strategy": "p2c"' in r.stdout and "http://a:1" in r.stdout
    assert "sekrit" not in r.stdout


def test_cache_ttl_none_and_cache_off(tmp_path):
    cfg = load_config(cli("--config", write(tmp_path, '''
        backends = ["http://a:1"]
        [dispatcher]
        cache_ttl = "none"
        cache_size = 0
        ''')), {})
    assert cfg.dispatcher.cache_ttl is None and cfg.dispatcher.cache_size == 0


def test_gc_tuning_keys_from_cli_env_and_errors() -> None:
    from ollamamax.ops.config import ConfigError, load_config

    cfg = load_config({"backend": ["http://127.0.0.1:1"], "gc_freeze": True,
                       "gc_threshold": "50000,20,20"}, {})
    assert cfg.gc_freeze is True and cfg.gc_threshold == (50000, 20, 20)
    cfg = load_config({"backend": ["http://127.0.0.1:1"]},
                      {"OLLAMAMAX_GC_FREEZE": "true", "OLLAMAMAX_GC_THRESHOLD": "1000"})
    assert cfg.gc_freeze is True and cfg.gc_threshold == (1000,)
    assert type(cfg).from_dict(cfg.to_dict()).gc_threshold == (1000,)
    cfg = load_config({"backend": ["http://127.0.0.1:1"]}, {})
    assert cfg.gc_freeze is False and cfg.gc_threshold is None
    with pytest.raises(ConfigError, match="gc_threshold"):
        load_config({"backend": ["http://127.0.0.1:1"], "gc_threshold": "lots"}, {})
