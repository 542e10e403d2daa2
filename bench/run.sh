#!/bin/sh
# `make bench`: the fio baseline, the keel WAL benchmark, keel shards and
# RocksDB's db_bench on the same directory, then a report in
# bench/results/<UTC date-time>.{md,json}.
# See bench/README.md for the cases and how the ratios are computed.
#
# Environment:
#   BENCH_DIR      where the files go (default build/bench; must be on the
#                  file system you want to measure; emptied per case)
#   BENCH_SECONDS  seconds per timed case (default 5; 1 with KEEL_BENCH_QUICK=1)
#   KEEL_BENCH_QUICK=1  a smoke run: shard sizes divided by 10 (recovery of
#                  128 MiB instead of 1 GiB) and 1 s cases; not for comparing
#   SHARD_SYNC_OPS, SHARD_SYNC16_OPS, SHARD_LOAD_KEYS, SHARD_POSTING_KEYS,
#   SHARD_POSTING_OPS, SHARD_MEMORY_KEYS, SHARD_RECOVERY_MIB
#                  shard case sizes (see bench/README.md "Shards vs RocksDB")
#   SHARD_RESTART_PINNED_MIB  MiB written through a pinned WAL before the
#                  restart-at-the-bound case fills its unflushed WAL (256; 25 quick)
#   CARGO          cargo binary (default cargo)
#   DB_BENCH       RocksDB db_bench binary (default: db_bench from the Debian
#                  package rocksdb-tools); the RocksDB comparison is skipped,
#                  with a notice, when it is missing and cannot be installed
set -eu

cd "$(dirname "$0")/.."
BENCH_DIR=${BENCH_DIR:-build/bench}
KEEL_BENCH_QUICK=${KEEL_BENCH_QUICK:-0}
if [ "$KEEL_BENCH_QUICK" = 1 ]; then
    q=10 qmib=128
    BENCH_SECONDS=${BENCH_SECONDS:-1}
else
    q=1 qmib=1024
fi
BENCH_SECONDS=${BENCH_SECONDS:-5}
# Shard cases (bench/shard.rs and the matching db_bench runs): operations per
# thread for durable puts at 1 and 16 threads; puts that load the read data
# set (also the buffered-put case); posting keys and appends; distinct keys
# for the memory case; MiB of WAL for the recovery cases.
SHARD_SYNC_OPS=${SHARD_SYNC_OPS:-$((20000 / q))}
SHARD_SYNC16_OPS=${SHARD_SYNC16_OPS:-$((5000 / q))}
SHARD_LOAD_KEYS=${SHARD_LOAD_KEYS:-$((3000000 / q))}
SHARD_POSTING_KEYS=${SHARD_POSTING_KEYS:-$((100000 / q))}
SHARD_POSTING_OPS=${SHARD_POSTING_OPS:-$((2000000 / q))}
SHARD_MEMORY_KEYS=${SHARD_MEMORY_KEYS:-$((1000000 / q))}
SHARD_RECOVERY_MIB=${SHARD_RECOVERY_MIB:-$qmib}
CARGO=${CARGO:-cargo}
RESULTS=bench/results

# ---- tools ------------------------------------------------------------------
if ! command -v fio >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bench: installing fio (apt-get)"
        apt-get update -qq && apt-get install -y -qq fio >/dev/null
    else
        echo "bench: fio is not installed; install the Debian package: sudo apt-get install -y fio" >&2
        exit 1
    fi
fi
# RocksDB (Debian package rocksdb-tools, binary db_bench): a comparison, not
# the baseline, so a missing db_bench skips that section instead of stopping.
DB_BENCH=${DB_BENCH:-db_bench}
ROCKSDB_SKIP=""
if ! command -v "$DB_BENCH" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bench: installing rocksdb-tools for db_bench (apt-get)"
        { apt-get update -qq && apt-get install -y -qq rocksdb-tools >/dev/null; } || true
    fi
    if ! command -v "$DB_BENCH" >/dev/null 2>&1; then
        ROCKSDB_SKIP="db_bench not found; install the Debian package: sudo apt-get install -y rocksdb-tools"
        echo "bench: $ROCKSDB_SKIP (the RocksDB comparison is skipped)" >&2
    fi
fi
if ! command -v python3 >/dev/null 2>&1; then
    echo "bench: python3 is needed for the report; install it: sudo apt-get install -y python3" >&2
    exit 1
fi

mkdir -p "$BENCH_DIR" "$RESULTS"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
STAMP=$(date -u +%Y-%m-%d_%H%M%SZ)
WORK=$BENCH_DIR/out-$STAMP
mkdir -p "$WORK"

# ---- machine ----------------------------------------------------------------
fstype=$(findmnt -n -o FSTYPE --target "$BENCH_DIR" 2>/dev/null || df --output=fstype "$BENCH_DIR" | tail -1)
fsdev=$(findmnt -n -o SOURCE --target "$BENCH_DIR" 2>/dev/null || echo "?")
fsopts=$(findmnt -n -o OPTIONS --target "$BENCH_DIR" 2>/dev/null || echo "?")
cat >"$WORK/machine.env" <<EOF
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
cores=$(nproc)
mem_gib=$(awk '/MemTotal/ {printf "%.1f", $2/1048576}' /proc/meminfo)
kernel=$(uname -sr)
fs=$fstype
fs_source=$fsdev
fs_options=$fsopts
bench_dir=$BENCH_DIR
rustc=$(rustc --version 2>/dev/null || echo unknown)
fio=$(fio --version)
rocksdb_tools=$(dpkg-query -W -f='${Version}' rocksdb-tools 2>/dev/null || echo "?")
git=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src 2>/dev/null || echo "+dirty-src")
loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)
secs_per_case=$BENCH_SECONDS
quick=$KEEL_BENCH_QUICK
EOF

# ---- build the keel benchmark first, so compiling does not overlap fio --------
$CARGO bench --locked --bench wal --bench shard --no-run

# ---- fio baseline -----------------------------------------------------------
fio_dir=$BENCH_DIR/fio
run_fio() { # name, extra args...
    name=$1
    shift
    rm -rf "$fio_dir" && mkdir -p "$fio_dir"
    echo "bench: fio $name"
    fio --name="$name" --directory="$fio_dir" --output-format=json --output="$WORK/fio-$name.json" "$@"
}
# F and P: 4 KiB write(2) + fdatasync(2) per op into a file fio has already
# written once (--overwrite=1), which is the state keel's zero-filled
# segments are in (no block allocation, no unwritten-extent conversion).
run_fio fsync4k --rw=write --ioengine=sync --fdatasync=1 --bs=4k --size=256m \
    --runtime="$BENCH_SECONDS" --time_based --overwrite=1
# The same without --overwrite (fio fallocates, every write converts an
# unwritten extent): reported for reference only.
run_fio fsync4k_alloc --rw=write --ioengine=sync --fdatasync=1 --bs=4k --size=256m \
    --runtime="$BENCH_SECONDS" --time_based
# Buffered sequential write bandwidth, including the final fsync.
run_fio seqwrite --rw=write --ioengine=sync --bs=1m --size=1g --end_fsync=1
rm -rf "$fio_dir"

# ---- keel -------------------------------------------------------------------
echo "bench: keel WAL (${BENCH_SECONDS}s per case)"
$CARGO bench --locked --bench wal -- --dir "$BENCH_DIR/keel" --out "$WORK/keel.json" --secs "$BENCH_SECONDS"
rm -rf "$BENCH_DIR/keel"

# ---- RocksDB ----------------------------------------------------------------
# db_bench puts with --sync=1 (WAL written and fdatasync'ed before each Put
# returns; concurrent writers are group-committed by RocksDB's write thread),
# 256 B values, 16 B keys, the same thread counts as keel's sync_256_<N>w.
# The memtable is big enough that nothing is flushed during a run (the .sst
# files left at the end are counted and reported), so only the WAL is measured.
# fillrandom stops after BENCH_SECONDS (--duration); fillseq ignores --duration,
# so it gets --num (per thread) from the fillrandom rate at the same count.
rdb=$BENCH_DIR/rocksdb
run_db_bench() { # benchmark, threads, extra args...
    bm=$1 nt=$2
    shift 2
    out=$WORK/rocksdb-$bm-${nt}w
    rm -rf "$rdb"
    set -- "$DB_BENCH" --benchmarks="$bm" --db="$rdb" --threads="$nt" --sync=1 --disable_wal=0 \
        --value_size=256 --key_size=16 --compression_type=none \
        --write_buffer_size=536870912 --max_write_buffer_number=2 --disable_auto_compactions=1 \
        --histogram=1 --seed=1 "$@"
    echo "bench: $*"
    echo "$*" >"$out.cmd"
    rc=0
    timeout $((BENCH_SECONDS * 6 + 60)) "$@" >"$out.out" 2>"$out.err" || rc=$?
    [ "$rc" = 0 ] || echo "bench: db_bench $bm ${nt}w failed (exit $rc); see the report" >&2
    echo "$rc" >"$out.rc"
    find "$rdb" -name '*.sst' 2>/dev/null | wc -l >"$out.sst"
    rm -rf "$rdb"
}
if [ -z "$ROCKSDB_SKIP" ]; then
    echo "bench: RocksDB db_bench (${BENCH_SECONDS}s per run)"
    for n in 1 4 16 64; do
        run_db_bench fillrandom "$n" --duration="$BENCH_SECONDS" --ops_between_duration_checks=1 --num=100000000
        rate=$(awk '$1 == "fillrandom" { for (i = 1; i < NF; i++) if ($(i + 1) == "ops/sec") print int($i) }' \
            "$WORK/rocksdb-fillrandom-${n}w.out" | head -1)
        num=$(( ${rate:-0} * BENCH_SECONDS / n ))
        [ "$num" -ge 100 ] || num=100
        run_db_bench fillseq "$n" --num="$num"
    done
else
    echo "$ROCKSDB_SKIP" >"$WORK/rocksdb-skipped"
fi

# ---- keel shards and RocksDB on the same workloads ---------------------------
# bench/shard.rs: durable and buffered puts, random reads, posting appends,
# resident memory per million keys, recovery of unflushed WAL (README
# "Shards vs RocksDB"). Each group of keel cases runs right before the
# db_bench runs of the same workloads, with the same sizes, so that both
# sides meet the device in about the same state (fdatasync latency on a
# shared disk drifts over minutes).
#
# db_bench: its defaults (16 B keys, 100 B values, keys uniform in [0, --num)
# with repeats, 64 MiB memtable, automatic compactions) without compression
# (keel does not compress), with --bloom_bits=10 (keel's tables have Bloom
# filters) and a block cache that holds the whole read data set (keel reads
# its tables through mmap from the page cache). One db_bench run per case,
# all in BENCH_DIR/rocksdb-shard, which the load leaves for the read runs.
rsdb=$BENCH_DIR/rocksdb-shard
run_keel_shard() { # case group
    echo "bench: keel shards, $1"
    $CARGO bench --locked --bench shard -- --dir "$BENCH_DIR/keel-shard" --out "$WORK/keel-shard-$1.json" \
        --case "$1" --secs "$BENCH_SECONDS" --sync-ops "$SHARD_SYNC_OPS" --sync16-ops "$SHARD_SYNC16_OPS" \
        --load-keys "$SHARD_LOAD_KEYS" --posting-keys "$SHARD_POSTING_KEYS" --posting-ops "$SHARD_POSTING_OPS" \
        --memory-keys "$SHARD_MEMORY_KEYS" --recovery-mib "$SHARD_RECOVERY_MIB"
    rm -rf "$BENCH_DIR/keel-shard"
}
run_db_bench_shard() { # case name, args...
    [ -z "$ROCKSDB_SKIP" ] || return 0
    name=$1
    shift
    out=$WORK/rocksdb-shard-$name
    set -- "$DB_BENCH" --db="$rsdb" --key_size=16 --value_size=100 --compression_type=none \
        --bloom_bits=10 --cache_size=2147483648 --histogram=1 "$@"
    echo "bench: $*"
    echo "$*" >"$out.cmd"
    rc=0
    timeout 900 "$@" >"$out.out" 2>"$out.err" || rc=$?
    [ "$rc" = 0 ] || echo "bench: db_bench shard case $name failed (exit $rc); see the report" >&2
    echo "$rc" >"$out.rc"
}
rm -rf "$rsdb"
run_keel_shard durable_put
run_db_bench_shard durable_put_1t --benchmarks=fillrandom --threads=1 --sync=1 --disable_wal=0 \
    --num="$SHARD_SYNC_OPS" --seed=1
rm -rf "$rsdb"
run_db_bench_shard durable_put_16t --benchmarks=fillrandom --threads=16 --sync=1 --disable_wal=0 \
    --num="$SHARD_SYNC16_OPS" --seed=1
rm -rf "$rsdb"
run_keel_shard load_read
# The load is the buffered-put case; waitforcompaction is keel's settle.
run_db_bench_shard buffered_put_1t --benchmarks=fillrandom,waitforcompaction,levelstats --threads=1 \
    --sync=0 --disable_wal=0 --num="$SHARD_LOAD_KEYS" --seed=1
# Another seed than the load's: with the same seed readrandom would draw
# exactly the keys the load wrote (every read a hit). keel's reads also draw
# their own keys from the same range; "found" shows both hit rates.
for n in 1 2; do
    run_db_bench_shard "read_random_${n}t" --benchmarks=readrandom --use_existing_db=1 --threads="$n" \
        --num="$SHARD_LOAD_KEYS" --duration="$BENCH_SECONDS" --seed=2
done
rm -rf "$rsdb"
run_keel_shard posting
# Posting appends: the stringappend merge operator appends each 8-byte
# operand to the key's value (',' between items): the same list semantics.
run_db_bench_shard posting_append_1t --benchmarks=mergerandom --merge_operator=stringappend \
    --threads=1 --sync=0 --disable_wal=0 --value_size=8 --merge_keys="$SHARD_POSTING_KEYS" \
    --num="$SHARD_POSTING_OPS" --seed=1
rm -rf "$rsdb"
run_keel_shard memory
run_keel_shard recovery

# ---- keel: restart at the bound of unflushed WAL (bench/shard.rs restart_bound)
# Its own output file (keel-restart.json, not keel-shard-*): report.py adds
# its section through bench/restart_report.py.
SHARD_RESTART_PINNED_MIB=${SHARD_RESTART_PINNED_MIB:-$((256 / q))}
echo "bench: keel shards, restart_bound"
$CARGO bench --locked --bench shard -- --dir "$BENCH_DIR/keel-shard" --out "$WORK/keel-restart.json" \
    --case restart_bound --restart-pinned-mib "$SHARD_RESTART_PINNED_MIB"
rm -rf "$BENCH_DIR/keel-shard"

# ---- batched socket writers vs naive sends and Redis pub/sub (bench/net) ----
echo "bench: batched socket writers (bench/net)"
NET_SKIP_BUILD=1 CARGO="$CARGO" sh bench/net/run.sh "$WORK" \
    || echo "bench: bench/net failed; its section is missing from the report" >&2
echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$WORK/machine.env"

# ---- report -----------------------------------------------------------------
python3 bench/report.py "$WORK" "$RESULTS/$STAMP"
rm -rf "$WORK"
