# shellcheck shell=bash disable=SC2034  # variables are used by the scripts that source this
# Common settings and helpers for cluster/dev/*.sh (sourced, not executed).

DEV_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# ---- knobs (env overridable) --------------------------------------------------
CLUSTER_NAME="${SLINGSHOT_DEV_CLUSTER:-dev}"
STATE_DIR="${SLINGSHOT_DEV_STATE_DIR:-/run/slingshot-devcluster}"
CTLD_PORT="${SLINGSHOT_DEV_CTLD_PORT:-6817}"
DBD_PORT="${SLINGSHOT_DEV_DBD_PORT:-6819}"
N1_PORT=17001
N2_PORT=17002
NODES=(n1 n2)
DB_PASS="${SLINGSHOT_DEV_DB_PASS:-slingshot-dev}"
UP_TIMEOUT="${SLINGSHOT_DEV_UP_TIMEOUT:-90}"
SLURM_ETC=/etc/slurm
SLURM_LOG=/var/log/slurm
MYSQL_ERR_LOG=/var/log/mysql/error.log

log()  { printf '[devcluster %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
warn() { printf '[devcluster %s] WARNING: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die()  { printf '[devcluster %s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (this starts system daemons)"
}

# Print the last lines of the given log files (those that exist) to stderr.
show_logs() {
    local f
    for f in "$@"; do
        if [[ -s "$f" ]]; then
            printf '\n----- tail -n 30 %s -----\n' "$f" >&2
            tail -n 30 "$f" >&2 || true
        fi
    done
}

# ---- pid files ------------------------------------------------------------------
# A pid file in $STATE_DIR holds "<pid> <starttime>" (starttime = field 22 of
# /proc/<pid>/stat) so that a recycled pid is never mistaken for our daemon.
proc_starttime() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    # strip "pid (comm) " — comm may contain spaces — then field 20 is starttime
    stat="${stat##*) }"
    # shellcheck disable=SC2086
    set -- $stat
    printf '%s\n' "${20}"
}

# true if pid $1 exists and is not a zombie
proc_live() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [[ "${stat%% *}" != Z ]]
}

pidfile_of() { printf '%s/%s.pid\n' "$STATE_DIR" "$1"; }

record_pid() { # name pid
    local st
    st="$(proc_starttime "$2")" || die "process $2 ($1) vanished right after start"
    printf '%s %s\n' "$2" "$st" > "$(pidfile_of "$1")"
}

# Prints the pid if the pid file for <name> names a live process we started.
our_pid() {
    local f pid st cur
    f="$(pidfile_of "$1")"
    [[ -f "$f" ]] || return 1
    read -r pid st < "$f" || return 1
    [[ -n "${pid:-}" && -n "${st:-}" ]] || return 1
    cur="$(proc_starttime "$pid")" || return 1
    [[ "$cur" == "$st" ]] || return 1
    proc_live "$pid" || return 1
    printf '%s\n' "$pid"
}

# ---- probes ---------------------------------------------------------------------
munge_ok()  { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
mysql_ok()  { [[ -S /run/mysqld/mysqld.sock ]] && mysqladmin --connect-timeout=2 ping >/dev/null 2>&1; }
dbd_ok()    { timeout 10 sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1; }
ctld_ok()   { timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP'; }
# slurmd for node $1 alive (ours or not), judged by its SlurmdPidFile
slurmd_alive() {
    local pid
    pid="$(cat "/run/slurmd.$1.pid" 2>/dev/null)" || return 1
    [[ -n "$pid" ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == slurmd ]] && proc_live "$pid"
}

# node_state n1 -> e.g. "idle", "mixed", "down*", "drained" (sinfo %T, lower case)
node_state() {
    timeout 10 sinfo -h -N -n "$1" -o '%T' 2>/dev/null | head -n 1
}

# wait_for <timeout_s> <description> <cmd...>: poll every 0.2 s
wait_for() {
    local t="$1"; shift 2   # $2: description (for readers of the call)
    local deadline=$(( $(date +%s) + t ))
    until "$@"; do
        if (( $(date +%s) >= deadline )); then
            return 1
        fi
        sleep 0.2
    done
}
