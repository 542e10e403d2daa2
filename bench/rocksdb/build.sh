#!/bin/sh
# Builds a release RocksDB db_bench for `make bench`, once, into the build
# tree; later runs find the binary and return at once.
#
# The source is the RocksDB that the Rust crate librocksdb-sys ships (its
# rocksdb/ folder), fetched from crates.io and checked against the sha256
# that the crates.io index publishes for that version, pinned below. Nothing
# of RocksDB is kept in the repository: only this script.
#
# Usage: sh bench/rocksdb/build.sh [DIR]
#   DIR (default target/rocksdb-release, or ROCKSDB_RELEASE_DIR) receives the
#   crate, the unpacked source, the cmake tree and, last, bin/db_bench. The
#   binary's path is printed on the last line of standard output.
# Environment:
#   ROCKSDB_BUILD_JOBS  parallel compile jobs (default 2)
#
# Release build: -O3 with NDEBUG (CMAKE_BUILD_TYPE=Release), tuned to this
# machine's CPU (PORTABLE=0, RocksDB's default: the binary runs where it was
# built), gflags for db_bench's flags, no tests, no other tools, no
# compression libraries (every comparison runs with --compression_type=none),
# the system allocator (keel uses it too), only the static library.
set -eu

CRATE_VERSION=0.17.3+10.4.2
CRATE_SHA256=cef2a00ee60fe526157c9023edab23943fae1ce2ab6f4abb2a807c1746835de9
ROCKSDB_VERSION=10.4.2

cd "$(dirname "$0")/../.."
DIR=${1:-${ROCKSDB_RELEASE_DIR:-target/rocksdb-release}}
JOBS=${ROCKSDB_BUILD_JOBS:-2}
BIN=$DIR/bin/db_bench

if [ -x "$BIN" ]; then
    echo "$BIN"
    exit 0
fi

# ---- tools ------------------------------------------------------------------
need=""
for t in curl:curl cmake:cmake g++:g++ make:make sha256sum:coreutils tar:tar; do
    command -v "${t%%:*}" >/dev/null 2>&1 || need="$need ${t#*:}"
done
# gflags: db_bench without it has no command-line flags.
[ -e /usr/include/gflags/gflags.h ] || need="$need libgflags-dev"
if [ -n "$need" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "rocksdb: installing$need (apt-get)" >&2
        apt-get update -qq >&2 && apt-get install -y -qq $need >/dev/null
    else
        echo "rocksdb: missing tools; install them: sudo apt-get install -y$need" >&2
        exit 1
    fi
fi
gen=""
command -v ninja >/dev/null 2>&1 && gen="-G Ninja"

# ---- source -----------------------------------------------------------------
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
crate=$DIR/librocksdb-sys-$CRATE_VERSION.crate
src=$DIR/librocksdb-sys-$CRATE_VERSION
if [ ! -f "$src/rocksdb/tools/db_bench_tool.cc" ]; then
    if [ ! -f "$crate" ] || ! echo "$CRATE_SHA256  $crate" | sha256sum -c --status; then
        echo "rocksdb: downloading librocksdb-sys $CRATE_VERSION from crates.io" >&2
        # '+' in the file name is percent-encoded in the URL.
        curl -fsSL --retry 3 -o "$crate.part" \
            "https://static.crates.io/crates/librocksdb-sys/librocksdb-sys-$(echo "$CRATE_VERSION" | sed 's/+/%2B/').crate"
        mv "$crate.part" "$crate"
    fi
    if ! echo "$CRATE_SHA256  $crate" | sha256sum -c --status; then
        echo "rocksdb: $crate does not match the pinned sha256 $CRATE_SHA256; removed" >&2
        rm -f "$crate"
        exit 1
    fi
    rm -rf "$src"
    tar -xzf "$crate" -C "$DIR"
fi
grep -q "ROCKSDB_MAJOR 10" "$src/rocksdb/include/rocksdb/version.h" || {
    echo "rocksdb: $src is not RocksDB 10" >&2
    exit 1
}

# ---- build ------------------------------------------------------------------
echo "rocksdb: building RocksDB $ROCKSDB_VERSION db_bench in $DIR/cmake ($JOBS jobs; 15-60 minutes on 2 cores)" >&2
start=$(date +%s)
# shellcheck disable=SC2086 # $gen is empty or two words
cmake -S "$src/rocksdb" -B "$DIR/cmake" $gen \
    -DCMAKE_BUILD_TYPE=Release \
    -DPORTABLE=0 \
    -DWITH_GFLAGS=ON \
    -DWITH_BENCHMARK_TOOLS=ON \
    -DWITH_TOOLS=OFF -DWITH_CORE_TOOLS=OFF -DWITH_TRACE_TOOLS=OFF \
    -DWITH_TESTS=OFF -DWITH_ALL_TESTS=OFF -DWITH_EXAMPLES=OFF \
    -DROCKSDB_BUILD_SHARED=OFF \
    -DWITH_SNAPPY=OFF -DWITH_LZ4=OFF -DWITH_ZLIB=OFF -DWITH_ZSTD=OFF -DWITH_BZ2=OFF \
    -DWITH_JEMALLOC=OFF -DWITH_LIBURING=OFF \
    -DFAIL_ON_WARNINGS=OFF >"$DIR/cmake.log" 2>&1 || {
    tail -20 "$DIR/cmake.log" >&2
    echo "rocksdb: cmake failed; see $DIR/cmake.log" >&2
    exit 1
}
# nice: the compile yields to whatever else the machine runs.
nice -n 19 cmake --build "$DIR/cmake" --target db_bench -j "$JOBS" >"$DIR/build.log" 2>&1 || {
    tail -30 "$DIR/build.log" >&2
    echo "rocksdb: the build failed; see $DIR/build.log" >&2
    exit 1
}
mkdir -p "$DIR/bin"
cp -f "$DIR/cmake/db_bench" "$BIN.tmp"
mv -f "$BIN.tmp" "$BIN"
echo "rocksdb: built $BIN in $(( $(date +%s) - start )) s" >&2
echo "$BIN"
