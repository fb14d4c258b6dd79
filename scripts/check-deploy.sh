#!/usr/bin/env bash
# check-deploy.sh - checks the operator's files in deploy/ without running
# Prometheus or Grafana.
#
# Usage: scripts/check-deploy.sh
#
#   1. promtool check rules  deploy/prometheus/alerts.yml       (syntax, PromQL)
#   2. promtool test rules   deploy/prometheus/alerts.test.yml  (each alert fires
#      when it should and stays quiet when it should)
#   3. promtool check config deploy/prometheus/prometheus.yml   (and the rule
#      files it names), and the same for deploy/compose/prometheus.yml
#   4. the Grafana dashboard is valid JSON, and every simplebank_* metric named
#      by the dashboard's queries, the alert rules and their tests is one that
#      src/metrics.rs declares: a renamed metric must not leave a panel empty or
#      an alert silent, which no other check would notice.
#
# promtool comes from the Debian/Ubuntu `prometheus` package; as root it is
# installed when missing (as a normal user the script says what to install).
# Exits non-zero on the first failure.

set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."

log() { printf 'check-deploy: %s\n' "$*" >&2; }
die() { printf 'check-deploy: error: %s\n' "$*" >&2; exit 1; }
is_root() { [[ $EUID -eq 0 ]]; }

# The package lists may be old or missing (a fresh container): update them
# only when an install from them fails, not on every run.
apt_install() {
  is_root && command -v apt-get >/dev/null || return 1
  log "apt-get install -y $*"
  if ! DEBIAN_FRONTEND=noninteractive timeout 1200 \
      apt-get install -y -qq --no-install-recommends "$@" >&2; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -qq >&2 || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive timeout 1200 \
      apt-get install -y -qq --no-install-recommends "$@" >&2 || die "apt-get install $* failed"
  fi
}

if ! command -v promtool >/dev/null; then
  apt_install prometheus ||
    die "promtool not found; install it ('sudo apt-get install -y prometheus') or re-run as root"
  command -v promtool >/dev/null || die "installed prometheus but found no promtool"
fi
command -v python3 >/dev/null || die "python3 not found"

promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml
promtool check config deploy/prometheus/prometheus.yml
promtool check config deploy/compose/prometheus.yml

python3 - <<'PY'
import json
import re
import sys

# Metric names as src/metrics.rs declares them: pub const NAME: &str = "simplebank_...";
declared = set(re.findall(
    r'pub\s+const\s+\w+\s*:\s*&str\s*=\s*"(simplebank_[a-z_]+)"',
    open("src/metrics.rs", encoding="utf-8").read()))
if not declared:
    sys.exit("check-deploy: error: found no metric names in src/metrics.rs (did its declarations change?)")

# A trailing * is prose for "every metric starting so" (simplebank_queue_*).
NAME = re.compile(r"simplebank_[a-z_]+\*?")
# A histogram is queried through its series' suffixes.
SUFFIX = re.compile(r"_(bucket|sum|count)$")


def known(name):
    if name.endswith("*"):
        return any(d.startswith(name[:-1]) for d in declared)
    return name in declared or SUFFIX.sub("", name) in declared


def unknown(names):
    """The names that are neither declared, nor a declared histogram's series,
    nor a prefix of declared names."""
    return sorted({n for n in names if not known(n)})


def exprs(node):
    """Every query expression in a dashboard, however deeply its panels nest."""
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            yield node["expr"]
        for value in node.values():
            yield from exprs(value)
    elif isinstance(node, list):
        for value in node:
            yield from exprs(value)


failed = False

path = "deploy/grafana/simplebank.json"
try:
    dashboard = json.load(open(path, encoding="utf-8"))
except ValueError as e:
    sys.exit(f"check-deploy: error: {path} is not valid JSON: {e}")
queries = list(exprs(dashboard))
if not queries:
    print(f"check-deploy: error: {path} has no queries", file=sys.stderr)
    failed = True
bad = unknown(n for q in queries for n in NAME.findall(q))
if bad:
    print(f"check-deploy: error: {path} queries metrics src/metrics.rs does not declare: {', '.join(bad)}",
          file=sys.stderr)
    failed = True
else:
    print(f"  SUCCESS: {path}: {len(queries)} queries, every metric declared")

# The rule files as text: expressions, annotations and comments alike must
# name real metrics, and so must the tests' input series (a test over a
# misspelt series would prove nothing).
for path in ("deploy/prometheus/alerts.yml", "deploy/prometheus/alerts.test.yml"):
    bad = unknown(NAME.findall(open(path, encoding="utf-8").read()))
    if bad:
        print(f"check-deploy: error: {path} names metrics src/metrics.rs does not declare: {', '.join(bad)}",
              file=sys.stderr)
        failed = True
    else:
        print(f"  SUCCESS: {path}: every metric declared")

sys.exit(1 if failed else 0)
PY

log "all checks passed"
