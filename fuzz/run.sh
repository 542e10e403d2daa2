#!/bin/sh
# `make fuzz`: coverage-guided fuzzing of each target for FUZZ_SECONDS.
#   sh fuzz/run.sh [seconds] [target...]      (default: 60, every target)
#
# cargo fuzz (libFuzzer, AddressSanitizer) needs a nightly toolchain and
# cargo-fuzz; both are installed when missing. New inputs go to
# fuzz/work/corpus/<target>/ (the committed seeds in fuzz/corpus/ are read,
# never written), crashes to fuzz/artifacts/<target>/: copy a crash into
# fuzz/regressions/<target>/ and report it. Where no nightly toolchain can be
# had, this falls back to the stable seeded-mutation runner of
# `make fuzz-smoke` for the same time (no coverage feedback).
#
# Extra libFuzzer flags: FUZZ_ARGS (e.g. FUZZ_ARGS=-jobs=2).
set -eu
seconds=${1:-60}
[ $# -gt 0 ] && shift
targets=${*:-frame segment_header recovery node_frame}
cd "$(dirname "$0")"

have_nightly() { rustup run nightly rustc --version >/dev/null 2>&1; }
if command -v rustup >/dev/null 2>&1 && ! have_nightly; then
  echo "fuzz: installing the nightly toolchain for cargo fuzz"
  rustup toolchain install nightly --profile minimal || echo "fuzz: could not install nightly"
fi
if command -v rustup >/dev/null 2>&1 && have_nightly; then
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked
  fi
  status=0
  for t in $targets; do
    mkdir -p "work/corpus/$t"
    echo "fuzz: cargo +nightly fuzz run $t for ${seconds}s"
    # shellcheck disable=SC2086
    cargo +nightly fuzz run "$t" "work/corpus/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -timeout=10 -max_len=4096 -print_final_stats=1 ${FUZZ_ARGS:-} \
      || { status=1; echo "fuzz: $t FAILED: see fuzz/artifacts/$t/"; }
  done
  exit $status
fi

echo "fuzz: no nightly toolchain: running the stable mutation runner instead (no coverage feedback)"
filters=""
for t in $targets; do filters="$filters smoke_$t"; done
# shellcheck disable=SC2086
FUZZ_SMOKE_SECONDS="$seconds" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-../target}" \
  cargo test --locked --no-default-features --test smoke -- --test-threads=1 --nocapture $filters
