#!/usr/bin/env bash
# Test helper: take a dev-cluster node down, or bring it back.
#   node.sh down n1 [reason]   scontrol update state=DOWN, then state=DRAIN: running
#                              jobs on it are killed and batch jobs requeued (same
#                              job id, SLURM_RESTART_COUNT+1); the node stays out of
#                              service until `node.sh up` (see README.md)
#   node.sh crash n1           SIGKILL the node's slurmd (one started by up.sh): a
#                              "real" failure. slurmctld marks it DOWN* after
#                              ~SlurmdTimeout and requeues its batch jobs, but the
#                              job's processes keep running until slurmd is back.
#   node.sh up n1              restart its slurmd if it is not running (via up.sh),
#                              scontrol update state=RESUME, wait until usable
#   node.sh state n1           print the node's sinfo state (idle, mixed, down, ...)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { echo "usage: $0 down|crash|up|state <n1|n2> [reason]" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
action="$1" node="$2"
case " ${NODES[*]} " in *" $node "*) ;; *) die "unknown node '$node' (known: ${NODES[*]})";; esac
timeout_s="${SLINGSHOT_DEV_NODE_TIMEOUT:-30}"

is_down()   { case "$(node_state "$node")" in down*|drain*) return 0;; *) return 1;; esac; }
is_usable() { case "$(node_state "$node")" in idle|mixed|allocated|completing) return 0;; *) return 1;; esac; }

case "$action" in
    down)
        reason="${3:-slingshot node.sh down}"
        # DOWN kills the node's jobs (batch jobs are requeued: JobRequeue=1). With
        # ReturnToService=2 a DOWN node whose slurmd answers is back in service within
        # milliseconds, so DRAIN it as well: that keeps it out until `node.sh up`.
        scontrol update nodename="$node" state=down reason="$reason"
        scontrol update nodename="$node" state=drain reason="$reason"
        wait_for "$timeout_s" "$node down" is_down || die "$node not down after ${timeout_s}s (state: $(node_state "$node"))"
        log "$node is $(node_state "$node") (reason: $reason)"
        ;;
    crash)
        pid=$(our_pid "slurmd-$node") || die "no slurmd for $node started by up.sh is running"
        kill -KILL "$pid"
        wait_for 10 "slurmd $node gone" bash -c "! kill -0 $pid 2>/dev/null" || true
        log "killed slurmd $node (pid $pid); slurmctld will mark $node DOWN after ~SlurmdTimeout"
        ;;
    up)
        if ! slurmd_alive "$node"; then
            log "slurmd $node is not running — starting it via up.sh"
            "$DEV_DIR/up.sh" >/dev/null
        fi
        if ! is_usable; then
            scontrol update nodename="$node" state=resume || true
        fi
        wait_for "$timeout_s" "$node usable" is_usable || {
            scontrol show node "$node" >&2 || true
            show_logs "$SLURM_LOG/slurmd.$node.log"
            die "$node not usable after ${timeout_s}s (state: $(node_state "$node"))"
        }
        log "$node is $(node_state "$node")"
        ;;
    state)
        node_state "$node"
        ;;
    *) usage ;;
esac
