#!/bin/sh
# `make test-install`: installs keel into a scratch prefix and builds the
# consumer in packaging/consumer/ the three ways a user would:
#   1. pkg-config, shared      (must load libkeel.so.<ABI> from the prefix)
#   2. pkg-config --static     (must not need libkeel.so at all)
#   3. CMake find_package(keel) with keel::keel and keel::keel_static
# Usage: sh packaging/test-install.sh BUILD_DIR   (from the repository root)
set -eu

build=$(mkdir -p "${1:?usage: test-install.sh BUILD_DIR}" && cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
prefix=$build/install-test/prefix
work=$build/install-test/work
CC=${CC:-cc}

rm -rf "$build/install-test"
mkdir -p "$work"
sh "$here/install.sh" "$prefix"

# Exactly the layout the packaging promises.
for f in include/keel.h lib/libkeel.a lib/pkgconfig/keel.pc \
         lib/cmake/keel/keelConfig.cmake lib/cmake/keel/keelConfigVersion.cmake; do
  [ -f "$prefix/$f" ] || { echo "test-install: $f not installed" >&2; exit 1; }
done
version=$(sed -n 's/^#define KEEL_VERSION_STRING "\(.*\)"$/\1/p' "$prefix/include/keel.h")
soname=$(readelf -d "$prefix/lib/libkeel.so.$version" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')
[ "$(readlink "$prefix/lib/$soname")" = "libkeel.so.$version" ] || { echo "test-install: $soname link wrong" >&2; exit 1; }
[ "$(readlink "$prefix/lib/libkeel.so")" = "$soname" ] || { echo "test-install: libkeel.so link wrong" >&2; exit 1; }

needs_keel() { readelf -d "$1" | grep -q "NEEDED.*\[libkeel\.so"; }
run() { # run BINARY LABEL: each run gets its own fresh WAL directory
  "$1" "$2" "$work/wal-$(basename "$1")"
}

# Only the scratch prefix is searched, never a system-wide keel.
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig" PKG_CONFIG_LIBDIR="$prefix/lib/pkgconfig"
[ "$(pkg-config --modversion keel)" = "$version" ] || { echo "test-install: pkg-config version mismatch" >&2; exit 1; }

# 1. shared through pkg-config; the rpath stands in for ldconfig.
libdir=$(pkg-config --variable=libdir keel)
$CC -std=c99 -Wall -Wextra -Werror -pedantic "$here/consumer/consumer.c" -o "$work/pc-shared" \
  $(pkg-config --cflags --libs keel) -Wl,-rpath,"$libdir"
needs_keel "$work/pc-shared" || { echo "test-install: pc-shared is not linked to libkeel.so" >&2; exit 1; }
readelf -d "$work/pc-shared" | grep -q "NEEDED.*\[$soname\]" || { echo "test-install: pc-shared does not need $soname" >&2; exit 1; }
run "$work/pc-shared" "pkg-config shared"

# 2. static through pkg-config --static: Libs.private brings the system
# libraries; the archive is named explicitly because GNU ld prefers the .so
# for -lkeel (see keel.pc).
$CC -std=c99 -Wall -Wextra -Werror -pedantic "$here/consumer/consumer.c" -o "$work/pc-static" \
  $(pkg-config --cflags keel) $(pkg-config --static --libs keel | sed 's/-lkeel\( \|$\)/-l:libkeel.a\1/')
if needs_keel "$work/pc-static"; then echo "test-install: pc-static still needs libkeel.so" >&2; exit 1; fi
run "$work/pc-static" "pkg-config --static"

# 3. CMake find_package(keel) with both imported targets.
cmake -S "$here/consumer" -B "$work/cmake" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" \
  -DWAL_DIR="$work" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/cmake" -j 2 >/dev/null
needs_keel "$work/cmake/consumer_shared" || { echo "test-install: keel::keel did not link libkeel.so" >&2; exit 1; }
if needs_keel "$work/cmake/consumer_static"; then echo "test-install: keel::keel_static linked libkeel.so" >&2; exit 1; fi
ctest --test-dir "$work/cmake" --output-on-failure

# A request for an incompatible version must not find this keel.
mkdir -p "$work/cmake-version"
printf 'cmake_minimum_required(VERSION 3.16)\nproject(v NONE)\nfind_package(keel 1.0 CONFIG)\nif(keel_FOUND)\n  message(FATAL_ERROR "keel %%s accepted a request for 1.0")\nendif()\n' \
  "$version" > "$work/cmake-version/CMakeLists.txt"
cmake -S "$work/cmake-version" -B "$work/cmake-version/build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null 2>&1 ||
  { echo "test-install: find_package(keel 1.0) accepted keel $version" >&2; exit 1; }
echo "find_package(keel 1.0): rejected, as it should be"

rm -rf "$work"/wal-* "$work"/cmake-shared "$work"/cmake-static
echo "test-install: keel $version installs and links (pkg-config shared/static, CMake keel::keel/keel::keel_static)"
