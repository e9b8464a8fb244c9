# shellcheck shell=bash
# Helpers shared by slurm-up.sh and slurm-down.sh (sourced, not run).

pid_alive() { # pid_alive <pidfile>: true if the file names a running SLURM daemon
    local pid
    [[ -s "$1" ]] || return 1
    pid=$(cat "$1")
    # The name check keeps a recycled pid of some unrelated process from being taken for ours.
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
        [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == slurm* ]]
}

stop_pidfile() { # stop_pidfile <pidfile>: TERM then KILL the daemon the file names
    local pid
    pid_alive "$1" || {
        rm -f "$1"
        return 0
    }
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$1"
}
