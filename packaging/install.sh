#!/bin/sh
# Installs keel into a prefix: `make install PREFIX=/usr/local` runs
#   sh packaging/install.sh PREFIX [DESTDIR]
# from the repository root after `make lib`.
#
#   PREFIX/bin/keel-wal                      the WAL inspection tool (docs/TOOLS.md)
#   PREFIX/include/keel.h
#   PREFIX/lib/libkeel.so.<version>          the shared library
#   PREFIX/lib/libkeel.so.<ABI>  -> .so.<version>   (its SONAME: what the loader opens)
#   PREFIX/lib/libkeel.so        -> .so.<ABI>       (what -lkeel finds)
#   PREFIX/lib/libkeel.a
#   PREFIX/lib/pkgconfig/keel.pc
#   PREFIX/lib/cmake/keel/keelConfig.cmake, keelConfigVersion.cmake
#
# DESTDIR (optional) stages the files under another root, as distribution
# packages do; paths inside keel.pc still name PREFIX.
set -eu

prefix=${1:?usage: install.sh PREFIX [DESTDIR]}
destdir=${2:-}
release=${KEEL_RELEASE_DIR:-target/release}
here=$(dirname "$0")

case "$prefix" in
  /*) ;;
  *) echo "install: PREFIX must be an absolute path (got '$prefix')" >&2; exit 1 ;;
esac
for f in include/keel.h "$release/libkeel.so" "$release/libkeel.a" "$release/keel-wal"; do
  [ -f "$f" ] || { echo "install: $f is missing; run 'make lib' first" >&2; exit 1; }
done

# The version comes from the generated header (itself from Cargo.toml); the
# SONAME from the built library itself, so the symlink always matches what
# the dynamic loader will look for.
version=$(sed -n 's/^#define KEEL_VERSION_STRING "\(.*\)"$/\1/p' include/keel.h)
major=$(sed -n 's/^#define KEEL_VERSION_MAJOR \([0-9]*\)$/\1/p' include/keel.h)
minor=$(sed -n 's/^#define KEEL_VERSION_MINOR \([0-9]*\)$/\1/p' include/keel.h)
soname=$(readelf -d "$release/libkeel.so" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')
[ -n "$version" ] && [ -n "$major" ] && [ -n "$minor" ] || { echo "install: no version macros in include/keel.h" >&2; exit 1; }
[ -n "$soname" ] || { echo "install: $release/libkeel.so has no SONAME" >&2; exit 1; }
sofile=libkeel.so.$version

# System libraries the Rust standard library inside libkeel.a needs. keel's
# own dependencies (libc, parking_lot, crossbeam, crc32fast, thiserror) add
# none, so rustc's answer for an empty staticlib is keel's answer; the
# static consumer in `make test-install` proves the list is sufficient.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
native=$(echo '' | ${RUSTC:-rustc} --crate-type staticlib --crate-name keel_probe \
           --print native-static-libs -o "$scratch/probe.a" - 2>&1 |
         sed -n 's/.*native-static-libs: //p' | tail -n 1)
[ -n "$native" ] || { echo "install: rustc --print native-static-libs gave nothing" >&2; exit 1; }
native_cmake=$(echo "$native" | sed 's/-l//g; s/ \{1,\}/;/g')
# Pointer size of this (native) build, for keelConfigVersion.cmake.
sizeof_void_p=$(( $(getconf LONG_BIT) / 8 ))

root=$destdir$prefix
install -d "$root/bin" "$root/include" "$root/lib/pkgconfig" "$root/lib/cmake/keel"
install -m 755 "$release/keel-wal" "$root/bin/keel-wal"
install -m 644 include/keel.h "$root/include/keel.h"
install -m 755 "$release/libkeel.so" "$root/lib/$sofile"
ln -sfn "$sofile" "$root/lib/$soname"
ln -sfn "$soname" "$root/lib/libkeel.so"
install -m 644 "$release/libkeel.a" "$root/lib/libkeel.a"

subst() { # subst TEMPLATE OUTPUT
  sed -e "s|@PREFIX@|$prefix|g" -e "s|@VERSION@|$version|g" \
      -e "s|@VERSION_MAJOR@|$major|g" -e "s|@VERSION_MINOR@|$minor|g" \
      -e "s|@SONAME@|$soname|g" -e "s|@SOFILE@|$sofile|g" \
      -e "s|@NATIVE_LIBS@|$native|g" -e "s|@NATIVE_LIBS_CMAKE@|$native_cmake|g" \
      -e "s|@SIZEOF_VOID_P@|$sizeof_void_p|g" "$1" > "$2.tmp"
  if grep -n '@[A-Z_]*@' "$2.tmp"; then echo "install: unreplaced placeholder in $2" >&2; exit 1; fi
  chmod 644 "$2.tmp" && mv "$2.tmp" "$2"
}
subst "$here/keel.pc.in" "$root/lib/pkgconfig/keel.pc"
subst "$here/keelConfig.cmake.in" "$root/lib/cmake/keel/keelConfig.cmake"
subst "$here/keelConfigVersion.cmake.in" "$root/lib/cmake/keel/keelConfigVersion.cmake"

echo "install: keel $version (SONAME $soname) installed into $root"
