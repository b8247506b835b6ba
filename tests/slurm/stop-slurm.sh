#!/usr/bin/env bash
# Stop the single-node SLURM that tests/slurm/start-slurm.sh started: slurmd, slurmctld, then
# munged, each by the pid in its pid file. Run as root. Safe to run when nothing is running.
set -euo pipefail

[[ "$(id -u)" == 0 ]] || { echo "stop-slurm.sh: run me as root." >&2; exit 1; }

stop_pidfile() { # stop_pidfile PIDFILE NAME
    if [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; then
        local pid
        pid="$(cat "$1")"
        kill "$pid"
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid" 2>/dev/null || true
        fi
        echo "stopped $2 (pid $pid)"
    fi
    rm -f "$1"
}

stop_pidfile /run/slurmd.pid slurmd
stop_pidfile /run/slurmctld.pid slurmctld
stop_pidfile /run/munge/munged.pid munged
