#!/usr/bin/env bash
# Regenerates .sqlx/, the offline query data that lets the crate build without a
# database (SQLX_OFFLINE). The sqlx macros check every query in sql/ against a
# scratch database migrated from migrations/, and write their findings into
# SQLX_OFFLINE_DIR. Run it after changing a query or a migration.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/dev-services.sh env | sed 's/^/export /')"
admin_url="$DATABASE_URL"
scratch_url="${admin_url%/*}/simplebank_sqlx_prepare"
psql -q "$admin_url" -c 'DROP DATABASE IF EXISTS simplebank_sqlx_prepare' -c 'CREATE DATABASE simplebank_sqlx_prepare'
for m in migrations/*.sql; do psql -q -v ON_ERROR_STOP=1 "$scratch_url" -f "$m"; done
rm -rf .sqlx && mkdir .sqlx
touch src/lib.rs   # make cargo expand the macros again
SQLX_OFFLINE=false SQLX_OFFLINE_DIR="$PWD/.sqlx" DATABASE_URL="$scratch_url" cargo check --all-targets --quiet
psql -q "$admin_url" -c 'DROP DATABASE simplebank_sqlx_prepare'
echo "wrote $(ls .sqlx | wc -l) query files to .sqlx/"
