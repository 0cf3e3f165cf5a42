"""The package surface: public names, the native/pure switch, the fallback warning."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ollamamax
from ollamamax._compat import NO_EXTENSIONS

SELECTORS = {
    "ring": ("RingQueue", "AsyncRingQueue"),
    "pool": ("ObjectPool",),
    "lfu": ("LFUCache",),
    "hist": ("LatencyHistogram",),
}
NATIVE_CLASSES = ("RingQueue", "ObjectPool", "LFUCache", "LatencyHistogram")


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "OLLAMAMAX_NO_EXTENSIONS"}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
    )


def test_public_names_resolve() -> None:
    for name in ollamamax.__all__:
        assert getattr(ollamamax, name) is not None, name
    assert set(ollamamax.__all__) <= set(dir(ollamamax))
    with pytest.raises(AttributeError):
        ollamamax.NoSuchThing  # noqa: B018


def test_version_matches_metadata() -> None:
    try:
        installed = importlib.metadata.version("ollamamax")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("ollamamax is not installed (running from src/); the CI run installs it")
    assert ollamamax.__version__ == installed


def test_typing_markers_shipped() -> None:
    pkg = Path(ollamamax.__file__).parent
    assert (pkg / "py.typed").exists()
    if not NO_EXTENSIONS:
        for sel in SELECTORS:
            assert (pkg / "structures" / f"_{sel}_c.pyi").exists(), f"missing stub _{sel}_c.pyi"


@pytest.mark.skipif(NO_EXTENSIONS, reason="pure-Python run selected by OLLAMAMAX_NO_EXTENSIONS")
def test_native_modules_loaded_in_normal_install() -> None:
    import importlib

    for sel_name, names in SELECTORS.items():
        sel = importlib.import_module(f"ollamamax.structures.{sel_name}")
        native = sel.IMPLEMENTATIONS["c"]
        assert native is not None, f"native {sel_name} missing from a normal install"
        for name in names:
            assert getattr(sel, name) is getattr(native, name)
    for name in NATIVE_CLASSES:
        cls = getattr(ollamamax, name)
        assert cls.__module__.endswith("_c"), (name, cls.__module__)


def test_no_extensions_switch_selects_pure() -> None:
    code = (
        "import ollamamax\n"
        f"for n in {NATIVE_CLASSES!r}:\n"
        "    m = getattr(ollamamax, n).__module__\n"
        "    assert m.endswith('_py'), (n, m)\n"
        "print('pure')\n"
    )
    proc = _run(code, OLLAMAMAX_NO_EXTENSIONS="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "pure"
    assert "RuntimeWarning" not in proc.stderr


def test_missing_extension_warns_once_and_falls_back() -> None:
    # Block every ollamamax.structures._*_c import, as if the wheel had no compiled modules.
    code = (
        "import sys, warnings\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.startswith('ollamamax.structures._') and name.endswith('_c'):\n"
        "            raise ImportError('blocked for test: ' + name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Block())\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import ollamamax\n"
        f"    mods = [getattr(ollamamax, n).__module__ for n in {NATIVE_CLASSES!r}]\n"
        "msgs = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]\n"
        "assert len(msgs) == 1, msgs\n"
        "assert 'falling back' in msgs[0], msgs\n"
        "assert all(m.endswith('_py') for m in mods), mods\n"
        "print('ok')\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_cli_version_and_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ollamamax", "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"ollamamax {ollamamax.__version__}"
    proc = subprocess.run([sys.executable, "-m", "ollamamax"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    for sub in ("demo", "serve", "mock", "bench"):
        assert sub in proc.stdout
