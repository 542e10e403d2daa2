# keel — the two commands are `make demo` and `make test` (see README.md).
# Every recipe here runs from a fresh clone; missing tools are installed by
# `make deps` (apt-get, as root) or named with the exact package to install.

PREFIX     ?= /usr/local
BUILD      ?= build
CARGO      ?= cargo
RELEASE    := target/release
# Every recipe, the C/C++ suites, the Go package's static link and the bench
# scripts find the library in target/release, so cargo builds there even
# when the environment names another target directory.
export CARGO_TARGET_DIR := $(CURDIR)/target
export CARGO_TERM_COLOR ?= never

.PHONY: all lib header header-check docs-check deps test clippy test-rust test-c test-cpp test-go \
        test-examples example-c example-pubsub example-readme example-cpp example-go test-install demo bench \
        install clean valgrind cpp-tests soak fuzz fuzz-smoke

all: lib

## ---- build --------------------------------------------------------------

# Builds libkeel.so, libkeel.a and regenerates include/keel.h (build.rs),
# then lays out $(BUILD)/lib as an installed lib directory would be, so
# `cc app.c -Iinclude -L build/lib -Wl,-rpath,$PWD/build/lib -lkeel` links
# and runs: cargo writes only libkeel.so, but the loader looks for its
# SONAME (libkeel.so.<ABI>).
lib:
	$(CARGO) build --release --locked
	@soname=$$(readelf -d $(RELEASE)/libkeel.so | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p'); \
	[ -n "$$soname" ] || { echo "lib: $(RELEASE)/libkeel.so has no SONAME (readelf from binutils needed)"; exit 1; }; \
	mkdir -p $(BUILD)/lib && \
	cp -f $(RELEASE)/libkeel.so $(BUILD)/lib/$$soname.tmp && mv -f $(BUILD)/lib/$$soname.tmp $(BUILD)/lib/$$soname && \
	ln -sfn $$soname $(BUILD)/lib/libkeel.so && \
	cp -f $(RELEASE)/libkeel.a $(BUILD)/lib/libkeel.a.tmp && mv -f $(BUILD)/lib/libkeel.a.tmp $(BUILD)/lib/libkeel.a && \
	echo "lib: $(BUILD)/lib holds $$soname, libkeel.so -> $$soname and libkeel.a"

header: lib

# CI fails when regenerating the header changes a byte, and the header must
# compile on its own as C99 and C++17 with warnings as errors.
header-check: lib
	git diff --exit-code -- include/keel.h || { echo "include/keel.h is stale: commit the regenerated header"; exit 1; }
	echo '#include "keel.h"' | cc  -std=c99   -Wall -Wextra -Werror -pedantic -Iinclude -x c   -fsyntax-only -
	echo '#include "keel.h"' | c++ -std=c++17 -Wall -Wextra -Werror -pedantic -Iinclude -x c++ -fsyntax-only -
	@echo "header-check: include/keel.h is fresh and self-contained"

# The docs are self-contained: nothing in the repository points at design
# notes outside it (each component's contract is written in docs/).
docs-check:
	@if grep -rnE '(\.\./shared|design/[a-z-]+\.md)' docs README.md src include bindings examples c-tests tests bench fuzz scripts; then \
	  echo "docs-check: the lines above point outside the repository; write the contract into docs/"; exit 1; fi
	@echo "docs-check: docs/ is self-contained"

## ---- tools --------------------------------------------------------------

deps:
	@sh scripts/deps.sh

## ---- tests --------------------------------------------------------------

# Make stops at the first failing suite, so reaching the last line means
# every one of them passed.
TEST_SUITES := clippy test-rust header-check docs-check test-c valgrind test-cpp test-go test-examples test-install fuzz-smoke
test: deps $(TEST_SUITES)
	@echo "make test: all suites passed ($(TEST_SUITES))"
	@echo "suites: $(words $(TEST_SUITES)) passed, 0 failed"

# Lints every target (library, tests, benches) with the feature the tests
# use; warnings are errors. Cargo.toml's [lints.clippy] adds
# undocumented_unsafe_blocks: each unsafe block says why it holds in a
# `// SAFETY:` comment. First, as it fails in seconds once built.
clippy:
	$(CARGO) clippy --locked --all-targets --features unordered-flush -- -D warnings

# The test-only unordered flush (cargo feature) is built into the test
# library so tests/shard_kill9.rs can show the checker catches it; the
# release library never has it.
test-rust:
	$(CARGO) test --locked --features unordered-flush

test-c: lib
	cmake -S c-tests -B $(BUILD)/c-tests -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build $(BUILD)/c-tests -j 2
	cmake -S c-tests -B $(BUILD)/c-tests-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DKEEL_SANITIZE=ON
	cmake --build $(BUILD)/c-tests-asan -j 2
	@# Both suites always run; the target fails if either failed.
	@(cd $(BUILD)/c-tests && ctest --output-on-failure); plain=$$?; \
	(cd $(BUILD)/c-tests-asan && ctest --output-on-failure); asan=$$?; \
	echo "test-c: plain suite $$([ $$plain = 0 ] && echo passed || echo FAILED)," \
	     "ASan+UBSan suite $$([ $$asan = 0 ] && echo passed || echo FAILED)"; \
	[ $$plain = 0 ] && [ $$asan = 0 ]

cpp-tests: lib
	cmake -S bindings/cpp/tests -B $(BUILD)/cpp-tests -G Ninja -DCMAKE_BUILD_TYPE=Debug -DKEEL_LIB_DIR=$(CURDIR)/$(RELEASE)
	cmake --build $(BUILD)/cpp-tests

test-cpp: cpp-tests
	ctest --test-dir $(BUILD)/cpp-tests --output-on-failure -j2

# The raft test cluster is a module of its own (bindings/go/raftcluster),
# so the binding's ./... does not reach it.
test-go: lib
	cd bindings/go && CGO_ENABLED=1 go test -race -count=1 ./...
	cd bindings/go/raftcluster && CGO_ENABLED=1 go test -race -count=1 ./...

test-examples: example-c example-pubsub example-cpp example-go example-readme

# The README's first C program, built with the README's exact command
# (README_CC below is checked to appear in README.md word for word) against
# $(BUILD)/lib, then run twice (its WAL path moved into the build tree).
README_CC := cc app.c -Iinclude -L build/lib -Wl,-rpath,$$PWD/build/lib -lkeel -o app
example-readme: lib
	@grep -qF -- '$(README_CC)' README.md || { echo "example-readme: README.md no longer shows: $(README_CC)"; exit 1; }
	@rm -rf $(BUILD)/readme && mkdir -p $(BUILD)/readme
	awk '/^## A first program/{f=1} f&&/^```c$$/{c=1;next} c&&/^```$$/{exit} c' README.md \
	  | sed 's|"/tmp/keel-wal"|"$(CURDIR)/$(BUILD)/readme/wal"|' > app.c.readme-tmp
	@[ -s app.c.readme-tmp ] || { echo "example-readme: no C program under '## A first program' in README.md"; exit 1; }
	mv app.c.readme-tmp $(BUILD)/readme/app.c
	cp $(BUILD)/readme/app.c app.c && $(README_CC); rc=$$?; rm -f app.c; [ $$rc = 0 ] && mv app $(BUILD)/readme/app
	$(BUILD)/readme/app | grep -qx '1: hello'
	$(BUILD)/readme/app | grep -qx '2: hello'
	@echo "example-readme: README's program built with '$(README_CC)' and ran twice"

# The C demo, linked against the shared library through its SONAME.
DEMO := $(BUILD)/examples-c/wal_demo
$(DEMO): lib examples/c/wal_demo.c
	@mkdir -p $(BUILD)/examples-c
	@ln -sf $(CURDIR)/$(RELEASE)/libkeel.so $(BUILD)/examples-c/libkeel.so.1
	$(CC) -std=c99 -Wall -Wextra -Werror -pedantic -O2 -Iinclude examples/c/wal_demo.c \
	  -o $@ $(BUILD)/examples-c/libkeel.so.1 -Wl,-rpath,'$$ORIGIN' -lpthread

SHARD_DEMO := $(BUILD)/examples-c/shard_demo
$(SHARD_DEMO): lib examples/c/shard_demo.c
	@mkdir -p $(BUILD)/examples-c
	@ln -sf $(CURDIR)/$(RELEASE)/libkeel.so $(BUILD)/examples-c/libkeel.so.1
	$(CC) -std=c99 -Wall -Wextra -Werror -pedantic -O2 -Iinclude examples/c/shard_demo.c \
	  -o $@ $(BUILD)/examples-c/libkeel.so.1 -Wl,-rpath,'$$ORIGIN'

TRANSFER_DEMO := $(BUILD)/examples-c/transfer_demo
$(TRANSFER_DEMO): lib examples/c/transfer_demo.c
	@mkdir -p $(BUILD)/examples-c
	@ln -sf $(CURDIR)/$(RELEASE)/libkeel.so $(BUILD)/examples-c/libkeel.so.1
	$(CC) -std=c99 -Wall -Wextra -Werror -pedantic -O2 -Iinclude examples/c/transfer_demo.c \
	  -o $@ $(BUILD)/examples-c/libkeel.so.1 -Wl,-rpath,'$$ORIGIN' -lpthread

example-c: $(DEMO) $(SHARD_DEMO) $(TRANSFER_DEMO)
	rm -rf $(BUILD)/examples-c/wal $(BUILD)/examples-c/shard $(BUILD)/examples-c/transfer
	$(DEMO) $(BUILD)/examples-c/wal
	$(DEMO) $(BUILD)/examples-c/wal
	$(SHARD_DEMO) $(BUILD)/examples-c/shard
	$(SHARD_DEMO) $(BUILD)/examples-c/shard
	$(TRANSFER_DEMO) $(BUILD)/examples-c/transfer | tee $(BUILD)/examples-c/transfer.out
	grep -qx 'digests match' $(BUILD)/examples-c/transfer.out
	rm -rf $(BUILD)/examples-c/wal $(BUILD)/examples-c/shard $(BUILD)/examples-c/transfer $(BUILD)/examples-c/transfer.out
	@echo "example-c: wal_demo and shard_demo passed twice on one directory each (fresh, then reopened); transfer_demo moved a shard with equal digests"

# The pub/sub server (examples/c/pubsub_server.c) against real TCP
# subscribers: pubsub_check starts it on a free port, connects clients,
# checks every line arrives in order and one early leaver is reported.
PUBSUB_SERVER := $(BUILD)/examples-c/pubsub_server
PUBSUB_CHECK  := $(BUILD)/examples-c/pubsub_check
$(PUBSUB_SERVER): lib examples/c/pubsub_server.c
	@mkdir -p $(BUILD)/examples-c
	@ln -sf $(CURDIR)/$(RELEASE)/libkeel.so $(BUILD)/examples-c/libkeel.so.1
	$(CC) -std=c99 -Wall -Wextra -Werror -pedantic -O2 -Iinclude examples/c/pubsub_server.c \
	  -o $@ $(BUILD)/examples-c/libkeel.so.1 -Wl,-rpath,'$$ORIGIN' -lpthread
$(PUBSUB_CHECK): examples/c/pubsub_check.c
	@mkdir -p $(BUILD)/examples-c
	$(CC) -std=c99 -Wall -Wextra -Werror -pedantic -O2 examples/c/pubsub_check.c -o $@

example-pubsub: $(PUBSUB_SERVER) $(PUBSUB_CHECK)
	$(PUBSUB_CHECK) $(PUBSUB_SERVER)

example-cpp: lib
	@mkdir -p $(BUILD)/cpp-example
	$(CXX) -std=c++17 -Wall -Wextra -Werror -pedantic -Iinclude -Ibindings/cpp examples/cpp/wal_example.cpp \
	    $(RELEASE)/libkeel.a -lpthread -ldl -lm -o $(BUILD)/cpp-example/wal_example
	rm -rf $(BUILD)/cpp-example/wal && $(BUILD)/cpp-example/wal_example $(BUILD)/cpp-example/wal

example-go: lib
	mkdir -p $(BUILD)
	cd examples/go && CGO_ENABLED=1 go build -buildvcs=false -o ../../$(BUILD)/keel-example-go .
	$(BUILD)/keel-example-go

# Part of `make test`: memcheck sees what ASan cannot, such as the library
# (Rust, not instrumented) reading bytes the C caller never initialised.
# The C suite runs test by test under ctest; the C++ suite (the wrapper's
# RAII and moves over the same calls) as one process, against the static
# library.
VALGRIND_ARGS := --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
  --suppressions=$(CURDIR)/c-tests/valgrind.supp
empty :=
space := $(empty) $(empty)
valgrind: lib cpp-tests
	cmake -S c-tests -B $(BUILD)/c-tests-valgrind -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKEEL_TEST_TIMEOUT=1200 \
	  "-DKEEL_TEST_WRAPPER=valgrind;$(subst $(space),;,$(strip $(VALGRIND_ARGS)))"
	cmake --build $(BUILD)/c-tests-valgrind -j 2
	@# KEEL_TEST_VALGRIND and the filter: the io_uring cases are skipped
	@# (valgrind does not release its thread lock in a blocking
	@# io_uring_enter; see README).
	cd $(BUILD)/c-tests-valgrind && KEEL_TEST_VALGRIND=1 ctest --output-on-failure
	@# The same 20-minute bound as each C case (KEEL_TEST_TIMEOUT): a hang fails, with exit status 124.
	timeout 1200 valgrind $(VALGRIND_ARGS) $(BUILD)/cpp-tests/keel_cpp_tests_static --gtest_filter='-*Uring*'

## ---- demo, bench, install -----------------------------------------------

demo: $(DEMO) $(SHARD_DEMO)
	@echo "demo: running $(DEMO) (from examples/c/wal_demo.c) on $(BUILD)/demo-wal"
	@rm -rf $(BUILD)/demo-wal
	@$(DEMO) $(BUILD)/demo-wal
	@echo "demo: running $(SHARD_DEMO) (from examples/c/shard_demo.c) on $(BUILD)/demo-shard"
	@$(SHARD_DEMO) $(BUILD)/demo-shard
	@echo "demo: the data is left in $(BUILD)/demo-wal and $(BUILD)/demo-shard; run the demo again to add to it and recover more"

# The benchmark report (bench/README.md). The first run also builds the
# release RocksDB db_bench it compares with (bench/rocksdb/build.sh, into
# target/rocksdb-release, about an hour on 2 cores; later runs reuse it) and
# installs matplotlib for the charts into a venv (target/bench-venv).
bench: lib
	CARGO="$(CARGO)" BENCH_DIR="$${BENCH_DIR:-$(BUILD)/bench}" sh bench/run.sh

install: lib
	sh packaging/install.sh "$(abspath $(PREFIX))" "$(DESTDIR)"

# Installs into a scratch prefix and builds consumers through pkg-config and
# find_package(keel), so packaging is tested like a user would use it.
test-install: lib
	sh packaging/test-install.sh $(BUILD)

clean:
	$(CARGO) clean
	rm -rf $(BUILD)

# kill -9 soak of the WAL with real processes (tests/wal_kill9.rs):
# SOAK_CYCLES crash/recover cycles (default 10,000), ends with the line
# "kill9: N cycles, M records acknowledged, K recovered, 0 lost".
# Not part of `make test`: `cargo test` already runs a short version.
# The shard crash loop (tests/shard_kill9.rs) runs SHARD_SOAK_CYCLES
# (default 3,000) with the ordered flush after the WAL soak, in its
# deterministic mode and then in its exploring mode (timed kills, also in
# the middle of recovery, seeded pauses in the flush), and an engine in
# sync durability (commit log, write-behind shard WALs) runs
# COMMITTED_SOAK_CYCLES (default 300); the shard fault
# seeds run in exploring mode too (SHARD_EXPLORE_SEEDS, default 2,000).
# Then the WAL fault seeds run WAL_FAULT_SEEDS (default 20,000, and a
# quarter as many each with growing segments and with write-behind;
# make test runs 3,000).
# tests/engine_fds.rs then runs 10,000 shards in one engine under
# RLIMIT_NOFILE 1024 (make test runs 600, in a debug build).
# Last, the Go raft test cluster runs each of its tests on
# RAFTCLUSTER_SOAK_SEEDS (default 200) fresh seeds besides its fixed one.
soak: lib
	KEEL_KILL9_CYCLES=$${SOAK_CYCLES:-10000} $(CARGO) test --release --locked --test wal_kill9 -- --nocapture
	KEEL_SHARD_KILL9_CYCLES=$${SHARD_SOAK_CYCLES:-3000} $(CARGO) test --release --locked --test shard_kill9 \
	  ordered_flush_survives_kill9 -- --nocapture
	KEEL_SHARD_KILL9_EXPLORE=1 KEEL_SHARD_KILL9_CYCLES=$${SHARD_SOAK_CYCLES:-3000} $(CARGO) test --release --locked \
	  --test shard_kill9 ordered_flush_survives_kill9 -- --nocapture
	KEEL_SHARD_KILL9_COMMITTED_CYCLES=$${COMMITTED_SOAK_CYCLES:-300} $(CARGO) test --release --locked --test shard_kill9 \
	  committed_engine_shards_survive_kill9 -- --nocapture
	KEEL_SHARD_FAULT_EXPLORE=1 KEEL_SHARD_FAULT_SEEDS=$${SHARD_EXPLORE_SEEDS:-2000} $(CARGO) test --release --locked \
	  --test shard_faults -- --nocapture
	KEEL_FAULT_SEEDS=$${WAL_FAULT_SEEDS:-20000} KEEL_FAULT_SEED_START=100000 $(CARGO) test --release --locked \
	  --test wal_faults -- --nocapture
	$(CARGO) test --release --locked --features unordered-flush --test engine_fds -- --nocapture
	cd bindings/go/raftcluster && RAFTCLUSTER_SOAK_SEEDS=$${RAFTCLUSTER_SOAK_SEEDS:-200} CGO_ENABLED=1 \
	  go test -count=1 -timeout 120m .

## ---- fuzzing (fuzz/README.md) ---------------------------------------------

# Coverage-guided: cargo fuzz (libFuzzer + ASan, nightly toolchain; both
# installed when missing) on the targets frame, segment_header and recovery,
# FUZZ_SECONDS each. Falls back to the stable mutation runner without nightly.
FUZZ_SECONDS ?= 60
fuzz:
	sh fuzz/run.sh $(FUZZ_SECONDS)

# Quick and stable, no extra tool: replays fuzz/corpus and fuzz/regressions
# through every target, then mutates each for FUZZ_SMOKE_SECONDS (seeded).
FUZZ_SMOKE_SECONDS ?= 4
fuzz-smoke:
	cd fuzz && FUZZ_SMOKE_SECONDS=$(FUZZ_SMOKE_SECONDS) \
	  $(CARGO) test --locked --no-default-features --tests -- --nocapture
