#!/usr/bin/env bash
# Stop what start.sh started: the mlflow server (its process group, by the pid in its pid file),
# then PostgreSQL (pg_ctl stop, fast mode: open transactions roll back, nothing committed is
# lost). The databases, artifacts and logs stay in the state folder for the next start.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${MAE_TRACKING_STATE:-$HERE/state}
[ -d "$STATE" ] || { echo "nothing to stop: no $STATE"; exit 0; }
STATE=$(cd "$STATE" && pwd)
alive() { [ -s "$1" ] && kill -0 "$(head -1 "$1")" 2>/dev/null; }

if alive "$STATE/run/mlflow.pid"; then
  pid=$(cat "$STATE/run/mlflow.pid")
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"   # setsid made it a group leader
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "mlflow server $pid still alive after 15 s: SIGKILL"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"
  fi
  echo "stopped mlflow server $pid"
fi
rm -f "$STATE/run/mlflow.pid"
if alive "$STATE/pgdata/postmaster.pid"; then
  BIN=$(dirname "$(find /usr/lib/postgresql -maxdepth 3 -name pg_ctl -path '*/bin/*' | sort -V | tail -1)")
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$BIN/pg_ctl" -D "$STATE/pgdata" -m fast -w stop
  else
    "$BIN/pg_ctl" -D "$STATE/pgdata" -m fast -w stop
  fi
fi
exit 0
