#!/usr/bin/env bash
# Stop the MLflow tracking server started by cluster/mlflow/serve.sh [DIR] (idempotent).
# Kills the server's process group (the mlflow CLI and its uvicorn worker).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR="${1:-${MLFLOW_DIR:-$REPO/work/mlflow-server}}"
PIDFILE="$DIR/server.pid"

log() { printf '[mlflow %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [[ ! -f "$PIDFILE" ]]; then
    log "not running (no $PIDFILE)"
    exit 0
fi
pid="$(cat "$PIDFILE")"
if ! kill -0 "$pid" 2>/dev/null; then
    log "not running (stale pid $pid)"
    rm -f "$PIDFILE"
    exit 0
fi
# serve.sh started it with setsid: pid is its process-group id
if [[ "$(ps -o pgid= -p "$pid" | tr -d ' ')" == "$pid" ]]; then target=(-- "-$pid"); else target=("$pid"); fi
log "stopping mlflow server (pid $pid)"
kill -TERM "${target[@]}" 2>/dev/null || true
for _ in $(seq 1 100); do
    pgrep -g "$pid" >/dev/null 2>&1 || break
    sleep 0.1
done
if pgrep -g "$pid" >/dev/null 2>&1; then
    log "still running after 10 s — SIGKILL"
    kill -KILL "${target[@]}" 2>/dev/null || true
fi
rm -f "$PIDFILE"
log "stopped"
