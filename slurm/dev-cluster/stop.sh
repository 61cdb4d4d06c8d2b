#!/usr/bin/env bash
# Stop what start.sh started: cancel the jobs, then stop slurmd/slurmctld/slurmdbd, then
# mariadbd/munged -- each by the pid in its pid file (never by name). Logs stay in the state folder.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=${MAE_SLURM_STATE:-$HERE/state}
[ -d "$ROOT" ] || { echo "nothing to stop: no $ROOT"; exit 0; }
ROOT=$(cd "$ROOT" && pwd)
CONF=$ROOT/etc/slurm.conf
export SLURM_CONF=$CONF
HOST=$(hostname -s)
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pids() {  # stop_pids NAME:PID ... -- SIGTERM all, wait up to 15 s, then SIGKILL stragglers
  local t0=$SECONDS spec left
  for spec in "$@"; do kill -TERM "${spec#*:}" 2>/dev/null || true; done
  for _ in $(seq 150); do
    left=""; for spec in "$@"; do kill -0 "${spec#*:}" 2>/dev/null && left="$left $spec"; done
    [ -z "$left" ] && { echo "stopped $* in $((SECONDS - t0))s"; return 0; }
    sleep 0.1
  done
  echo "still alive after 15s, SIGKILL:$left"
  for spec in $left; do kill -KILL "${spec#*:}" 2>/dev/null || true; done
}
pidspec() { alive "$2" && echo "$1:$(cat "$2")"; rm -f "$2"; }

# 1. cancel all jobs while the controller is up, wait for them to leave R/CG
if alive "$ROOT/run/slurmctld.pid"; then
  jobs=$(squeue -h -o '%A' 2>/dev/null | sort -u | tr '\n' ' ')
  if [ -n "${jobs// }" ]; then
    echo "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    scancel $jobs || true
    for _ in $(seq 150); do [ -z "$(squeue -h -t R,CG 2>/dev/null)" ] && break; sleep 0.1; done
  fi
fi
# 2. the slurm daemons, plus job-step daemons spawned by our slurmd (they inherit its SLURM_CONF)
specs=""
if alive "$ROOT/run/slurmd.$HOST.pid"; then
  for pid in $(ps -eo pid=,comm= | awk '$2=="slurmstepd"{print $1}'); do
    tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qxF "SLURM_CONF=$CONF" \
      && specs="$specs slurmstepd:$pid"
  done
fi
specs="$specs $(pidspec slurmd "$ROOT/run/slurmd.$HOST.pid") $(pidspec slurmctld "$ROOT/run/slurmctld.pid") $(pidspec slurmdbd "$ROOT/run/slurmdbd.pid")"
# shellcheck disable=SC2086
[ -n "${specs// }" ] && stop_pids $specs
# 3. then the services they use
specs="$(pidspec mariadbd "$ROOT/mysql/mysqld.pid") $(pidspec munged "$ROOT/munge/munged.pid")"
# shellcheck disable=SC2086
[ -n "${specs// }" ] && stop_pids $specs
rm -f "$ROOT/munge/munge.socket.2" "$ROOT/munge/munge.socket.2.lock"
exit 0
