#!/usr/bin/env bash
# Removes what earlier test runs left behind, so it does not pile up: every
# test makes its own database (sbtest_*) and Redis key prefix (sbtest:*).
# Left alone, hundreds of databases keep autovacuum busy and a million keys
# keep Redis expiring, which also disturbs `make bench`.
set -euo pipefail
: "${DATABASE_URL:?DATABASE_URL must be set}"
: "${REDIS_URL:?REDIS_URL must be set}"
psql -qAt "$DATABASE_URL" -c "SELECT datname FROM pg_database WHERE datname LIKE 'sbtest\_%'" |
  while read -r db; do
    psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"
  done
if command -v redis-cli >/dev/null; then
  redis-cli -u "$REDIS_URL" --scan --pattern 'sbtest:*' |
    xargs -r -n 1000 redis-cli -u "$REDIS_URL" unlink >/dev/null
else
  echo "clean-test-data: redis-cli not found; left the sbtest:* keys in Redis" >&2
fi
