#!/bin/sh
# The shard transfer benchmark (bench/README.md "Shard transfer"): the
# pipelined backfill against the same transfer run sequentially, between a
# source and a receiver process in two network namespaces joined by a veth
# pair, the link shaped with tbf and a round trip added by a delaying TCP
# relay (this kernel has no netem). Needs root; skipped with a message
# otherwise, or where network namespaces cannot be made.
#
# usage: sh bench/transfer/run.sh [OUT_DIR]
# Writes bench/results/<UTC stamp>-transfer.{md,json} (bench/transfer/report.py);
# the raw runs go to OUT_DIR (default build/bench/transfer-<stamp>), kept.
#
# Environment:
#   KEEL_BENCH_QUICK=1  a smoke run: 20,000 operations, 2 pairs
#   XFER_OPS           operations in the backlog (default 300000; quick 20000)
#   BENCH_PAIRS        pipelined/sequential pairs per case (default 3; quick 2)
#   XFER_DELAYS_US     added round trips in µs (default "100 2000 10000")
#   BENCH_DIR          where the shards go (default build/bench)
#   CARGO              cargo binary (default cargo)
set -eu

cd "$(dirname "$0")/../.."
CARGO=${CARGO:-cargo}
STAMP=$(date -u +%Y-%m-%d_%H%M%SZ)
OUT=${1:-build/bench/transfer-$STAMP}
RESULTS=bench/results
if [ "${KEEL_BENCH_QUICK:-0}" = 1 ]; then d_ops=20000 d_pairs=2; else d_ops=300000 d_pairs=3; fi
OPS=${XFER_OPS:-$d_ops}
PAIRS=${BENCH_PAIRS:-$d_pairs}
DELAYS=${XFER_DELAYS_US:-100 2000 10000}
BENCH_DIR=${BENCH_DIR:-build/bench}

skip() {
    echo "bench/transfer: skipped: $*" >&2
    exit 0
}
[ "$(id -u)" = 0 ] || skip "needs root to make network namespaces and shape the link (sudo sh bench/transfer/run.sh)"
for tool in ip tc python3; do
    command -v "$tool" >/dev/null 2>&1 || skip "$tool is not installed (iproute2, python3)"
done

# ---- namespaces: source in NS_A, receiver and relay in NS_B -------------------
NS_A=keelxfer-src NS_B=keelxfer-dst VA=kxfer-src VB=kxfer-dst
IP_A=10.231.77.1 IP_B=10.231.77.2
cleanup() {
    ip netns del "$NS_A" 2>/dev/null || true
    ip netns del "$NS_B" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cleanup # what a killed run may have left
if ! ip netns add "$NS_A" 2>/dev/null || ! ip netns add "$NS_B" 2>/dev/null; then
    skip "network namespaces are not permitted here (ip netns add failed)"
fi
ip link add "$VA" type veth peer name "$VB"
ip link set "$VA" netns "$NS_A"
ip link set "$VB" netns "$NS_B"
ip -n "$NS_A" addr add "$IP_A/24" dev "$VA"
ip -n "$NS_B" addr add "$IP_B/24" dev "$VB"
for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; done
ip -n "$NS_A" link set "$VA" up
ip -n "$NS_B" link set "$VB" up

# ---- the binary, the backlog ----------------------------------------------------
BIN=$($CARGO bench --locked --bench transfer --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
[ -x "$BIN" ] || { echo "bench/transfer: the benchmark did not build" >&2; exit 1; }
mkdir -p "$OUT/runs" "$BENCH_DIR" "$RESULTS"
OUT=$(cd "$OUT" && pwd)
DIR=$(cd "$BENCH_DIR" && pwd)/transfer
rm -rf "$DIR" && mkdir -p "$DIR"
cat >"$OUT/machine.env" <<EOF
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
cores=$(nproc)
kernel=$(uname -sr)
git=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src bench 2>/dev/null || echo "+dirty")
loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)
ops=$OPS
pairs=$PAIRS
quick=${KEEL_BENCH_QUICK:-0}
EOF
echo "bench/transfer: filling the source shard ($OPS operations)"
"$BIN" fill --dir "$DIR/source" --ops "$OPS" >"$OUT/fill.json"

# ---- cases ------------------------------------------------------------------------
shape() { # bytes per second, 0 for none
    tc -n "$NS_A" qdisc del dev "$VA" root 2>/dev/null || true
    [ "$1" = 0 ] && return
    burst=$(( $1 / 500 ))
    [ "$burst" -ge 65536 ] || burst=65536
    tc -n "$NS_A" qdisc add dev "$VA" root tbf rate "$(( $1 * 8 ))bit" burst "$burst" latency 50ms
}
run_case() { # name, mode, delay µs, rate bytes/s, writer puts/s
    echo "bench/transfer: $1 $2 (+${3} µs round trip, link $(( $4 / 1000000 )) MB/s, writer $5/s)"
    ip netns exec "$NS_A" "$BIN" case --dir "$DIR" --netns "$NS_B" --listen "$IP_B" --delay-us "$3" \
        --mode "$2" --iface "$VA" --rate-bytes "$4" --writer-rate "$5" --out "$OUT/runs/$1-$2.json" ||
        echo "bench/transfer: case $1 $2 failed" >&2
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$OUT/runs/index.tsv"
}
: >"$OUT/runs/index.tsv"

# The read rate: one unshaped pipelined transfer, bytes over read time.
shape 0
run_case calibrate pipelined 100 0 0
READ_RATE=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(int(r["bytes"]/max(r["read_s"],1e-6)))' \
    "$OUT/runs/calibrate-pipelined.json")
DURABLE=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["durable_puts_per_s"])' "$OUT/fill.json")
WRITER_RATE=$(python3 -c 'import sys; print(max(1, int(float(sys.argv[1]) / 2)))' "$DURABLE")
echo "read_rate=$READ_RATE" >>"$OUT/machine.env"
echo "bench/transfer: read rate $(( READ_RATE / 1000000 )) MB/s, durable puts $DURABLE/s"

# Three links: at the read rate (read ≈ send), a quarter of it (send
# dominates), four times it (read dominates); each with every delay, in
# interleaved pairs (pipelined, sequential, pipelined, ...), writers off.
for delay in $DELAYS; do
    for link in equal:1:1 send:1:4 read:4:1; do
        label=${link%%:*} mul=$(echo "$link" | cut -d: -f2) div=${link##*:}
        rate=$(( READ_RATE * mul / div ))
        shape "$rate"
        p=1
        while [ "$p" -le "$PAIRS" ]; do
            run_case "d$delay-$label-p$p" pipelined "$delay" "$rate" 0
            run_case "d$delay-$label-p$p" sequential "$delay" "$rate" 0
            p=$((p + 1))
        done
    done
done
# The final hold with a writer at half the shard's durable rate.
shape "$READ_RATE"
p=1
while [ "$p" -le "$PAIRS" ]; do
    run_case "writer-p$p" pipelined 100 "$READ_RATE" "$WRITER_RATE"
    run_case "writer-p$p" sequential 100 "$READ_RATE" "$WRITER_RATE"
    p=$((p + 1))
done
shape 0
echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.env"
rm -rf "$DIR"

python3 bench/transfer/report.py "$OUT" "$RESULTS/$STAMP-transfer"
