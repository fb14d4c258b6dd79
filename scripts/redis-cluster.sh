#!/usr/bin/env bash
# redis-cluster.sh - a Redis Cluster of three primaries with one replica each,
# on loopback, for the benchmark harness (make bench) and by hand.
#
# Usage: scripts/redis-cluster.sh up     start it (idempotent); prints its URL
#        scripts/redis-cluster.sh down   stop the nodes it started, by PID
#        scripts/redis-cluster.sh url    print the URL (fred's redis-cluster:// form)
#
# Nodes listen on 127.0.0.1:$SB_CLUSTER_PORT.. +5 (default 16310..16315; a
# cluster node also takes its port + 10000: both below Linux's ephemeral range,
# 32768-60999, where an outgoing connection could hold either), with
# their files in .dev/redis-cluster/<port>/ (git-ignored). The tests start
# clusters of their own (tests/it/cluster.rs); this one is for the bench.

set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."

BASE=${SB_CLUSTER_PORT:-16310}
DIR=.dev/redis-cluster
PORTS=($(seq "$BASE" $((BASE + 5))))

log() { printf 'redis-cluster: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

url() {
  local u="redis-cluster://127.0.0.1:${PORTS[0]}" sep='?' p
  for p in "${PORTS[@]:1}"; do u+="${sep}node=127.0.0.1:$p"; sep='&'; done
  printf '%s\n' "$u"
}

# A node this script started and that still runs (a pid file whose process
# is a redis-server, not some later process that took its number).
alive() {
  [[ -f $DIR/$1/pid ]] || return 1
  local pid; pid=$(cat "$DIR/$1/pid")
  kill -0 "$pid" 2>/dev/null && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == redis-server* ]]
}

up() {
  command -v redis-server >/dev/null || die "redis-server not found (scripts/dev-services.sh up installs it as root)"
  local p fresh=0 running=0
  for p in "${PORTS[@]}"; do alive "$p" && running=$((running + 1)); done
  (( running == 6 )) || {
    # Some nodes gone: a cluster cannot be mended from here; start afresh.
    (( running == 0 )) || down
    for p in "${PORTS[@]}"; do
      redis-cli -p "$p" ping >/dev/null 2>&1 && die "port $p is taken by a server this script did not start"
    done
  }
  for p in "${PORTS[@]}"; do
    alive "$p" && continue
    # Data from an earlier cluster would not join a new one.
    rm -rf "${DIR:?}/$p"
    mkdir -p "$DIR/$p"
    fresh=1
    (cd "$DIR/$p" && redis-server --bind 127.0.0.1 --port "$p" --daemonize yes \
      --pidfile "$PWD/pid" --logfile "$PWD/log" --dir "$PWD" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
      --repl-diskless-sync-delay 0 --save '' --appendonly yes --appendfsync everysec)
  done
  for p in "${PORTS[@]}"; do
    for (( i = 0; i < 100; i++ )); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  if (( fresh )); then
    local nodes=() ; for p in "${PORTS[@]}"; do nodes+=("127.0.0.1:$p"); done
    timeout 60 redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >/dev/null ||
      die "redis-cli --cluster create failed (see $DIR/*/log)"
  fi
  for (( i = 0; i < 300; i++ )); do
    local ok=1
    for p in "${PORTS[@]}"; do
      redis-cli -p "$p" cluster info 2>/dev/null | grep -q cluster_state:ok || ok=0
    done
    (( ok )) && { log "up on ports ${PORTS[0]}-${PORTS[5]}"; url; return 0; }
    sleep 0.1
  done
  die "the cluster did not reach cluster_state:ok in 30 s"
}

down() {
  local p pid
  for p in "${PORTS[@]}"; do
    alive "$p" || continue
    pid=$(cat "$DIR/$p/pid")
    kill -TERM "$pid"
    for (( i = 0; i < 100; i++ )); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  done
  log "down"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  url) url ;;
  *) die "usage: $0 up|down|url" ;;
esac
