#!/usr/bin/env bash
# Start a single-node SLURM (Debian's slurm-wlm 22.05 + munge) on this machine, for the
# `slurm` tests and CI. Run as root. Idempotent: a second run with the cluster already up and
# the same configuration returns at once; a changed configuration restarts the daemons.
#
#   sudo tests/slurm/start-slurm.sh        # then: sinfo; pytest -m slurm tests/test_slurm.py
#   sudo tests/slurm/stop-slurm.sh
#
# The partition is "debug" (tests/slurm/profile/config.yaml names it). SLURM_START_TIMEOUT: seconds
# the node may take to become idle (default 60).
set -euo pipefail

PARTITION=debug
TIMEOUT="${SLURM_START_TIMEOUT:-60}"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
LOG_DIR=/var/log/slurm
CTLD_LOG="$LOG_DIR/slurmctld.log"
SLURMD_LOG="$LOG_DIR/slurmd.log"
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
MUNGE_LOG=/var/log/munge/munged.log

die() {
    echo "start-slurm.sh: $*" >&2
    exit 1
}

print_logs() {
    for f in "$MUNGE_LOG" "$CTLD_LOG" "$SLURMD_LOG"; do
        if [[ -f "$f" ]]; then
            echo "----- last lines of $f -----" >&2
            tail -n 40 "$f" >&2
        fi
    done
}

running() { # running PIDFILE: the process named in PIDFILE is alive
    [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

[[ "$(id -u)" == 0 ]] || die "run me as root (the daemons and /etc/slurm need it)."

# --- packages -------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sinfo >/dev/null || ! command -v munged >/dev/null; then
    echo "Installing slurm-wlm and munge with apt-get ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # --no-install-recommends: the recommended plugins (hdf5, influxdb, rrd, ...) are not
    # needed for a test cluster and triple the download.
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# --- munge ----------------------------------------------------------------------------------
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    echo "Creating /etc/munge/munge.key ..."
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! running "$MUNGE_PID"; then
    rm -f "$MUNGE_PID" /run/munge/munge.socket.2*
    runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID" --log-file="$MUNGE_LOG" \
        || { print_logs; die "munged did not start (log above)."; }
fi
munge -n | unmunge >/dev/null || { print_logs; die "munge cannot encode/decode a credential."; }

# --- slurm.conf -----------------------------------------------------------------------------
HOST="$(hostname -s)"
CPUS="$(nproc)"
TOTAL_MB="$(free -m | awk '/^Mem:/ {print $2}')"
# Leave the OS and the daemons some room: 5% and at least 512 MiB.
RESERVE_MB=$((TOTAL_MB / 20 > 512 ? TOTAL_MB / 20 : 512))
REAL_MB=$((TOTAL_MB - RESERVE_MB))
DEF_MEM_PER_CPU=$((REAL_MB / CPUS))

install -d -m 0755 "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
NEW_CONF="$(mktemp)"
cat >"$NEW_CONF" <<EOF
# Written by tests/slurm/start-slurm.sh: a single-node test cluster without accounting.
ClusterName=emflow
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldLogFile=${CTLD_LOG}
SlurmdLogFile=${SLURMD_LOG}
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# No accounting: sacct cannot see jobs, so the Snakemake profile polls with squeue.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# The slurm executor plugin only trusts squeue when finished jobs stay visible for at least
# 3 x init-seconds-before-status-checks; 300 s covers the plugin's default of 40 s.
MinJobAge=300
ReturnToService=2
SchedulerType=sched/backfill
# Use the configured CPUs/memory even when the hardware reports a different topology
# (containers, gVisor).
SlurmdParameters=config_overrides
DefMemPerCPU=${DEF_MEM_PER_CPU}
# A node feature, so that tests can ask for one the way a cluster's GPU type is asked for (-C).
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${REAL_MB} Features=emflow_test State=UNKNOWN
PartitionName=${PARTITION} Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
EOF

CHANGED=1
if [[ -f "$CONF" ]] && cmp -s "$NEW_CONF" "$CONF"; then
    CHANGED=0
fi
if [[ "$CHANGED" == 1 ]]; then
    install -m 0644 "$NEW_CONF" "$CONF"
fi
rm -f "$NEW_CONF"

# --- daemons --------------------------------------------------------------------------------
stop_pidfile() { # stop_pidfile PIDFILE: stop the daemon named in PIDFILE, wait up to 10 s
    if running "$1"; then
        local pid
        pid="$(cat "$1")"
        kill "$pid"
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
    rm -f "$1"
}
if [[ "$CHANGED" == 1 ]]; then
    stop_pidfile "$SLURMD_PID"
    stop_pidfile "$CTLD_PID"
fi
if ! running "$CTLD_PID"; then
    # -c: start clean, so a node or job left from an older configuration does not linger.
    /usr/sbin/slurmctld -c || { print_logs; die "slurmctld did not start (logs above)."; }
fi
if ! running "$SLURMD_PID"; then
    /usr/sbin/slurmd || { print_logs; die "slurmd did not start (logs above)."; }
fi

# --- wait for the node ----------------------------------------------------------------------
deadline=$((SECONDS + TIMEOUT))
state=""
while ((SECONDS < deadline)); do
    state="$(sinfo -h -N -n "$HOST" -o %t 2>/dev/null | head -n 1 || true)"
    case "$state" in
        idle | mix | alloc) break ;;
        down* | drain* | fail*)
            # A node can come up "down" after a restart; ReturnToService=2 normally clears it.
            scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
            ;;
    esac
    sleep 1
done
case "$state" in
    idle | mix | alloc) ;;
    *)
        print_logs
        sinfo -N -l >&2 || true
        die "node $HOST is '${state:-not reported}' after ${TIMEOUT}s, not idle (daemon logs above)."
        ;;
esac
echo "SLURM is up: partition '$PARTITION', node $HOST ($CPUS CPUs, ${REAL_MB} MB)."
sinfo
