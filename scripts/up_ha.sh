#!/usr/bin/env bash
# High availability on one machine, one command (SPEC §13, docs/ha.md): Debian's PostgreSQL, three
# control-plane replicas on 127.0.0.1:8001-8003 and Debian's HAProxy in front on 127.0.0.1:8000.
# No registry is needed. HAProxy runs in the foreground; Ctrl-C stops it, the replicas (agents run
# on, adopted at the next start) and PostgreSQL.
# Options (environment):
#   AGENTFACTORY_HA_REPLICAS   how many replicas (default 3)
#   AGENTFACTORY_HA_PORT       the load balancer's port (default 8000; replicas use the next ones)
#   AGENTFACTORY_HA_PG_DIR     PostgreSQL's data (default /var/lib/agentfactory-ha/pg, kept across runs)
#   AGENTFACTORY_HA_PG_PORT    PostgreSQL's port on 127.0.0.1 (default 5433)
set -euo pipefail
cd "$(dirname "$0")/.."
AGENTFACTORY_WITH_HA=1 bash scripts/setup.sh

N=${AGENTFACTORY_HA_REPLICAS:-3}
PORT=${AGENTFACTORY_HA_PORT:-8000}
PG_DIR=${AGENTFACTORY_HA_PG_DIR:-/var/lib/agentfactory-ha/pg}
PG_PORT=${AGENTFACTORY_HA_PG_PORT:-5433}
RUN=.run/ha
mkdir -p "$RUN"
log() { printf '[up-ha] %s\n' "$*" >&2; }
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg() { runuser -u postgres -- "$@"; }

# --- the admin key and the database password, generated once ------------------------------------
if [ -z "${AGENTFACTORY_ADMIN_KEY:-}" ]; then
  [ -s .run/admin_key ] || .venv/bin/python -c 'import secrets; print("af_admin_" + secrets.token_urlsafe(24))' > .run/admin_key
  AGENTFACTORY_ADMIN_KEY=$(cat .run/admin_key)
fi
export AGENTFACTORY_ADMIN_KEY
[ -s "$RUN/pg_password" ] || (umask 077; .venv/bin/python -c 'import secrets; print(secrets.token_hex(16))' > "$RUN/pg_password")
PG_PASSWORD=$(cat "$RUN/pg_password")

# --- PostgreSQL: a cluster of our own, password auth on loopback ---------------------------------
# PostgreSQL refuses to run as root; its directory must be one the postgres user can enter.
if [ ! -s "$PG_DIR/PG_VERSION" ]; then
  log "initdb $PG_DIR"
  install -d -o postgres -g postgres -m 0700 "$PG_DIR"
  pwfile=$(mktemp); echo "$PG_PASSWORD" > "$pwfile"; chown postgres "$pwfile"
  as_pg "$pg_bin/initdb" -D "$PG_DIR" -U agentfactory --pwfile="$pwfile" --auth-local=peer \
    --auth-host=scram-sha-256 -E UTF8 >"$RUN/initdb.log"
  rm -f "$pwfile"
fi
if ! as_pg "$pg_bin/pg_ctl" -D "$PG_DIR" status >/dev/null 2>&1; then
  log "starting PostgreSQL on 127.0.0.1:$PG_PORT (log: $PG_DIR/server.log)"
  as_pg "$pg_bin/pg_ctl" -D "$PG_DIR" -l "$PG_DIR/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR -c max_connections=300" start >/dev/null
fi
export PGPASSWORD=$PG_PASSWORD
psql_() { psql -h 127.0.0.1 -p "$PG_PORT" -U agentfactory -d postgres -Atqc "$1"; }
[ "$(psql_ "SELECT 1 FROM pg_database WHERE datname = 'agentfactory'")" = 1 ] || psql_ "CREATE DATABASE agentfactory"
export AGENTFACTORY_DATABASE_URL="postgresql+psycopg://agentfactory:$PG_PASSWORD@127.0.0.1:$PG_PORT/agentfactory"

# --- the replicas: they differ by their port only -------------------------------------------------
pids=()
stop_all() {
  log "stopping"
  [ -n "${haproxy_pid:-}" ] && kill "$haproxy_pid" 2>/dev/null || true
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  as_pg "$pg_bin/pg_ctl" -D "$PG_DIR" -w stop >/dev/null 2>&1 || true
}
trap stop_all EXIT
trap 'exit 130' INT TERM
servers=""
for i in $(seq 1 "$N"); do
  port=$((PORT + i))
  AGENTFACTORY_HOST=127.0.0.1 AGENTFACTORY_PORT=$port nohup .venv/bin/agentfactory serve >"$RUN/replica$i.log" 2>&1 &
  pids+=($!)
  servers+="    server r$i 127.0.0.1:$port check"$'\n'
  log "replica $i on 127.0.0.1:$port (log: $RUN/replica$i.log)"
done
for i in $(seq 1 "$N"); do
  port=$((PORT + i))
  for _ in $(seq 1 360); do curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break; sleep 0.5; done
  curl -fs "http://127.0.0.1:$port/health" >/dev/null || { log "replica $i did not start; see $RUN/replica$i.log"; exit 1; }
done

# --- HAProxy in front -----------------------------------------------------------------------------
cat >"$RUN/haproxy.cfg" <<CFG
global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    option redispatch
    retries 2
frontend api
    bind 127.0.0.1:$PORT
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /health
    default-server inter 1s fall 2 rise 1
$servers
CFG
log "admin key: $AGENTFACTORY_ADMIN_KEY  (also in .run/admin_key)"
log "serving on http://127.0.0.1:$PORT through HAProxy ($N replicas; each one's /ready tells its lease)"
/usr/sbin/haproxy -f "$RUN/haproxy.cfg" -db &
haproxy_pid=$!
wait "$haproxy_pid"
