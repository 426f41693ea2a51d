#!/usr/bin/env bash
# Start an MLflow tracking server for slingshot (idempotent) and wait until /health answers.
#
#   cluster/mlflow/serve.sh [DIR]
#
# DIR (or $MLFLOW_DIR; default <repo>/work/mlflow-server) holds mlflow.db (SQLite backend
# store), artifacts/ (proxied artifact store), server.log, server.pid and tracking_uri.
#
# Authentication: MLflow's basic-auth app (`mlflow server --app-name basic-auth`). On the
# first start the script creates, each in a file only its owner may read (mode 600):
#   DIR/auth/auth.ini      the app's config: the admin user and its generated password
#   DIR/auth/secret_key    the Flask secret key (CSRF protection of the UI's forms)
#   DIR/credentials        MLFLOW_TRACKING_USERNAME=slingshot / MLFLOW_TRACKING_PASSWORD=...
#                          (the pipeline's user, created through the admin): point
#                          tracking.credentials_file at it
# Unauthenticated requests are refused (401); other users may read (default_permission READ).
# Env:
#   SLINGSHOT_SITE        a site (cluster/<site>.yaml, or a path): its `tracking: {host, port}`
#                         is where the server listens (the address compute nodes reach)
#   MLFLOW_HOST           bind address (overrides the site; default 127.0.0.1 — local only)
#   MLFLOW_PORT / PORT    port (overrides the site; default 5000)
#   MLFLOW_ALLOWED_HOSTS  value for --allowed-hosts (Host-header allow list, fnmatch
#                         patterns). Default: MLflow's own (localhost + private IPs)
#                         plus this machine's host names when MLFLOW_HOST is not a
#                         loopback address.
#   MLFLOW_BIN            mlflow executable (default <repo>/.venv/bin/mlflow, else PATH)
#   MLFLOW_START_TIMEOUT  seconds to wait for /health (default 90)
#   MLFLOW_PIPELINE_USER  the pipeline's user name (default slingshot)
# Prints the tracking URI on the last line of stdout.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR="${1:-${MLFLOW_DIR:-$REPO/work/mlflow-server}}"
TIMEOUT="${MLFLOW_START_TIMEOUT:-90}"
PIPELINE_USER="${MLFLOW_PIPELINE_USER:-slingshot}"

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

# The site's tracking section: where compute nodes reach the server (env overrides it).
SITE_HOST="" SITE_PORT=""
if [[ -n "${SLINGSHOT_SITE:-}" ]]; then
    read -r SITE_HOST SITE_PORT < <(cd "$REPO" && SLINGSHOT_SITE_DIR="${SLINGSHOT_SITE_DIR:-$REPO/cluster}" "$PY" -c '
import sys
from slingshot.launch.site import SiteError, load_site
try:
    site = load_site(None)
except SiteError as error:
    sys.exit(f"SLINGSHOT_SITE: {error}")
t = site.tracking
print(t.host if t else "-", t.port if t else "-")
') || die "could not read the site file of SLINGSHOT_SITE=$SLINGSHOT_SITE"
    [[ "$SITE_HOST" == - ]] && SITE_HOST="" SITE_PORT=""
fi
HOST="${MLFLOW_HOST:-${SITE_HOST:-127.0.0.1}}"
PORT="${MLFLOW_PORT:-${PORT:-${SITE_PORT:-5000}}}"

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

# --- authentication: generated once, kept in files of mode 600
umask 077
mkdir -p "$DIR/auth"
chmod 700 "$DIR/auth"
secret() { "$PY" -c 'import secrets; print(secrets.token_urlsafe(24))'; }
if [[ ! -s "$DIR/auth/auth.ini" ]]; then
    cat > "$DIR/auth/auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = sqlite:///$DIR/auth/basic_auth.db
admin_username = admin
admin_password = $(secret)
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# A password check (PBKDF2) costs ~0.3 s of CPU: cache a successful one for a minute, or
# every metric batch of every job pays it (a changed password takes up to that long).
auth_cache_ttl_seconds = 60
INI
fi
[[ -s "$DIR/auth/secret_key" ]] || secret > "$DIR/auth/secret_key"
if [[ ! -s "$DIR/credentials" ]]; then
    printf 'MLFLOW_TRACKING_USERNAME=%s\nMLFLOW_TRACKING_PASSWORD=%s\n' "$PIPELINE_USER" "$(secret)" > "$DIR/credentials"
fi
chmod 600 "$DIR/auth/auth.ini" "$DIR/auth/secret_key" "$DIR/credentials"
umask 022

args=(server --app-name basic-auth
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
    MLFLOW_AUTH_CONFIG_PATH="$DIR/auth/auth.ini" MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$DIR/auth/secret_key")" \
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
# The pipeline's user, created through the admin (idempotent; passwords never on a command line).
AUTH_INI="$DIR/auth/auth.ini" CREDENTIALS="$DIR/credentials" BASE="${HEALTH%/health}" "$PY" - <<'PYTHON' \
    || die "could not create the pipeline's MLflow user (see $LOGFILE)"
import configparser, os, sys
import requests
ini = configparser.ConfigParser()
ini.read(os.environ["AUTH_INI"])
admin = (ini["mlflow"]["admin_username"], ini["mlflow"]["admin_password"])
creds = dict(line.split("=", 1) for line in open(os.environ["CREDENTIALS"]).read().split())
user, password = creds["MLFLOW_TRACKING_USERNAME"], creds["MLFLOW_TRACKING_PASSWORD"]
base = os.environ["BASE"] + "/api/2.0/mlflow/users"
known = requests.get(f"{base}/get", params={"username": user}, auth=admin, timeout=30)
if known.status_code == 200:
    sys.exit(0)
made = requests.post(f"{base}/create", json={"username": user, "password": password}, auth=admin, timeout=30)
if made.status_code != 200:
    sys.exit(f"creating user {user}: HTTP {made.status_code} {made.text[:300]}")
PYTHON
echo "$URI" > "$DIR/tracking_uri"
log "up in $(( $(date +%s) - t0 ))s (pid $pid): MLFLOW_TRACKING_URI=$URI (store $DIR; basic auth, pipeline credentials in $DIR/credentials)"
echo "$URI"
