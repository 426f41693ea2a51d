#!/usr/bin/env bash
# Install the Debian packages the dev Slurm cluster needs (idempotent).
# Skips apt entirely when everything is already installed.
set -euo pipefail

PKGS=(slurm-wlm slurmdbd munge mariadb-server mariadb-client)

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install.sh: all packages already installed: ${PKGS[*]}"
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "install.sh: must run as root to install: ${missing[*]}" >&2
    exit 1
fi

echo "install.sh: installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${missing[@]}"
echo "install.sh: done"
