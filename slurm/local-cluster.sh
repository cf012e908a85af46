#!/usr/bin/env bash
# A real SLURM cluster on this machine, for the tests and for trying llamantino's SLURM path:
# munge, slurmctld, and two slurmd nodes (n1, n2) on localhost, with job accounting as real
# clusters have it (slurmdbd on MariaDB, so `sacct` knows every job), from Debian's packages.
# No systemd: every daemon is started directly.
#
#   slurm/local-cluster.sh up       # install (apt) if needed, configure, start; idempotent;
#                                   # restarts daemons that run with an older configuration
#   slurm/local-cluster.sh status   # sinfo, squeue, the accounting cluster
#   slurm/local-cluster.sh down     # stop the daemons (MariaDB and slurmdbd too)
#
# Needs root (apt, /etc/slurm, /etc/hosts). State, spool and logs live in $LLAMANTINO_SLURM_DIR
# (default /var/lib/llamantino-slurm); MariaDB keeps Debian's data dir /var/lib/mysql.
# The test hardware preset is conf/hardware/local_slurm.yaml.
set -euo pipefail

STATE_DIR="${LLAMANTINO_SLURM_DIR:-/var/lib/llamantino-slurm}"
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
CLUSTER=llamantino
DB=slurm_acct_db
DB_USER=slurm
HOST="$(hostname)"

log() { echo "local-cluster: $*"; }

install_packages() {
    local need=() rc=0 policy=/usr/sbin/policy-rc.d made_policy=""
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        || need+=(slurmctld slurmd slurm-client)
    command -v munged >/dev/null || need+=(munge)
    command -v slurmdbd >/dev/null || need+=(slurmdbd)
    command -v mariadbd >/dev/null && command -v mariadb >/dev/null || need+=(mariadb-server)
    [ "${#need[@]}" -eq 0 ] && return
    log "installing ${need[*]} from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    # Without systemd the packages' scripts must not start services (this script starts them,
    # with its own configuration); Docker images already ship this policy, others may not.
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && made_policy=1
    fi
    apt-get update -qq
    apt-get install -y -qq -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${need[@]}" >/dev/null || rc=$?
    [ -n "$made_policy" ] && rm -f "$policy"
    return "$rc"
}

start_munge() {
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating the munge key"
        mkdir -p /etc/munge
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "starting munged"
        runuser -u munge -- munged --force
        sleep 1
    fi
    munge -n | unmunge >/dev/null
}

write_config() {
    local cpus mem
    cpus="$(nproc)"
    # MB each node offers, so that jobs may ask for --mem (without it every --mem is refused).
    # Memory is no consumable resource here (CR_Core, no cgroups): --mem is not enforced, and
    # sacct reports a job's MaxRSS, not OUT_OF_MEMORY. A tenth is left out: slurmd drains a
    # node whose RealMemory is more than the machine has.
    mem="$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
    mkdir -p "$STATE_DIR/state" /etc/slurm
    for node in n1 n2; do
        grep -qE "^[0-9.]+[[:space:]].*\b${node}\b" /etc/hosts || echo "127.0.0.1 ${node}" >> /etc/hosts
    done
    cat > "$CONF" <<EOF
# Written by llamantino's slurm/local-cluster.sh: a two-node test cluster on one machine.
ClusterName=llamantino
SlurmctldHost=${HOST}(127.0.0.1)
AuthType=auth/munge
CryptoType=crypto/munge
SlurmUser=root
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=${STATE_DIR}/state
SlurmdSpoolDir=${STATE_DIR}/spool-%n
SlurmctldPidFile=${STATE_DIR}/slurmctld.pid
SlurmdPidFile=${STATE_DIR}/slurmd-%n.pid
SlurmctldLogFile=${STATE_DIR}/slurmctld.log
SlurmdLogFile=${STATE_DIR}/slurmd-%n.log
JobCompType=jobcomp/filetxt
JobCompLoc=${STATE_DIR}/jobcomp.log
# Accounting as on real clusters: finished jobs leave squeue/scontrol after MinJobAge (SLURM's
# default, 300 s); sacct (slurmdbd) keeps their true state, exit code and memory for good.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
SchedulerParameters=defer_batch
KillWait=10
NodeName=n1 NodeHostname=${HOST} NodeAddr=127.0.0.1 Port=17001 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
NodeName=n2 NodeHostname=${HOST} NodeAddr=127.0.0.1 Port=17002 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF
}

# A daemon runs with the configuration whose checksum was recorded when it was started; a
# changed file means a restart (the conf files are rewritten on every `up`).
conf_sum() { sha256sum "$1" | cut -d' ' -f1; }
is_current() { [ "$(cat "$STATE_DIR/$1.conf.sum" 2>/dev/null)" = "$(conf_sum "$2")" ]; }
mark_current() { conf_sum "$2" > "$STATE_DIR/$1.conf.sum"; }

# Waits until "$@" succeeds (each try at most 10 s), for up to $1 seconds.
wait_for() {
    local seconds="$1"; shift
    for _ in $(seq 1 "$seconds"); do
        timeout 10 "$@" >/dev/null 2>&1 && return 0
        sleep 1
    done
    return 1
}

# Waits until no process named $1 is left (SIGKILL after 30 s).
wait_gone() {
    for _ in $(seq 1 30); do
        pgrep -x "$1" >/dev/null || return 0
        sleep 1
    done
    log "$1 did not stop in 30 s; killing it"
    pkill -9 -x "$1" || true
    sleep 1
}

start_mariadb() {
    if ! mariadb -uroot -e 'SELECT 1' >/dev/null 2>&1; then
        # MariaDB runs as mysql: its socket, pid file and log live in directories it owns
        mkdir -p /run/mysqld "$STATE_DIR/mariadb"
        chown mysql:mysql /run/mysqld "$STATE_DIR/mariadb"
        if [ ! -d /var/lib/mysql/mysql ]; then
            log "initialising MariaDB's data dir"
            mkdir -p /var/lib/mysql
            chown mysql:mysql /var/lib/mysql
            mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db >/dev/null
        fi
        log "starting MariaDB"
        # slurmdbd asks for a long lock wait (its schema updates and rollups hold locks)
        setsid mariadbd --user=mysql --pid-file="$STATE_DIR/mariadb/mariadb.pid" \
            --log-error="$STATE_DIR/mariadb/mariadb.log" --innodb-lock-wait-timeout=900 \
            </dev/null >/dev/null 2>&1 &
        if ! wait_for 60 mariadb -uroot -e 'SELECT 1'; then
            log "MariaDB did not answer in 60 s; see $STATE_DIR/mariadb/mariadb.log"
            return 1
        fi
    fi
    # slurmdbd's database and user; the password is made once and kept in the state dir
    if [ ! -s "$STATE_DIR/slurmdbd.pass" ]; then
        (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$STATE_DIR/slurmdbd.pass")
    fi
    local pass
    pass="$(cat "$STATE_DIR/slurmdbd.pass")"
    mariadb -uroot <<EOF
CREATE DATABASE IF NOT EXISTS ${DB};
CREATE USER IF NOT EXISTS '${DB_USER}'@'localhost' IDENTIFIED BY '${pass}';
ALTER USER '${DB_USER}'@'localhost' IDENTIFIED BY '${pass}';
GRANT ALL PRIVILEGES ON ${DB}.* TO '${DB_USER}'@'localhost';
EOF
}

write_dbd_config() {
    local tmp
    tmp="$(mktemp /etc/slurm/.slurmdbd.conf.XXXXXX)"
    cat > "$tmp" <<EOF
# Written by llamantino's slurm/local-cluster.sh: accounting for the local test cluster.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=${DB_USER}
StoragePass=$(cat "$STATE_DIR/slurmdbd.pass")
StorageLoc=${DB}
PidFile=${STATE_DIR}/slurmdbd.pid
LogFile=${STATE_DIR}/slurmdbd.log
EOF
    # slurmdbd insists: owned by SlurmUser, readable by nobody else (it holds the password)
    chown root:root "$tmp"
    chmod 600 "$tmp"
    mv -f "$tmp" "$DBD_CONF"
}

start_slurmdbd() {
    if pgrep -x slurmdbd >/dev/null && ! is_current slurmdbd "$DBD_CONF"; then
        log "restarting slurmdbd: slurmdbd.conf changed"
        pkill -x slurmdbd || true
        wait_gone slurmdbd
    fi
    if ! pgrep -x slurmdbd >/dev/null; then
        log "starting slurmdbd"
        slurmdbd
        mark_current slurmdbd "$DBD_CONF"
    fi
    # sacctmgr answers once slurmdbd has connected to MariaDB (and made its tables, first time)
    if ! wait_for 90 sacctmgr -n show cluster; then
        log "slurmdbd did not answer in 90 s; see $STATE_DIR/slurmdbd.log"
        return 1
    fi
    # slurmctld must find its cluster registered when it starts
    if ! timeout 10 sacctmgr -n -P show cluster format=Cluster | grep -qx "$CLUSTER"; then
        log "registering cluster $CLUSTER"
        timeout 30 sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
}

# slurmctld and slurmd read slurm.conf when they start: ones still running with an older file
# (e.g. from before accounting) are shut down here and started again by start_daemons. Running
# jobs survive (their slurmstepd keeps running; slurmctld reloads its saved state).
stop_stale_daemons() {
    if { pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; } && ! is_current slurm "$CONF"; then
        log "restarting slurmctld and slurmd: slurm.conf changed"
        timeout 10 scontrol shutdown >/dev/null 2>&1 || true
        wait_gone slurmctld
        # slurmd stops when slurmctld tells it to; without a controller, stop it directly
        pkill -x slurmd || true
        wait_gone slurmd
    fi
}

start_daemons() {
    pgrep -x slurmctld >/dev/null || { log "starting slurmctld"; slurmctld; }
    for node in n1 n2; do
        if ! pgrep -f "slurmd -N ${node}" >/dev/null; then
            log "starting slurmd ${node}"
            slurmd -N "$node"
        fi
    done
    mark_current slurm "$CONF"
    for _ in $(seq 1 60); do
        if sinfo -h -o '%T' 2>/dev/null | grep -qE 'idle|mixed|allocated'; then
            scontrol update nodename=n1,n2 state=resume >/dev/null 2>&1 || true
            if [ "$(sinfo -h -N -o '%T' | grep -cE 'idle|mixed|allocated')" -ge 2 ]; then
                sinfo
                return 0
            fi
        fi
        sleep 1
    done
    log "the nodes did not come up; see ${STATE_DIR}/*.log"
    sinfo || true
    return 1
}

case "${1:-up}" in
    up)
        install_packages
        start_munge
        write_config
        start_mariadb
        write_dbd_config
        start_slurmdbd
        stop_stale_daemons
        start_daemons
        ;;
    down)
        pkill -x slurmd || true
        pkill -x slurmctld || true
        pkill -x slurmdbd || true
        if [ -s "$STATE_DIR/mariadb/mariadb.pid" ] && kill "$(cat "$STATE_DIR/mariadb/mariadb.pid")" 2>/dev/null; then
            log "stopping MariaDB"
        else
            mariadb-admin -uroot shutdown >/dev/null 2>&1 || true
        fi
        # gone before returning, so that an `up` right after starts them afresh
        for daemon in slurmd slurmctld slurmdbd mariadbd; do wait_gone "$daemon"; done
        rm -f "$STATE_DIR"/*.conf.sum
        log "stopped"
        ;;
    status)
        sinfo
        squeue
        timeout 10 sacctmgr show cluster format=Cluster,ControlHost,ControlPort || true
        ;;
    *)
        echo "usage: $0 up|down|status" >&2
        exit 2
        ;;
esac
