"""The ``/ollamamax/`` status page: server-side render, JSON feed, and a real headless Chromium.

The Chromium test needs Debian's ``chromium``.  When it is missing, the session fixture
installs it with apt if we are root and ``CI`` or ``OLLAMAMAX_INSTALL_CHROMIUM`` is set;
otherwise the test is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from test_metrics import obs_stack

from ollamamax.ops.statuspage import PAGE_HEADERS, render_status_page

pytestmark = pytest.mark.timeout(90)

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _Checker(HTMLParser):
    """Well-formedness (every non-void element closed in order) and external references."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.external: list[str] = []
        self.text: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        for k in ("src", "href"):
            v = a.get(k)
            if v and (v.startswith("//") or "://" in v):
                self.external.append(f"{tag} {k}={v}")
        if tag == "link":
            self.external.append("link element")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}>, open: {self.stack[-3:]}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1] not in ("script", "style"):
            self.text.append(data)


def check_html(page: str) -> _Checker:
    assert page.startswith("<!DOCTYPE html>")
    c = _Checker()
    c.feed(page)
    c.close()
    assert not c.errors, c.errors
    assert not c.stack, f"unclosed: {c.stack}"
    assert not c.external, c.external
    return c


def sample_status(**over: Any) -> dict[str, Any]:
    st: dict[str, Any] = {
        "strategy": "least-loaded",
        "queue": {"depth": 3, "size": 1024},
        "cache": {"hits": 3, "misses": 1},
        "retries": 2,
        "version": "9.9",
        "generated_at": 1_700_000_000.0,
        "gc": {"count": 10, "p50_ms": 0.1, "p99_ms": 2.5, "max_ms": 3.0, "total_ms": 5.0},
        "hosts": [
            {"name": "gpu1", "url": "http://gpu1:11434", "healthy": True, "models": ["llama3.2:latest", "qwen3:8b"],
             "loaded": ["llama3.2:latest"], "in_flight": 8, "capacity": 8, "error": None,
             "requests": {"ok": 120, "errors": 3}, "ttfb": {"count": 120, "p50_ms": 12.345, "p99_ms": 250.0},
             "total": {"count": 120, "p50_ms": 800.0, "p99_ms": 2500.0}},
            {"name": "gpu2", "url": "http://gpu2:11434", "healthy": False, "models": [], "loaded": [],
             "in_flight": 0, "capacity": 4, "error": "connection refused",
             "requests": {"ok": 0, "errors": 0}, "ttfb": {"count": 0, "p50_ms": None, "p99_ms": None},
             "total": {"count": 0, "p50_ms": None, "p99_ms": None}},
        ],
    }
    st.update(over)
    return st


# -- server-side render ------------------------------------------------------------------

def test_render_shows_hosts_health_models_and_latency_without_js():
    page = render_status_page(sample_status())
    c = check_html(page)
    text = " ".join(" ".join(c.text).split())
    for s in ("gpu1", "gpu2", "http://gpu1:11434", "healthy", "ejected", "connection refused", "llama3.2:latest",
              "qwen3:8b", "8 / 8", "0 / 4", "12.3 ms", "250 ms", "2.50 s", "120", "/ 3 err", "3 / 1024",
              "75%", "least-loaded", "1 / 2"):
        assert s in text, s
    rows = [a for tag, a in c.tags if tag == "tr" and "data-host" in a]
    assert [a["data-host"] for a in rows] == ["gpu1", "gpu2"]
    chips = [a for tag, a in c.tags if tag == "span" and "chip" in (a.get("class") or "")]
    assert [a["class"] for a in chips] == ["chip loaded", "chip"]
    # without JavaScript the page refreshes itself
    assert '<noscript><meta http-equiv="refresh" content="5"></noscript>' in page
    assert "REFRESH = 2000" in page and "{{" not in page


def test_render_shows_residents_slots_loads_queue_per_model_and_decisions():
    # bug caught: the scheduler's picture (slots in use, a load under way, who waits, why a
    # model was loaded where) missing from the page operators look at
    st = sample_status(
        queue={"depth": 4, "size": 1024, "by_model": {"phi4:latest": {"waiting": 4, "oldest_s": 2.1}}},
        scheduler={"loads": 7, "preloads": 1, "evictions": 5, "failed_loads": 0, "switches_deferred": 3,
                   "decisions": [{"at": 1_700_000_000.0, "host": "gpu1", "model": "phi4:latest",
                                  "reason": "4 waiting (oldest 2.1 s), no copy loaded; evicts idle gemma3"}]})
    st["hosts"][0]["residents"] = [
        {"model": "llama3.2:latest", "state": "loaded", "in_flight": 1, "slots": 2},
        {"model": "phi4:latest", "state": "loading", "in_flight": 0, "slots": 1, "progress": 0.4}]
    st["hosts"][0]["loaded"] = ["llama3.2:latest"]
    c = check_html(render_status_page(st))
    text = " ".join(" ".join(c.text).split())
    for s in ("llama3.2:latest 1/2", "phi4:latest 40%", "phi4:latest 4 waiting, oldest 2.1 s",
              "loads 7", "evictions 5", "switches deferred 3", "evicts idle gemma3"):
        assert s in text, s
    chips = [a["class"] for tag, a in c.tags if tag == "span" and "chip" in (a.get("class") or "")]
    assert chips[:3] == ["chip loaded", "chip loading", "chip"]


def test_render_escapes_everything_from_hosts():
    evil = '<script>alert("x")</script>'
    st = sample_status()
    st["hosts"][0]["name"] = evil
    st["hosts"][0]["models"] = [evil]
    st["hosts"][1]["error"] = evil
    page = render_status_page(st)
    check_html(page)
    assert evil not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page


def test_render_empty_and_minimal_status():
    page = render_status_page({"hosts": []}, refresh_seconds=1.0)
    c = check_html(page)
    assert "no hosts configured" in " ".join(c.text)
    assert "REFRESH = 1000" in page
    check_html(render_status_page({"hosts": [{"name": "h", "healthy": True}]}))


def test_page_headers_forbid_external_assets():
    csp = PAGE_HEADERS["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert PAGE_HEADERS["Content-Type"] == "text/html; charset=utf-8"


async def test_served_page_and_status_json():
    async with obs_stack() as s, aiohttp.ClientSession() as session:
        async with session.post(s.url + "/api/generate", json={"model": "llama3.2", "prompt": "x",
                                                              "stream": False}) as r:
            assert r.status == 200
            served_by = r.headers["X-Ollamamax-Host"]
        async with session.get(s.url + "/ollamamax", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "ollamamax/"
        async with session.get(s.url + "/ollamamax/") as r:
            assert r.status == 200
            assert r.headers["Content-Security-Policy"] == PAGE_HEADERS["Content-Security-Policy"]
            page = await r.text()
        c = check_html(page)
        text = " ".join(c.text)
        for h in s.d.hosts:
            assert h.name in text
        assert "llama3.2:latest" in text and "nomic-embed-text:latest" in text and "healthy" in text
        async with session.get(s.url + "/ollamamax/status") as r:
            assert r.status == 200
            st = await r.json()
        assert [h["name"] for h in st["hosts"]] == [h.name for h in s.d.hosts]
        by = {h["name"]: h for h in st["hosts"]}
        assert by[served_by]["requests"] == {"ok": 1, "errors": 0}
        assert by[served_by]["ttfb"]["count"] == 1 and by[served_by]["ttfb"]["p50_ms"] > 0
        assert by[served_by]["total"]["p99_ms"] >= by[served_by]["ttfb"]["p50_ms"]
        assert set(by[served_by]["by_model"]) == {"llama3.2:latest"}
        assert st["gc"]["count"] >= 0 and st["version"] and st["generated_at"] > 0
        assert st["queue"] == {"depth": 0, "size": s.d.config.queue_size, "by_model": {}}


# -- real browser ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def chromium() -> str:
    exe = shutil.which("chromium")
    if exe:
        return exe
    want = os.environ.get("CI") or os.environ.get("OLLAMAMAX_INSTALL_CHROMIUM")
    if not want or not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not on PATH (install Debian's 'chromium' package, or run as root with "
                    "CI=1 or OLLAMAMAX_INSTALL_CHROMIUM=1 to let the test install it)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
        if r.returncode != 0:
            pytest.skip(f"could not install chromium: {' '.join(cmd)} failed: {r.stderr[-500:]}")
    exe = shutil.which("chromium")
    if not exe:
        pytest.skip("chromium still not on PATH after apt-get install")
    return exe


async def run_chromium(exe: str, profile: Path, *args: str, timeout: float = 40.0) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except (TimeoutError, asyncio.TimeoutError):
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out


def read_png(data: bytes) -> np.ndarray:
    """A tiny PNG decoder (8-bit RGB/RGBA, not interlaced): -> (height, width, channels)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, [], None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    assert ihdr is not None
    w, h, depth, ctype, _comp, _filt, interlace = ihdr
    assert depth == 8 and ctype in (2, 6) and interlace == 0, ihdr
    bpp = 3 if ctype == 2 else 4
    stride = w * bpp
    rows = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8)
    assert rows.size == h * (stride + 1)
    rows = rows.reshape(h, stride + 1)
    out = np.zeros((h, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for y in range(h):
        f, line = int(rows[y, 0]), rows[y, 1:]
        if f == 0:
            cur = line.copy()
        elif f == 1:  # Sub: running sum per channel, mod 256
            cur = np.cumsum(line.reshape(w, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif f == 2:  # Up
            cur = line + prev
        elif f in (3, 4):  # Average, Paeth: sequential within the row
            ln, pv, c_l = line.tolist(), prev.tolist(), [0] * stride
            for i in range(stride):
                a = c_l[i - bpp] if i >= bpp else 0
                b = pv[i]
                if f == 3:
                    c_l[i] = (ln[i] + ((a + b) >> 1)) & 255
                else:
                    c = pv[i - bpp] if i >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    c_l[i] = (ln[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
            cur = np.array(c_l, dtype=np.uint8)
        else:
            raise AssertionError(f"bad PNG filter {f}")
        out[y] = cur
        prev = cur
    return out.reshape(h, w, bpp)


def test_png_reader_on_a_handmade_image():
    w, h = 3, 2
    pixels = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]], [[1, 2, 3], [4, 5, 6], [7, 8, 9]]], np.uint8)
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    assert (read_png(png) == pixels).all()
    with pytest.raises(AssertionError, match="not a PNG"):
        read_png(b"GIF89a")


def free_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_status_page_in_headless_chromium(chromium, tmp_path):
    # two emulated hosts plus one that is down, so every health state is on screen
    async with obs_stack((["llama3.2", "qwen3:8b"], ["llama3.2", "nomic-embed-text"]),
                         host_kw=[{"preload": ["llama3.2"]}, {}], extra_urls=(f"http://127.0.0.1:{free_port()}",),
                         connect_timeout=1.0) as s, aiohttp.ClientSession() as session:
        for i in range(6):
            async with session.post(s.url + "/api/chat", json={
                    "model": "llama3.2", "stream": False, "messages": [{"role": "user", "content": str(i)}]}) as r:
                assert r.status == 200
        async with session.post(s.url + "/api/embed", json={"model": "nomic-embed-text", "input": "x"}) as r:
            assert r.status == 200
        url = s.url + "/ollamamax/"
        png = tmp_path / "status.png"
        await run_chromium(chromium, tmp_path / "p1", f"--screenshot={png}", "--window-size=1200,900",
                           "--virtual-time-budget=3000", url)
        dom = (await run_chromium(chromium, tmp_path / "p2", "--dump-dom", "--virtual-time-budget=3000",
                                  url)).decode()

    # the DOM after the script fetched status and redrew the page
    assert 'data-rendered="js"' in dom, dom[:500]
    for h in s.d.hosts:
        assert f'data-host="{h.name}"' in dom
    assert dom.count('class="badge ok">healthy<') == 2
    assert dom.count('class="badge bad">ejected<') == 1
    for m in ("llama3.2:latest", "qwen3:8b", "nomic-embed-text:latest"):
        assert m in dom
    assert 'class="chip loaded"' in dom and "live, every 2 s" in dom
    assert "last load decisions" in dom and "no copy loaded" in dom  # the scheduler loaded nomic-embed-text

    data = png.read_bytes()
    assert len(data) > 10_000
    img = read_png(data)
    assert img.shape[:2] == (900, 1200)
    rgb = img[:, :, :3].reshape(-1, 3)
    colors = np.unique(rgb, axis=0)
    assert len(colors) > 50  # text, badges, bars: not a blank page
    background = (rgb == rgb[0]).all(axis=1).mean()
    assert background < 0.98
    # the green of the "healthy" badges (#1f9d55) is painted somewhere
    green = (np.abs(rgb.astype(int) - [0x1F, 0x9D, 0x55]).sum(axis=1) < 30).sum()
    assert green > 50
    with contextlib.suppress(OSError):  # keep a copy for a human to look at
        dest = os.environ.get("OLLAMAMAX_SCREENSHOT_DIR")
        if dest:
            shutil.copy(png, Path(dest) / "status.png")


def test_render_shows_client_connections_when_served_by_the_fast_path():
    plain = " ".join(check_html(render_status_page(sample_status())).text)
    assert "Client connections" not in plain  # mounted app: no server counters
    st = sample_status()
    st["http"] = {"fast_requests": 10, "handed_over": 1, "connections": 4, "open_connections": 3}
    c = check_html(render_status_page(st))
    text = " ".join(" ".join(c.text).split())
    assert "Client connections 3" in text
