#!/usr/bin/env bash
# deploy/local/cluster.sh — the deploy/ topology on one machine, without Docker.
#
#   Redis · PostgreSQL · herald api (api-1) · herald gateway × 3 (gw-1..gw-3)
#   · HAProxy (the single entry point: /ws → gateways, /v1 → api, health-checked
#   on /readyz) · Prometheus (scraping every node, with deploy/alerts.yml)
#
# From Debian's packages (apt-get install redis-server postgresql haproxy
# prometheus) and the built `herald` binary. Every process gets its own port
# and directory; `stop` ends them by the PIDs recorded at start.
#
# Usage: deploy/local/cluster.sh start|stop|status|purge
#
#   start   start everything, wait until each part is ready, print the URLs
#   stop    stop everything this script started (SIGTERM; gateways drain),
#           keep the data directory and the database
#   status  one line per process; exit 0 when all run and are ready, else 3
#   purge   stop, then delete the directory (and the database, when it was
#           created in a shared PostgreSQL)
#
# Environment (read by `start`; the others use what `start` recorded):
#   HERALD_LOCAL_DIR     state directory (default: <repo>/target/local-cluster)
#   HERALD_LOCAL_PORT    base port (default 18400): entry = base, HAProxy
#                        stats = +1, Redis = +2, private PostgreSQL = +3,
#                        Prometheus = +4, gw-N = +10+N, api-1 = +21
#   HERALD_BIN           the herald binary (default: the newer of
#                        target/release/herald and target/debug/herald;
#                        built with cargo if neither exists)
#   HERALD_LOCAL_CONFIG  a herald TOML file for every node (default: a
#                        generated one, see write_herald_config)
#   HERALD_LOCAL_SCRAPE  Prometheus scrape interval (default 5s)
#   HERALD_LOCAL_PG      auto (default: use the PostgreSQL answering on
#                        127.0.0.1:5432 when it lets user postgres in, else
#                        start a private one) | private | shared
#   HERALD_DATABASE_URL  use this PostgreSQL database instead
#   HERALD_JWT_SECRET, HERALD_API_KEYS
#                        credentials (default: generated once into
#                        $HERALD_LOCAL_DIR/secrets.env)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DIR=${HERALD_LOCAL_DIR:-$ROOT/target/local-cluster}
GATEWAYS=3
PATH=$PATH:/usr/sbin:/sbin

say() { printf 'cluster: %s\n' "$*"; }
die() { printf 'cluster: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------
# Settings: computed at start, recorded in $DIR/cluster.env, reused after.
# ---------------------------------------------------------------------------

load_settings() { # load_settings [start]: start prefers the environment
  BASE=
  if [ -f "$DIR/cluster.env" ]; then
    # shellcheck disable=SC1091
    . "$DIR/cluster.env"
  fi
  if [ "${1:-}" = start ]; then
    BASE=${HERALD_LOCAL_PORT:-${BASE:-18400}}
  else
    BASE=${BASE:-${HERALD_LOCAL_PORT:-18400}}
  fi
  ENTRY_PORT=$BASE
  STATS_PORT=$((BASE + 1))
  REDIS_PORT=$((BASE + 2))
  PG_PORT=$((BASE + 3))
  PROM_PORT=$((BASE + 4))
  API_PORT=$((BASE + 21))
}

gw_port() { echo $((BASE + 10 + $1)); }

# Every herald node: name, mode, port.
nodes() {
  echo "api-1 api $API_PORT"
  local i
  for i in $(seq 1 "$GATEWAYS"); do echo "gw-$i gateway $(gw_port "$i")"; done
}

# ---------------------------------------------------------------------------
# Processes: started in their own session, PID recorded in $DIR/run/NAME.pid
# with the word its command line must contain (a recycled PID is never hit).
# ---------------------------------------------------------------------------

pid_of() { # pid_of NAME: prints the live PID of NAME, or fails
  local file="$DIR/run/$1.pid" pid word
  [ -f "$file" ] || return 1
  read -r pid word <"$file" || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$word" || return 1
  echo "$pid"
}

spawn() { # spawn NAME WORD CMD...: runs CMD in the background, logs to logs/NAME.log
  local name=$1 word=$2
  shift 2
  setsid "$@" >>"$DIR/logs/$name.log" 2>&1 </dev/null &
  echo "$! $word" >"$DIR/run/$name.pid"
}

stop_pid() { # stop_pid NAME SIGNAL WAIT_S: signals NAME, waits, then SIGKILLs
  local name=$1 signal=$2 wait_s=$3 pid i
  pid=$(pid_of "$name") || { rm -f "$DIR/run/$name.pid"; return 0; }
  kill "-$signal" "$pid" 2>/dev/null || true
  for ((i = 0; i < wait_s * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name (pid $pid) did not stop within ${wait_s}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$DIR/run/$name.pid"
  say "stopped $name (pid $pid)"
}

# ---------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------

http_code() { # http_code URL: the status code, 000 when nothing answers
  curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null || true
}

wait_for() { # wait_for WHAT SECONDS CMD...: until CMD succeeds
  local what=$1 secs=$2 i
  shift 2
  for ((i = 0; i < secs * 10; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  die "$what not ready after ${secs}s (logs: $DIR/logs/)"
}

is_200() { [ "$(http_code "$1")" = 200 ]; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------------------
# Start
# ---------------------------------------------------------------------------

need() { # need COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 || die "$1 not found: apt-get install $2"
}

find_herald() {
  if [ -n "${HERALD_BIN:-}" ]; then
    [ -x "$HERALD_BIN" ] || die "HERALD_BIN=$HERALD_BIN is not executable"
    return
  fi
  local release=$ROOT/target/release/herald debug=$ROOT/target/debug/herald
  if [ -x "$release" ] && { [ ! -x "$debug" ] || [ "$release" -nt "$debug" ]; }; then
    HERALD_BIN=$release
  elif [ -x "$debug" ]; then
    HERALD_BIN=$debug
  else
    say "building herald (cargo build --release --bin herald)"
    (cd "$ROOT" && cargo build --release --locked --bin herald)
    HERALD_BIN=$release
  fi
}

pg_bindir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$dir" ] && [ -x "$dir/initdb" ] || die "PostgreSQL server binaries not found: apt-get install postgresql"
  echo "$dir"
}

as_postgres() { # runs a PostgreSQL server command as user postgres when root
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

shared_pg_answers() {
  command -v psql >/dev/null 2>&1 &&
    psql -X -q -h 127.0.0.1 -p 5432 -U postgres -d postgres -tAc 'select 1' 2>/dev/null | grep -q 1
}

start_postgres() {
  if [ -n "${HERALD_DATABASE_URL:-}" ]; then
    PG_MODE=external
    DATABASE_URL=$HERALD_DATABASE_URL
    say "PostgreSQL: using HERALD_DATABASE_URL"
    return
  fi
  local mode=${HERALD_LOCAL_PG:-auto}
  if [ "$mode" != private ] && shared_pg_answers; then
    PG_MODE=shared
    PG_DB=herald_local_$BASE
    if ! psql -X -q -h 127.0.0.1 -p 5432 -U postgres -d postgres -tAc \
      "select 1 from pg_database where datname = '$PG_DB'" | grep -q 1; then
      psql -X -q -h 127.0.0.1 -p 5432 -U postgres -d postgres -c "CREATE DATABASE $PG_DB" >/dev/null
    fi
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/$PG_DB
    say "PostgreSQL: database $PG_DB in the server on 127.0.0.1:5432"
    return
  fi
  [ "$mode" = shared ] && die "no PostgreSQL answers on 127.0.0.1:5432 for user postgres"
  PG_MODE=private
  local bin
  bin=$(pg_bindir)
  PGDATA_DIR=$DIR/postgres
  if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$DIR"; then
    # User postgres cannot reach $DIR: keep the cluster under /tmp.
    PGDATA_DIR=/tmp/herald-local-pg-$BASE
  fi
  mkdir -p "$PGDATA_DIR"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$PGDATA_DIR"; fi
  chmod 700 "$PGDATA_DIR"
  if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
    say "PostgreSQL: initdb in $PGDATA_DIR"
    as_postgres "$bin/initdb" -D "$PGDATA_DIR" -U postgres --auth=trust -E UTF8 >>"$DIR/logs/postgres.log" 2>&1 ||
      die "initdb failed (see $DIR/logs/postgres.log)"
  fi
  if [ "$(id -u)" = 0 ]; then chown postgres: "$DIR/logs/postgres.log"; fi
  port_free "$PG_PORT" || die "port $PG_PORT (PostgreSQL) is taken"
  as_postgres "$bin/pg_ctl" -D "$PGDATA_DIR" -w -t 30 -l "$DIR/logs/postgres.log" \
    -o "-p $PG_PORT -k $PGDATA_DIR -c listen_addresses=127.0.0.1" start >/dev/null ||
    die "PostgreSQL did not start (see $DIR/logs/postgres.log)"
  echo "$(head -1 "$PGDATA_DIR/postmaster.pid") postgres" >"$DIR/run/postgres.pid"
  as_postgres "$bin/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -tAc \
    "select 1 from pg_database where datname = 'herald'" | grep -q 1 ||
    as_postgres "$bin/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c 'CREATE DATABASE herald' >/dev/null
  DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/herald
  say "PostgreSQL: private server on 127.0.0.1:$PG_PORT ($PGDATA_DIR)"
}

write_herald_config() {
  if [ -n "${HERALD_LOCAL_CONFIG:-}" ]; then
    cp "$HERALD_LOCAL_CONFIG" "$DIR/herald.toml"
    return
  fi
  cat >"$DIR/herald.toml" <<'EOF'
# Generated by deploy/local/cluster.sh for every node of the local cluster.
# Credentials, Redis and PostgreSQL come from the environment (HERALD_*).

[[rooms]]
pattern = "demo:*"
join = "anyone"
client_publish = "members"
presence = true
join_leave = true

[gateway]
drain_ms = 3000
EOF
}

write_haproxy_config() {
  local i
  {
    cat <<EOF
# Generated by deploy/local/cluster.sh from deploy/haproxy.cfg's layout.
global
    # maxconn: derived from the file-descriptor limit (ulimit -n)
    log stdout format raw local0

defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    timeout client-fin 10s
    timeout http-request 10s
    default-server inter 1s fall 2 rise 2

frontend herald
    bind 127.0.0.1:$ENTRY_PORT
    http-request deny deny_status 404 if { path /metrics }
    use_backend api if { path /v1 } || { path_beg /v1/ }
    default_backend gateways

backend gateways
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
EOF
    for i in $(seq 1 "$GATEWAYS"); do
      echo "    server gw-$i 127.0.0.1:$(gw_port "$i") check"
    done
    cat <<EOF

backend api
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    server api-1 127.0.0.1:$API_PORT check

frontend stats
    bind 127.0.0.1:$STATS_PORT
    http-request use-service prometheus-exporter if { path /metrics }
    stats enable
    stats uri /stats
    stats refresh 5s
EOF
  } >"$DIR/haproxy.cfg"
}

write_prometheus_config() {
  local scrape=${HERALD_LOCAL_SCRAPE:-5s} i
  cp "$ROOT/deploy/alerts.yml" "$DIR/alerts.yml"
  {
    cat <<EOF
# Generated by deploy/local/cluster.sh from deploy/prometheus.yml's layout.
global:
  scrape_interval: $scrape
  evaluation_interval: $scrape
  scrape_timeout: $scrape

rule_files:
  - alerts.yml

scrape_configs:
  - job_name: herald-gateway
    static_configs:
      - targets:
EOF
    for i in $(seq 1 "$GATEWAYS"); do echo "          - 127.0.0.1:$(gw_port "$i")"; done
    cat <<EOF
  - job_name: herald-api
    static_configs:
      - targets:
          - 127.0.0.1:$API_PORT
  - job_name: haproxy
    static_configs:
      - targets:
          - 127.0.0.1:$STATS_PORT
EOF
  } >"$DIR/prometheus.yml"
}

ensure_secrets() {
  if [ -f "$DIR/secrets.env" ]; then
    # shellcheck disable=SC1091
    . "$DIR/secrets.env"
  fi
  JWT_SECRET=${HERALD_JWT_SECRET:-${JWT_SECRET:-$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')}}
  API_KEYS=${HERALD_API_KEYS:-${API_KEYS:-hk_$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')}}
  (
    umask 077
    printf "JWT_SECRET='%s'\nAPI_KEYS='%s'\n" "$JWT_SECRET" "$API_KEYS" >"$DIR/secrets.env"
  )
}

start_node() { # start_node NAME MODE PORT
  local name=$1 mode=$2 port=$3
  port_free "$port" || die "port $port ($name) is taken"
  spawn "$name" "127.0.0.1:$port" env \
    HERALD_JWT_SECRET="$JWT_SECRET" HERALD_API_KEYS="$API_KEYS" \
    HERALD_REDIS_URL="redis://127.0.0.1:$REDIS_PORT" HERALD_DATABASE_URL="$DATABASE_URL" \
    HERALD_NODE_ID="$name" \
    "$HERALD_BIN" --config "$DIR/herald.toml" --log-format json "$mode" --addr "127.0.0.1:$port"
}

cmd_start() {
  load_settings start
  if [ -d "$DIR/run" ] && [ -n "$(ls -A "$DIR/run" 2>/dev/null)" ]; then
    local f
    for f in "$DIR"/run/*.pid; do
      pid_of "$(basename "$f" .pid)" >/dev/null && die "already running in $DIR (stop it first)"
    done
  fi
  need redis-server redis-server
  need redis-cli redis-tools
  need haproxy haproxy
  need prometheus prometheus
  need curl curl
  find_herald
  rm -rf "$DIR/run"
  mkdir -p "$DIR/run" "$DIR/logs" "$DIR/redis"
  # A start that fails half-way stops what it started.
  trap 'status=$?; if [ $status -ne 0 ]; then say "start failed; stopping what started"; cmd_stop >/dev/null 2>&1 || true; fi' EXIT

  ensure_secrets
  write_herald_config
  write_haproxy_config
  write_prometheus_config
  haproxy -c -q -f "$DIR/haproxy.cfg" || die "invalid $DIR/haproxy.cfg"

  port_free "$REDIS_PORT" || die "port $REDIS_PORT (Redis) is taken"
  spawn redis redis-server redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
    --appendonly no --dir "$DIR/redis" --daemonize no
  wait_for "Redis" 15 redis-cli -p "$REDIS_PORT" ping
  say "Redis on 127.0.0.1:$REDIS_PORT"

  start_postgres

  {
    echo "BASE=$BASE"
    echo "PG_MODE=$PG_MODE"
    echo "PG_DB=${PG_DB:-}"
    echo "PGDATA_DIR=${PGDATA_DIR:-}"
    echo "DATABASE_URL=$DATABASE_URL"
    echo "REDIS_URL=redis://127.0.0.1:$REDIS_PORT"
    echo "ENTRY_URL=http://127.0.0.1:$ENTRY_PORT"
    echo "PROMETHEUS_URL=http://127.0.0.1:$PROM_PORT"
    echo "HERALD=$HERALD_BIN"
  } >"$DIR/cluster.env"

  # The API first: it runs the migrations once; then the gateways.
  local name mode port
  while read -r name mode port; do
    start_node "$name" "$mode" "$port"
    if [ "$mode" = api ]; then wait_for "$name" 30 is_200 "http://127.0.0.1:$port/readyz"; fi
  done < <(nodes)
  while read -r name mode port; do
    wait_for "$name" 30 is_200 "http://127.0.0.1:$port/readyz"
    say "$name ($mode) on 127.0.0.1:$port"
  done < <(nodes)

  port_free "$ENTRY_PORT" || die "port $ENTRY_PORT (HAProxy) is taken"
  spawn haproxy haproxy haproxy -db -f "$DIR/haproxy.cfg"
  wait_for "HAProxy" 20 is_200 "http://127.0.0.1:$ENTRY_PORT/readyz"
  say "HAProxy on 127.0.0.1:$ENTRY_PORT (stats: http://127.0.0.1:$STATS_PORT/stats)"

  port_free "$PROM_PORT" || die "port $PROM_PORT (Prometheus) is taken"
  mkdir -p "$DIR/prometheus"
  spawn prometheus prometheus prometheus --config.file="$DIR/prometheus.yml" \
    --storage.tsdb.path="$DIR/prometheus" --storage.tsdb.retention.time=2d \
    --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn
  wait_for "Prometheus" 30 is_200 "http://127.0.0.1:$PROM_PORT/-/ready"
  say "Prometheus on http://127.0.0.1:$PROM_PORT"

  trap - EXIT
  cat <<EOF

Herald local cluster is up ($DIR).
  entry (HAProxy):  ws://127.0.0.1:$ENTRY_PORT/ws   http://127.0.0.1:$ENTRY_PORT/v1/...
  Prometheus:       http://127.0.0.1:$PROM_PORT
  API key:          $API_KEYS
  a token:          HERALD_JWT_SECRET='$JWT_SECRET' $HERALD_BIN token --sub alice --rooms 'demo:*'
  stop:             $0 stop
EOF
}

# ---------------------------------------------------------------------------
# Stop, status, purge
# ---------------------------------------------------------------------------

cmd_stop() {
  load_settings
  [ -d "$DIR/run" ] || { say "not running ($DIR)"; return 0; }
  stop_pid prometheus TERM 15
  stop_pid haproxy TERM 10
  local name mode port drain_s
  # Gateways drain (drain_ms, then up to 6 s for close frames and 5 s for
  # HTTP requests): SIGTERM them together, then wait.
  drain_s=$(sed -n 's/^[[:space:]]*drain_ms[[:space:]]*=[[:space:]]*\([0-9]*\).*/\1/p' "$DIR/herald.toml" 2>/dev/null | head -1)
  drain_s=$(((${drain_s:-10000} + 999) / 1000 + 12))
  while read -r name mode port; do
    [ "$mode" = gateway ] || continue
    local pid
    pid=$(pid_of "$name") && kill -TERM "$pid" 2>/dev/null || true
  done < <(nodes)
  while read -r name mode port; do
    if [ "$mode" = gateway ]; then stop_pid "$name" TERM "$drain_s"; fi
  done < <(nodes)
  stop_pid api-1 TERM 15
  # Fast shutdown (SIGINT) of a private PostgreSQL, by its postmaster PID.
  stop_pid postgres INT 30
  stop_pid redis TERM 10
  return 0
}

cmd_status() {
  load_settings
  if [ ! -f "$DIR/cluster.env" ]; then
    say "not running ($DIR)"
    return 3
  fi
  local bad=0 name mode port pid state ready
  printf '%-11s %-8s %-8s %-6s %s\n' NAME PID STATE PORT READY
  row() { printf '%-11s %-8s %-8s %-6s %s\n' "$@"; }
  check() { # check NAME PORT READY_CMD...
    local name=$1 port=$2
    shift 2
    if pid=$(pid_of "$name"); then state=running; else pid=-; state=stopped; bad=1; fi
    if [ "$state" = running ] && "$@" >/dev/null 2>&1; then ready=yes; else ready=no; bad=1; fi
    row "$name" "$pid" "$state" "$port" "$ready"
  }
  check redis "$REDIS_PORT" redis-cli -p "$REDIS_PORT" ping
  if [ "${PG_MODE:-}" = private ]; then
    check postgres "$PG_PORT" pg_isready -q -h 127.0.0.1 -p "$PG_PORT"
  else
    row postgres - "${PG_MODE:-?}" - "${DATABASE_URL:-}"
  fi
  while read -r name mode port; do
    check "$name" "$port" is_200 "http://127.0.0.1:$port/readyz"
  done < <(nodes)
  check haproxy "$ENTRY_PORT" is_200 "http://127.0.0.1:$ENTRY_PORT/readyz"
  check prometheus "$PROM_PORT" is_200 "http://127.0.0.1:$PROM_PORT/-/ready"
  return $((bad * 3))
}

cmd_purge() {
  load_settings
  cmd_stop
  if [ "${PG_MODE:-}" = shared ] && [ -n "${PG_DB:-}" ]; then
    psql -X -q -h 127.0.0.1 -p 5432 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null ||
      say "could not drop database $PG_DB"
    say "dropped database $PG_DB"
  fi
  if [ -n "${PGDATA_DIR:-}" ] && [ "$PGDATA_DIR" != "$DIR/postgres" ]; then
    rm -rf "$PGDATA_DIR"
  fi
  rm -rf "$DIR"
  say "removed $DIR"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  purge) cmd_purge ;;
  *)
    echo "usage: $0 start|stop|status|purge" >&2
    exit 2
    ;;
esac
