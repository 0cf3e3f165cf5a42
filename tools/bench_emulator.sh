#!/usr/bin/env bash
# Throughput of one emulated Ollama host (ollamamax mock) under wrk, on loopback.
#
#   tools/bench_emulator.sh [SECONDS] [CONNECTIONS]      (defaults: 10 s, 64 connections)
#
# The emulator runs pinned to core 1 (taskset), wrk to core 0. tokens_per_sec=0 (as fast as
# possible), the model is preloaded, every answer has exactly 16 tokens. Two runs:
#   1. non-streaming /api/chat  -> requests/s
#   2. streaming /api/chat      -> requests/s and chunks/s (= req/s x NDJSON lines per reply,
#                                  the line count measured on a real reply before the run)
# Only the PID this script started is stopped. Needs wrk (apt-get install -y wrk).
set -euo pipefail
cd "$(dirname "$0")/.."

DUR=${1:-10}
CONN=${2:-64}
PORT=${BENCH_PORT:-11499}
PY=${PYTHON:-python}
MOCK_CPU=${MOCK_CPU:-1}
WRK_CPU=${WRK_CPU:-0}

command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk" >&2; exit 1; }
command -v taskset >/dev/null || { echo "taskset not found (util-linux)" >&2; exit 1; }

TMP=$(mktemp -d)
MOCK_PID=""
cleanup() {
    if [ -n "$MOCK_PID" ]; then
        kill -TERM "$MOCK_PID" 2>/dev/null || true
        wait "$MOCK_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

BODY_WHOLE='{"model":"llama3.2","messages":[{"role":"user","content":"Why is the sky blue?"}],"stream":false}'
BODY_STREAM='{"model":"llama3.2","messages":[{"role":"user","content":"Why is the sky blue?"}],"stream":true}'
for name in whole stream; do
    if [ $name = whole ]; then body=$BODY_WHOLE; else body=$BODY_STREAM; fi
    cat > "$TMP/$name.lua" <<LUA
wrk.method = "POST"
wrk.body   = '$body'
wrk.headers["Content-Type"] = "application/json"
LUA
done

PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" taskset -c "$MOCK_CPU" "$PY" -m ollamamax.testing.cli \
    --port "$PORT" --models llama3.2 --preload llama3.2 --tokens-per-sec 0 --load-delay 0 \
    --num-parallel 8 --max-queue 100000 --response-tokens 16,16 --seed 1 >"$TMP/mock.log" 2>&1 &
MOCK_PID=$!

for _ in $(seq 1 100); do
    if curl -sf "http://127.0.0.1:$PORT/" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$MOCK_PID" 2>/dev/null; then cat "$TMP/mock.log" >&2; exit 1; fi
    sleep 0.1
done
curl -sf "http://127.0.0.1:$PORT/" >/dev/null || { echo "emulator did not start" >&2; cat "$TMP/mock.log" >&2; exit 1; }

LINES=$(curl -s -d "$BODY_STREAM" "http://127.0.0.1:$PORT/api/chat" | wc -l)
BYTES_WHOLE=$(curl -s -d "$BODY_WHOLE" "http://127.0.0.1:$PORT/api/chat" | wc -c)

cpu_ticks() {  # utime + stime of the emulator, in clock ticks
    awk '{print $14 + $15}' "/proc/$MOCK_PID/stat"
}
TICKS=$(getconf CLK_TCK)

run() {  # name -> prints "req/s requests cpu_seconds"
    local name=$1 t0 t1
    t0=$(cpu_ticks)
    taskset -c "$WRK_CPU" wrk -t1 -c"$CONN" -d"${DUR}s" --timeout 10s -s "$TMP/$name.lua" \
        "http://127.0.0.1:$PORT/api/chat" >"$TMP/$name.out" 2>&1
    t1=$(cpu_ticks)
    if grep -q "Non-2xx" "$TMP/$name.out"; then
        echo "errors in $name run:" >&2; cat "$TMP/$name.out" >&2; exit 1
    fi
    local rps reqs
    rps=$(awk '/Requests\/sec/ {print $2}' "$TMP/$name.out")
    reqs=$(awk '/requests in/ {print $1}' "$TMP/$name.out")
    awk -v r="$rps" -v n="$reqs" -v d="$((t1 - t0))" -v hz="$TICKS" 'BEGIN {printf "%s %s %.2f\n", r, n, d / hz}'
}

echo "emulator: python -m ollamamax.testing.cli on core $MOCK_CPU; wrk -t1 -c$CONN -d${DUR}s on core $WRK_CPU"
echo "python: $("$PY" -c 'import sys,platform;print(platform.python_implementation(), sys.version.split()[0])'); uvloop: $("$PY" -c 'import uvloop;print(uvloop.__version__)' 2>/dev/null || echo no)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) (other processes on these cores lower the wall-clock figures;"
echo "  the per-CPU-second figures divide by the emulator's own CPU time and are steadier)"
read -r RPS_WHOLE N_WHOLE CPU_WHOLE <<<"$(run whole)"
PER_CPU_WHOLE=$(awk -v n="$N_WHOLE" -v c="$CPU_WHOLE" 'BEGIN {printf "%.0f", (c > 0 ? n / c : 0)}')
echo "non-streaming chat: ${RPS_WHOLE} req/s wall; ${N_WHOLE} requests in ${CPU_WHOLE} CPU-s = ${PER_CPU_WHOLE} req per CPU-second (reply ${BYTES_WHOLE} bytes)"
read -r RPS_STREAM N_STREAM CPU_STREAM <<<"$(run stream)"
CHUNKS=$(awk -v r="$RPS_STREAM" -v l="$LINES" 'BEGIN {printf "%.0f", r * l}')
PER_CPU_CHUNKS=$(awk -v n="$N_STREAM" -v c="$CPU_STREAM" -v l="$LINES" 'BEGIN {printf "%.0f", (c > 0 ? n * l / c : 0)}')
echo "streaming chat: ${RPS_STREAM} req/s x ${LINES} NDJSON lines = ${CHUNKS} chunks/s wall; ${PER_CPU_CHUNKS} chunks per CPU-second"
echo "goals: >= 3000 non-streaming req/s, >= 50000 chunks/s (one core)"
