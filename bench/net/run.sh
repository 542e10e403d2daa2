#!/bin/sh
# The batched-writer benchmark (goals in bench/net/README.md): one publisher, 1 and 10 subscribers on TCP loopback,
# 40 B messages, pipeline depth 1, 10, 100, 500; variants naive (one send
# per message through keel), batched+sendmsg, batched+io_uring and Redis
# pub/sub. See bench/net/README.md.
#
# usage: sh bench/net/run.sh [OUT_DIR]
# Writes OUT_DIR/net.md (a markdown section), OUT_DIR/net.json and the raw
# runs under OUT_DIR/net-runs/. Default OUT_DIR: build/bench/net-<UTC stamp>.
#
# Environment:
#   NET_QUICK=1      development mode: 1 repetition of 0.25 s per run (~25 s)
#   NET_REPS         repetitions, each run of every cell (default 5; quick 1)
#   NET_SECS         measured seconds per run (default 1.0; quick 0.25)
#   NET_WARMUP       unmeasured warm-up seconds per run (default 0.15; quick 0.05)
#   NET_SUBS         subscriber counts (default "1 10")
#   NET_DEPTHS       pipeline depths (default "1 10 100 500")
#   NET_VARIANTS     default "naive sendmsg uring redis"
#   NET_PUB_CPU      CPU of the publisher side: netbench's publisher process
#                    (with keel's reactor thread), redis-server, perf (default 0)
#   NET_SUB_CPU      CPU of the subscriber process (default 1; 0 on 1 CPU)
#   NET_NICE         nice value for every benchmark process (netbench, redis-server,
#                    perf), e.g. -10 on a machine where other work runs; default 0
#   NET_PERF=0       do not count sends with perf stat
#   NET_SKIP_BUILD=1 do not run cargo build (make bench builds the library first)
#   CARGO, CC, BUILD (default build) as in the Makefile
set -eu

cd "$(dirname "$0")/../.."
CARGO=${CARGO:-cargo}
CC=${CC:-cc}
BUILD=${BUILD:-build}
STAMP=$(date -u +%Y-%m-%d_%H%M%SZ)
OUT=${1:-$BUILD/bench/net-$STAMP}
if [ "${NET_QUICK:-0}" = 1 ]; then
    d_reps=1 d_secs=0.25 d_warm=0.05
else
    d_reps=5 d_secs=1.0 d_warm=0.15
fi
REPS=${NET_REPS:-$d_reps}
SECS=${NET_SECS:-$d_secs}
WARMUP=${NET_WARMUP:-$d_warm}
SUBS=${NET_SUBS:-1 10}
DEPTHS=${NET_DEPTHS:-1 10 100 500}
VARIANTS=${NET_VARIANTS:-naive sendmsg uring redis}
NICE=${NET_NICE:-0}
NCPU=$(nproc)
PUB_CPU=${NET_PUB_CPU:-0}
if [ "$NCPU" -ge 2 ]; then SUB_CPU=${NET_SUB_CPU:-1}; else SUB_CPU=${NET_SUB_CPU:-0}; fi

mkdir -p "$OUT/net-runs" "$BUILD/bench-net"
OUT=$(cd "$OUT" && pwd)
RUNS=$OUT/net-runs
NOTES=$OUT/net-runs/notes.txt
: >"$NOTES"
note() { echo "bench/net: $*" >&2; echo "$*" >>"$NOTES"; }
as_root() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

# ---- tools ------------------------------------------------------------------
command -v python3 >/dev/null 2>&1 || { echo "bench/net: python3 is needed for the report: sudo apt-get install -y python3" >&2; exit 1; }
case " $VARIANTS " in *" redis "*)
    if ! command -v redis-server >/dev/null 2>&1 && as_root; then
        echo "bench/net: installing redis-server (apt-get)"
        { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; } || true
    fi
    if ! command -v redis-server >/dev/null 2>&1; then
        note "Redis comparison skipped: redis-server not found; install the Debian package: sudo apt-get install -y redis-server"
        VARIANTS=$(echo "$VARIANTS" | tr ' ' '\n' | grep -v '^redis$' | tr '\n' ' ')
    fi ;;
esac
if ! command -v perf >/dev/null 2>&1 && as_root; then
    echo "bench/net: installing perf (apt-get install linux-perf)"
    { apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null; } || true
fi
# Tracepoints counted around the measured window of every run: the uniform
# one of the design (tcp_sendmsg_locked: fires once per skb a send appends
# to, so >= 1 per TCP send call), exact syscall counts, io_uring SENDMSG SQEs.
PERF_EVENTS=""
if [ "${NET_PERF:-1}" = 0 ]; then
    note "perf cross-check skipped: NET_PERF=0"
elif command -v perf >/dev/null 2>&1; then
    for ev in tcp:tcp_sendmsg_locked syscalls:sys_enter_sendmsg syscalls:sys_enter_write syscalls:sys_enter_writev \
              io_uring:io_uring_submit_req; do
        if perf stat -e "$ev" -x, -o /dev/null true >/dev/null 2>&1; then
            PERF_EVENTS="$PERF_EVENTS $ev"
        fi
    done
    case "$PERF_EVENTS" in *tcp:tcp_sendmsg_locked*) ;; *)
        note "perf cross-check skipped: 'perf stat -e tcp:tcp_sendmsg_locked true' fails here (perf_event_paranoid=$(cat /proc/sys/kernel/perf_event_paranoid 2>/dev/null), tracefs, or no permission)"
        PERF_EVENTS="" ;;
    esac
else
    note "perf cross-check skipped: perf is not installed (Debian package linux-perf)"
fi
perf_args() { # -e list for perf stat; the io_uring event filtered to IORING_OP_SENDMSG (9)
    for ev in $PERF_EVENTS; do
        if [ "$ev" = io_uring:io_uring_submit_req ]; then
            printf '%s\n' -e "$ev" --filter opcode==9
        else
            printf '%s\n' -e "$ev"
        fi
    done
}

# ---- build --------------------------------------------------------------------
if [ "${NET_SKIP_BUILD:-0}" != 1 ]; then
    $CARGO build --release --locked
fi
NB=$BUILD/bench-net/netbench
$CC -O2 -std=c11 -Wall -Wextra -Werror -Iinclude bench/net/netbench.c target/release/libkeel.a \
    -lpthread -ldl -lm -o "$NB"
NB=$(cd "$(dirname "$NB")" && pwd)/netbench

# ---- machine --------------------------------------------------------------------
uring_disabled=$(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo "n/a")
cat >"$OUT/net-machine.env" <<EOF
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
cores=$NCPU
mem_gib=$(awk '/MemTotal/ {printf "%.1f", $2/1048576}' /proc/meminfo)
kernel=$(uname -sr)
rustc=$(rustc --version 2>/dev/null || echo unknown)
cc=$($CC --version 2>/dev/null | head -1)
redis=$(redis-server --version 2>/dev/null | sed 's/ sha=.*//' || echo "n/a")
redis_pkg=$(dpkg-query -W -f='${Version}' redis-server 2>/dev/null || echo "?")
perf=$(perf version 2>/dev/null || echo "n/a")
perf_events=$(echo $PERF_EVENTS)
io_uring_disabled=$uring_disabled
clocksource=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null || echo "?")
git=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src 2>/dev/null || echo "+dirty-src")
loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)
pub_cpu=$PUB_CPU
sub_cpu=$SUB_CPU
reps=$REPS
secs=$SECS
warmup=$WARMUP
subs=$SUBS
depths=$DEPTHS
variants=$(echo $VARIANTS)
quick=${NET_QUICK:-0}
nice=$NICE
EOF

# ---- Redis ------------------------------------------------------------------------
TMP=$(mktemp -d /tmp/keel-bench-net.XXXXXX)
REDIS_PID=""
cleanup() {
    if [ -n "$REDIS_PID" ]; then
        kill "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
REDIS_PORT=0
case " $VARIANTS " in *" redis "*)
    REDIS_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    REDIS_SOCK=$TMP/redis.sock
    # Persistence off, TCP on 127.0.0.1 for the subscribers, a Unix socket for
    # the publisher (so that the server's TCP sends are only its pushes to
    # subscribers); pinned like keel's publisher side.
    nice -n "$NICE" taskset -c "$PUB_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --unixsocket "$REDIS_SOCK" \
        --unixsocketperm 700 --save '' --appendonly no --protected-mode no --daemonize no \
        --logfile "$RUNS/redis.log" &
    REDIS_PID=$!
    i=0
    until [ -S "$REDIS_SOCK" ] && { ! command -v redis-cli >/dev/null 2>&1 || redis-cli -s "$REDIS_SOCK" ping >/dev/null 2>&1; }; do
        i=$((i + 1))
        if [ "$i" -gt 100 ] || ! kill -0 "$REDIS_PID" 2>/dev/null; then
            echo "bench/net: redis-server did not start; see $RUNS/redis.log" >&2
            exit 1
        fi
        sleep 0.05
    done ;;
esac

# ---- runs -----------------------------------------------------------------------
# Interleaved: for each repetition, every (subscribers, depth) cell runs every
# variant back to back, the variant order rotated by one per repetition.
nvar=$(echo $VARIANTS | wc -w)
ncell=$(( $(echo $SUBS | wc -w) * $(echo $DEPTHS | wc -w) ))
total=$((REPS * ncell * nvar))
echo "bench/net: $total runs ($REPS x $ncell cells x $nvar variants), ${SECS}s each + ${WARMUP}s warm-up; publisher side on CPU $PUB_CPU, subscribers on CPU $SUB_CPU"
printf 'id\trep\tvariant\tsubs\tdepth\trc\n' >"$RUNS/index.tsv"
n=0
run_one() { # rep variant subs depth
    rep=$1 v=$2 ns=$3 d=$4
    id=r${rep}-${v}-s${ns}-d${d}
    n=$((n + 1))
    printf 'bench/net: [%d/%d] %s\n' "$n" "$total" "$id"
    rm -f "$TMP/ctl" "$TMP/ack"
    set -- "$NB" --variant "$v" --subs "$ns" --depth "$d" --secs "$SECS" --warmup "$WARMUP" \
        --pub-cpu "$PUB_CPU" --sub-cpu "$SUB_CPU" --out "$RUNS/$id.json" --tag "$id"
    [ "$v" = redis ] && set -- "$@" --redis-port "$REDIS_PORT" --redis-sock "$REDIS_SOCK" --redis-pid "$REDIS_PID"
    rc=0
    if [ -n "$PERF_EVENTS" ]; then
        mkfifo "$TMP/ctl" "$TMP/ack"
        set -- "$@" --perf-ctl "$TMP/ctl" --perf-ack "$TMP/ack"
        # perf stat starts with its counters disabled (-D -1); netbench
        # enables them for the measured window only (--control).
        exec 8<>"$TMP/ctl" 9<>"$TMP/ack"
        # shellcheck disable=SC2046
        if [ "$v" = redis ]; then
            nice -n "$NICE" taskset -c "$PUB_CPU" perf stat $(perf_args) -x, -o "$RUNS/$id.perf" --control fd:8,9 -D -1 \
                -p "$REDIS_PID" 2>>"$RUNS/$id.err" &
            perf_pid=$!
            timeout -k 5 120 nice -n "$NICE" "$@" 2>>"$RUNS/$id.err" || rc=$?
            kill -INT "$perf_pid" 2>/dev/null || true
            wait "$perf_pid" 2>/dev/null || true
        else
            # The whole netbench process tree: keel's reactor thread and
            # io_uring workers included (the subscriber process sends
            # nothing over TCP).
            timeout -k 5 120 nice -n "$NICE" taskset -c "$PUB_CPU" perf stat $(perf_args) -x, -o "$RUNS/$id.perf" --control fd:8,9 -D -1 \
                -- "$@" 2>>"$RUNS/$id.err" || rc=$?
        fi
        exec 8>&- 9>&-
    else
        timeout -k 5 120 nice -n "$NICE" "$@" 2>>"$RUNS/$id.err" || rc=$?
    fi
    grep -v '^Events \(enabled\|disabled\)$' "$RUNS/$id.err" >"$RUNS/$id.err.tmp" || true
    mv "$RUNS/$id.err.tmp" "$RUNS/$id.err"
    [ "$rc" = 0 ] || echo "bench/net: $id failed (exit $rc): $(tail -1 "$RUNS/$id.err")" >&2
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$rep" "$v" "$ns" "$d" "$rc" >>"$RUNS/index.tsv"
}
rep=1
while [ "$rep" -le "$REPS" ]; do
    for ns in $SUBS; do
        for d in $DEPTHS; do
            # rotate the variant order by one per repetition
            order=$(echo $VARIANTS | tr ' ' '\n' | awk -v k=$(( (rep - 1) % nvar )) -v n="$nvar" \
                '{ a[NR - 1] = $0 } END { for (i = 0; i < n; i++) print a[(i + k) % n] }')
            for v in $order; do
                run_one "$rep" "$v" "$ns" "$d"
            done
        done
    done
    rep=$((rep + 1))
done
echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/net-machine.env"

# ---- report ---------------------------------------------------------------------
python3 bench/net/report.py "$OUT"
