#!/usr/bin/env bash
# Runs the cargo-fuzz targets (tests/fuzz/fuzz_targets) for a bounded time each.
#
#   tests/fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#   QOIMA_FUZZ_REQUIRE_WARM=1 tests/fuzz/run.sh 30         (CI: skip, saying so, unless the
#                                                           RocksDB library is already built)
#
# The config target links the qoima crate and so RocksDB. Instead of compiling RocksDB a
# second time (~25 min) for the instrumented build, it links the librocksdb.a that the main
# build already made (librocksdb-sys's ROCKSDB_LIB_DIR + ROCKSDB_STATIC): the C++ code is not
# what is fuzzed, and the config parser never opens a store. cargo-fuzz needs nightly
# flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
#
# Corpora grow in $QOIMA_FUZZ_CORPUS (default ~/.cache/qoima/fuzz-corpus/<target>), seeded
# from tests/fuzz/seeds/<target>; crashes are written to tests/fuzz/artifacts/<target>/
# (ignored by git) and fail the run.
set -euo pipefail
cd "$(dirname "$0")/../.."

secs="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(envelope config)

main_target="${CARGO_TARGET_DIR:-$HOME/.cache/qoima/target}"
export CARGO_TARGET_DIR="${QOIMA_FUZZ_TARGET_DIR:-$HOME/.cache/qoima/fuzz-target}"
export RUSTC_BOOTSTRAP=1

lib=""
for profile in release debug; do
  lib="$(ls -t "$main_target"/$profile/build/librocksdb-sys-*/out/librocksdb.a 2>/dev/null | head -1 || true)"
  [ -n "$lib" ] && break
done
if [ -z "$lib" ]; then
  if [ "${QOIMA_FUZZ_REQUIRE_WARM:-0}" = 1 ]; then
    echo "fuzz: SKIPPED: no prebuilt librocksdb.a under $main_target (build the main crate first)"
    exit 0
  fi
  echo "fuzz: no prebuilt librocksdb.a under $main_target; RocksDB will be compiled for the fuzz build (~25 min)"
else
  export ROCKSDB_LIB_DIR="$(dirname "$lib")" ROCKSDB_STATIC=1
fi

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  env -u CARGO_TARGET_DIR cargo install cargo-fuzz --locked
fi

corpus_root="${QOIMA_FUZZ_CORPUS:-$HOME/.cache/qoima/fuzz-corpus}"
cargo fuzz build --fuzz-dir tests/fuzz
status=0
for t in "${targets[@]}"; do
  corpus="$corpus_root/$t"
  mkdir -p "$corpus" "tests/fuzz/artifacts/$t"
  echo "fuzz: $t for ${secs}s (corpus $corpus)"
  log="$corpus_root/$t.log"
  if cargo fuzz run --fuzz-dir tests/fuzz "$t" "$corpus" "tests/fuzz/seeds/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 > "$log" 2>&1; then
    grep -E "INITED|DONE|stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)" "$log" || true
  else
    status=1
    echo "fuzz: $t FAILED; the end of its log ($log):"
    tail -n 60 "$log"
  fi
done
exit $status
