#!/bin/sh
# Checks the tools `make test` needs and installs the missing ones from
# Debian's packages when running as root; otherwise names what to install.
set -eu

missing=""
need() { # need <command-or-path> <debian-package>
  case "$1" in
    /*) [ -e "$1" ] || missing="$missing $2" ;;
    *) command -v "$1" >/dev/null 2>&1 || missing="$missing $2" ;;
  esac
}

need cc gcc
need c++ g++
need cmake cmake
need ninja ninja-build
need pkg-config pkg-config
need /usr/include/gtest/gtest.h libgtest-dev
need git git
need valgrind valgrind

if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "deps: installing$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
  else
    echo "deps: missing$missing — install them with: sudo apt-get install$missing" >&2
    exit 1
  fi
fi
command -v cargo >/dev/null 2>&1 || { echo "deps: cargo not found — install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
# The clippy suite needs the clippy of the toolchain that runs cargo.
if ! cargo clippy --version >/dev/null 2>&1; then
  if command -v rustup >/dev/null 2>&1; then
    echo "deps: installing clippy (rustup component add clippy)"
    rustup component add clippy || { echo "deps: rustup could not add clippy — run: rustup component add clippy" >&2; exit 1; }
  else
    echo "deps: cargo clippy not found — install the clippy of the toolchain this cargo belongs to (with rustup: rustup component add clippy)" >&2
    exit 1
  fi
fi
command -v go >/dev/null 2>&1 || { echo "deps: go not found — install Go 1.26 or newer (https://go.dev/dl/; the raft cluster tests need it)" >&2; exit 1; }
echo "deps: all tools present"
