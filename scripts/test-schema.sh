#!/usr/bin/env bash
# test-schema.sh - checks the API against its own OpenAPI document with
# schemathesis (every check, coverage and fuzzing phases): a request the
# document allows must not be refused, and one it forbids must not pass.
#
# Usage: scripts/test-schema.sh [schemathesis options]   (make test-schema)
#
# Installs schemathesis into .dev/venv (beside aiosmtpd) when missing, starts
# `simplebank serve` on a free loopback port against a scratch database, runs
# schemathesis against it, and stops serve by PID. Bounded: 5 minutes at most.

set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."

scripts/dev-services.sh up >/dev/null
eval "$(scripts/dev-services.sh env | sed 's/^/export /')"
venv=.dev/venv
if ! "$venv/bin/python" -c 'import schemathesis' 2>/dev/null; then
  timeout 300 "$venv/bin/pip" install -q 'schemathesis>=4,<5'
fi
cargo build -q --bin simplebank

scratch="${DATABASE_URL%/*}/simplebank_schema"
psql -q "$DATABASE_URL" -c 'DROP DATABASE IF EXISTS simplebank_schema' -c 'CREATE DATABASE simplebank_schema'
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp)
DATABASE_URL=$scratch REDIS_KEY_PREFIX="schema:$port" HTTP_ADDR="127.0.0.1:$port" \
  HTTP_RATE_LIMIT=0 HTTP_SIGNUP_RATE_LIMIT=0 ARGON2_MEMORY_KIB=64 ARGON2_ITERATIONS=1 RUST_LOG=warn \
  target/debug/simplebank serve >"$log" 2>&1 &
pid=$!
stop() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  psql -q "$DATABASE_URL" -c 'DROP DATABASE IF EXISTS simplebank_schema' || true
  rm -f "$log"
}
trap stop EXIT
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break
  sleep 0.2
done
curl -fs "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$log" >&2; echo "serve did not start" >&2; exit 1; }
timeout 300 "$venv/bin/schemathesis" run "http://127.0.0.1:$port/openapi.json" \
  --checks all --max-examples 100 "$@"
