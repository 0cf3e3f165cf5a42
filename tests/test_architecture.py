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
