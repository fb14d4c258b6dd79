#!/usr/bin/env bash
# bench.sh - the benchmark harness (examples/bench.rs) against the dev services.
#
# Usage: scripts/bench.sh [harness options]   e.g. --only worker,latency
#        (`make bench` runs it with none; see BENCHMARKS.md for what it measures)
#
# Starts Postgres and Redis with dev-services.sh, makes sure the load tools are
# there (wrk, redis-benchmark, pgbench; apt-get installs them when run as root),
# builds the service and the harness in release mode and runs the harness. It
# is not part of `make test`: figures are read against the machine's limits,
# never asserted in a timed test.

set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."

updated=
need() { # "check command" package
  bash -c "$1" >/dev/null 2>&1 && return 0
  if [[ $(id -u) -eq 0 ]]; then
    [[ -n $updated ]] || { timeout 600 apt-get update -q >/dev/null; updated=1; }
    timeout 600 apt-get install -y -q "$2" >/dev/null
  else
    echo "bench: '$1' failed; install $2 (sudo apt-get install -y $2)" >&2
    exit 1
  fi
}
need "command -v wrk" wrk
need "command -v redis-benchmark" redis-tools
# Debian's /usr/bin/pgbench is a wrapper; the program comes with the server.
need "pgbench --version" postgresql

scripts/dev-services.sh up >/dev/null
eval "$(scripts/dev-services.sh env | sed 's/^/export /')"
# Leftovers of test runs (databases, Redis keys) keep the servers busy.
scripts/clean-test-data.sh
# The sustained pipeline runs on a Redis Cluster too: its own, stopped at
# the end however the harness ends.
trap 'scripts/redis-cluster.sh down' EXIT
BENCH_CLUSTER_URL=$(scripts/redis-cluster.sh up)
export BENCH_CLUSTER_URL
cargo build --release --bin simplebank --example bench
mkdir -p target/bench
target/release/examples/bench --bin target/release/simplebank \
  --out target/bench/results.md "$@"
