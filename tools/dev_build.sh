#!/usr/bin/env bash
# Developer build: compile one or more native modules in place (into src/ollamamax/structures/)
# so that `PYTHONPATH=src python -m pytest` exercises them without an install.
#   tools/dev_build.sh ring            # builds _ring_c
#   tools/dev_build.sh ring lfu hist   # several
#   tools/dev_build.sh                 # all four
# Each call uses its own build directory per module list, so parallel builds of
# different modules do not collide.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mods=("$@"); [ ${#mods[@]} -eq 0 ] && mods=(ring pool lfu hist)
bdir="$root/build/dev-$(IFS=-; echo "${mods[*]}")"
py=${PYTHON:-python3}
cmake -S "$root" -B "$bdir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DPython_EXECUTABLE="$(command -v "$py")" >/dev/null
for m in "${mods[@]}"; do
  cmake --build "$bdir" --target "_${m}_c"
  # copy then rename: a process that has the old module mapped keeps a valid file
  for so in "$bdir"/_"${m}"_c*.so; do
    cp -f "$so" "$root/src/ollamamax/structures/.$(basename "$so").tmp"
    mv -f "$root/src/ollamamax/structures/.$(basename "$so").tmp" "$root/src/ollamamax/structures/$(basename "$so")"
  done
done
