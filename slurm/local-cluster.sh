#!/usr/bin/env bash
# A real SLURM cluster on this machine, for the tests and for trying llamantino's SLURM path:
# munge, slurmctld, and two slurmd nodes (n1, n2) on localhost, from Debian's packages.
#
#   slurm/local-cluster.sh up       # install (apt) if needed, configure, start; idempotent
#   slurm/local-cluster.sh status   # sinfo
#   slurm/local-cluster.sh down     # stop the daemons
#
# Needs root (apt, /etc/slurm, /etc/hosts). State, spool and logs live in $LLAMANTINO_SLURM_DIR
# (default /var/lib/llamantino-slurm). The test hardware preset is conf/hardware/local_slurm.yaml.
set -euo pipefail

STATE_DIR="${LLAMANTINO_SLURM_DIR:-/var/lib/llamantino-slurm}"
CONF=/etc/slurm/slurm.conf
HOST="$(hostname)"

log() { echo "local-cluster: $*"; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return
    fi
    log "installing munge and SLURM from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
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
    local cpus
    cpus="$(nproc)"
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
# Finished jobs stay visible to scontrol/squeue for an hour (there is no accounting database).
MinJobAge=3600
SchedulerParameters=defer_batch
KillWait=10
NodeName=n1 NodeHostname=${HOST} NodeAddr=127.0.0.1 Port=17001 CPUs=${cpus} State=UNKNOWN
NodeName=n2 NodeHostname=${HOST} NodeAddr=127.0.0.1 Port=17002 CPUs=${cpus} State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF
}

start_daemons() {
    pgrep -x slurmctld >/dev/null || { log "starting slurmctld"; slurmctld; }
    for node in n1 n2; do
        if ! pgrep -f "slurmd -N ${node}" >/dev/null; then
            log "starting slurmd ${node}"
            slurmd -N "$node"
        fi
    done
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
        start_daemons
        ;;
    down)
        pkill -x slurmd || true
        pkill -x slurmctld || true
        log "stopped"
        ;;
    status)
        sinfo
        squeue
        ;;
    *)
        echo "usage: $0 up|down|status" >&2
        exit 2
        ;;
esac
