#!/usr/bin/env bash
# Bring up the slingshot dev Slurm cluster on this machine (idempotent):
# munged, MariaDB, slurmdbd, slurmctld and two slurmd nodes (n1, n2).
# Daemons it starts are recorded in $STATE_DIR (default /run/slingshot-devcluster)
# so that down.sh stops exactly those. Re-running it when all is up is a fast no-op.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_root
t0=$(date +%s.%N)
mkdir -p "$STATE_DIR"
exec 9>"$STATE_DIR/lock"
flock -w 300 9 || die "another up.sh/down.sh holds $STATE_DIR/lock"

for b in munged slurmctld slurmd slurmdbd sacctmgr mysqld_safe mysqladmin; do
    command -v "$b" >/dev/null || die "'$b' not found — run cluster/dev/install.sh first"
done

started_any=0

# Start "$@" detached (own session, stdin /dev/null, output to $out) and record
# its pid as <name>. The command must stay in the foreground (no self-daemonizing).
spawn() { # name out cmd...
    local name="$1" out="$2"; shift 2
    (
        # close every inherited fd above 2 (our flock, callers' pipes) so the
        # daemon holds nothing of ours; then exec (the pid stays the same)
        for fd in /proc/"$BASHPID"/fd/*; do
            fd="${fd##*/}"
            if (( fd > 2 )); then eval "exec ${fd}>&-" 2>/dev/null || true; fi
        done
        exec setsid "$@" </dev/null >>"$out" 2>&1
    ) &
    local pid=$!
    record_pid "$name" "$pid"
    started_any=1
    log "started $name (pid $pid): $*"
}

# ---- generated configuration ----------------------------------------------------
mem_total_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
# --all: all online CPUs, like slurmd detects them (plain nproc honours the caller's CPU
# affinity, so an up.sh run under taskset would rewrite CPUs= and break 2-CPU jobs)
NODE_CPUS="${SLINGSHOT_DEV_NODE_CPUS:-$(nproc --all)}"
# Both nodes live on this machine: give each 40% of it so the pair fits in 80%.
NODE_MEM_MB="${SLINGSHOT_DEV_NODE_MEM_MB:-$(( mem_total_mb * 40 / 100 ))}"
DEF_MEM_PER_CPU="${SLINGSHOT_DEV_DEF_MEM_PER_CPU:-2048}"
if (( DEF_MEM_PER_CPU * NODE_CPUS > NODE_MEM_MB )); then
    DEF_MEM_PER_CPU=$(( NODE_MEM_MB / NODE_CPUS ))
fi
HOST_SHORT="$(hostname -s)"

render() { # template -> stdout
    sed -e "s|@CLUSTER_NAME@|$CLUSTER_NAME|g" \
        -e "s|@CTLD_HOST@|$HOST_SHORT|g" \
        -e "s|@HOSTNAME@|$HOST_SHORT|g" \
        -e "s|@CTLD_PORT@|$CTLD_PORT|g" \
        -e "s|@DBD_PORT@|$DBD_PORT|g" \
        -e "s|@N1_PORT@|$N1_PORT|g" \
        -e "s|@N2_PORT@|$N2_PORT|g" \
        -e "s|@NODE_CPUS@|$NODE_CPUS|g" \
        -e "s|@NODE_MEM_MB@|$NODE_MEM_MB|g" \
        -e "s|@DEF_MEM_PER_CPU@|$DEF_MEM_PER_CPU|g" \
        -e "s|@DB_PASS@|$DB_PASS|g" \
        "$DEV_DIR/$1"
}

config_changed=0
install_conf() { # template dest mode owner
    local tmp
    tmp="$(mktemp)"
    render "$1" > "$tmp"
    if grep -q '@[A-Z_]*@' "$tmp"; then
        rm -f "$tmp"; die "unfilled placeholder in $1"
    fi
    if [[ -f "$2" ]] && cmp -s "$tmp" "$2"; then
        rm -f "$tmp"
    else
        install -m "$3" -o "$4" -g "$4" "$tmp" "$2"
        rm -f "$tmp"
        config_changed=1
        log "wrote $2"
    fi
    # keep mode/owner right even when the content was already there
    chmod "$3" "$2"; chown "$4:$4" "$2"
}

mkdir -p "$SLURM_ETC"
install_conf slurm.conf.in   "$SLURM_ETC/slurm.conf"    644 root
install_conf gres.conf.in    "$SLURM_ETC/gres.conf"     644 root
install_conf slurmdbd.conf.in "$SLURM_ETC/slurmdbd.conf" 600 slurm

# ---- host setup: hosts entry, fake GPUs, directories -------------------------
if ! grep -Eq '^[[:space:]]*127\.0\.0\.1([[:space:]].*)?[[:space:]]n1([[:space:]]|$)' /etc/hosts \
   || ! grep -Eq '^[[:space:]]*127\.0\.0\.1([[:space:]].*)?[[:space:]]n2([[:space:]]|$)' /etc/hosts; then
    printf '127.0.0.1 n1 n2\n' >> /etc/hosts
    log "added '127.0.0.1 n1 n2' to /etc/hosts"
fi
for i in 0 1; do
    [[ -e "/dev/fakegpu$i" ]] || { mknod -m 666 "/dev/fakegpu$i" c 1 3; log "created /dev/fakegpu$i"; }
done
install -d -o slurm -g slurm -m 755 "$SLURM_LOG" /var/spool/slurmctld
for n in "${NODES[@]}"; do install -d -m 755 "/var/spool/slurmd/$n"; done
install -d -o munge -g munge -m 755 /run/munge
install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
install -d -o mysql -g mysql -m 755 /run/mysqld /var/log/mysql

# ---- munge ----------------------------------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    install -d -o munge -g munge -m 700 /etc/munge
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
    log "created /etc/munge/munge.key"
fi
if pid=$(our_pid munged); then
    log "munged already running (pid $pid, ours)"
elif munge_ok; then
    log "munged already running (not started by up.sh; leaving it alone)"
else
    spawn munged /var/log/munge/munged.stdout \
        setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F
    wait_for 20 munge munge_ok || { show_logs /var/log/munge/munged.log /var/log/munge/munged.stdout; die "munged did not come up"; }
fi

# ---- MariaDB --------------------------------------------------------------------
if pid=$(our_pid mysqld_safe) || pid=$(our_pid mysqld); then
    log "MariaDB already running (pid $pid, ours)"
elif mysql_ok; then
    log "MariaDB already running (not started by up.sh; leaving it alone)"
else
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        log "initialising MariaDB data directory"
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/var/log/mysql/install-db.log 2>&1 \
            || { show_logs /var/log/mysql/install-db.log; die "mariadb-install-db failed"; }
    fi
    spawn mysqld_safe /var/log/mysql/mysqld_safe.stdout \
        mysqld_safe --user=mysql --skip-syslog --log-error="$MYSQL_ERR_LOG" \
        --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900
    wait_for 60 mariadb mysql_ok || { show_logs "$MYSQL_ERR_LOG" /var/log/mysql/mysqld_safe.stdout; die "MariaDB did not come up (no answer on /run/mysqld/mysqld.sock)"; }
    if mpid="$(cat /run/mysqld/mysqld.pid 2>/dev/null)" && [[ -n "$mpid" ]]; then
        record_pid mysqld "$mpid"
    fi
fi
mariadb -uroot <<SQL || die "could not create the slurm DB user / database"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '${DB_PASS}';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '${DB_PASS}';
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL

# ---- slurmdbd -------------------------------------------------------------------
if pid=$(our_pid slurmdbd); then
    log "slurmdbd already running (pid $pid, ours)"
elif dbd_ok; then
    log "slurmdbd already running (not started by up.sh; leaving it alone)"
else
    spawn slurmdbd "$SLURM_LOG/slurmdbd.stdout" slurmdbd -D
    wait_for 60 slurmdbd dbd_ok || { show_logs "$SLURM_LOG/slurmdbd.log" "$SLURM_LOG/slurmdbd.stdout"; die "slurmdbd did not answer sacctmgr on port $DBD_PORT"; }
fi
if ! timeout 10 sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER_NAME"; then
    timeout 20 sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null || die "sacctmgr add cluster $CLUSTER_NAME failed"
    log "registered cluster '$CLUSTER_NAME' in slurmdbd"
fi

# ---- slurmctld ------------------------------------------------------------------
if pid=$(our_pid slurmctld); then
    log "slurmctld already running (pid $pid, ours)"
    ctld_running=1
elif ctld_ok; then
    log "slurmctld already running (not started by up.sh; leaving it alone)"
    ctld_running=1
else
    ctld_running=0
    spawn slurmctld "$SLURM_LOG/slurmctld.stdout" slurmctld -D
    wait_for 60 slurmctld ctld_ok || { show_logs "$SLURM_LOG/slurmctld.log" "$SLURM_LOG/slurmctld.stdout"; die "slurmctld did not answer 'scontrol ping'"; }
fi
if (( ctld_running && config_changed )); then
    warn "configuration changed while slurmctld was running: 'scontrol reconfigure' (node port/topology changes need down.sh && up.sh)"
    scontrol reconfigure || warn "scontrol reconfigure failed"
fi

# ---- slurmd n1, n2 --------------------------------------------------------------
for n in "${NODES[@]}"; do
    if pid=$(our_pid "slurmd-$n"); then
        log "slurmd $n already running (pid $pid, ours)"
    elif slurmd_alive "$n"; then
        log "slurmd $n already running (not started by up.sh; leaving it alone)"
    else
        spawn "slurmd-$n" "$SLURM_LOG/slurmd.$n.stdout" slurmd -D -N "$n"
    fi
done

# ---- wait for the nodes --------------------------------------------------------
nodes_usable() {
    local n s
    for n in "${NODES[@]}"; do
        s="$(node_state "$n")"
        case "$s" in
            idle|mixed|allocated|completing) ;;
            *) return 1 ;;
        esac
    done
}
if ! nodes_usable; then
    # A node left DOWN/DRAINED (e.g. by node.sh or a test) is made usable again.
    for n in "${NODES[@]}"; do
        s="$(node_state "$n")"
        case "$s" in
            down|drained|draining|drain|fail|failing)
                log "node $n is '$s' — resuming it"
                scontrol update nodename="$n" state=resume || true ;;
        esac
    done
    if ! wait_for "$UP_TIMEOUT" nodes nodes_usable; then
        sinfo -N -l >&2 || true
        scontrol show node n1 n2 2>/dev/null | grep -E 'NodeName|State|Reason' >&2 || true
        show_logs "$SLURM_LOG/slurmctld.log" "$SLURM_LOG/slurmd.n1.log" "$SLURM_LOG/slurmd.n2.log" \
                  "$SLURM_LOG/slurmd.n1.stdout" "$SLURM_LOG/slurmd.n2.stdout"
        die "nodes n1/n2 not idle after ${UP_TIMEOUT}s (see sinfo and logs above)"
    fi
fi

dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
if (( started_any )); then
    log "dev cluster '$CLUSTER_NAME' is up (${dt}s):"
else
    log "dev cluster '$CLUSTER_NAME' already up — nothing to do (${dt}s):"
fi
sinfo -N -o '%N %P %T %c %m %G'
