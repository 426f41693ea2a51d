#!/usr/bin/env bash
# Start an MLflow tracking server for slingshot (idempotent) and wait until /health answers.
#
#   cluster/mlflow/serve.sh [DIR]
#
# DIR (or $MLFLOW_DIR; default <repo>/work/mlflow-server) holds mlflow.db (SQLite backend
# store), artifacts/ (proxied artifact store), server.log, server.pid and tracking_uri.
# Env:
#   MLFLOW_HOST           bind address (default 127.0.0.1 — local only)
#   MLFLOW_PORT / PORT    port (default 5000)
#   MLFLOW_ALLOWED_HOSTS  value for --allowed-hosts (Host-header allow list, fnmatch
#                         patterns). Default: MLflow's own (localhost + private IPs)
#                         plus this machine's host names when MLFLOW_HOST is not a
#                         loopback address.
#   MLFLOW_BIN            mlflow executable (default <repo>/.venv/bin/mlflow, else PATH)
#   MLFLOW_START_TIMEOUT  seconds to wait for /health (default 90)
# Prints the tracking URI on the last line of stdout.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR="${1:-${MLFLOW_DIR:-$REPO/work/mlflow-server}}"
HOST="${MLFLOW_HOST:-127.0.0.1}"
PORT="${MLFLOW_PORT:-${PORT:-5000}}"
TIMEOUT="${MLFLOW_START_TIMEOUT:-90}"

log() { printf '[mlflow %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[mlflow %s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

if [[ -n "${MLFLOW_BIN:-}" ]]; then
    BIN="$MLFLOW_BIN"
elif [[ -x "$REPO/.venv/bin/mlflow" ]]; then
    BIN="$REPO/.venv/bin/mlflow"
else
    BIN="$(command -v mlflow)" || die "mlflow not found (set MLFLOW_BIN or install it in $REPO/.venv)"
fi
PY="$(dirname "$BIN")/python"
[[ -x "$PY" ]] || PY="$(command -v python3)"

mkdir -p "$DIR/artifacts"
DIR="$(cd "$DIR" && pwd)"
PIDFILE="$DIR/server.pid"
LOGFILE="$DIR/server.log"

# the address clients use: a wildcard bind is reached via this host's name
case "$HOST" in
    0.0.0.0|::|'[::]') CLIENT_HOST="$(hostname -f 2>/dev/null || hostname)" ;;
    *) CLIENT_HOST="$HOST" ;;
esac
URI="http://$CLIENT_HOST:$PORT"
HEALTH="http://$([[ "$HOST" == 0.0.0.0 || "$HOST" == :: || "$HOST" == '[::]' ]] && echo 127.0.0.1 || echo "$HOST"):$PORT/health"

healthy() { curl -fsS --max-time 2 "$HEALTH" >/dev/null 2>&1; }
alive() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

if alive; then
    if healthy; then
        log "already running (pid $(cat "$PIDFILE")) at $URI"
        echo "$URI"
        exit 0
    fi
    die "pid $(cat "$PIDFILE") from $PIDFILE is alive but $HEALTH does not answer (see $LOGFILE; stop it with cluster/mlflow/stop.sh)"
fi
rm -f "$PIDFILE"
if healthy; then
    die "something else already answers on $HEALTH (not started from $DIR) — pick another PORT"
fi

args=(server
      --backend-store-uri "sqlite:///$DIR/mlflow.db"
      --artifacts-destination "$DIR/artifacts"
      --serve-artifacts
      --host "$HOST" --port "$PORT" --workers 1)

# MLflow >= 3.5 rejects requests whose Host header is not allowed (403 "Invalid host
# header"; /health is exempt). 127.0.0.1/localhost are allowed by default; a server bound
# beyond loopback must also accept the names clients use to reach it.
allowed="${MLFLOW_ALLOWED_HOSTS:-}"
if [[ -z "$allowed" && "$HOST" != 127.* && "$HOST" != localhost && "$HOST" != ::1 ]]; then
    # MLflow's own defaults (the import fails on an mlflow without host validation,
    # and then no flag is passed)
    if defaults="$("$PY" -c 'from mlflow.server.security_utils import get_default_allowed_hosts as d; print(",".join(d()))' 2>/dev/null)"; then
        allowed="$defaults"
        declare -A seen=()
        for h in "$(hostname -s)" "$(hostname -f 2>/dev/null || true)" "$(hostname)" "$HOST"; do
            [[ -n "$h" && "$h" != 0.0.0.0 && "$h" != :: && -z "${seen[$h]:-}" ]] || continue
            seen[$h]=1
            allowed+=",$h,$h:*"
        done
    else
        log "this mlflow has no Host-header validation; not passing --allowed-hosts"
    fi
fi
[[ -n "$allowed" ]] && args+=(--allowed-hosts "$allowed")

log "starting $BIN ${args[*]}"
(
    for fd in /proc/"$BASHPID"/fd/*; do
        fd="${fd##*/}"
        if (( fd > 2 )); then eval "exec ${fd}>&-" 2>/dev/null || true; fi
    done
    cd "$DIR"
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false exec setsid "$BIN" "${args[@]}" </dev/null >>"$LOGFILE" 2>&1
) &
pid=$!
echo "$pid" > "$PIDFILE"

t0=$(date +%s)
until healthy; do
    if ! kill -0 "$pid" 2>/dev/null; then
        tail -n 40 "$LOGFILE" >&2 || true
        rm -f "$PIDFILE"
        die "mlflow server exited during start-up (log: $LOGFILE)"
    fi
    if (( $(date +%s) - t0 >= TIMEOUT )); then
        tail -n 40 "$LOGFILE" >&2 || true
        die "no answer on $HEALTH after ${TIMEOUT}s (pid $pid still running; log: $LOGFILE)"
    fi
    sleep 0.3
done
echo "$URI" > "$DIR/tracking_uri"
log "up in $(( $(date +%s) - t0 ))s (pid $pid): MLFLOW_TRACKING_URI=$URI (store $DIR)"
echo "$URI"
