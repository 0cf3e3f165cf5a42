"""``ollamamax bench``: the closed-loop load generator, against emulated hosts on loopback.

Short levels (0.1 s warm-up + 0.3 s) keep the file fast; nothing here asserts speed, only
counts, semantics (TTFT, drain, error kinds) and the shape of the output.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web

import ollamamax
from ollamamax import LatencyHistogram, bench
from ollamamax.bench import (
    LevelResult,
    Progress,
    UsageError,
    parse_concurrency,
    parse_duration,
    run_bench,
)
from ollamamax.testing import FakeOllama, ThreadedFakeOllama

pytestmark = pytest.mark.timeout(60)

# the directory holding the ollamamax being tested (site-packages in CI, src/ in dev),
# so subprocesses run the same build (native modules included) as this process
SRC = str(Path(ollamamax.__file__).resolve().parents[1])
QUICK = ["--duration", "0.3s", "--warmup", "0.1"]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ollamamax bench")
    bench.add_arguments(parser)
    return parser.parse_args(argv)


def _main(argv: list[str]) -> int:
    return bench.main(_parse(argv))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def host():
    with ThreadedFakeOllama(["llama3.2", "nomic-embed-text"], load_delay=0, tokens_per_sec=0,
                            num_parallel=4, preload=["llama3.2"], seed=1) as h:
        yield h


def _rows(out: str) -> list[list[str]]:
    lines = out.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.split()[:2] == ["conc", "req/s"])
    rows = []
    for ln in lines[i + 1:]:
        parts = ln.split()
        if not parts or not parts[0].rstrip("*").isdigit():
            break
        rows.append(parts)
    return rows


# --------------------------------------------------------------------------- parsing helpers


@pytest.mark.parametrize("text,seconds", [("10s", 10.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0),
                                          ("3", 3.0), ("0.25", 0.25), (" 1.5s ", 1.5), (2, 2.0)])
def test_parse_duration_units(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "10x", "-1", "1s2", "0", "0ms", "inf", "nan"])
def test_parse_duration_rejects(text):
    with pytest.raises(UsageError, match="--duration"):
        parse_duration(text)


def test_parse_duration_zero_allowed_for_warmup():
    assert parse_duration("0", name="warmup", allow_zero=True) == 0.0


def test_parse_concurrency():
    assert parse_concurrency("1,10, 50,") == [1, 10, 50]
    for bad, msg in (("", "at least one"), ("0", ">= 1"), ("1,x", "not an integer"), ("-3", ">= 1"),
                     ("1000000", "more than")):
        with pytest.raises(UsageError, match=msg):
            parse_concurrency(bad)


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("argv,msg", [
    (["http://127.0.0.1:1", "--duration", "soon"], "--duration"),
    (["http://127.0.0.1:1", "--warmup=-1s"], "--warmup"),
    (["http://127.0.0.1:1", "--timeout", "0"], "--timeout"),
    (["http://127.0.0.1:1", "--concurrency", "0,5"], "--concurrency"),
    (["http://127.0.0.1:1", "--concurrency", "a"], "--concurrency"),
    (["127.0.0.1:11434"], "http://"),
    (["http://"], "http://"),
    (["http://127.0.0.1:1", "--endpoint", "embed", "--stream"], "--stream"),
    (["http://127.0.0.1:1", "--num-predict=-5"], "--num-predict"),
    (["http://127.0.0.1:1", "--model", " "], "--model"),
])
def test_bad_arguments_exit_2(argv, msg, capsys):
    assert _main(argv) == 2
    err = capsys.readouterr().err
    assert "ollamamax bench: error:" in err and msg in err


def test_output_into_a_missing_directory_exits_2(capsys, tmp_path):
    for opt in ("--json", "--plot"):
        assert _main(["http://127.0.0.1:1", opt, str(tmp_path / "no" / "such.out")]) == 2
        assert f"{opt}: directory" in capsys.readouterr().err


def test_unwritable_json_is_reported_after_the_run(host, capsys, tmp_path):
    target = tmp_path / "a-directory.json"
    target.mkdir()  # open(..., "w") on a directory fails after the run
    assert _main([host.url, "--model", "llama3.2", "--concurrency", "1", *QUICK, "--json", str(target)]) == 1
    captured = capsys.readouterr()
    assert len(_rows(captured.out)) == 1 and "cannot write" in captured.err


def test_argparse_level_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as ei:
        _parse(["http://127.0.0.1:1", "--num-predict", "many"])
    assert ei.value.code == 2
    with pytest.raises(SystemExit) as ei:
        _parse(["http://127.0.0.1:1", "--endpoint", "pull"])
    assert ei.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_plot_without_matplotlib_exits_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes "import matplotlib" fail
    assert _main(["http://127.0.0.1:1", "--plot", str(tmp_path / "x.png")]) == 2
    assert "pip install 'ollamamax[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_run_bench_rejects_bad_values():
    for kw in ({"endpoint": "pull"}, {"concurrency": [0]}, {"duration": 0}, {"warmup": -1},
               {"timeout": 0}, {"endpoint": "embed", "stream": True}):
        with pytest.raises(ValueError):
            asyncio.run(run_bench("http://127.0.0.1:1", **kw))


def test_help_documents_coordinated_omission(capsys):
    with pytest.raises(SystemExit):
        _parse(["--help"])
    out = capsys.readouterr().out
    assert "coordinated omission" in out and "closed loop" in out


# --------------------------------------------------------------------------- the table


def test_table_has_one_row_per_level(host, capsys):
    rc = _main([host.url, "--model", "llama3.2", "--concurrency", "1,4,8", *QUICK])
    assert rc == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert [r[0] for r in rows] == ["1", "4", "8"]
    for r in rows:
        assert float(r[1]) > 0  # req/s
        assert r[-1] == "0"  # errors
        assert int(r[-2]) > 0  # ok


def test_through_ollamamax_cli(host, capsys):
    from ollamamax.cli import main as cli_main

    rc = cli_main(["bench", host.url, "--model", "llama3.2", "--concurrency", "2", *QUICK, "--no-uvloop"])
    assert rc == 0
    assert [r[0] for r in _rows(capsys.readouterr().out)] == ["2"]


def test_model_is_discovered_when_not_given(host, capsys):
    assert _main([host.url, "--concurrency", "1", *QUICK]) == 0
    assert "model llama3.2:latest" in capsys.readouterr().out
    assert _main([host.url, "--concurrency", "1", "--endpoint", "embed", *QUICK]) == 0
    assert "model nomic-embed-text:latest" in capsys.readouterr().out


def test_json_output_schema(host, tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = _main([host.url, "--model", "llama3.2", "--concurrency", "1,3", "--stream", "--seed", "7",
                "--num-predict", "5", "--json", str(out), *QUICK])
    assert rc == 0
    doc = json.loads(out.read_text())
    meta = doc["metadata"]
    for key in ("url", "model", "python", "machine", "date", "command", "endpoint", "stream", "concurrency"):
        assert key in meta
    assert meta["url"] == host.url and meta["model"] == "llama3.2" and meta["stream"] is True
    assert meta["command"].startswith("ollamamax bench ") and "--stream" in meta["command"]
    assert meta["concurrency"] == [1, 3]
    assert [lv["concurrency"] for lv in doc["levels"]] == [1, 3]
    for lv in doc["levels"]:
        assert lv["ok"] > 0 and lv["errors"] == 0 and lv["error_kinds"] == {}
        assert lv["requests_per_s"] > 0 and lv["elapsed_s"] >= 0.3
        for q in ("p50", "p90", "p99"):
            assert lv["latency_ms"][q] > 0
        assert lv["latency_ms"]["p50"] <= lv["latency_ms"]["p90"] <= lv["latency_ms"]["p99"]
        assert 0 < lv["ttft_ms"]["p50"] <= lv["ttft_ms"]["p99"]
        assert lv["output_tokens"] > 0 and lv["output_tokens"] <= 5 * lv["ok"]  # num_predict caps output
        assert lv["tokens_per_s"] > 0 and lv["tokens_per_s_per_request_p50"] > 0
        h = LatencyHistogram.from_bytes(base64.b64decode(lv["latency_us_histogram"]))
        assert h.count == lv["ok"]
    assert "wrote" in capsys.readouterr().out


# --------------------------------------------------------------------------- semantics


async def test_ttft_stream_vs_non_stream():
    async with FakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=400, response_tokens=(20, 20),
                          preload=["llama3.2"], num_parallel=2) as h:
        plain = (await run_bench(h.url, model="llama3.2", concurrency=[2], duration=0.3, warmup=0.05))[0]
        streamed = (await run_bench(h.url, model="llama3.2", concurrency=[2], duration=0.3, warmup=0.05,
                                    stream=True))[0]
    assert plain.ok > 0 and streamed.ok > 0
    # without streaming the whole reply is the first chunk: TTFT is the latency, sample for sample
    assert plain.ttft_us.to_bytes() == plain.latency_us.to_bytes()
    # streamed: the first token comes long before the 20th (20 tokens at 400/s = 50 ms)
    assert streamed.ttft_ms()[0] < streamed.latency_ms()[0] / 2
    assert streamed.output_tokens == 20 * streamed.ok
    # per-request tokens/s from eval_count/eval_duration, close to the emulator's pace
    assert 100 < streamed.tps_request_median() < 1000


async def test_requests_in_flight_at_the_end_are_awaited_and_counted():
    async with FakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=100, response_tokens=(30, 30),
                          preload=["llama3.2"], num_parallel=4) as h:
        r = (await run_bench(h.url, model="llama3.2", concurrency=[4], duration=0.1, warmup=0))[0]
    # each request takes ~0.3 s > the 0.1 s window: every worker's one request is drained
    assert r.ok == 4 and r.drained == 4 and r.errors == 0 and r.abandoned == 0
    assert r.elapsed_s >= 0.25
    assert r.requests_per_s == pytest.approx(4 / r.elapsed_s)


async def test_warmup_requests_are_not_counted():
    async with FakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=0, preload=["llama3.2"]) as h:
        r = (await run_bench(h.url, model="llama3.2", concurrency=[1], duration=0.1, warmup=0.2))[0]
        served = h.stats()["totals"]["served"]
    assert r.warmup_ok > 0 and r.ok > 0
    assert r.ok + r.warmup_ok == served
    assert r.latency_us.count == r.ok


async def test_unknown_model_counts_http_404():
    async with FakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=0) as h:
        res = await run_bench(h.url, model="nosuch", concurrency=[1, 2], duration=0.2, warmup=0)
    for r in res:
        assert r.ok == 0 and r.errors > 0
        assert set(r.error_kinds) == {"http 404"}
        assert r.error_samples["http 404"] == "model 'nosuch' not found"
        assert math.isnan(r.requests_per_s) and math.isnan(r.latency_ms()[0])
        row = bench.format_row(r)
        assert row.split()[1:9] == ["-"] * 8 and "http 404" in row


def test_unknown_model_cli_prints_dashes_and_summary(host, capsys):
    assert _main([host.url, "--model", "nosuch", "--concurrency", "1", *QUICK]) == 1
    out = capsys.readouterr().out
    row = _rows(out)[0]
    assert row[1:9] == ["-"] * 8
    assert "http 404" in out and "model 'nosuch' not found" in out and "no successful request" in out


def test_connection_refused_is_counted(capsys, tmp_path):
    port = _free_port()
    out_json = tmp_path / "r.json"
    rc = _main([f"http://127.0.0.1:{port}", "--model", "llama3.2", "--concurrency", "1,2", *QUICK,
                "--json", str(out_json)])
    assert rc == 1
    out = capsys.readouterr().out
    rows = _rows(out)
    assert len(rows) == 2 and all(r[1] == "-" for r in rows)
    assert "connection" in out and "no successful request" in out
    levels = json.loads(out_json.read_text())["levels"]
    assert all(lv["ok"] == 0 and lv["error_kinds"].get("connection", 0) > 0 for lv in levels)
    assert levels[0]["requests_per_s"] is None and levels[0]["latency_ms"]["p50"] is None


def test_no_model_list_falls_back_with_a_note(capsys):
    port = _free_port()
    assert _main([f"http://127.0.0.1:{port}", "--concurrency", "1", "--duration", "0.1", "--warmup", "0"]) == 1
    captured = capsys.readouterr()
    assert "could not list models" in captured.err and "model llama3.2" in captured.out


async def test_killed_host_counts_connection_errors():
    h = FakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=200, response_tokens=(20, 20),
                   preload=["llama3.2"], num_parallel=4)
    await h.start()

    async def kill_later() -> None:
        await asyncio.sleep(0.25)
        await h.kill()

    killer = asyncio.ensure_future(kill_later())
    try:
        r = (await run_bench(h.url, model="llama3.2", concurrency=[4], duration=0.5, warmup=0, stream=True,
                             timeout=2.0))[0]
    finally:
        await killer
        await h.stop()
    assert r.ok > 0  # before the kill
    assert r.error_kinds.get("connection", 0) >= 4  # the streams cut, then refused connections
    assert set(r.error_kinds) <= {"connection"}


async def test_in_band_and_500_errors():
    async with FakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=0, preload=["llama3.2"],
                          midstream_fail_rate=1.0) as h:
        s = (await run_bench(h.url, model="llama3.2", concurrency=[2], duration=0.15, warmup=0, stream=True))[0]
        p = (await run_bench(h.url, model="llama3.2", concurrency=[2], duration=0.15, warmup=0))[0]
        o = (await run_bench(h.url, model="llama3.2", concurrency=[2], duration=0.15, warmup=0, stream=True,
                             openai=True))[0]
    assert s.ok == 0 and set(s.error_kinds) == {"in-band"} and "unexpected EOF" in s.error_samples["in-band"]
    assert p.ok == 0 and set(p.error_kinds) == {"http 500"}
    # /v1: Ollama's OpenAI layer drops the error text and ends the stream without [DONE]
    # (an empty delta), so the bench sees an unfinished stream, not an in-band error
    assert o.ok == 0 and set(o.error_kinds) == {"protocol"}


async def test_timeout_errors_on_a_hanging_host():
    async with FakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=0, preload=["llama3.2"]) as h:
        h.hanging = True
        r = (await run_bench(h.url, model="llama3.2", concurrency=[2], duration=0.1, warmup=0, timeout=0.3))[0]
        h.hanging = False
    assert r.ok == 0 and r.error_kinds == {"timeout": 2} and r.drained == 2


# --------------------------------------------------------------------------- OpenAI mode, embeddings


@pytest.mark.parametrize("endpoint,stream", [("chat", True), ("chat", False), ("generate", True), ("embed", False)])
async def test_openai_mode(endpoint, stream):
    async with FakeOllama(["llama3.2", "nomic-embed-text"], load_delay=0, tokens_per_sec=0,
                          response_tokens=(6, 6), preload=["llama3.2"]) as h:
        model = "nomic-embed-text" if endpoint == "embed" else "llama3.2"
        r = (await run_bench(h.url + "/v1", model=model, concurrency=[2], duration=0.2, warmup=0.05,
                             endpoint=endpoint, stream=stream, openai=True, api_key="sk-test"))[0]
    assert r.ok > 0 and r.errors == 0
    if endpoint == "embed":
        assert r.output_tokens == 0 and math.isnan(r.tokens_per_s)
    else:
        assert r.output_tokens == 6 * r.ok  # usage.completion_tokens
        assert r.tps_request_median() > 0


async def test_native_embed_and_generate():
    async with FakeOllama(["llama3.2", "nomic-embed-text"], load_delay=0, tokens_per_sec=0,
                          response_tokens=(6, 6), preload=["llama3.2"]) as h:
        e = (await run_bench(h.url, model="nomic-embed-text", concurrency=[2], duration=0.2, warmup=0.05,
                             endpoint="embed"))[0]
        g = (await run_bench(h.url, model="llama3.2", concurrency=[2], duration=0.2, warmup=0.05,
                             endpoint="generate", stream=True))[0]
    assert e.ok > 0 and e.errors == 0 and e.output_tokens == 0
    assert g.ok > 0 and g.errors == 0 and g.output_tokens == 6 * g.ok


# --------------------------------------------------------------------------- a scripted server


async def _scripted(handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


async def test_request_shape_api_key_prompt_counter_and_options():
    seen: list[tuple[str, dict, str | None]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append((request.path, await request.json(), request.headers.get("Authorization")))
        return web.json_response({"model": "m", "message": {"role": "assistant", "content": "hi"}, "done": True,
                                  "eval_count": 4, "eval_duration": 2_000_000})

    runner, url = await _scripted(handler)
    try:
        r = (await run_bench(url + "/", model="m", concurrency=[1], duration=0.05, warmup=0, api_key="k1",
                             prompt="q{n}", num_predict=9, seed=3))[0]
    finally:
        await runner.cleanup()
    assert r.ok == len(seen) > 0
    path, body, auth = seen[0]
    assert path == "/api/chat" and auth == "Bearer k1"
    assert body["stream"] is False and body["options"] == {"num_predict": 9, "seed": 3}
    assert body["messages"][0]["content"] == "q1"
    assert len({b["messages"][0]["content"] for _, b, _ in seen}) == len(seen)  # {n} differs per request
    assert r.tps_request_median() == pytest.approx(2000, rel=0.01)  # 4 tokens in 2 ms


@pytest.mark.parametrize("reply,kind", [
    (b'{"not json', "protocol"),
    (b"[1, 2]", "protocol"),
    (b'{"error": "boom"}', "in-band"),
])
async def test_unreadable_replies_are_protocol_errors(reply, kind):
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=reply, content_type="application/json")

    runner, url = await _scripted(handler)
    try:
        r = (await run_bench(url, model="m", concurrency=[1], duration=0.05, warmup=0))[0]
    finally:
        await runner.cleanup()
    assert r.ok == 0 and set(r.error_kinds) == {kind}


async def test_stream_without_final_chunk_is_a_protocol_error():
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        await resp.write(b'{"message":{"role":"assistant","content":"a"},"done":false}\n')
        await resp.write_eof()
        return resp

    runner, url = await _scripted(handler)
    try:
        r = (await run_bench(url, model="m", concurrency=[1], duration=0.05, warmup=0, stream=True))[0]
        o = (await run_bench(url, model="m", concurrency=[1], duration=0.05, warmup=0, stream=True, openai=True))[0]
    finally:
        await runner.cleanup()
    assert r.ok == 0 and r.error_kinds.keys() == {"protocol"}
    assert "final chunk" in r.error_samples["protocol"]
    assert o.ok == 0 and o.error_kinds.keys() == {"protocol"}


# --------------------------------------------------------------------------- progress, interrupt, plot


def test_progress_bar_when_forced(host, capsys):
    assert _main([host.url, "--model", "llama3.2", "--concurrency", "1,2", *QUICK, "--progress"]) == 0
    err = capsys.readouterr().err
    assert "level 1/2 c=1 [" in err and "level 2/2 c=2 [" in err
    assert "req " in err and "err " in err and "/0.4s" in err


def test_no_progress_bar_when_not_a_tty(host, capsys):
    assert _main([host.url, "--model", "llama3.2", "--concurrency", "1", *QUICK]) == 0
    assert "level 1/1" not in capsys.readouterr().err


def test_progress_on_a_terminal_redraws_one_line():
    import io

    buf = io.StringIO()
    p = Progress(buf, tty=True)
    p.update(index=0, count=2, concurrency=5, elapsed=0.5, total=1.0, warming=False, draining=False,
             ok=10, errors=1, in_flight=5)
    p.clear()
    text = buf.getvalue()
    assert text.startswith("\rlevel 1/2 c=5 [############............] 0.5/1.0s measuring  req 10  err 1")
    assert text.endswith("\r") and "\n" not in text


async def test_stop_event_returns_partial_results():
    async with FakeOllama(["llama3.2"], load_delay=0, tokens_per_sec=0, preload=["llama3.2"]) as h:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, stop.set)
        seen: list[LevelResult] = []
        t0 = time.monotonic()
        res = await run_bench(h.url, model="llama3.2", concurrency=[1, 2], duration=30, warmup=0, stop=stop,
                              on_level=seen.append)
        took = time.monotonic() - t0
    assert took < 10  # stopped long before the 30 s level would end
    assert len(res) == 1 and res[0].interrupted and res[0].ok > 0 and seen == res
    assert "*" in bench.format_row(res[0])


def test_ctrl_c_prints_results_so_far(host):
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ollamamax", "bench", host.url, "--model", "llama3.2", "--concurrency", "1,2",
         "--duration", "60s", "--warmup", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert "conc" in lines[1], lines
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    rows = _rows("".join(lines) + out)
    assert len(rows) == 1 and rows[0][0] == "1*" and int(rows[0][-2]) > 0
    assert "interrupted" in err and "Traceback" not in err


def test_plot_writes_a_png(host, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "bench.png"
    rc = _main([host.url, "--model", "llama3.2", "--concurrency", "1,4,16", *QUICK, "--stream",
                "--plot", str(png)])
    assert rc == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert f"wrote {png}" in capsys.readouterr().out
