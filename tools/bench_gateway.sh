#!/usr/bin/env bash
# Overhead of the ollamamax gateway (`ollamamax serve`) against nginx as a reverse proxy,
# on loopback, side by side in one run.
#
#   tools/bench_gateway.sh [options]
#
#   --backend emulator|nginx  what answers behind the proxies (default emulator):
#                             emulator = 2 x `ollamamax mock --tokens-per-sec 0` (16-token
#                             answers; streaming = /api/chat, 17 NDJSON lines);
#                             nginx = one nginx serving fixed replies on 2 ports (streaming =
#                             /api/generate, a fixed 17-line NDJSON body)
#   --duration S              seconds per wrk measurement (default 5)
#   --reps N                  interleaved repetitions; figures are medians (default 3)
#   --json PATH               write the aggregated figures as JSON
#   --raw PATH                keep the raw measurements (JSON lines; profiles next to it)
#   --no-aiohttp              skip the plain-aiohttp reference proxy row
#   --baseline DIR            also measure a second gateway run from source tree DIR (another
#                             commit, e.g. `git worktree add /tmp/old <commit>`, with the native
#                             modules copied or built into DIR/src/ollamamax): target "baseline",
#                             interleaved with the others, so before/after is one run
#   --redis                   also measure this tree's gateway with `--redis` (a redis-server of
#                             the script's own on loopback, on the backends' core): target
#                             "redis", interleaved with the others, so the CPU Redis adds per
#                             request is one run's ratio (needs redis-server)
#   --mem-conns N             connections/streams for the memory figures (default 256)
#   --workers-scaling         also measure `serve --workers 1` vs `--workers 2` (unpinned)
#   --profile                 also profile the gateway under wrk load with py-spy (top 10)
#   --only LIST               run only these phases: main,memory,scaling,profile
#   --base-port P             ports P..P+40 on 127.0.0.1 are used (default 11500)
#
# Phases:
#   main     targets: direct (wrk -> backend 1), ollamamax, nginx (upstream keepalive 64,
#            HTTP/1.1, Connection "", proxy_buffering off), aiohttp (plain aiohttp proxy,
#            tools/bench_gateway/aiohttp_proxy.py), the proxies in front of the same 2
#            backends.  Per target: non-streaming POST /api/chat at 64 connections (req/s,
#            proxy CPU us per request from /proc/PID/stat utime+stime), at 1 and 16
#            connections (p50/p99), streaming at 64 connections (NDJSON lines counted in
#            every response by the wrk script -> chunks/s, chunks per proxy CPU-second).
#            Each rep runs every target in turn (rep 1: direct, ollamamax, nginx, aiohttp;
#            rep 2: ...).  Pinning: the proxy alone on core 1, wrk and backends on core 0.
#   memory   a fresh gateway on core 1 in front of 2 slow emulators: RSS per idle keep-alive
#            upstream connection and per in-flight stream (tools/bench_gateway/memprobe.py).
#   scaling  `serve --workers 1` vs `--workers 2`, wrk -t2 -c64, nothing pinned (backends and
#            wrk share the cores with the workers; the output says so).
#   profile  py-spy record of the pinned gateway during a non-streaming and a streaming c64 wrk
#            run: top 10 functions by own and by inclusive samples (line numbers folded).
#
# Loopback only; every measurement is bounded by --duration; only the PIDs this script
# started are stopped (trap on EXIT).  Needs wrk, nginx, taskset, curl (wrk and nginx are
# installed with apt-get when missing and running as root); py-spy for --profile.
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=tools/bench_gateway

BACKEND=emulator
DUR=5
REPS=3
JSON_OUT=""
RAW_OUT=""
AIOHTTP=1
BASELINE=""
REDIS=0
GW_EXTRA=()
MEM_N=256
PHASES="main,memory"
BASE=11500
PY=${PYTHON:-python}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --backend) BACKEND=$2; shift 2 ;;
        --duration) DUR=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        --json) JSON_OUT=$2; shift 2 ;;
        --raw) RAW_OUT=$2; shift 2 ;;
        --no-aiohttp) AIOHTTP=0; shift ;;
        --baseline) BASELINE=$(cd "$2" && pwd); shift 2 ;;
        --redis) REDIS=1; shift ;;
        --mem-conns) MEM_N=$2; shift 2 ;;
        --workers-scaling) PHASES="$PHASES,scaling"; shift ;;
        --profile) PHASES="$PHASES,profile"; shift ;;
        --only) PHASES=$2; shift 2 ;;
        --base-port) BASE=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$BACKEND" in emulator|nginx) ;; *) echo "--backend must be emulator or nginx" >&2; exit 2 ;; esac
[[ "$DUR" =~ ^[0-9]+$ && "$DUR" -ge 1 && "$DUR" -le 600 ]] || { echo "--duration: 1..600 seconds" >&2; exit 2; }
[[ "$REPS" =~ ^[0-9]+$ && "$REPS" -ge 1 && "$REPS" -le 20 ]] || { echo "--reps: 1..20" >&2; exit 2; }
[[ "$MEM_N" =~ ^[0-9]+$ && "$MEM_N" -ge 16 && "$MEM_N" -le 4000 ]] || { echo "--mem-conns: 16..4000" >&2; exit 2; }
phase() { [[ ",$PHASES," == *",$1,"* ]]; }

# ----------------------------------------------------------------------------- tools
need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v nginx >/dev/null || need_apt+=(nginx)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing ${need_apt[*]} (apt-get)" >&2
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "missing: ${need_apt[*]} (apt-get install -y ${need_apt[*]})" >&2; exit 1
    fi
fi
for c in wrk nginx taskset curl; do command -v $c >/dev/null || { echo "$c not found" >&2; exit 1; }; done
if phase profile && ! command -v py-spy >/dev/null; then echo "py-spy not found: pip install py-spy" >&2; exit 1; fi
CPUS=$(nproc)
if [ "$CPUS" -lt 2 ]; then echo "needs 2 cores for the pinning (core 0: load + backends, core 1: proxy)" >&2; exit 1; fi

B1=$((BASE + 1)); B2=$((BASE + 2))              # main backends
P_OLM=$((BASE + 10)); P_NGX=$((BASE + 11)); P_AIO=$((BASE + 12)); P_BASE=$((BASE + 13))
P_RED=$((BASE + 14)); R_PORT=$((BASE + 39))   # --redis: the gateway with Redis, and Redis
M1=$((BASE + 21)); M2=$((BASE + 22)); P_MEM=$((BASE + 23))  # memory phase
S1=$((BASE + 31)); S2=$((BASE + 32)); P_W1=$((BASE + 33)); P_W2=$((BASE + 34))  # scaling
for p in $B1 $B2 $P_OLM $P_NGX $P_AIO $M1 $M2 $P_MEM $S1 $S2 $P_W1 $P_W2; do
    if ss -Htln "sport = :$p" 2>/dev/null | grep -q .; then
        echo "port $p is in use (choose another --base-port)" >&2; exit 1
    fi
done

# ----------------------------------------------------------------------- processes
TMP=$(mktemp -d -t bench_gateway.XXXXXX)
RAW=$TMP/raw.jsonl
: > "$RAW"
PIDS=()
cleanup() {
    local i p
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        p=${PIDS[$i]}
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    if [ -n "$RAW_OUT" ] && [ -s "$RAW" ]; then cp "$RAW" "$RAW_OUT"; fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
LAST_PID=""
start() {  # name cpu|- cmd... ; sets LAST_PID
    local name=$1 cpu=$2; shift 2
    if [ "$cpu" = "-" ]; then
        "$@" >"$TMP/$name.log" 2>&1 &
    else
        taskset -c "$cpu" "$@" >"$TMP/$name.log" 2>&1 &
    fi
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}
stop() {  # pid: TERM, wait <= 10 s, KILL
    local p=$1 i
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    forget "$p"
}
forget() {  # pid: no longer ours to stop
    local keep=() q
    for q in "${PIDS[@]}"; do [ "$q" = "$1" ] || keep+=("$q"); done
    PIDS=("${keep[@]}")
}
wait_http() {  # name pid url
    local name=$1 pid=$2 url=$3
    for _ in $(seq 1 300); do
        if curl -sf -o /dev/null "$url"; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then break; fi
        sleep 0.1
    done
    echo "$name did not come up at $url; its log:" >&2
    cat "$TMP/$name.log" >&2
    exit 1
}
alive() {  # name pid
    kill -0 "$2" 2>/dev/null || { echo "$1 (pid $2) died; its log:" >&2; cat "$TMP/$1.log" >&2; exit 1; }
}
tree() {  # pid -> pid and all descendants
    local p=$1 c
    echo "$p"
    for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do tree "$c"; done
}
cpu_ticks() {  # pids... -> utime+stime (clock ticks) of them and their descendants
    local total=0 p t
    for p in $(for q in "$@"; do tree "$q"; done); do
        t=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}') || t=0
        total=$((total + ${t:-0}))
    done
    echo "$total"
}
HZ=$(getconf CLK_TCK)

start_emulators() {  # name-prefix cpu tokens_per_sec min,max port1 port2 -> EMU_PIDS
    local pre=$1 cpu=$2 tps=$3 toks=$4 p
    EMU_PIDS=()
    for p in "$5" "$6"; do
        start "$pre$p" "$cpu" "$PY" -m ollamamax.testing.cli --port "$p" --models llama3.2 --preload llama3.2 \
            --tokens-per-sec "$tps" --load-delay 0 --num-parallel 4096 --max-queue 100000 \
            --response-tokens "$toks" --seed 1
        EMU_PIDS+=("$LAST_PID")
    done
    wait_http "$pre$5" "${EMU_PIDS[0]}" "http://127.0.0.1:$5/"
    wait_http "$pre$6" "${EMU_PIDS[1]}" "http://127.0.0.1:$6/"
}
render() {  # template out key=value...
    local tpl=$1 out=$2 kv; shift 2
    local args=(-e "s#@TMP@#$TMP#g")
    for kv in "$@"; do args+=(-e "s#@${kv%%=*}@#${kv#*=}#g"); done
    sed "${args[@]}" "$tpl" >"$out"
}
start_nginx_backend() {  # name cpu port1 port2 -> NGXB_PID
    render "$HERE/backend.conf.in" "$TMP/$1.conf" "B1=$3" "B2=$4"
    nginx -t -q -p "$TMP" -c "$TMP/$1.conf" || exit 1
    start "$1" "$2" nginx -p "$TMP" -c "$TMP/$1.conf"
    NGXB_PID=$LAST_PID
    wait_http "$1" "$NGXB_PID" "http://127.0.0.1:$3/api/tags"
}
start_gateway() {  # name cpu port workers max_in_flight backend-port1 backend-port2 -> GW_PID
    start "$1" "$2" "$PY" -m ollamamax serve --backend "http://127.0.0.1:$6" --backend "http://127.0.0.1:$7" \
        --listen "127.0.0.1:$3" --workers "$4" --max-in-flight "$5" --queue-size 8192 --log-level warning \
        ${GW_EXTRA[@]+"${GW_EXTRA[@]}"}
    GW_PID=$LAST_PID
    wait_http "$1" "$GW_PID" "http://127.0.0.1:$3/api/version"
}

USER_MSG='"messages":[{"role":"user","content":"Why is the sky blue?"}]'
BODY_WHOLE="{\"model\":\"llama3.2\",$USER_MSG,\"stream\":false}"
if [ "$BACKEND" = emulator ]; then
    PATH_STREAM=/api/chat
    BODY_STREAM="{\"model\":\"llama3.2\",$USER_MSG,\"stream\":true}"
else
    PATH_STREAM=/api/generate
    BODY_STREAM='{"model":"llama3.2","prompt":"Why is the sky blue?","stream":true}'
fi

# wrk_run kind target test url conns threads cpu(-) count_lines rep pids... -> appends to RAW
wrk_run() {
    local kind=$1 target=$2 test=$3 url=$4 conns=$5 threads=$6 cpu=$7 lines=$8 rep=$9; shift 9
    local body=$BODY_WHOLE out="$TMP/wrk.out" t0 t1 ticks pre=()
    [ "$lines" = 1 ] && body=$BODY_STREAM
    [ "$cpu" != "-" ] && pre=(taskset -c "$cpu")
    if [ $# -gt 0 ]; then t0=$(cpu_ticks "$@"); fi
    BENCH_BODY=$body BENCH_COUNT_LINES=$lines "${pre[@]}" wrk -t"$threads" -c"$conns" -d"${DUR}s" --timeout 10s \
        -s "$HERE/report.lua" "$url" >"$out" 2>&1 || { cat "$out" >&2; exit 1; }
    if [ $# -gt 0 ]; then t1=$(cpu_ticks "$@"); ticks=$((t1 - t0)); else ticks=null; fi
    local json
    json=$(sed -n 's/^JSON //p' "$out")
    [ -n "$json" ] || { echo "no figures from wrk:" >&2; cat "$out" >&2; exit 1; }
    local extra=""
    [ "$kind" = scaling ] && extra="\"workers\":$target,\"cpu_ticks\":$ticks," || extra="\"target\":\"$target\",\"proxy_cpu_ticks\":$ticks,"
    echo "{\"kind\":\"$kind\",\"rep\":$rep,\"test\":\"$test\",$extra\"hz\":$HZ,\"wrk\":$json}" >>"$RAW"
    printf '  rep %s %-10s %-4s %9s req/s  p50 %s us  p99 %s us%s\n' "$rep" "$target" "$test" \
        "$(awk '/Requests\/sec/ {print $2}' "$out")" \
        "$(echo "$json" | sed 's/.*"p50":\([0-9]*\).*/\1/')" "$(echo "$json" | sed 's/.*"p99":\([0-9]*\).*/\1/')" \
        "$([ "$ticks" != null ] && awk -v t="$ticks" -v hz="$HZ" -v d="$DUR" 'BEGIN {printf "  proxy CPU %.0f%%", 100 * t / hz / d}')"
}

# ---------------------------------------------------------------------------- meta
GIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
GIT_DIRTY=$(git status --porcelain 2>/dev/null | grep -q . && echo "+dirty" || true)
PYVER=$("$PY" -c 'import sys,platform;print(platform.python_implementation(), sys.version.split()[0])')
UVLOOP=$("$PY" -c 'import uvloop;print(uvloop.__version__)' 2>/dev/null || echo no)
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
printf '{"kind":"meta","backend":"%s","duration":%s,"reps":%s,"cpus":%s,"python":"%s","uvloop":"%s","cpu":"%s","commit":"%s%s","nginx":"%s","date":"%s","load_before":"%s"}\n' \
    "$BACKEND" "$DUR" "$REPS" "$CPUS" "$PYVER" "$UVLOOP" "$CPU_MODEL" "$GIT" "$GIT_DIRTY" \
    "$(nginx -v 2>&1 | sed 's#.*/##')" "$(date -u +%FT%TZ)" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RAW"
echo "bench_gateway: commit $GIT$GIT_DIRTY, $PYVER, uvloop $UVLOOP, nginx $(nginx -v 2>&1 | sed 's#.*/##'), $CPUS x $CPU_MODEL"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) (other work on these cores lowers wall-clock figures; CPU per request is steadier)"

# ---------------------------------------------------------------------------- main
MAIN_UP=0
start_main() {
    echo "backends: $BACKEND x2 on core $LOAD_CPU (ports $B1 $B2); wrk on core $LOAD_CPU; each proxy on core $PROXY_CPU"
    if [ "$BACKEND" = emulator ]; then
        start_emulators emu "$LOAD_CPU" 0 16,16 "$B1" "$B2"
    else
        start_nginx_backend ngxb "$LOAD_CPU" "$B1" "$B2"
    fi
    start_gateway ollamamax "$PROXY_CPU" "$P_OLM" 1 64 "$B1" "$B2"
    OLM_PID=$GW_PID
    if [ -n "$BASELINE" ]; then
        [ -d "$BASELINE/src/ollamamax" ] || { echo "--baseline: no $BASELINE/src/ollamamax" >&2; exit 2; }
        PYTHONPATH="$BASELINE/src" start_gateway baseline "$PROXY_CPU" "$P_BASE" 1 64 "$B1" "$B2"
        BASE_PID=$GW_PID
    fi
    if [ "$REDIS" = 1 ]; then
        command -v redis-server >/dev/null || { echo "--redis: redis-server not found (apt-get install redis-server)" >&2; exit 1; }
        mkdir -p "$TMP/redis"
        start redis "$LOAD_CPU" redis-server --port "$R_PORT" --bind 127.0.0.1 --save "" --appendonly no \
            --dir "$TMP/redis" --daemonize no --loglevel warning
        for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$R_PORT") 2>/dev/null && break; sleep 0.1; done
        GW_EXTRA=(--redis "redis://127.0.0.1:$R_PORT/0")
        start_gateway redis "$PROXY_CPU" "$P_RED" 1 64 "$B1" "$B2"
        RED_PID=$GW_PID
        GW_EXTRA=()
    fi
    render "$HERE/proxy.conf.in" "$TMP/nginx_proxy.conf" "PORT=$P_NGX" "B1=$B1" "B2=$B2"
    nginx -t -q -p "$TMP" -c "$TMP/nginx_proxy.conf" || exit 1
    start nginx "$PROXY_CPU" nginx -p "$TMP" -c "$TMP/nginx_proxy.conf"
    NGX_PID=$LAST_PID
    wait_http nginx "$NGX_PID" "http://127.0.0.1:$P_NGX/"
    if [ "$AIOHTTP" = 1 ]; then
        start aiohttp "$PROXY_CPU" "$PY" "$HERE/aiohttp_proxy.py" --listen "127.0.0.1:$P_AIO" \
            --backend "http://127.0.0.1:$B1" --backend "http://127.0.0.1:$B2" --limit 136
        AIO_PID=$LAST_PID
        wait_http aiohttp "$AIO_PID" "http://127.0.0.1:$P_AIO/"
    fi
    # one streamed reply through each, as a check (the wrk script counts lines of every reply)
    local u n
    for u in "$B1" "$P_OLM" "$P_NGX" $([ "$AIOHTTP" = 1 ] && echo "$P_AIO") $([ -n "$BASELINE" ] && echo "$P_BASE") $([ "$REDIS" = 1 ] && echo "$P_RED"); do
        n=$(curl -sf -d "$BODY_STREAM" "http://127.0.0.1:$u$PATH_STREAM" | wc -l)
        [ "$n" -gt 1 ] || { echo "streamed reply via port $u has $n lines" >&2; exit 1; }
    done
    MAIN_UP=1
}

if phase main; then
    start_main
    targets=(direct ollamamax nginx)
    [ "$AIOHTTP" = 1 ] && targets+=(aiohttp)
    [ -n "$BASELINE" ] && targets+=(baseline)
    [ "$REDIS" = 1 ] && targets+=(redis)
    echo "main: ${#targets[@]} targets x 4 measurements x ${DUR} s x $REPS reps (~$(( ${#targets[@]} * 4 * DUR * REPS )) s)"
    for rep in $(seq 1 "$REPS"); do
        for t in "${targets[@]}"; do
            case $t in
                direct) port=$B1; pids=() ;;
                ollamamax) port=$P_OLM; pids=("$OLM_PID") ;;
                nginx) port=$P_NGX; pids=("$NGX_PID") ;;
                aiohttp) port=$P_AIO; pids=("$AIO_PID") ;;
                baseline) port=$P_BASE; pids=("$BASE_PID") ;;
                redis) port=$P_RED; pids=("$RED_PID") ;;
            esac
            u="http://127.0.0.1:$port"
            wrk_run wrk "$t" c64 "$u/api/chat" 64 1 "$LOAD_CPU" 0 "$rep" "${pids[@]}"
            wrk_run wrk "$t" c1 "$u/api/chat" 1 1 "$LOAD_CPU" 0 "$rep" "${pids[@]}"
            wrk_run wrk "$t" c16 "$u/api/chat" 16 1 "$LOAD_CPU" 0 "$rep" "${pids[@]}"
            wrk_run wrk "$t" s64 "$u$PATH_STREAM" 64 1 "$LOAD_CPU" 1 "$rep" "${pids[@]}"
            for p in "${pids[@]}"; do alive "$t" "$p"; done
        done
    done
fi

# ------------------------------------------------------------------------- profile
PROFILES=()
if phase profile; then
    [ "$MAIN_UP" = 1 ] || start_main
    for kind in c64 s64; do
        if [ $kind = c64 ]; then what="non-streaming /api/chat"; path=/api/chat; lines=0
        else what="streaming $PATH_STREAM"; path=$PATH_STREAM; lines=1; fi
        echo "profile: py-spy record (250 Hz) of the gateway (pid $OLM_PID, core $PROXY_CPU) during wrk -c64 $what, ${DUR} s"
        py-spy record -p "$OLM_PID" -r 250 -d "$DUR" --format raw -o "$TMP/profile_$kind.txt" >"$TMP/pyspy.log" 2>&1 &
        SPY_PID=$!
        PIDS+=("$SPY_PID")
        sleep 0.5
        wrk_run wrk ollamamax $kind "http://127.0.0.1:$P_OLM$path" 64 1 "$LOAD_CPU" $lines profile "$OLM_PID"
        wait "$SPY_PID" || { echo "py-spy failed:" >&2; cat "$TMP/pyspy.log" >&2; }
        forget "$SPY_PID"
        PROFILES+=("$kind:$what:$TMP/profile_$kind.txt")
    done
    sed -i '/"rep":profile/d' "$RAW"  # the profiled runs are slowed by sampling: not figures
fi
if [ "$MAIN_UP" = 1 ]; then  # free the cores for what follows
    for p in "${PIDS[@]}"; do stop "$p"; done
    MAIN_UP=0
fi

# -------------------------------------------------------------------------- memory
if phase memory; then
    echo "memory: fresh gateway on core $PROXY_CPU; 2 slow emulators on core $LOAD_CPU; $MEM_N connections / streams"
    # idle: 4 tokens at 4 tokens/s -> each request holds its upstream connection ~1 s, so all overlap
    start_emulators memi "$LOAD_CPU" 4 4,4 "$M1" "$M2"
    start_gateway memgw "$PROXY_CPU" "$P_MEM" 1 $((MEM_N + 64)) "$M1" "$M2"
    "$PY" "$HERE/memprobe.py" idle --url "http://127.0.0.1:$P_MEM" --pid "$GW_PID" --backend-ports "$M1,$M2" \
        --n "$MEM_N" --timeout 120 >"$TMP/mem_idle.json"
    echo "{\"kind\":\"mem\",\"target\":\"ollamamax\",\"result\":$(cat "$TMP/mem_idle.json")}" >>"$RAW"
    echo "  idle: $(cat "$TMP/mem_idle.json")"
    stop "$GW_PID"; for p in "${EMU_PIDS[@]}"; do stop "$p"; done
    # streams: 1 token/s, 600-token answers -> streams stay open while they are measured
    start_emulators mems "$LOAD_CPU" 1 600,600 "$M1" "$M2"
    start_gateway memgw2 "$PROXY_CPU" "$P_MEM" 1 $((MEM_N + 64)) "$M1" "$M2"
    "$PY" "$HERE/memprobe.py" streams --url "http://127.0.0.1:$P_MEM" --pid "$GW_PID" --backend-ports "$M1,$M2" \
        --n "$MEM_N" --timeout 120 >"$TMP/mem_streams.json"
    echo "{\"kind\":\"mem\",\"target\":\"ollamamax\",\"result\":$(cat "$TMP/mem_streams.json")}" >>"$RAW"
    echo "  streams: $(cat "$TMP/mem_streams.json")"
    stop "$GW_PID"; for p in "${EMU_PIDS[@]}"; do stop "$p"; done
fi

# ------------------------------------------------------------------------- scaling
if phase scaling; then
    echo "scaling: serve --workers 1 vs --workers 2, wrk -t2 -c64 non-streaming, NOTHING PINNED:"
    echo "  the 2 $BACKEND backends, wrk and the gateway workers all share the $CPUS cores"
    if [ "$BACKEND" = emulator ]; then
        start_emulators scal - 0 16,16 "$S1" "$S2"; SB_PIDS=("${EMU_PIDS[@]}")
    else
        start_nginx_backend scalb - "$S1" "$S2"; SB_PIDS=("$NGXB_PID")
    fi
    start_gateway w1 - "$P_W1" 1 64 "$S1" "$S2"; W1_PID=$GW_PID
    start_gateway w2 - "$P_W2" 2 64 "$S1" "$S2"; W2_PID=$GW_PID
    for rep in $(seq 1 "$REPS"); do
        wrk_run scaling 1 c64 "http://127.0.0.1:$P_W1/api/chat" 64 2 - 0 "$rep" "$W1_PID"
        wrk_run scaling 2 c64 "http://127.0.0.1:$P_W2/api/chat" 64 2 - 0 "$rep" "$W2_PID"
        alive w1 "$W1_PID"; alive w2 "$W2_PID"
    done
    stop "$W2_PID"; stop "$W1_PID"; for p in "${SB_PIDS[@]}"; do stop "$p"; done
fi

# --------------------------------------------------------------------------- report
"$PY" "$HERE/aggregate.py" table "$RAW" ${JSON_OUT:+--json "$JSON_OUT"}
for prof in "${PROFILES[@]}"; do
    IFS=: read -r kind what file <<<"$prof"
    if [ -s "$file" ]; then
        echo ""
        echo "== py-spy profile of ollamamax serve under wrk -c64, $what =="
        "$PY" "$HERE/aggregate.py" profile "$file" --top 10
        [ -n "$RAW_OUT" ] && cp "$file" "${RAW_OUT%.*}.profile_$kind.txt"
    fi
done
