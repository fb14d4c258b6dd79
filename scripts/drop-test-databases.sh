#!/usr/bin/env bash
# Drops the databases earlier test runs left behind (every test makes its own,
# named sbtest_*), so they do not pile up.
set -euo pipefail
: "${DATABASE_URL:?DATABASE_URL must be set}"
psql -qAt "$DATABASE_URL" -c "SELECT datname FROM pg_database WHERE datname LIKE 'sbtest\_%'" |
  while read -r db; do
    psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"
  done
