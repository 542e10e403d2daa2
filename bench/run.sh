#!/bin/sh
# `make bench`: the fio baseline, the keel WAL benchmark, keel shards and
# RocksDB's db_bench on the same directory, then a report in
# bench/results/<UTC date-time>.{md,json} with charts (<date-time>-*.png);
# the socket writers (bench/net) and the shard transfer (bench/transfer,
# its own report <date-time>-transfer.{md,json}) after them.
# See bench/README.md for the cases and how the ratios are computed.
#
# Every keel-against-RocksDB comparison runs in BENCH_PAIRS interleaved
# pairs (keel, RocksDB, keel, RocksDB, ...): the report judges the goals on
# the median of the per-pair ratios and shows their spread.
#
# Environment:
#   BENCH_DIR      where the files go (default build/bench; must be on the
#                  file system you want to measure; emptied per case)
#   BENCH_SECONDS  seconds per timed case (default 5; 1 with KEEL_BENCH_QUICK=1)
#   KEEL_BENCH_QUICK=1  a smoke run: shard sizes divided by 10 (recovery of
#                  128 MiB instead of 1 GiB) and 1 s cases; not for comparing
#   SHARD_SYNC_OPS, SHARD_SYNC16_OPS, SHARD_SYNC64_OPS, SHARD_LOAD_KEYS, SHARD_POSTING_KEYS,
#   SHARD_POSTING_OPS, SHARD_MEMORY_KEYS, SHARD_RECOVERY_MIB
#                  shard case sizes (see bench/README.md "Shards vs RocksDB")
#   SHARD_RESTART_PINNED_MIB  MiB written through a pinned WAL before the
#                  restart-at-the-bound case fills its unflushed WAL (256; 25 quick)
#   SHARD_MANY     shards in one engine, largest count of the many-shards case
#                  (10000; 1000 quick)
#   BENCH_PAIRS    keel/RocksDB pairs per comparison (default 3)
#   BENCH_SKIP     sections to leave out, by name, separated by spaces: net,
#                  lease, transfer (their sections are then missing from
#                  the report, which says so)
#   CARGO          cargo binary (default cargo)
#   DB_BENCH       the RocksDB db_bench compared (default: the release build of
#                  RocksDB 10.4 that bench/rocksdb/build.sh makes once, in
#                  ROCKSDB_RELEASE_DIR, default target/rocksdb-release; with
#                  KEEL_BENCH_QUICK=1 it is used only if already built, else
#                  DB_BENCH_REF stands in and the report says so)
#   DB_BENCH_REF   a reference db_bench, one run per WAL thread count, not
#                  judged (default: db_bench of the Debian package
#                  rocksdb-tools, installed when missing; empty: none)
#   BENCH_VENV     Python venv for the charts (default target/bench-venv;
#                  matplotlib from PyPI is installed into it)
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
# thread for durable puts at 1, 16 and 64 threads; puts that load the read data
# set (also the buffered-put case); posting keys and appends; distinct keys
# for the memory case; MiB of WAL for the recovery cases.
SHARD_SYNC_OPS=${SHARD_SYNC_OPS:-$((20000 / q))}
SHARD_SYNC16_OPS=${SHARD_SYNC16_OPS:-$((5000 / q))}
SHARD_SYNC64_OPS=${SHARD_SYNC64_OPS:-$((2500 / q))}
SHARD_LOAD_KEYS=${SHARD_LOAD_KEYS:-$((3000000 / q))}
SHARD_POSTING_KEYS=${SHARD_POSTING_KEYS:-$((100000 / q))}
SHARD_POSTING_OPS=${SHARD_POSTING_OPS:-$((2000000 / q))}
SHARD_MEMORY_KEYS=${SHARD_MEMORY_KEYS:-$((1000000 / q))}
SHARD_RECOVERY_MIB=${SHARD_RECOVERY_MIB:-$qmib}
BENCH_PAIRS=${BENCH_PAIRS:-3}
case $BENCH_PAIRS in
    '' | *[!0-9]* | 0) echo "bench: BENCH_PAIRS must be a whole number >= 1 (got '$BENCH_PAIRS')" >&2; exit 1 ;;
esac
CARGO=${CARGO:-cargo}
RESULTS=bench/results
BENCH_VENV=${BENCH_VENV:-target/bench-venv}
MATPLOTLIB=matplotlib==3.9.4

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
# RocksDB: a comparison, not the baseline, so a db_bench that cannot be had
# skips that section instead of stopping. Debian's rocksdb-tools (7.8.3 on
# Debian 12, built with assertions on) is the reference and the quick-run
# stand-in; the compared RocksDB is a release build of 10.4.
DB_BENCH_REF=${DB_BENCH_REF-db_bench}
if [ -n "$DB_BENCH_REF" ] && ! command -v "$DB_BENCH_REF" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bench: installing rocksdb-tools for the reference db_bench (apt-get)"
        { apt-get update -qq && apt-get install -y -qq rocksdb-tools >/dev/null; } || true
    fi
    if ! command -v "$DB_BENCH_REF" >/dev/null 2>&1; then
        echo "bench: reference db_bench not found (sudo apt-get install -y rocksdb-tools); no reference column" >&2
        DB_BENCH_REF=""
    fi
fi
[ -z "$DB_BENCH_REF" ] || DB_BENCH_REF=$(command -v "$DB_BENCH_REF")
ROCKSDB_SKIP="" ROCKSDB_NOTE=""
if [ -z "${DB_BENCH:-}" ]; then
    rel=${ROCKSDB_RELEASE_DIR:-target/rocksdb-release}/bin/db_bench
    if [ -x "$rel" ]; then
        DB_BENCH=$rel
    elif [ "$KEEL_BENCH_QUICK" = 1 ]; then
        ROCKSDB_NOTE="Quick run without the release build of RocksDB 10.4, so Debian's db_bench stands in (make bench builds it once, or sh bench/rocksdb/build.sh)"
        echo "bench: $ROCKSDB_NOTE" >&2
        DB_BENCH=$DB_BENCH_REF
    else
        echo "bench: building the release db_bench (once; kept in ${ROCKSDB_RELEASE_DIR:-target/rocksdb-release})"
        DB_BENCH=$(sh bench/rocksdb/build.sh ${ROCKSDB_RELEASE_DIR:+"$ROCKSDB_RELEASE_DIR"}) || {
            echo "bench: the release db_bench did not build (see the message above); DB_BENCH=/path/to/db_bench picks one" >&2
            exit 1
        }
    fi
fi
if [ -z "$DB_BENCH" ] || ! command -v "$DB_BENCH" >/dev/null 2>&1; then
    ROCKSDB_SKIP="no db_bench to compare with (DB_BENCH='$DB_BENCH'; make bench builds one, or: sudo apt-get install -y rocksdb-tools)"
    echo "bench: $ROCKSDB_SKIP (the RocksDB comparison is skipped)" >&2
else
    DB_BENCH=$(cd "$(dirname "$(command -v "$DB_BENCH")")" && pwd)/$(basename "$DB_BENCH")
fi
# The reference column only when it is another binary than the compared one.
[ "$DB_BENCH_REF" != "$DB_BENCH" ] || DB_BENCH_REF=""
if ! command -v python3 >/dev/null 2>&1; then
    echo "bench: python3 is needed for the report; install it: sudo apt-get install -y python3" >&2
    exit 1
fi
# Charts: matplotlib from PyPI in a venv under the build tree (Debian's
# python refuses `pip install --user`, PEP 668). Without it the report is
# written without charts and says why.
REPORT_PY=python3
if "$BENCH_VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
    REPORT_PY=$BENCH_VENV/bin/python
elif { [ -x "$BENCH_VENV/bin/pip" ] || python3 -m venv "$BENCH_VENV"; } &&
    echo "bench: installing $MATPLOTLIB into $BENCH_VENV (pip)" &&
    "$BENCH_VENV/bin/pip" install -q --disable-pip-version-check "$MATPLOTLIB"; then
    REPORT_PY=$BENCH_VENV/bin/python
else
    echo "bench: no matplotlib (python3 -m venv needs the Debian package python3-venv); the report has no charts" >&2
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
db_bench=$DB_BENCH
db_bench_ref=$DB_BENCH_REF
rocksdb_note=$ROCKSDB_NOTE
pairs=$BENCH_PAIRS
skipped=${BENCH_SKIP:-}
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
# The same job as F and P below (fsync4k), without --overwrite (fio fallocates, every write converts an
# unwritten extent): reported for reference only.
run_fio fsync4k_alloc --rw=write --ioengine=sync --fdatasync=1 --bs=4k --size=256m \
    --runtime="$BENCH_SECONDS" --time_based
# Buffered sequential write bandwidth, including the final fsync.
run_fio seqwrite --rw=write --ioengine=sync --bs=1m --size=1g --end_fsync=1
rm -rf "$fio_dir"

# ---- keel WAL, then keel against RocksDB in interleaved pairs -----------------
# The keel-only cases once; then, per thread count, BENCH_PAIRS pairs of
# keel's sync_256_<N>w and RocksDB's durable puts at N threads, back to back
# (fdatasync latency on a shared disk drifts over minutes: a pair meets the
# device in about the same state, the spread across pairs shows the drift).
echo "bench: keel WAL (${BENCH_SECONDS}s per case)"
run_keel_wal() { # output file, case...
    out=$1 cases=""
    shift
    for c in "$@"; do cases="$cases --case $c"; done
    # shellcheck disable=SC2086 # one word per case name
    $CARGO bench --locked --bench wal -- --dir "$BENCH_DIR/keel" --out "$out" --secs "$BENCH_SECONDS" $cases
    rm -rf "$BENCH_DIR/keel"
}
run_keel_wal "$WORK/keel.json" none_128_1w

# F and P: 4 KiB write(2) + fdatasync(2) per op into a file fio has already
# written once (--overwrite=1), which is the state keel's zero-filled
# segments are in (no block allocation, no unwritten-extent conversion).
# Each of BENCH_PAIRS pairs runs it and then keel's sync_4k_1w back to
# back: the two meet the device's fdatasync latency in the same state.
# After them, for reference, the same fio job writing as many bytes per op
# as keel's frame of a 4 KiB record (FRAMED_4K: its 32-byte header and the
# record; the report checks it against the frame size keel reports), so
# each op dirties two pages as keel's does.
FRAMED_4K=4128
p=1
while [ "$p" -le "$BENCH_PAIRS" ]; do
    echo "bench: pair $p/$BENCH_PAIRS: fio fsync4k, then keel sync_4k_1w, then fio fsync4k_framed"
    run_fio "fsync4k-p$p" --rw=write --ioengine=sync --fdatasync=1 --bs=4k --size=256m \
        --runtime="$BENCH_SECONDS" --time_based --overwrite=1
    rm -rf "$fio_dir"
    run_keel_wal "$WORK/keel-4k-p$p.json" sync_4k_1w
    run_fio "fsync4k_framed-p$p" --rw=write --ioengine=sync --fdatasync=1 --bs="$FRAMED_4K" --size=256m \
        --runtime="$BENCH_SECONDS" --time_based --overwrite=1
    rm -rf "$fio_dir"
    p=$((p + 1))
done

# db_bench puts with --sync=1 (WAL written and fdatasync'ed before each Put
# returns; concurrent writers are group-committed by RocksDB's write thread),
# 256 B values, 16 B keys, the same thread counts as keel's sync_256_<N>w.
# The memtable is big enough that nothing is flushed during a run (the .sst
# files left at the end are counted and reported), so only the WAL is measured.
# fillrandom stops after BENCH_SECONDS (--duration); fillseq ignores --duration,
# so it gets --num (per thread) from the rate of the fillrandom just before it.
rdb=$BENCH_DIR/rocksdb
run_db_bench() { # binary, output name, benchmark, threads, extra args...
    bin=$1 out=$WORK/$2 bm=$3 nt=$4
    shift 4
    rm -rf "$rdb"
    set -- "$bin" --benchmarks="$bm" --db="$rdb" --threads="$nt" --sync=1 --disable_wal=0 \
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
run_db_bench_fill() { # binary, output name prefix, threads: fillrandom then fillseq
    run_db_bench "$1" "$2-fillrandom-${3}w" fillrandom "$3" \
        --duration="$BENCH_SECONDS" --ops_between_duration_checks=1 --num=100000000
    rate=$(awk '$1 == "fillrandom" { for (i = 1; i < NF; i++) if ($(i + 1) == "ops/sec") print int($i) }' \
        "$WORK/$2-fillrandom-${3}w.out" | head -1)
    num=$(( ${rate:-0} * BENCH_SECONDS / $3 ))
    [ "$num" -ge 100 ] || num=100
    run_db_bench "$1" "$2-fillseq-${3}w" fillseq "$3" --num="$num"
}
[ -z "$ROCKSDB_SKIP" ] || echo "$ROCKSDB_SKIP" >"$WORK/rocksdb-skipped"
for n in 1 4 16 64; do
    p=1
    while [ "$p" -le "$BENCH_PAIRS" ]; do
        echo "bench: pair $p/$BENCH_PAIRS, ${n} writer(s): keel sync_256_${n}w, then RocksDB"
        run_keel_wal "$WORK/keel-wal-${n}w-p$p.json" "sync_256_${n}w"
        [ -n "$ROCKSDB_SKIP" ] || run_db_bench_fill "$DB_BENCH" "rocksdb-p$p" "$n"
        p=$((p + 1))
    done
    # The reference db_bench: once per count, after the pairs, not judged.
    [ -z "$DB_BENCH_REF" ] || run_db_bench "$DB_BENCH_REF" "rocksdb-ref-fillrandom-${n}w" fillrandom "$n" \
        --duration="$BENCH_SECONDS" --ops_between_duration_checks=1 --num=100000000
done

# ---- keel shards and RocksDB on the same workloads ---------------------------
# bench/shard.rs: durable and buffered puts, random reads, posting appends,
# resident memory per million keys, recovery of unflushed WAL (README
# "Shards vs RocksDB"). Each group of keel cases that has a RocksDB side runs
# in BENCH_PAIRS pairs: the keel group, then at once the db_bench runs of the
# same workloads with the same sizes, so that both sides of a pair meet the
# device in about the same state (fdatasync latency on a shared disk drifts
# over minutes).
#
# db_bench: its defaults (16 B keys, 100 B values, keys uniform in [0, --num)
# with repeats, 64 MiB memtable, automatic compactions) without compression
# (keel does not compress), with --bloom_bits=16 (keel's tables have Bloom
# filters of 16 bits a key) and a block cache that holds the whole read data set (keel reads
# its tables through mmap from the page cache). One db_bench run per case,
# all in BENCH_DIR/rocksdb-shard, which the load leaves for the read runs.
rsdb=$BENCH_DIR/rocksdb-shard
run_keel_shard() { # case group, output name suffix
    echo "bench: keel shards, $1"
    $CARGO bench --locked --bench shard -- --dir "$BENCH_DIR/keel-shard" --out "$WORK/keel-shard-$1$2.json" \
        --case "$1" --secs "$BENCH_SECONDS" --sync-ops "$SHARD_SYNC_OPS" --sync16-ops "$SHARD_SYNC16_OPS" --sync64-ops "$SHARD_SYNC64_OPS" \
        --load-keys "$SHARD_LOAD_KEYS" --posting-keys "$SHARD_POSTING_KEYS" --posting-ops "$SHARD_POSTING_OPS" \
        --memory-keys "$SHARD_MEMORY_KEYS" --recovery-mib "$SHARD_RECOVERY_MIB"
    rm -rf "$BENCH_DIR/keel-shard"
}
run_db_bench_shard() { # case name, pair, args...
    name=$1 out=$WORK/rocksdb-shard-$1-p$2
    shift 2
    set -- "$DB_BENCH" --db="$rsdb" --key_size=16 --value_size=100 --compression_type=none \
        --bloom_bits=16 --cache_size=2147483648 --histogram=1 "$@"
    echo "bench: $*"
    echo "$*" >"$out.cmd"
    rc=0
    timeout 900 "$@" >"$out.out" 2>"$out.err" || rc=$?
    [ "$rc" = 0 ] || echo "bench: db_bench shard case $name failed (exit $rc); see the report" >&2
    echo "$rc" >"$out.rc"
}
rocksdb_durable_put() { # pair
    run_db_bench_shard durable_put_1t "$1" --benchmarks=fillrandom --threads=1 --sync=1 --disable_wal=0 \
        --num="$SHARD_SYNC_OPS" --seed=1
    rm -rf "$rsdb"
    run_db_bench_shard durable_put_16t "$1" --benchmarks=fillrandom --threads=16 --sync=1 --disable_wal=0 \
        --num="$SHARD_SYNC16_OPS" --seed=1
    rm -rf "$rsdb"
    run_db_bench_shard durable_put_64t "$1" --benchmarks=fillrandom --threads=64 --sync=1 --disable_wal=0 \
        --num="$SHARD_SYNC64_OPS" --seed=1
}
rocksdb_load_read() { # pair
    # The load is the buffered-put case; waitforcompaction is keel's settle.
    run_db_bench_shard buffered_put_1t "$1" --benchmarks=fillrandom,waitforcompaction,levelstats --threads=1 \
        --sync=0 --disable_wal=0 --num="$SHARD_LOAD_KEYS" --seed=1
    # Another seed than the load's: with the same seed readrandom would draw
    # exactly the keys the load wrote (every read a hit). keel's reads also
    # draw their own keys from the same range; "found" shows both hit rates.
    for n in 1 2; do
        run_db_bench_shard "read_random_${n}t" "$1" --benchmarks=readrandom --use_existing_db=1 --threads="$n" \
            --num="$SHARD_LOAD_KEYS" --duration="$BENCH_SECONDS" --seed=2
    done
}
rocksdb_posting() { # pair
    # Posting appends: the stringappend merge operator appends each 8-byte
    # operand to the key's value (',' between items): the same list semantics.
    run_db_bench_shard posting_append_1t "$1" --benchmarks=mergerandom --merge_operator=stringappend \
        --threads=1 --sync=0 --disable_wal=0 --value_size=8 --merge_keys="$SHARD_POSTING_KEYS" \
        --num="$SHARD_POSTING_OPS" --seed=1
}
run_shard_pairs() { # keel case group, function that runs RocksDB's side of it
    pair=1
    while [ "$pair" -le "$BENCH_PAIRS" ]; do
        echo "bench: pair $pair/$BENCH_PAIRS, shards $1: keel, then RocksDB"
        run_keel_shard "$1" "-p$pair"
        rm -rf "$rsdb"
        [ -n "$ROCKSDB_SKIP" ] || "$2" "$pair"
        rm -rf "$rsdb"
        pair=$((pair + 1))
    done
}
run_shard_pairs durable_put rocksdb_durable_put
run_shard_pairs load_read rocksdb_load_read
run_shard_pairs posting rocksdb_posting
# Restart: keel's recovery of unflushed WAL (the recovery group), then
# RocksDB reopening a database a killed db_bench left with as many bytes of
# WAL (bench/rocksdb/recovery.py; README "Restart: keel against RocksDB").
rocksdb_recovery() { # pair
    python3 bench/rocksdb/recovery.py --db-bench "$DB_BENCH" --dir "$rsdb" --mib "$SHARD_RECOVERY_MIB" \
        --keel "$WORK/keel-shard-recovery-p$1.json" --out "$WORK/rocksdb-recovery-p$1.json" ||
        echo "bench: the RocksDB recovery of pair $1 had problems; see the report" >&2
}
run_shard_pairs recovery rocksdb_recovery
# keel only: no pairs.
run_keel_shard memory ""

# ---- keel: restart at the bound of unflushed WAL (bench/shard.rs restart_bound)
# BENCH_PAIRS runs (the goal is judged on their median), each to its own
# file (keel-restart-p<run>.json, not keel-shard-*): report.py adds its
# section through bench/restart_report.py.
SHARD_RESTART_PINNED_MIB=${SHARD_RESTART_PINNED_MIB:-$((256 / q))}
p=1
while [ "$p" -le "$BENCH_PAIRS" ]; do
    echo "bench: keel shards, restart_bound, run $p/$BENCH_PAIRS"
    $CARGO bench --locked --bench shard -- --dir "$BENCH_DIR/keel-shard" --out "$WORK/keel-restart-p$p.json" \
        --case restart_bound --restart-pinned-mib "$SHARD_RESTART_PINNED_MIB"
    rm -rf "$BENCH_DIR/keel-shard"
    p=$((p + 1))
done

# ---- keel: thousands of shards in one engine (bench/shard.rs many_shards) --
# 1, 100, 1,000 and SHARD_MANY shards (10,000; 1,000 quick), each in a child;
# its section comes from bench/many_shards_report.py.
SHARD_MANY=${SHARD_MANY:-$((10000 / q))}
echo "bench: keel shards, many_shards"
$CARGO bench --locked --bench shard -- --dir "$BENCH_DIR/keel-shard" --out "$WORK/keel-shard-many_shards.json" \
    --case many_shards --many-shards "$SHARD_MANY"
rm -rf "$BENCH_DIR/keel-shard"

# Whether section $1 runs (not named in BENCH_SKIP).
runs() {
    case " ${BENCH_SKIP:-} " in
        *" $1 "*) echo "bench: $1 skipped (BENCH_SKIP)"; return 1 ;;
    esac
}

# ---- batched socket writers vs naive sends and Redis pub/sub (bench/net) ----
if runs net; then
    echo "bench: batched socket writers (bench/net)"
    NET_SKIP_BUILD=1 CARGO="$CARGO" sh bench/net/run.sh "$WORK" \
        || echo "bench: bench/net failed; its section is missing from the report" >&2
fi
# ---- lease reads through the C API, simulated consensus (bench/lease) ----
if runs lease; then
    echo "bench: lease reads (bench/lease)"
    LEASE_SKIP_BUILD=1 CARGO="$CARGO" sh bench/lease/run.sh "$WORK" \
        || echo "bench: bench/lease failed; its section is missing from the report" >&2
fi

# ---- shard transfer, pipelined vs sequential (bench/transfer; root) ---------
# Its own report, bench/results/<stamp>-transfer.{md,json}; skipped with a
# message when not root or network namespaces are not permitted.
if runs transfer; then
    echo "bench: shard transfer (bench/transfer)"
    KEEL_BENCH_QUICK="$KEEL_BENCH_QUICK" CARGO="$CARGO" BENCH_DIR="$BENCH_DIR" BENCH_PAIRS="$BENCH_PAIRS" \
        sh bench/transfer/run.sh "$WORK/transfer" \
        || echo "bench: bench/transfer failed; see its output above" >&2
fi
echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$WORK/machine.env"

# ---- report -----------------------------------------------------------------
"$REPORT_PY" bench/report.py "$WORK" "$RESULTS/$STAMP"
rm -rf "$WORK"
