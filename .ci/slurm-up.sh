#!/usr/bin/env bash
# Bring up a real single-node SLURM cluster (slurmctld + slurmd on this machine, one fake GPU)
# for CI and local tests of the SLURM executor path.
#
# Usage (as root, non-interactive):   .ci/slurm-up.sh
#   then in the calling shell:        export SLURM_CONF=/tmp/ntps-slurm/slurm.conf
#   (stdout is exactly that one export line, progress goes to stderr, so
#   `eval "$(.ci/slurm-up.sh)"` works too). Stop with .ci/slurm-down.sh.
#
# Environment:
#   NTPS_SLURM_DIR       scratch dir for config/state/logs (default /tmp/ntps-slurm)
#   NTPS_SLURM_TIMEOUT   seconds to wait for the node to become idle (default 60)
#   NTPS_SLURM_CTLD_PORT / NTPS_SLURM_SLURMD_PORT  ports (default 6817 / 6818)
#
# Idempotent: if the daemons recorded in the scratch dir are up and the node answers, it only
# reprints the export line. Daemons from a previous run that are dead or unhealthy are stopped by
# their pid files and the state is wiped before a clean start.
set -euo pipefail

SLURM_DIR="${NTPS_SLURM_DIR:-/tmp/ntps-slurm}"
TIMEOUT="${NTPS_SLURM_TIMEOUT:-60}"
CTLD_PORT="${NTPS_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${NTPS_SLURM_SLURMD_PORT:-6818}"
# The node is called "localhost" whatever the machine's hostname is: it always resolves, and
# slurmd is told its name with -N so it never has to match `hostname -s`.
NODE=localhost
PARTITION=debug
CONF="$SLURM_DIR/slurm.conf"
export SLURM_CONF="$CONF"

log() { echo "[slurm-up] $*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

[[ $(id -u) -eq 0 ]] || die "must run as root (installs packages, starts munged/slurmctld/slurmd)"

# ---------------------------------------------------------------- packages
need_pkgs=()
for pkg in slurm-wlm munge; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$pkg")
done
if ((${#need_pkgs[@]})); then
    log "installing ${need_pkgs[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >&2
fi

# ---------------------------------------------------------------- helpers
# shellcheck source=.ci/slurm-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/slurm-lib.sh"

node_state() { sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n1; }

diagnose() {
    log "---- diagnostics ----"
    sinfo -N -l 2>&1 | sed 's/^/[sinfo] /' >&2 || true
    scontrol show node "$NODE" 2>&1 | sed 's/^/[node] /' >&2 || true
    for f in "$SLURM_DIR/log/slurmctld.log" "$SLURM_DIR/log/slurmd.log"; do
        [[ -f "$f" ]] && tail -n 30 "$f" | sed "s|^|[$(basename "$f")] |" >&2
    done
    return 0
}

print_export() { echo "export SLURM_CONF=$CONF"; }

# ---------------------------------------------------------------- /etc/slurm links
# The snakemake jobstep plugin strips every SLURM_* variable (SLURM_CONF included) before its
# nested `srun`, so inside a job only the default /etc/slurm/slurm.conf is found. Point it at ours;
# an existing config that is not one of our links is left alone and reported.
for f in slurm.conf gres.conf; do
    link="/etc/slurm/$f"
    if [[ -e "$link" || -L "$link" ]] && [[ "$(readlink "$link" || true)" != "$SLURM_DIR/$f" ]]; then
        if [[ -L "$link" && "$(readlink "$link")" == */ntps-slurm*/"$f" ]]; then
            rm -f "$link" # stale link from a run with another NTPS_SLURM_DIR
        else
            die "$link exists and is not ours; nested srun inside snakemake jobs would use it. Move it away first."
        fi
    fi
    mkdir -p /etc/slurm
    ln -sfn "$SLURM_DIR/$f" "$link"
done

# ---------------------------------------------------------------- already up?
if pid_alive "$SLURM_DIR/run/slurmctld.pid" && pid_alive "$SLURM_DIR/run/slurmd.pid" &&
    [[ "$(node_state)" =~ ^(idle|mixed|allocated)$ ]]; then
    log "cluster already up ($(node_state)), config $CONF"
    print_export
    exit 0
fi

# Stale or half-started cluster from an earlier run: stop what its pid files name, wipe state.
stop_pidfile "$SLURM_DIR/run/slurmd.pid"
stop_pidfile "$SLURM_DIR/run/slurmctld.pid"
# Daemons whose pid files were lost (scratch dir deleted under them) still hold the ports; find
# them by their exact command line, which names our config file, and stop those pids only.
for proc in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' 2>/dev/null <"$proc/cmdline") || continue
    if [[ "$cmd" == "slurmctld -f $CONF "* || "$cmd" == "slurmd -f $CONF "* ]]; then
        log "stopping leftover daemon ${proc#/proc/}: $cmd"
        kill "${proc#/proc/}" 2>/dev/null || true
        sleep 1
        kill -9 "${proc#/proc/}" 2>/dev/null || true
    fi
done
rm -rf "$SLURM_DIR/state" "$SLURM_DIR/spool" "$SLURM_DIR/log"

# ---------------------------------------------------------------- munge
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating munge key"
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    # A dead munged leaves its socket/pid behind and then refuses to start; --force overrides.
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 1 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    munge -n | unmunge >/dev/null || die "munged does not answer (see /var/log/munge/munged.log)"
fi

# ---------------------------------------------------------------- config
mkdir -p "$SLURM_DIR"/{state,spool,log,run}
# Real CPU topology and memory as slurmd sees them, so the node is not drained for a mismatch.
hw=$(slurmd -C | head -n1)
field() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$hw"; }
CPUS=$(field CPUs)
BOARDS=$(field Boards)
SOCKETS=$(field SocketsPerBoard)
CORES=$(field CoresPerSocket)
THREADS=$(field ThreadsPerCore)
MEM=$(field RealMemory)
[[ -n "$CPUS" && -n "$MEM" ]] || die "could not parse 'slurmd -C' output: $hw"

cat >"$CONF" <<EOF
# Generated by .ci/slurm-up.sh: single-node test cluster, do not use in production.
ClusterName=ntps-ci
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/run/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/run/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups needed (containers, CI runners): plain process tracking, no task affinity.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
# Memory is a consumable resource, as on real clusters, so --mem requests are checked.
SelectTypeParameters=CR_CPU_Memory
# Jobs without --mem would otherwise get the whole node and run one at a time.
DefMemPerCPU=$((MEM / CPUS))
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Finished jobs stay visible to squeue/scontrol for MinJobAge seconds. There is no sacct here, so
# snakemake polls with squeue (its poll interval grows up to 180 s) and tests read a finished
# job's request from scontrol: both need this to stay well above 180.
MinJobAge=300
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS Boards=$BOARDS SocketsPerBoard=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEM Gres=gpu:1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
# Without File= slurmd reports 0 GPUs and the node is drained ("gres/gpu count reported lower").
cat >"$SLURM_DIR/gres.conf" <<EOF
NodeName=$NODE Name=gpu File=/dev/null
EOF

# ---------------------------------------------------------------- daemons
log "starting slurmctld and slurmd (config $CONF)"
# -i: ignore state files (a clean start every time); daemons fork and write their pid files.
slurmctld -f "$CONF" -i
slurmd -f "$CONF" -N "$NODE"

fail() {
    log "$1"
    diagnose
    # Leave nothing half-started behind; the logs above say why it failed.
    stop_pidfile "$SLURM_DIR/run/slurmd.pid"
    stop_pidfile "$SLURM_DIR/run/slurmctld.pid"
    exit 1
}

deadline=$((SECONDS + TIMEOUT))
started=$SECONDS
state=""
while ((SECONDS < deadline)); do
    state=$(node_state || true)
    [[ "$state" == idle ]] && break
    # A daemon that exits right away (bad config, port in use) would otherwise cost the full wait.
    if ((SECONDS - started >= 3)); then
        pid_alive "$SLURM_DIR/run/slurmctld.pid" || fail "slurmctld is not running"
        pid_alive "$SLURM_DIR/run/slurmd.pid" || fail "slurmd is not running"
    fi
    # A node that registered as down/drained after a previous unclean stop: resume it.
    if [[ "$state" =~ ^(down|drain|drained|unknown) ]]; then
        scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
    fi
    sleep 1
done
[[ "$state" == idle ]] || fail "node '$NODE' not idle after ${TIMEOUT}s (state: '${state:-none}')"
log "cluster up in ${SECONDS}s: node $NODE idle, partition $PARTITION, CPUs=$CPUS RealMemory=$MEM gpu:1"
print_export
