#!/bin/sh
# The lease-read benchmark (bench/lease/README.md): bench/lease/lease_bench.c
# through the C API, a simulated read-index of a fixed latency; the same
# workload through the Go 3-node etcd raft cluster (bindings/go/raftcluster,
# TestLeaseClusterBench, in real time); then bench/lease/report.py.
#
# usage: sh bench/lease/run.sh [OUT_DIR]
# Writes OUT_DIR/lease.md (a markdown section), OUT_DIR/lease.json and the
# raw lines in OUT_DIR/lease-runs.jsonl and OUT_DIR/lease-cluster-runs.jsonl.
# Default OUT_DIR: build/bench/lease-<UTC stamp>.
#
# Environment:
#   LEASE_SECS      seconds per case and per half of a cost pair (default 2;
#                   0.3 with KEEL_BENCH_QUICK=1)
#   LEASE_KEYS      keys in the shard (default 1,000,000; 100,000 quick)
#   LEASE_PAIRS     plain/lease cost pairs (default 5)
#   LEASE_THREADS   client threads of the cases (default 2)
#   LEASE_READ_INDEX_US  the simulated read-index latency (default 200)
#   LEASE_CLUSTER_KEYS     keys in the Go cluster (default 100,000; 10,000 quick)
#   LEASE_CLUSTER_CLIENTS  its closed-loop clients (default 8)
#   LEASE_SKIP_CLUSTER=1   leave the Go cluster out (also when go is missing)
#   LEASE_SKIP_BUILD=1   the library is built already (make bench)
#   CARGO, CC, BUILD (default build) as in the Makefile
set -eu

cd "$(dirname "$0")/../.."
CARGO=${CARGO:-cargo}
CC=${CC:-cc}
BUILD=${BUILD:-build}
OUT=${1:-$BUILD/bench/lease-$(date -u +%Y-%m-%d_%H%M%SZ)}
if [ "${KEEL_BENCH_QUICK:-0}" = 1 ]; then
    d_secs=0.3 d_keys=100000 d_ckeys=10000
else
    d_secs=2 d_keys=1000000 d_ckeys=100000
fi
SECS=${LEASE_SECS:-$d_secs}
KEYS=${LEASE_KEYS:-$d_keys}
PAIRS=${LEASE_PAIRS:-5}
THREADS=${LEASE_THREADS:-2}
RI_US=${LEASE_READ_INDEX_US:-200}
CKEYS=${LEASE_CLUSTER_KEYS:-$d_ckeys}
CCLIENTS=${LEASE_CLUSTER_CLIENTS:-8}

command -v python3 >/dev/null 2>&1 || { echo "bench/lease: python3 is needed for the report: sudo apt-get install -y python3" >&2; exit 1; }
[ "${LEASE_SKIP_BUILD:-0}" = 1 ] || $CARGO build --release --locked
mkdir -p "$OUT" "$BUILD/bench-lease"
OUT=$(cd "$OUT" && pwd)
BIN=$BUILD/bench-lease/lease_bench
ln -sf "$(pwd)/target/release/libkeel.so" "$BUILD/bench-lease/libkeel.so.1"
$CC -std=c99 -Wall -Wextra -Werror -pedantic -O2 -Iinclude bench/lease/lease_bench.c \
    -o "$BIN" "$BUILD/bench-lease/libkeel.so.1" -Wl,-rpath,'$ORIGIN' -lpthread

DIR=$OUT/lease-shard
rm -rf "$DIR"
echo "bench/lease: $KEYS keys, $SECS s per case, $THREADS client threads, read-index $RI_US us, $PAIRS cost pairs"
echo "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)" >"$OUT/lease-machine.env"
"$BIN" --dir "$DIR" --secs "$SECS" --keys "$KEYS" --pairs "$PAIRS" --threads "$THREADS" \
    --read-index-us "$RI_US" >"$OUT/lease-runs.jsonl"
rm -rf "$DIR"

# The Go cluster links target/release/libkeel.a (built above or by make).
rm -f "$OUT/lease-cluster-runs.jsonl"
if [ "${LEASE_SKIP_CLUSTER:-0}" = 1 ]; then
    echo "bench/lease: the Go cluster is skipped (LEASE_SKIP_CLUSTER=1)"
elif ! command -v go >/dev/null 2>&1; then
    echo "bench/lease: go is not installed: the Go cluster table is skipped" >&2
else
    echo "bench/lease: the Go 3-node cluster, $CKEYS keys, $SECS s per case, $CCLIENTS clients"
    (cd bindings/go/raftcluster && RAFTCLUSTER_BENCH_OUT="$OUT/lease-cluster-runs.jsonl" \
        RAFTCLUSTER_BENCH_SECS="$SECS" RAFTCLUSTER_BENCH_KEYS="$CKEYS" RAFTCLUSTER_BENCH_CLIENTS="$CCLIENTS" \
        CGO_ENABLED=1 go test -count=1 -timeout 30m -run '^TestLeaseClusterBench$' .) \
        || echo "bench/lease: the Go cluster failed; its table is missing" >&2
fi
echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/lease-machine.env"
python3 bench/lease/report.py "$OUT"
echo "bench/lease: wrote $OUT/lease.md and $OUT/lease.json"
