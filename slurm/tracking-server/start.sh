#!/usr/bin/env bash
# The lab's tracking set-up on one host: PostgreSQL (Debian's) holding MLflow's store, and
# `mlflow server` in front of it, serving the runs' artifacts from a shared folder. Many Slurm
# jobs log to that one server over HTTP; PostgreSQL can also hold an Optuna study's storage.
# Installs PostgreSQL when missing (apt-get: root); writes nothing to /etc; keeps everything in a
# state folder; idempotent (a second call while it runs only re-checks); never wipes a database.
#
#   slurm/tracking-server/start.sh                # prints the tracking URI for --tracking-uri
#   source slurm/tracking-server/state/env.sh     # MLFLOW_TRACKING_URI, MAE_OPTUNA_STORAGE, PGPASSFILE
#   slurm/tracking-server/stop.sh
#
# Environment:
#   MAE_TRACKING_STATE  folder for PostgreSQL's data, socket and logs, the server's pid and log,
#                       the database password (default: ./state next to this script, git-ignored)
#   ARTIFACTS           where artifacts go (default $STATE/artifacts); on a cluster a folder the
#                       server host can write, e.g. /checkpoint/$USER/mlartifacts
#   PG_PORT=5433        PostgreSQL's port (5433: clear of a distribution cluster on 5432)
#   PG_LISTEN           addresses to listen on besides 127.0.0.1 (default none: loopback only);
#                       set it to this host's address for Optuna workers on other nodes
#   OPTUNA_DB=optuna    a second database for Optuna's RDB storage (empty: none)
#   MLFLOW_HOST=127.0.0.1  where the server listens; 0.0.0.0 for compute nodes
#   MLFLOW_PORT=5000    MLFLOW_WORKERS=4
#   ALLOWED_HOSTS       the server's --allowed-hosts (default: localhost, private IPs, this host)
#   SERVER=1            0: PostgreSQL only
#   PYTHON              an interpreter with mlflow and psycopg (3) (default: the project's .venv)
#   WAIT_S=60           how long to wait for each service to answer
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT=$(cd "$HERE/../.." && pwd)
STATE=${MAE_TRACKING_STATE:-$HERE/state}
ARTIFACTS=${ARTIFACTS:-}
PG_PORT=${PG_PORT:-5433}
PG_LISTEN=${PG_LISTEN:-}
OPTUNA_DB=${OPTUNA_DB-optuna}
MLFLOW_HOST=${MLFLOW_HOST:-127.0.0.1}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
MLFLOW_WORKERS=${MLFLOW_WORKERS:-4}
SERVER=${SERVER:-1}
WAIT_S=${WAIT_S:-60}
DB_USER=mae
T0=$(date +%s.%N)
log() { printf '[tracking-server +%5.1fs] %s\n' "$(awk -v a="$(date +%s.%N)" -v b="$T0" 'BEGIN{print a-b}')" "$*"; }
die() { log "ERROR: $*"; exit 1; }
waitfor() { local n=$1; shift; for _ in $(seq $((n * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done; return 1; }
alive() { [ -s "$1" ] && kill -0 "$(head -1 "$1")" 2>/dev/null; }

if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  [ -x "$PROJECT/.venv/bin/python" ] && PYTHON=$PROJECT/.venv/bin/python
fi
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)
ARTIFACTS=${ARTIFACTS:-$STATE/artifacts}
[ ${#STATE} -le 80 ] || die "state folder path too long for a unix socket: $STATE (set MAE_TRACKING_STATE)"

# ---------------------------------------------------------------- 1. PostgreSQL, installed if missing
bindir() { find /usr/lib/postgresql -maxdepth 3 -name initdb -path '*/bin/*' 2>/dev/null | sort -V | tail -1 | xargs -r dirname; }
BIN=$(bindir)
if [ -z "$BIN" ]; then
  [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed: run this once as root (apt-get install postgresql)"
  log "apt-get install postgresql"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # no systemd here: the package cannot start its own cluster, which is fine (we start ours)
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  BIN=$(bindir)
  [ -n "$BIN" ] || die "apt-get installed postgresql but no initdb was found under /usr/lib/postgresql"
fi
log "PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') in $BIN"

# PostgreSQL refuses to run as root: as root, its files belong to the `postgres` user.
if [ "$(id -u)" = 0 ]; then
  PG_OS_USER=postgres
  id postgres >/dev/null 2>&1 || die "no 'postgres' user (the postgresql package creates it)"
  as_pg() { runuser -u postgres -- "$@"; }
else
  PG_OS_USER=$(id -un)
  as_pg() { "$@"; }
fi
DATA=$STATE/pgdata
SOCK=$STATE/pgrun
mkdir -p "$STATE/log" "$STATE/run" "$SOCK" "$ARTIFACTS"
chmod 755 "$STATE"
chown "$PG_OS_USER" "$SOCK"
touch "$STATE/log/postgres.log" && chown "$PG_OS_USER" "$STATE/log/postgres.log"

# The password of the database role `mae`, made once; clients find it in a pgpass file (0600),
# so it appears in no URI, command line or log.
umask 077
[ -s "$STATE/db-password" ] || head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$STATE/db-password"
PASSWORD=$(cat "$STATE/db-password")
echo "*:$PG_PORT:*:$DB_USER:$PASSWORD" > "$STATE/pgpass"
umask 022

if [ ! -s "$DATA/PG_VERSION" ]; then
  mkdir -p "$DATA" && chown "$PG_OS_USER" "$DATA" && chmod 700 "$DATA"
  as_pg "$BIN/initdb" -D "$DATA" -U "$PG_OS_USER" -E UTF8 --locale=C.UTF-8 \
    --auth-local=peer --auth-host=scram-sha-256 >"$STATE/log/initdb.log" 2>&1 \
    || die "initdb failed (see $STATE/log/initdb.log)"
  # besides loopback (initdb's lines), the role `mae` from this host's networks, by password
  echo "host all $DB_USER samenet scram-sha-256" >> "$DATA/pg_hba.conf"
  log "created the database cluster in $DATA"
fi
LISTEN="127.0.0.1${PG_LISTEN:+,$PG_LISTEN}"
if alive "$DATA/postmaster.pid"; then
  log "postgres already running (pid $(head -1 "$DATA/postmaster.pid"))"
else
  as_pg "$BIN/pg_ctl" -D "$DATA" -l "$STATE/log/postgres.log" -w -t "$WAIT_S" start \
    -o "-c listen_addresses='$LISTEN' -p $PG_PORT -k $SOCK -c max_connections=300" >/dev/null \
    || die "postgres did not start (see $STATE/log/postgres.log)"
  log "postgres started on $LISTEN:$PG_PORT (pid $(head -1 "$DATA/postmaster.pid"))"
fi
psql_su() { as_pg "$BIN/psql" -h "$SOCK" -p "$PG_PORT" -U "$PG_OS_USER" -d postgres -v ON_ERROR_STOP=1 -qAt "$@"; }
# on standard input: the password stays off command lines
psql_su <<SQL || die "could not create the role $DB_USER"
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER') THEN
    CREATE ROLE $DB_USER LOGIN CREATEDB PASSWORD '$PASSWORD';
  ELSE ALTER ROLE $DB_USER WITH LOGIN CREATEDB PASSWORD '$PASSWORD'; END IF; END \$\$;
SQL
for db in mlflow $OPTUNA_DB; do
  if [ -z "$(psql_su -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]; then
    psql_su -c "CREATE DATABASE $db OWNER $DB_USER" || die "could not create database $db"
    log "created database $db"
  fi
done
DB_HOST=${PG_LISTEN%%,*}
DB_HOST=${DB_HOST:-127.0.0.1}
BACKEND=postgresql://$DB_USER@127.0.0.1:$PG_PORT/mlflow
{
  echo "export PGPASSFILE=$STATE/pgpass"
  echo "export MAE_POSTGRES=postgresql://$DB_USER@$DB_HOST:$PG_PORT"
  [ -n "$OPTUNA_DB" ] && echo "export MAE_OPTUNA_STORAGE=postgresql://$DB_USER@$DB_HOST:$PG_PORT/$OPTUNA_DB"
} > "$STATE/env.sh"
export PGPASSFILE=$STATE/pgpass

if [ "$SERVER" = 0 ]; then
  log "PostgreSQL ready (no MLflow server: SERVER=0). source $STATE/env.sh"
  exit 0
fi

# ---------------------------------------------------------------- 2. mlflow server on it
"$PYTHON" -c "import mlflow, psycopg" 2>/dev/null \
  || die "$PYTHON lacks mlflow or psycopg (make the project's .venv, or set PYTHON)"
MLFLOW=$(dirname "$PYTHON")/mlflow
[ -x "$MLFLOW" ] || MLFLOW=mlflow
# MLflow's schema, made once here: workers starting together on an empty database would race.
"$PYTHON" -c "import mlflow, sys; mlflow.MlflowClient(sys.argv[1]).search_experiments(max_results=1)" \
  "$BACKEND" >"$STATE/log/schema.log" 2>&1 || die "could not create MLflow's schema (see $STATE/log/schema.log)"
CLIENT_HOST=$MLFLOW_HOST
if [ "$MLFLOW_HOST" = 0.0.0.0 ]; then CLIENT_HOST=$(hostname -f 2>/dev/null || hostname); fi
URI=http://$CLIENT_HOST:$MLFLOW_PORT
ALLOWED_HOSTS=${ALLOWED_HOSTS:-localhost,localhost:*,127.0.0.1,127.0.0.1:*,10.*,192.168.*,172.*,$(hostname -s),$(hostname -s):*,$(hostname -f 2>/dev/null || hostname),$(hostname -f 2>/dev/null || hostname):*}
healthy() { "$PYTHON" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/health', timeout=5)" "$URI"; }
if alive "$STATE/run/mlflow.pid"; then
  log "mlflow server already running (pid $(cat "$STATE/run/mlflow.pid"))"
else
  # the backend URI through the environment: no password on a command line (pgpass holds it)
  MLFLOW_BACKEND_STORE_URI=$BACKEND setsid "$MLFLOW" server --artifacts-destination "$ARTIFACTS" \
    --serve-artifacts --host "$MLFLOW_HOST" --port "$MLFLOW_PORT" --workers "$MLFLOW_WORKERS" \
    --allowed-hosts "$ALLOWED_HOSTS" </dev/null >"$STATE/log/mlflow.log" 2>&1 &
  echo $! > "$STATE/run/mlflow.pid"
  log "mlflow server starting (pid $!, log $STATE/log/mlflow.log)"
fi
waitfor "$WAIT_S" healthy || { tail -n 20 "$STATE/log/mlflow.log" >&2; die "mlflow server does not answer at $URI"; }
echo "export MLFLOW_TRACKING_URI=$URI" >> "$STATE/env.sh"
log "ready: store postgresql (database mlflow${OPTUNA_DB:+, $OPTUNA_DB for Optuna}), artifacts in $ARTIFACTS"
log "source $STATE/env.sh, or pass --tracking-uri $URI"
echo "$URI"
