#!/usr/bin/env bash
# Stop the daemons that cluster/dev/up.sh started — and only those — using the pid
# files in $STATE_DIR (default /run/slingshot-devcluster). Idempotent.
# Daemons that were already running when up.sh ran (not started by it) are left alone.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_root
if [[ ! -d "$STATE_DIR" ]]; then
    log "nothing to stop ($STATE_DIR does not exist)"
    exit 0
fi
exec 9>"$STATE_DIR/lock"
flock -w 300 9 || die "another up.sh/down.sh holds $STATE_DIR/lock"

stopped=0
# stop <timeout_s> <name>...: SIGTERM every recorded process of the group at once,
# wait for all of them, then SIGKILL what is left.
stop() {
    local t="$1"; shift
    local name pid f live=()
    for name in "$@"; do
        f="$(pidfile_of "$name")"
        if pid=$(our_pid "$name"); then
            log "stopping $name (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            live+=("$name")
        elif [[ -f "$f" ]]; then
            log "$name: already exited (pid file removed)"
            rm -f "$f"
        fi
    done
    (( ${#live[@]} )) || return 0
    local deadline=$(( $(date +%s) + t )) left
    while :; do
        left=()
        for name in "${live[@]}"; do our_pid "$name" >/dev/null && left+=("$name"); done
        (( ${#left[@]} )) || break
        if (( $(date +%s) >= deadline )); then
            for name in "${left[@]}"; do
                pid=$(our_pid "$name") || continue
                warn "$name (pid $pid) ignored SIGTERM for ${t}s — sending SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
            done
            sleep 0.5
            break
        fi
        sleep 0.1
    done
    for name in "${live[@]}"; do rm -f "$(pidfile_of "$name")"; done
    stopped=$((stopped + ${#live[@]}))
}

# Explicit names, in dependency order — never a glob (slurmd*.pid would match slurmdbd.pid).
slurmds=()
for n in "${NODES[@]}"; do slurmds+=("slurmd-$n"); done
stop 20 "${slurmds[@]}"
stop 30 slurmctld
stop 30 slurmdbd
# MariaDB: if mysqld's pid was not recorded, adopt mysqld_safe's mysqld child.
if safe_pid=$(our_pid mysqld_safe) && ! our_pid mysqld >/dev/null; then
    if child=$(pgrep -P "$safe_pid" -x 'mysqld|mariadbd' | head -n 1) && [[ -n "$child" ]]; then
        record_pid mysqld "$child"
    fi
fi
# Stop mysqld first: after a clean shutdown mysqld_safe exits by itself (it ignores
# SIGTERM, and would restart a mysqld that died some other way).
stop 60 mysqld
stop 10 mysqld_safe
stop 10 munged

if (( stopped )); then
    log "stopped $stopped daemon(s)"
else
    log "nothing to stop (no daemon started by up.sh is running)"
fi
