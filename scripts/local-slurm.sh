#!/usr/bin/env bash
# A real Slurm cluster on this machine, on loopback only: munge, a private MariaDB, slurmdbd
# (accounting, so sacct works), slurmctld and slurmd, started directly (no systemd), with fake
# GPUs so GPU requests are exercised without a GPU. Partition `main` (the default) is this
# machine as one node with two GPUs; partition `twonodes` is two more nodes, each a slurmd of
# its own on this machine (Debian's Slurm is built with multiple-slurmd support) with one GPU,
# so that jobs spanning nodes (srun across them, a rendezvous on the first) run for real.
#
#   sudo scripts/local-slurm.sh install   # Debian/Ubuntu packages (once)
#   sudo scripts/local-slurm.sh start     # start the daemons (about 10 s)
#   scripts/local-slurm.sh status
#   sudo scripts/local-slurm.sh stop      # stop exactly the daemons `start` started
#
# State (config, logs, database, PID files) lives in $TUNEBENCH_SLURM_STATE
# (default /tmp/tunebench-slurm). Slurm's job step only finds its config at
# /etc/slurm/slurm.conf, so `start` links it there, and refuses if a real one is present.
set -euo pipefail

STATE=${TUNEBENCH_SLURM_STATE:-/tmp/tunebench-slurm}
HOST=$(hostname -s)
DB_PORT=${TUNEBENCH_SLURM_DB_PORT:-3399}
ETC=/etc/slurm
PACKAGES="slurm-wlm slurmdbd munge mariadb-server"

log() { echo "[local-slurm] $*" >&2; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq $((seconds * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  log "timed out waiting for $what; logs in $STATE/log"
  return 1
}

install() {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PACKAGES
}

write_configs() {
  local mem
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  mem=$((mem * 9 / 10))
  mkdir -p "$STATE"/{etc,log,run,spool/ctld,db,fakegpu}
  touch "$STATE/fakegpu/gpu0" "$STATE/fakegpu/gpu1" "$STATE/fakegpu/n1-gpu0" "$STATE/fakegpu/n2-gpu0"
  cat >"$STATE/etc/slurm.conf" <<EOF
ClusterName=tunebench
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d-%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
MinJobAge=300
MailProg=/bin/true
ReturnToService=2
JobRequeue=1
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
AccountingStoreFlags=job_comment
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$mem Gres=gpu:fake:2 State=UNKNOWN
NodeName=$HOST-1 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=6831 CPUs=$(nproc) RealMemory=$mem Gres=gpu:fake:1 State=UNKNOWN
NodeName=$HOST-2 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=6832 CPUs=$(nproc) RealMemory=$mem Gres=gpu:fake:1 State=UNKNOWN
PartitionName=main Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=twonodes Nodes=$HOST-1,$HOST-2 Default=NO MaxTime=INFINITE State=UP
EOF
  cat >"$STATE/etc/gres.conf" <<EOF
NodeName=$HOST Name=gpu Type=fake File=$STATE/fakegpu/gpu[0-1]
NodeName=$HOST-1 Name=gpu Type=fake File=$STATE/fakegpu/n1-gpu0
NodeName=$HOST-2 Name=gpu Type=fake File=$STATE/fakegpu/n2-gpu0
EOF
  cat >"$STATE/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=$HOST
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=tunebench-local
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$STATE/etc/slurmdbd.conf"
}

link_etc() {
  mkdir -p "$ETC"
  for name in slurm.conf gres.conf slurmdbd.conf; do
    if [ -e "$ETC/$name" ] && [ "$(readlink -f "$ETC/$name")" != "$STATE/etc/$name" ]; then
      log "$ETC/$name exists and is not ours: refusing to replace a real Slurm configuration"
      exit 1
    fi
    ln -sfn "$STATE/etc/$name" "$ETC/$name"
  done
}

start_munge() {
  mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
  chmod 400 /etc/munge/munge.key
  chmod 755 /run/munge
  # munged runs as the munge user, so its own PID file lives in /run/munge.
  rm -f /run/munge/tunebench-munged.pid
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/tunebench-munged.pid \
    --socket=/run/munge/munge.socket.2
  wait_for 10 munged test -s /run/munge/tunebench-munged.pid
  cp /run/munge/tunebench-munged.pid "$STATE/run/munged.pid"
}

start_mariadb() {
  if [ ! -d "$STATE/db/mysql" ]; then
    mariadb-install-db --no-defaults --datadir="$STATE/db" --user=root \
      --auth-root-authentication-method=normal >"$STATE/log/mariadb-install.log" 2>&1
  fi
  mariadbd --no-defaults --datadir="$STATE/db" --user=root --bind-address=127.0.0.1 \
    --port="$DB_PORT" --socket="$STATE/run/mariadb.sock" --pid-file="$STATE/run/mariadbd.pid" \
    --log-error="$STATE/log/mariadb.log" &
  wait_for 30 MariaDB mariadb --no-defaults --socket="$STATE/run/mariadb.sock" -uroot -e "SELECT 1"
  mariadb --no-defaults --socket="$STATE/run/mariadb.sock" -uroot <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'tunebench-local';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'tunebench-local';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
}

start() {
  if status >/dev/null 2>&1; then
    log "already running"
    return 0
  fi
  write_configs
  link_etc
  start_munge
  start_mariadb
  slurmdbd
  wait_for 30 slurmdbd sacctmgr -n list cluster
  sacctmgr -i add cluster tunebench >/dev/null 2>&1 || true
  slurmctld
  wait_for 30 slurmctld scontrol ping
  for node in "$HOST" "$HOST-1" "$HOST-2"; do
    slurmd -N "$node"
  done
  wait_for 30 "three idle nodes" sh -c "[ \$(sinfo -h -N -o %T | grep -cE '^(idle|mixed)') -ge 3 ]"
  log "cluster up: $(sinfo -h -o '%P %D %T %G' | head -1)"
}

status() {
  scontrol ping && sinfo && sacct -n -X -S now-1hour -o JobID,JobName%30,State | tail -5
}

stop_pid() { # stop_pid NAME: TERM the PID in $STATE/run/NAME.pid, KILL after 15 s
  local file="$STATE/run/$1.pid" pid
  [ -s "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 75); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

stop() {
  if scontrol ping >/dev/null 2>&1; then
    scancel --full --user=root 2>/dev/null || true
  fi
  for daemon in "slurmd-$HOST" "slurmd-$HOST-1" "slurmd-$HOST-2" slurmctld slurmdbd mariadbd munged; do
    stop_pid "$daemon"
  done
  rm -f /run/munge/tunebench-munged.pid
  for name in slurm.conf gres.conf slurmdbd.conf; do
    if [ "$(readlink -f "$ETC/$name" 2>/dev/null)" = "$STATE/etc/$name" ]; then
      rm -f "$ETC/$name"
    fi
  done
  log "stopped"
}

case "${1:-}" in
install) install ;;
start) start ;;
stop) stop ;;
status) status ;;
*)
  echo "usage: $0 install|start|stop|status" >&2
  exit 2
  ;;
esac
