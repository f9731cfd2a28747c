#!/usr/bin/env bash
# Instructions per request (issue #6): the allocs bench's in-process router (a create, a first
# fetch of the subject and a second one that finds it in the subject cache; audit committer and
# RocksDB included; the kernel's work is not counted) run twice under callgrind, with 100 and
# 1,100 requests of each kind; the difference divided by 1,000 is what one create plus the two
# fetches cost. Counts, unlike timings, barely move with the machine's
# load, so this is the A/B that a shared, noisy machine can still answer.
#
#   benches/instructions.sh            # build (bench profile) and count
#   benches/instructions.sh BINARY     # count an allocs binary built earlier (e.g. of another commit)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/qoima/target}"
command -v valgrind >/dev/null || { echo "instructions: needs valgrind (apt-get install valgrind)" >&2; exit 2; }

bin="${1:-}"
if [ -z "$bin" ]; then
  bin=$(cargo bench --locked --bench allocs --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "allocs" and m.get("executable"):
        print(m["executable"])')
fi
[ -x "$bin" ] || { echo "instructions: no allocs bench binary at '$bin'" >&2; exit 2; }

count() {
  local out
  out=$(mktemp)
  QOIMA_ALLOCS_N="$1" valgrind --tool=callgrind --callgrind-out-file="$out.cg" "$bin" --bench >/dev/null 2>"$out"
  awk '/Collected/ {print $4}' "$out"
  rm -f "$out" "$out.cg"
}
small=$(count 100)
large=$(count 1100)
echo "instructions per create + fetch + cached fetch (1 KiB, in-process router): $(((large - small) / 1000))"
