#!/usr/bin/env bash
# Start a real one-node Slurm cluster (Debian's Slurm 22.05 + munge, slurmdbd on MariaDB so that
# `sacct` and submitit's job states work) on this machine, for development and CI. Must run as root.
# Installs the Debian packages when missing; writes nothing to /etc; idempotent (a second call
# while it runs only rewrites slurm.conf and re-checks). Tested recipe: ../shared/slurm_dev_cluster.md.
#
#   slurm/dev-cluster/start.sh
#   source slurm/dev-cluster/state/env.sh      # export SLURM_CONF=... for sbatch/sinfo/submitit
#   slurm/dev-cluster/stop.sh
#
# Environment:
#   MAE_SLURM_STATE  folder for configs, keys, sockets, logs, databases (default: ./state next to
#                    this script, git-ignored; jobs and slurmd read it, so keep it off /tmp)
#   ACCOUNTING       slurmdbd (default: MariaDB + slurmdbd) | none (sacct fails; submitit then never
#                    sees a killed job as done)
#   KEEP_STATE=0     1 keeps job ids and the accounting database of a previous run
#   WAIT_S=60        how long to wait for the node to become idle
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=${MAE_SLURM_STATE:-$HERE/state}
ACCOUNTING=${ACCOUNTING:-slurmdbd}
KEEP_STATE=${KEEP_STATE:-0}
WAIT_S=${WAIT_S:-60}
T0=$(date +%s.%N)
log() { printf '[dev-cluster +%5.1fs] %s\n' "$(awk -v a="$(date +%s.%N)" -v b="$T0" 'BEGIN{print a-b}')" "$*"; }
die() { log "ERROR: $*"; exit 1; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
waitfor() { local n=$1; shift; for _ in $(seq $((n * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }

[ "$(id -u)" = 0 ] || die "must run as root (the daemons need it; jobs may run as any user)"
case "$ACCOUNTING" in slurmdbd|none) ;; *) die "ACCOUNTING must be slurmdbd or none" ;; esac
mkdir -p "$ROOT"
ROOT=$(cd "$ROOT" && pwd)
# Unix socket paths are limited to 107 bytes.
[ ${#ROOT} -le 80 ] || die "state folder path too long for unix sockets: $ROOT (set MAE_SLURM_STATE)"

# ---------------------------------------------------------------- 1. packages
PKGS="slurmctld slurmd slurm-client munge"
[ "$ACCOUNTING" = slurmdbd ] && PKGS="$PKGS slurmdbd mariadb-server"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  log "apt-get install$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # no systemd here: the postinst scripts cannot start services, which is fine (we start them)
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# shellcheck disable=SC2086
log "packages: $(dpkg-query -W -f='${Package}=${Version} ' $PKGS)"

# ---------------------------------------------------------------- 2. layout
mkdir -p "$ROOT"/{etc,state,spool,log,run,munge}
chmod 755 "$ROOT" "$ROOT/munge"          # munged refuses a socket dir that is not o+x
CONF=$ROOT/etc/slurm.conf
M=$ROOT/munge
HOST=$(hostname -s)
export SLURM_CONF=$CONF
echo "export SLURM_CONF=$CONF" > "$ROOT/env.sh"
if [ "$KEEP_STATE" != 1 ]; then   # fresh job ids / empty accounting DB (only for daemons not running)
  alive "$ROOT/run/slurmctld.pid" || rm -rf "${ROOT:?}/state/"* "${ROOT:?}/spool/"*
  alive "$ROOT/mysql/mysqld.pid" || rm -rf "${ROOT:?}/mysql"
fi

# ---------------------------------------------------------------- 3. munge (own key + socket)
[ -s "$M/munge.key" ] || { mungekey -c -k "$M/munge.key"; log "created munge key"; }
chmod 600 "$M/munge.key"
if alive "$M/munged.pid" && [ -S "$M/munge.socket.2" ]; then
  log "munged already running (pid $(cat "$M/munged.pid"))"
else
  rm -f "$M/munge.socket.2" "$M/munge.socket.2.lock"
  munged --socket="$M/munge.socket.2" --key-file="$M/munge.key" --log-file="$M/munged.log" \
         --pid-file="$M/munged.pid" --seed-file="$M/munged.seed"        # forks
  waitfor 5 test -S "$M/munge.socket.2" || die "munged did not create its socket"
  log "munged started (pid $(cat "$M/munged.pid"))"
fi
munge -n -S "$M/munge.socket.2" | unmunge -S "$M/munge.socket.2" >/dev/null \
  || die "munge round-trip failed"

# ---------------------------------------------------------------- 4. accounting: MariaDB + slurmdbd
if [ "$ACCOUNTING" = slurmdbd ]; then
  D=$ROOT/mysql
  mkdir -p "$D"
  if ! alive "$D/mysqld.pid"; then
    if [ ! -d "$D/data/mysql" ]; then
      mariadb-install-db --no-defaults --datadir="$D/data" --user=root --skip-test-db \
        >"$ROOT/log/mariadb-install-db.log" 2>&1 \
        || die "mariadb-install-db failed (see $ROOT/log/mariadb-install-db.log)"
    fi
    setsid mariadbd --no-defaults --datadir="$D/data" --socket="$D/mysqld.sock" --port=3306 \
      --bind-address=127.0.0.1 --user=root --pid-file="$D/mysqld.pid" \
      --log-error="$ROOT/log/mariadb.log" --skip-name-resolve --innodb-buffer-pool-size=256M \
      --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
    waitfor 30 mariadb -S "$D/mysqld.sock" -u root -e 'select 1' \
      || die "mariadbd not up (see $ROOT/log/mariadb.log)"
    waitfor 10 test -s "$D/mysqld.pid" || true
    log "mariadbd started (pid $(cat "$D/mysqld.pid"))"
  fi
  mariadb -S "$D/mysqld.sock" -u root -e "
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmci';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
  cat > "$ROOT/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
AuthInfo=socket=$M/munge.socket.2
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=slurmci
StorageLoc=slurm_acct_db
LogFile=$ROOT/log/slurmdbd.log
PidFile=$ROOT/run/slurmdbd.pid
DebugLevel=info
CONF
  chmod 600 "$ROOT/etc/slurmdbd.conf"       # slurmdbd refuses a world-readable slurmdbd.conf
  if alive "$ROOT/run/slurmdbd.pid"; then
    log "slurmdbd already running (pid $(cat "$ROOT/run/slurmdbd.pid"))"
  else
    slurmdbd                                 # finds slurmdbd.conf next to $SLURM_CONF; forks
    waitfor 30 bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819' \
      || die "slurmdbd not listening (see $ROOT/log/slurmdbd.log)"
    waitfor 10 test -s "$ROOT/run/slurmdbd.pid" || true
    log "slurmdbd started (pid $(cat "$ROOT/run/slurmdbd.pid"))"
  fi
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
# the slurmdbd connection ignores AuthInfo's socket; this points it at our munged
AccountingStoragePass=$M/munge.socket.2"
else
  ACCT="AccountingStorageType=accounting_storage/none"
fi

# ---------------------------------------------------------------- 5. slurm.conf
HW=$(slurmd -C | head -1)                       # NodeName=.. CPUs=.. ... RealMemory=NNN
get() { echo "$HW" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
MEM=$(get RealMemory)
MEM=$(( MEM > 2048 ? MEM - 1024 : MEM * 9 / 10 ))    # a bit under what slurmd detects
cat > "$CONF.new" <<CONF
# Single-node dev/CI cluster, generated by $0
ClusterName=dev
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire=10: a requeued job may restart ~11 s later (default 120 s => 121 s)
AuthInfo=socket=$M/munge.socket.2,cred_expire=10
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool/slurmd.%n
SlurmctldPidFile=$ROOT/run/slurmctld.pid
SlurmdPidFile=$ROOT/run/slurmd.%n.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd.%n.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroup plugin anywhere => no cgroup.conf needed
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$ACCT
JobCompType=jobcomp/none
MailProg=/bin/true
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2,sched_interval=2
# submitit's preemption protocol needs the user signal on preemption
SlurmctldParameters=preempt_send_user_signal
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=10
Waittime=0
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$(get CPUs) Boards=$(get Boards) SocketsPerBoard=$(get SocketsPerBoard) CoresPerSocket=$(get CoresPerSocket) ThreadsPerCore=$(get ThreadsPerCore) RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
mv "$CONF.new" "$CONF"

# ---------------------------------------------------------------- 6. slurmctld + slurmd
if alive "$ROOT/run/slurmctld.pid"; then
  log "slurmctld already running (pid $(cat "$ROOT/run/slurmctld.pid")); scontrol reconfigure"
  scontrol reconfigure || true
else
  slurmctld -f "$CONF"                     # forks; pid file in $ROOT/run
  waitfor 10 test -s "$ROOT/run/slurmctld.pid" || die "slurmctld did not start (see $ROOT/log/slurmctld.log)"
  log "slurmctld started (pid $(cat "$ROOT/run/slurmctld.pid"))"
fi
if alive "$ROOT/run/slurmd.$HOST.pid"; then
  log "slurmd already running (pid $(cat "$ROOT/run/slurmd.$HOST.pid"))"
else
  slurmd -f "$CONF"
  waitfor 10 test -s "$ROOT/run/slurmd.$HOST.pid" || die "slurmd did not start (see $ROOT/log/slurmd.$HOST.log)"
  log "slurmd started (pid $(cat "$ROOT/run/slurmd.$HOST.pid"))"
fi

# ---------------------------------------------------------------- 7. wait until the node is idle
state=""
for _ in $(seq $((WAIT_S * 5))); do
  state=$(sinfo -h -n "$HOST" -o '%T' 2>/dev/null || true)
  case "$state" in
    idle|mixed|allocated) break ;;
    down*|drain*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 0.2
done
case "$state" in idle|mixed|allocated) ;; *)
  tail -n 20 "$ROOT/log/slurmctld.log" "$ROOT/log/slurmd.$HOST.log" >&2 || true
  die "node $HOST not ready after ${WAIT_S}s (state='$state')" ;;
esac
sinfo
log "cluster ready (accounting=$ACCOUNTING): node $HOST is $state. source $ROOT/env.sh"
