#!/usr/bin/env bash
# Stop the daemons that cluster/dev/up.sh started — and only those — using the pid
# files in $STATE_DIR (default /run/slingshot-devcluster). Idempotent.
# Daemons that were already running when up.sh ran (not started by it) are left alone.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_root
if [[ ! -d "$STATE_DIR" ]]; then
    log "nothing to stop ($STATE_DIR does not exist)"
    exit 0
fi
exec 9>"$STATE_DIR/lock"
flock -w 300 9 || die "another up.sh/down.sh holds $STATE_DIR/lock"

stopped=0
# stop <name> [timeout_s]: TERM the recorded process, wait, then KILL.
stop() {
    local name="$1" t="${2:-20}" pid f
    f="$(pidfile_of "$name")"
    if ! pid=$(our_pid "$name"); then
        [[ -f "$f" ]] && { log "$name: not running (stale pid file removed)"; rm -f "$f"; }
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$(( $(date +%s) + t ))
    while our_pid "$name" >/dev/null; do
        if (( $(date +%s) >= deadline )); then
            warn "$name (pid $pid) ignored SIGTERM for ${t}s — sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    rm -f "$f"
    stopped=$((stopped + 1))
}

# Explicit list, in dependency order — never a glob (slurmd*.pid would match slurmdbd.pid).
for n in "${NODES[@]}"; do stop "slurmd-$n"; done
stop slurmctld
stop slurmdbd
# mysqld_safe restarts mysqld if it dies, so stop the wrapper first, then mysqld.
if safe_pid=$(our_pid mysqld_safe); then
    if ! our_pid mysqld >/dev/null; then
        # mysqld pid was not recorded: adopt mysqld_safe's mysqld child
        if child=$(pgrep -P "$safe_pid" -x 'mysqld|mariadbd' | head -n 1) && [[ -n "$child" ]]; then
            record_pid mysqld "$child"
        fi
    fi
fi
stop mysqld_safe 10
stop mysqld 60
stop munged

if (( stopped )); then
    log "stopped $stopped daemon(s)"
else
    log "nothing to stop (no daemon started by up.sh is running)"
fi
