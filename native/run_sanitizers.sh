#!/usr/bin/env bash
# Build and run the C-level stress tests under sanitizers.
#
#   native/run_sanitizers.sh            # all: TSan (ring, hist) + ASan/UBSan (all four)
#   native/run_sanitizers.sh tsan       # only ThreadSanitizer
#   native/run_sanitizers.sh asan       # only AddressSanitizer + UndefinedBehaviorSanitizer
#
# Each native/tests/stress_<name>.c is a standalone C11 program (main returns 0 on
# success) linked with native/src/<name>.c and nothing else: no Python involved, so
# the sanitizers see only our code.  Needs gcc (or CC=clang).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mode=${1:-all}
cc=${CC:-gcc}
out="$here/tests/build"
mkdir -p "$out"
common=(-std=c11 -O1 -g -fno-omit-frame-pointer -Wall -Wextra -Werror -pthread -I"$here/include")
tsan_targets=(ring hist)
asan_targets=(ring pool lfu hist)
fail=0
run() {  # name kind flags...
  local name=$1 kind=$2; shift 2
  local exe="$out/stress_${name}_${kind}"
  echo "== ${kind}: ${name}"
  "$cc" "${common[@]}" "$@" "$here/tests/stress_${name}.c" "$here/src/${name}.c" -o "$exe" -latomic -lm
  if "$exe"; then echo "   ok"; else echo "   FAILED (${kind} ${name})"; fail=1; fi
}
if [[ $mode == all || $mode == tsan ]]; then
  for n in "${tsan_targets[@]}"; do
    TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" run "$n" tsan -fsanitize=thread
  done
fi
if [[ $mode == all || $mode == asan ]]; then
  for n in "${asan_targets[@]}"; do
    ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
      run "$n" asan -fsanitize=address,undefined -fno-sanitize-recover=all
  done
fi
exit $fail
