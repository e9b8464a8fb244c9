#!/usr/bin/env bash
# Stop the single-node test cluster started by .ci/slurm-up.sh and remove its scratch dir.
# Cancels all jobs first so no job keeps writing into the workspace. munged is left running:
# it is a system daemon that other SLURM installs may share, and is harmless on its own.
#
# Environment: NTPS_SLURM_DIR (default /tmp/ntps-slurm), must match the one used by slurm-up.sh.
set -euo pipefail

SLURM_DIR="${NTPS_SLURM_DIR:-/tmp/ntps-slurm}"
export SLURM_CONF="$SLURM_DIR/slurm.conf"

log() { echo "[slurm-down] $*" >&2; }

# shellcheck source=.ci/slurm-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/slurm-lib.sh"

if [[ -f "$SLURM_CONF" ]] && [[ -s "$SLURM_DIR/run/slurmctld.pid" ]]; then
    # Cancel every queued or running job (any user: CI runs as root).
    if squeue -h -o %i >/dev/null 2>&1; then
        jobs=$(squeue -h -o %i | tr '\n' ' ')
        if [[ -n "${jobs// /}" ]]; then
            log "cancelling jobs: $jobs"
            # shellcheck disable=SC2086 # word splitting of the job list is intended
            scancel $jobs || true
            for _ in $(seq 1 30); do
                [[ -z "$(squeue -h -o %i 2>/dev/null)" ]] && break
                sleep 0.5
            done
        fi
    fi
fi

stop_pidfile "$SLURM_DIR/run/slurmd.pid"
stop_pidfile "$SLURM_DIR/run/slurmctld.pid"
# Remove the /etc/slurm links slurm-up.sh made, only if they point into our scratch dir.
for f in slurm.conf gres.conf; do
    [[ -L "/etc/slurm/$f" && "$(readlink "/etc/slurm/$f")" == "$SLURM_DIR/$f" ]] && rm -f "/etc/slurm/$f"
done
rm -rf "$SLURM_DIR"
log "cluster stopped, $SLURM_DIR removed"
