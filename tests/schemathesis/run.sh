#!/usr/bin/env bash
# Schemathesis against the real `qoima serve`: every operation of /openapi.json is called with
# generated valid and invalid inputs; the run fails on any 5xx and on any response that does
# not match the documented schema.
#
#   tests/schemathesis/run.sh                       # bounded run (CI), ~1-3 minutes
#   QOIMA_ST_EXAMPLES=500 QOIMA_ST_MAX_TIME=1800 tests/schemathesis/run.sh   # longer
#
# Needs: python3 with schemathesis (`pip install schemathesis`), curl, sha256sum; builds the
# binary with cargo if $CARGO_TARGET_DIR/debug/qoima is missing. Tokens and the root key are
# random per run and live only in a temporary directory that is removed at exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/qoima/target}"
examples="${QOIMA_ST_EXAMPLES:-25}"
max_time="${QOIMA_ST_MAX_TIME:-150}"
seed="${QOIMA_ST_SEED:-$RANDOM}"
bin="$CARGO_TARGET_DIR/debug/qoima"
[ -x "$bin" ] || cargo build --locked --bin qoima
command -v schemathesis >/dev/null || { echo "schemathesis: not installed (pip install schemathesis)" >&2; exit 2; }

tmp="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

hex32() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }
digest() { printf %s "$1" | sha256sum | cut -d' ' -f1; }

umask 077
hex32 > "$tmp/root.key"
# One caller holding every role and purpose, so every operation is reachable.
token="st_$(hex32)"
cat > "$tmp/qoima.toml" <<EOF
listen = "127.0.0.1:0"
data_dir = "$tmp/data"

[root_key]
file = "$tmp/root.key"

[[callers]]
name = "schemathesis"
token_sha256 = "$(digest "$token")"
roles = ["service", "website", "security", "auditor", "monitoring"]
purposes = ["loan_issuance", "loan_monitoring", "third_party_transfer", "advertising"]
EOF

"$bin" serve --config "$tmp/qoima.toml" 2> "$tmp/server.log" > /dev/null &
server_pid=$!
base=""
for _ in $(seq 1 300); do
  base="$(sed -n 's/^qoima: listening on //p' "$tmp/server.log" | head -1)"
  [ -n "$base" ] && break
  kill -0 "$server_pid" 2>/dev/null || { echo "qoima did not start:" >&2; cat "$tmp/server.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$base" ] || { echo "qoima did not print its address" >&2; exit 1; }
echo "schemathesis: vault at $base (seed $seed, $examples examples per operation, at most ${max_time}s)"

call() { # METHOD PATH [BODY]
  local args=(-sS -o /dev/null -w '%{http_code}' -X "$1" "$base$2" -H "Authorization: Bearer $token")
  [ $# -ge 3 ] && args+=(-H 'Content-Type: application/json' -d "$3")
  curl "${args[@]}"
}
# A few subjects in different states: with an application, a contract, a consent; erased.
# Each with its own IIN (a unique field): 9001013000N7 has a valid check digit for N = 1..4.
for i in 1 2 3 4; do
  s="st-$i"
  [ "$(call PUT "/v1/subjects/$s" '{"fields": {"identity.full_name": "Test Subject", "identity.iin": "9001013000'"$i"'7",
    "identity.birth_date": "1990-01-01", "identity.phone": "+77011234567", "questionnaire.monthly_income": 350000}}')" = 201 ]
done
[ "$(call POST /v1/subjects/st-2/contracts '{"contract": "L-1"}')" = 201 ]
[ "$(call POST /v1/subjects/st-3/consents '{"purpose": "advertising", "policy_version": "2019-01-29"}')" = 201 ]
[ "$(call POST /v1/subjects/st-4/erasure)" = 202 ]

status=0
# From the temporary directory: schemathesis keeps state in ./.schemathesis.
cd "$tmp"
schemathesis run "$base/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,response_schema_conformance,content_type_conformance,status_code_conformance \
  --phases examples,coverage,fuzzing \
  --max-examples "$examples" \
  --max-time "$max_time" \
  --seed "$seed" \
  --workers 1 \
  --request-timeout 30 \
  --generation-database none \
  --output-sanitize true \
  --report junit --report-dir "$tmp/report" \
  --no-color || status=$?

# The vault must still be serving and its audit chain intact after all that.
[ "$(curl -s -o /dev/null -w '%{http_code}' "$base/healthz")" = 200 ] || { echo "vault not healthy after the run" >&2; status=1; }
curl -sS "$base/v1/audit/verify" -H "Authorization: Bearer $token" | grep -q '"ok":true' || { echo "audit chain broken after the run" >&2; status=1; }
if grep -q "panicked" "$tmp/server.log"; then
  echo "the vault logged a panic" >&2
  status=1
fi
exit $status
