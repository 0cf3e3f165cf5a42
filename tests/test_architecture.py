"""The package's architecture rules hold: layers whose imports only point down, no import
cycle between any two modules, private modules imported only inside their package, and
no module of ollamamax over the length limit.

The import rules are import-linter contracts in ``pyproject.toml`` (``[tool.importlinter]``),
checked here with import-linter itself, so a layering violation fails the default test
run (``.ci/run`` also runs ``lint-imports``).  Realistic bugs these catch: a placement
module that imports the dispatcher to read its state, a front end that imports ``ops``
to reach the metrics, two modules of one package that import each other through a
function-local import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ollamamax

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
MAX_LINES = 800


def test_import_contracts_hold(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("importlinter", reason="import-linter is in the test extra")
    if not PYPROJECT.exists():  # pragma: no cover - a wheel's tests without the source tree
        pytest.skip("pyproject.toml (the contracts) is not next to the tests")
    from importlinter import configuration
    from importlinter.application.use_cases import lint_imports

    configuration.configure()  # what the lint-imports command does first
    ok = lint_imports(config_filename=str(PYPROJECT), cache_dir=None, no_logo=True)
    out = capsys.readouterr().out
    assert ok, out
    assert "BROKEN" not in out and out.count("KEPT") >= 3, out


def test_no_module_over_the_length_limit() -> None:
    pkg = Path(ollamamax.__file__).resolve().parent
    long = {
        str(p.relative_to(pkg)): n
        for p in pkg.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"split these along their concerns: {long}"


def test_every_module_opens_with_a_paragraph() -> None:
    pkg = Path(ollamamax.__file__).resolve().parent
    missing = []
    for p in sorted(pkg.rglob("*.py")):
        doc = ast.get_docstring(ast.parse(p.read_text(encoding="utf-8")))
        if not doc or len(doc.split()) < 8:
            missing.append(str(p.relative_to(pkg)))
    assert not missing, f"modules without an opening paragraph (what it owns, what it must not do): {missing}"


def test_no_private_name_is_imported_from_another_module() -> None:
    """``from .x import _name`` across modules is a private access: a module that needs
    something of another one uses a public name on it.  (Private *modules* are covered by
    the import-linter contract above; ``_compat`` and ``_version`` are package-level
    modules meant to be imported, and are not names.)"""
    pkg = Path(ollamamax.__file__).resolve().parent
    found = []
    for p in sorted(pkg.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            internal = node.level > 0 or (node.module or "").split(".")[0] == "ollamamax"
            if not internal:
                continue
            if node.level:
                base = p.parent
                for _ in range(node.level - 1):
                    base = base.parent
            else:
                base = pkg.parent
            base = base.joinpath(*(node.module or "").split(".")) if node.module else base
            for alias in node.names:
                name = alias.name
                is_module = (base / f"{name}.py").exists() or (base / name / "__init__.py").exists()
                if name.startswith("_") and not name.startswith("__") and not is_module:
                    found.append(f"{p.relative_to(pkg)}: from {'.' * node.level}{node.module or ''} import {name}")
    assert not found, found
