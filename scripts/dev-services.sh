#!/usr/bin/env bash
# dev-services.sh - PostgreSQL and Redis on loopback for development and tests.
#
# Usage: scripts/dev-services.sh up|down|env|status|restart-postgres [SECONDS]
#
#   up      Make a PostgreSQL (>= 15) and a Redis (7) available, then write
#           DATABASE_URL / REDIS_URL into <repo>/.env and print them.
#           An existing DATABASE_URL / REDIS_URL (from the environment, else
#           from <repo>/.env) is used as-is if it answers.  Otherwise a private
#           instance is started with its data under <repo>/.dev/ (git-ignored).
#           Also makes sure <repo>/.dev/venv has the `aiosmtpd` package (the
#           tests use it as a throw-away SMTP server), and that Chromium and
#           chromedriver are installed (the dashboard's browser test).  Idempotent.
#   down    Stop the private instances started by `up` (only those; never a
#           server this script did not start).  Idempotent.
#   env     Print DATABASE_URL=... and REDIS_URL=... lines, e.g.
#             eval "$(scripts/dev-services.sh env | sed 's/^/export /')"
#   status  Say what is running.
#   restart-postgres [SECONDS]
#           Stop the private PostgreSQL (fast shutdown), keep it down SECONDS
#           (default 0), start it again: the fault suite's Postgres outage.
#           Only the private instance; never a server this script did not start.
#
# Why it works the way it does:
#   * No Docker: it has to work on a plain Debian/Ubuntu CI machine, so it uses
#     the distribution packages and installs them with apt-get when run as
#     root and they are missing (as a normal user it says what to install).
#   * PostgreSQL refuses to run as root.  When this script runs as root, the
#     private cluster is owned by and run as the `postgres` system user (via
#     runuser), so .dev/pg is chown'ed to it and its parent directories get
#     o+x if that user could not otherwise reach it.
#   * Both servers listen on 127.0.0.1 only, on unusual ports (25432 and
#     63799; override with SB_PG_PORT / SB_REDIS_PORT) so they never clash
#     with a system-wide server, and outside Linux's ephemeral range
#     (32768-60999), which an outgoing connection could be holding.  The PostgreSQL unix socket lives in .dev too.
#   * Authentication: unix-socket connections are trusted (used once to create
#     the role), TCP connections need the password.  Role `simplebank` is a
#     superuser (password `simplebank`) because the tests create databases.
#   * max_connections=300 because tests run in parallel, each with a pool.
#     fsync stays on (the default).
#   * Every wait is bounded (30 s for servers, timeouts around apt and pip).

set -euo pipefail

REPO_ROOT=$(cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
DEV="$REPO_ROOT/.dev"
ENV_FILE="$REPO_ROOT/.env"
ENV_EXAMPLE="$REPO_ROOT/.env.example"

PG_PORT=${SB_PG_PORT:-25432}
PG_MIN_MAJOR=15
PGDATA="$DEV/pg"
PG_SOCK="$DEV/pgsock"
PG_LOG="$DEV/pg.log"
PG_CONF_NAME="dev-services.conf"   # included from $PGDATA/postgresql.conf
PG_USER=simplebank PG_PASSWORD=simplebank PG_DB=simplebank

REDIS_PORT=${SB_REDIS_PORT:-63799}
REDIS_DIR="$DEV/redis"
REDIS_CONF="$DEV/redis.conf"
REDIS_PIDFILE="$DEV/redis.pid"
REDIS_LOG="$DEV/redis.log"

VENV="$DEV/venv"
WAIT_SECONDS=30

# ---------------------------------------------------------------- helpers ---

log() { printf 'dev-services: %s\n' "$*" >&2; }
die() { printf 'dev-services: error: %s\n' "$*" >&2; exit 1; }
is_root() { [[ $EUID -eq 0 ]]; }

private_db_url() { echo "postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$1/$PG_DB"; }
private_redis_url() { echo "redis://127.0.0.1:$1/0"; }

# Is something accepting TCP connections on 127.0.0.1:$1?
port_in_use() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

APT_UPDATED=0
apt_update() {
  (( APT_UPDATED )) && return 0
  log "apt-get update"
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -qq >&2 || die "apt-get update failed"
  APT_UPDATED=1
}

# apt_install PKG...: only as root on an apt system; returns 1 otherwise.
apt_install() {
  is_root && command -v apt-get >/dev/null || return 1
  apt_update
  log "apt-get install -y $*"
  DEBIAN_FRONTEND=noninteractive timeout 1200 \
    apt-get install -y -qq --no-install-recommends "$@" >&2 || die "apt-get install $* failed"
}

# Print the value of KEY from a dotenv file (last occurrence, quotes removed).
dotenv_get() {
  local file=$1 key=$2
  [[ -f $file ]] || return 0
  KEY=$key awk '
    BEGIN { key = ENVIRON["KEY"]; re = "^[[:space:]]*(export[[:space:]]+)?" key "="; q = "\047" }
    { sub(/\r$/, "") }
    $0 ~ re {
      v = $0; sub(re, "", v); sub(/[[:space:]]+$/, "", v)
      if (length(v) >= 2 && ((v ~ /^".*"$/) || (substr(v, 1, 1) == q && substr(v, length(v), 1) == q)))
        v = substr(v, 2, length(v) - 2)
      val = v; found = 1
    }
    END { if (found) print val }' "$file"
}

# Set KEY=VALUE in a dotenv file: replace the first KEY= line, drop later
# duplicates, append if absent; all other lines are left untouched.
dotenv_set() {
  local file=$1 key=$2 val=$3 tmp
  tmp=$(mktemp "$file.XXXXXX")
  KEY=$key VAL=$val awk '
    BEGIN { key = ENVIRON["KEY"]; val = ENVIRON["VAL"]; re = "^[[:space:]]*(export[[:space:]]+)?" key "=" }
    $0 ~ re { if (!done) print key "=" val; done = 1; next }
    { print }
    END { if (!done) print key "=" val }' "$file" >"$tmp"
  if cmp -s "$tmp" "$file"; then rm -f "$tmp"; else cat "$tmp" >"$file"; rm -f "$tmp"; fi
}

# Serialize concurrent `up`/`down` runs (e.g. parallel CI steps).
take_lock() {
  mkdir -p "$DEV"
  command -v flock >/dev/null || return 0
  exec 9>"$DEV/.lock"
  flock -w 120 9 || die "another dev-services.sh is still running (lock $DEV/.lock)"
  # Servers started below get `9>&-` so they do not inherit this lock.
}

# --------------------------------------------------------------- postgres ---

# Run a command as the user owning the private cluster.
as_pg() {
  if is_root; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

pg_major_of() { "$1/pg_ctl" --version 2>/dev/null | sed -nE 's/.*\(PostgreSQL\) ([0-9]+).*/\1/p'; }

# Print the bin dir of PostgreSQL major version $1, or (no argument) of the
# highest version >= PG_MIN_MAJOR.  Looks in /usr/lib/postgresql/*/bin and PATH.
find_pg_bin() {
  local want=${1:-} dir v best="" best_v=0 p
  local -a cands=(/usr/lib/postgresql/*/bin)
  if p=$(command -v pg_ctl); then cands+=("$(dirname "$p")"); fi
  for dir in "${cands[@]}"; do
    [[ -x $dir/pg_ctl && -x $dir/initdb && -x $dir/postgres ]] || continue
    v=$(pg_major_of "$dir")
    [[ -n $v ]] || continue
    if [[ -n $want ]]; then
      if [[ $v == "$want" ]]; then echo "$dir"; return 0; fi
    elif (( v >= PG_MIN_MAJOR && v > best_v )); then
      best=$dir best_v=$v
    fi
  done
  [[ -n $best ]] && echo "$best"
}

# Any psql for probing URLs (client version does not matter much).
find_psql() {
  local d
  if d=$(find_pg_bin); then echo "$d/psql"; return 0; fi
  command -v psql
}

install_postgres() {
  local v
  apt_update
  # Highest postgresql-NN >= 15 the configured apt sources offer.
  v=$(apt-cache search --names-only '^postgresql-[0-9]+$' | sed -nE 's/^postgresql-([0-9]+) .*/\1/p' |
      awk -v min="$PG_MIN_MAJOR" '$1 >= min' | sort -n | tail -n 1)
  [[ -n $v ]] || die "apt offers no PostgreSQL >= $PG_MIN_MAJOR (e.g. Ubuntu 22.04 only has 14);" \
    "add the apt.postgresql.org repository and install postgresql-16, or set DATABASE_URL"
  apt_install "postgresql-$v"
}

# Sets PG_BIN: matching the existing cluster's version, else the best >= 15,
# installing PostgreSQL if needed (root) or failing with what to install.
resolve_pg_bin() {
  if [[ -f $PGDATA/PG_VERSION ]]; then
    local v; v=$(<"$PGDATA/PG_VERSION")
    PG_BIN=$(find_pg_bin "$v") ||
      die "$PGDATA was created by PostgreSQL $v whose binaries are gone; install postgresql-$v or remove $PGDATA"
    return 0
  fi
  if PG_BIN=$(find_pg_bin); then return 0; fi
  if is_root && command -v apt-get >/dev/null; then
    install_postgres
    PG_BIN=$(find_pg_bin) || die "installed PostgreSQL but found no server binaries >= $PG_MIN_MAJOR"
  else
    die "PostgreSQL >= $PG_MIN_MAJOR server binaries not found (looked in /usr/lib/postgresql/*/bin and PATH)." \
      "Install them, e.g. 'sudo apt-get install -y postgresql' (Debian 12+, Ubuntu 24.04+), or re-run as root, or set DATABASE_URL."
  fi
}

# Does $1 answer `select 1`?  Prints the server version number on success.
pg_url_ok() {
  local psql out
  psql=$(find_psql) || return 1
  out=$(PGCONNECT_TIMEOUT=5 timeout 15 "$psql" -X -At -d "$1" \
        -c "select current_setting('server_version_num')" 2>/dev/null) || return 1
  [[ $out =~ ^[0-9]+$ ]] && echo "$out"
}

pg_initialized() { [[ -f $PGDATA/PG_VERSION ]]; }

pg_running() {
  pg_initialized || return 1
  [[ -n ${PG_BIN:-} ]] || PG_BIN=$(find_pg_bin "$(<"$PGDATA/PG_VERSION")") || return 1
  as_pg "$PG_BIN/pg_ctl" status -D "$PGDATA" >/dev/null 2>&1
}

pg_running_port() { sed -n 4p "$PGDATA/postmaster.pid"; }

ensure_postgres_user() {
  getent passwd postgres >/dev/null && return 0
  log "creating system user postgres"
  useradd --system --user-group --no-create-home --home-dir /var/lib/postgresql \
    --shell /usr/sbin/nologin postgres
}

# Make every directory from / down to .dev traversable for the postgres user.
ensure_traversable() {
  local d=$DEV
  local -a dirs=()
  while [[ $d != / ]]; do dirs=("$d" "${dirs[@]}"); d=$(dirname "$d"); done
  for d in "${dirs[@]}"; do
    if ! as_pg test -x "$d"; then
      log "chmod o+x $d (the postgres user must reach $PGDATA)"
      chmod o+x "$d"
    fi
  done
}

# Directories/files the server writes to must exist and belong to its user.
pg_prepare_dirs() {
  mkdir -p "$DEV" "$PGDATA" "$PG_SOCK"
  touch "$PG_LOG"
  chmod 700 "$PGDATA" "$PG_SOCK"
  if is_root; then
    ensure_postgres_user
    chown postgres:postgres "$PGDATA" "$PG_SOCK" "$PG_LOG"
    ensure_traversable
  fi
  local sock="$PG_SOCK/.s.PGSQL.$PG_PORT"
  (( ${#sock} <= 100 )) || die "unix socket path too long (${#sock} > 100 bytes): $sock; move the repo to a shorter path"
}

pg_init() {
  if [[ -n $(ls -A "$PGDATA" 2>/dev/null) ]]; then
    die "$PGDATA is not empty but has no PG_VERSION (half-initialized?); remove it and re-run"
  fi
  log "initializing PostgreSQL $(pg_major_of "$PG_BIN") cluster in $PGDATA"
  as_pg "$PG_BIN/initdb" -D "$PGDATA" -U postgres -E UTF8 --locale=C \
    --auth-local=trust --auth-host=scram-sha-256 >"$DEV/initdb.log" 2>&1 ||
    { tail -n 20 "$DEV/initdb.log" >&2; die "initdb failed (log: $DEV/initdb.log)"; }
  printf "\n# Loopback-only dev settings, rewritten by scripts/dev-services.sh\ninclude_if_exists = '%s'\n" \
    "$PG_CONF_NAME" >>"$PGDATA/postgresql.conf"
}

# Written before each start, so SB_PG_PORT changes apply on the next start.
pg_write_conf() {
  local f="$PGDATA/$PG_CONF_NAME"
  cat >"$f" <<EOF
# Written by scripts/dev-services.sh before each start; edits are lost.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '${PG_SOCK//\'/\'\'}'
max_connections = 300
EOF
  if is_root; then chown postgres:postgres "$f"; fi
}

# Create role and database if missing (superuser over the trusted socket).
pg_ensure_role_db() {
  local port=$1
  "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCK" -p "$port" -U postgres -d postgres >/dev/null <<SQL
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN SUPERUSER PASSWORD '$PG_PASSWORD';
  END IF;
END \$\$;
SELECT 'CREATE DATABASE $PG_DB OWNER $PG_USER'
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$PG_DB') \gexec
SQL
}

pg_start_private() {
  resolve_pg_bin
  local port
  if pg_running; then
    port=$(pg_running_port)
    log "postgres: private instance already running (port $port)"
    [[ $port == "$PG_PORT" ]] || log "warning: running on $port, not SB_PG_PORT=$PG_PORT; run 'down' then 'up' to move it"
  else
    pg_prepare_dirs
    pg_initialized || pg_init
    pg_write_conf
    ! port_in_use "$PG_PORT" || die "127.0.0.1:$PG_PORT is already in use by another program; set SB_PG_PORT"
    log "postgres: starting private instance on 127.0.0.1:$PG_PORT (log: $PG_LOG)"
    # 9>&-: the server must not inherit (and keep holding) our lock fd.
    as_pg "$PG_BIN/pg_ctl" start -D "$PGDATA" -l "$PG_LOG" -w -t "$WAIT_SECONDS" >&2 9>&- ||
      { tail -n 20 "$PG_LOG" >&2; die "postgres did not start (log: $PG_LOG)"; }
    port=$PG_PORT
  fi
  pg_ensure_role_db "$port"
  DB_URL=$(private_db_url "$port")
  pg_url_ok "$DB_URL" >/dev/null || die "private postgres is up but $DB_URL does not answer"
}

pg_up() {
  local cand=${DATABASE_URL:-} from="environment" ver
  if [[ -z $cand ]]; then cand=$(dotenv_get "$ENV_FILE" DATABASE_URL); from=".env"; fi
  if [[ -n $cand && $cand != "$(private_db_url "$PG_PORT")" ]]; then
    if ver=$(pg_url_ok "$cand"); then
      log "postgres: using DATABASE_URL from $from (reachable, server_version_num $ver)"
      (( ver >= PG_MIN_MAJOR * 10000 )) || log "warning: that server is older than PostgreSQL $PG_MIN_MAJOR"
      DB_URL=$cand
      return 0
    fi
    log "postgres: DATABASE_URL from $from does not answer; using a private instance instead"
  fi
  pg_start_private
}

pg_down() {
  pg_initialized || { log "postgres: no private instance"; return 0; }
  if ! PG_BIN=$(find_pg_bin "$(<"$PGDATA/PG_VERSION")"); then
    log "postgres: binaries for $PGDATA are missing; cannot stop it"; return 1
  fi
  if pg_running; then
    log "postgres: stopping private instance"
    as_pg "$PG_BIN/pg_ctl" stop -D "$PGDATA" -m fast -w -t "$WAIT_SECONDS" >&2
  else
    log "postgres: private instance not running"
  fi
}

# ------------------------------------------------------------------ redis ---

# Print the PID of our private redis-server if it is running.
redis_pid() {
  local pid
  [[ -f $REDIS_PIDFILE ]] || return 1
  pid=$(tr -dc 0-9 <"$REDIS_PIDFILE")
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == redis-server* ]] || return 1   # not a recycled PID
  echo "$pid"
}

# Port our running instance was started with (the conf is written only at start).
redis_running_port() { sed -nE 's/^port[[:space:]]+([0-9]+).*/\1/p' "$REDIS_CONF" | head -n 1; }

redis_url_ok() { timeout 10 redis-cli -u "$1" ping 2>/dev/null | grep -qx PONG; }

ensure_redis_cli() {
  command -v redis-cli >/dev/null && return 0
  apt_install redis-tools ||
    die "redis-cli not found; install it ('sudo apt-get install -y redis-tools') or re-run as root"
}

ensure_redis_server() {
  command -v redis-server >/dev/null && return 0
  apt_install redis-server ||
    die "redis-server not found; install it ('sudo apt-get install -y redis-server') or re-run as root, or set REDIS_URL"
}

redis_start_private() {
  local port pid i major
  if pid=$(redis_pid); then
    port=$(redis_running_port)
    log "redis: private instance already running (pid $pid, port $port)"
  else
    ensure_redis_server
    major=$(redis-server --version | sed -nE 's/.* v=([0-9]+)\..*/\1/p')
    [[ ${major:-0} -ge 7 ]] || log "warning: redis-server $major found, Redis 7 is expected"
    ! port_in_use "$REDIS_PORT" || die "127.0.0.1:$REDIS_PORT is already in use by another program; set SB_REDIS_PORT"
    mkdir -p "$REDIS_DIR"
    rm -f "$REDIS_PIDFILE"
    cat >"$REDIS_CONF" <<EOF
# Written by scripts/dev-services.sh each time it starts Redis; edits are lost.
bind 127.0.0.1
protected-mode yes
port $REDIS_PORT
daemonize yes
pidfile "$REDIS_PIDFILE"
logfile "$REDIS_LOG"
dir "$REDIS_DIR"
appendonly yes
EOF
    log "redis: starting private instance on 127.0.0.1:$REDIS_PORT (log: $REDIS_LOG)"
    redis-server "$REDIS_CONF" >&2 9>&- || die "redis-server failed to start (log: $REDIS_LOG)"
    port=$REDIS_PORT
    for (( i = 0; i < WAIT_SECONDS * 2; i++ )); do
      if redis_pid >/dev/null && redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -qx PONG; then
        break
      fi
      sleep 0.5
    done
    (( i < WAIT_SECONDS * 2 )) || { tail -n 20 "$REDIS_LOG" >&2 || true; die "redis did not come up within ${WAIT_SECONDS}s"; }
  fi
  REDIS_URL_USED=$(private_redis_url "$port")
}

redis_up() {
  local cand=${REDIS_URL:-} from="environment"
  if [[ -z $cand ]]; then cand=$(dotenv_get "$ENV_FILE" REDIS_URL); from=".env"; fi
  if [[ -n $cand && $cand != "$(private_redis_url "$REDIS_PORT")" ]]; then
    ensure_redis_cli
    if redis_url_ok "$cand"; then
      log "redis: using REDIS_URL from $from (reachable)"
      REDIS_URL_USED=$cand
      return 0
    fi
    log "redis: REDIS_URL from $from does not answer; using a private instance instead"
  fi
  redis_start_private
}

redis_down() {
  local pid i
  if ! pid=$(redis_pid); then
    log "redis: private instance not running"
    rm -f "$REDIS_PIDFILE"
    return 0
  fi
  log "redis: stopping private instance (pid $pid)"
  kill -TERM "$pid"
  for (( i = 0; i < WAIT_SECONDS * 10; i++ )); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  log "warning: redis (pid $pid) ignored SIGTERM for ${WAIT_SECONDS}s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

# ------------------------------------------------------------ smtp (venv) ---

venv_up() {
  if [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -c 'import aiosmtpd' 2>/dev/null; then
    return 0
  fi
  local py
  py=$(command -v python3) || { apt_install python3 python3-venv || die "python3 not found; install python3 and python3-venv"; py=$(command -v python3); }
  if ! "$VENV/bin/python" -c '' 2>/dev/null; then
    log "creating python venv in $VENV"
    if ! "$py" -m venv --clear "$VENV" >&2; then
      apt_install python3-venv || die "'$py -m venv' failed; install python3-venv (sudo apt-get install -y python3-venv)"
      "$py" -m venv --clear "$VENV" >&2 || die "'$py -m venv' still fails"
    fi
  fi
  log "installing aiosmtpd into $VENV"
  timeout 600 "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check aiosmtpd >&2 ||
    die "pip install aiosmtpd failed"
}

# ------------------------------------------------------ browser (tests) ---

# The dashboard's browser test drives Debian's headless Chromium through
# chromedriver. Installed as root when missing; as a normal user, the test
# itself says what to install.
browser_up() {
  command -v chromedriver >/dev/null && command -v chromium >/dev/null && return 0
  apt_install chromium chromium-driver ||
    log "warning: chromium/chromedriver not found; the dashboard's browser test needs them ('sudo apt-get install -y chromium chromium-driver')"
}

# ------------------------------------------------------------------- .env ---

write_env_file() {
  if [[ ! -f $ENV_FILE ]]; then
    if [[ -f $ENV_EXAMPLE ]]; then
      log "creating .env from .env.example"
      cp "$ENV_EXAMPLE" "$ENV_FILE"
    else
      : >"$ENV_FILE"
    fi
  fi
  dotenv_set "$ENV_FILE" DATABASE_URL "$DB_URL"
  dotenv_set "$ENV_FILE" REDIS_URL "$REDIS_URL_USED"
}

# --------------------------------------------------------------- commands ---

cmd_up() {
  take_lock
  pg_up
  redis_up
  venv_up
  browser_up
  write_env_file
  log "ready; settings written to $ENV_FILE"
  printf 'DATABASE_URL=%s\nREDIS_URL=%s\n' "$DB_URL" "$REDIS_URL_USED"
}

cmd_down() {
  take_lock
  local rc=0
  pg_down || rc=1
  redis_down || rc=1
  return "$rc"
}

# What `up` wrote to .env (else the environment, else the private defaults),
# quoted for `eval` when needed.
cmd_env() {
  local db redis
  db=$(dotenv_get "$ENV_FILE" DATABASE_URL)
  redis=$(dotenv_get "$ENV_FILE" REDIS_URL)
  [[ -n $db ]] || db=${DATABASE_URL:-$(private_db_url "$PG_PORT")}
  [[ -n $redis ]] || redis=${REDIS_URL:-$(private_redis_url "$REDIS_PORT")}
  printf 'DATABASE_URL=%q\nREDIS_URL=%q\n' "$db" "$redis"
}

cmd_status() {
  local pid url
  if pg_running; then
    echo "postgres: private instance running ($(pg_major_of "$PG_BIN"), pid $(head -n 1 "$PGDATA/postmaster.pid"), 127.0.0.1:$(pg_running_port), data $PGDATA)"
  elif pg_initialized; then
    echo "postgres: private instance stopped (data $PGDATA)"
  else
    echo "postgres: no private instance"
  fi
  if pid=$(redis_pid); then
    echo "redis:    private instance running (pid $pid, 127.0.0.1:$(redis_running_port), data $REDIS_DIR)"
  elif [[ -f $REDIS_CONF ]]; then
    echo "redis:    private instance stopped (data $REDIS_DIR)"
  else
    echo "redis:    no private instance"
  fi
  if [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -c 'import aiosmtpd' 2>/dev/null; then
    echo "smtp:     aiosmtpd available ($VENV/bin/python -m aiosmtpd)"
  else
    echo "smtp:     aiosmtpd venv missing (run 'up')"
  fi
  url=$(dotenv_get "$ENV_FILE" DATABASE_URL)
  if [[ -n $url ]]; then
    if pg_url_ok "$url" >/dev/null; then echo ".env DATABASE_URL=$url (reachable)"; else echo ".env DATABASE_URL=$url (NOT reachable)"; fi
  else
    echo ".env: no DATABASE_URL (run 'up')"
  fi
  url=$(dotenv_get "$ENV_FILE" REDIS_URL)
  if [[ -n $url ]]; then
    if command -v redis-cli >/dev/null && redis_url_ok "$url"; then echo ".env REDIS_URL=$url (reachable)"; else echo ".env REDIS_URL=$url (NOT reachable)"; fi
  else
    echo ".env: no REDIS_URL (run 'up')"
  fi
}

cmd_restart_postgres() {
  local down=${1:-0}
  [[ $down =~ ^[0-9]+$ ]] || die "restart-postgres: SECONDS must be a whole number"
  pg_initialized && pg_running || die "no private postgres is running (run 'up')"
  PG_BIN=$(find_pg_bin "$(<"$PGDATA/PG_VERSION")") || die "binaries for $PGDATA are missing"
  log "postgres: stopping the private instance for ${down}s"
  as_pg "$PG_BIN/pg_ctl" stop -D "$PGDATA" -m fast -w -t "$WAIT_SECONDS" >&2
  sleep "$down"
  as_pg "$PG_BIN/pg_ctl" start -D "$PGDATA" -l "$PG_LOG" -w -t "$WAIT_SECONDS" >&2 ||
    { tail -n 20 "$PG_LOG" >&2; die "postgres did not start again (log: $PG_LOG)"; }
  log "postgres: private instance running again"
}

usage() { echo "usage: $0 up|down|env|status|restart-postgres [SECONDS]" >&2; exit 2; }

[[ $PG_PORT =~ ^[0-9]+$ ]] || die "SB_PG_PORT must be a port number"
[[ $REDIS_PORT =~ ^[0-9]+$ ]] || die "SB_REDIS_PORT must be a port number"

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  env) cmd_env ;;
  status) cmd_status ;;
  restart-postgres) cmd_restart_postgres "${2:-0}" ;;
  -h | --help | help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
  *) usage ;;
esac
