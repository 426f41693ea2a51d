#!/usr/bin/env bash
# Download the GPU check's wheels (bench/gpu/requirements.txt) for the GPU machine's
# Python into bench/gpu/wheels/ (git-ignored; carried to the machine with the run).
#   bash bench/gpu/fetch_wheels.sh          # cp312 (the GPU machine's Python)
#   bash bench/gpu/fetch_wheels.sh 3.11 /tmp/wheels-311   # this machine's Python: rehearse --cpu here
# Packages published only as source (pure Python, e.g. cellpylib) are built into wheels here.
set -euo pipefail
cd "$(dirname "$0")"
pyver="${1:-3.12}"
dest="$(realpath -m "${2:-wheels}")"
pip=(python3 -m pip)
rm -rf "$dest" && mkdir -p "$dest"
while read -r req; do
  req="${req%%#*}"; req="${req// /}"
  [[ -z "$req" ]] && continue
  if ! "${pip[@]}" download --quiet --no-deps --only-binary=:all: --dest "$dest" \
      --python-version "$pyver" --implementation cp \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
      "$req" 2>/dev/null; then
    # No wheel for that Python: a pure-Python sdist builds into a wheel that runs anywhere;
    # a C extension (pycosat) for another Python travels as its sdist and check.py builds
    # it there (or, failing that, says so and stands in for it).
    if [[ "$pyver" == "$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')" ]]; then
      "${pip[@]}" wheel --quiet --no-deps --wheel-dir "$dest" "$req"
    else
      tmp="$(mktemp -d)"
      "${pip[@]}" wheel --quiet --no-deps --wheel-dir "$tmp" "$req"
      if ls "$tmp"/*-py3-none-any.whl >/dev/null 2>&1 || ls "$tmp"/*-py2.py3-none-any.whl >/dev/null 2>&1; then
        mv "$tmp"/*.whl "$dest"/
      else
        "${pip[@]}" download --quiet --no-deps --no-binary=:all: --dest "$dest" "$req"
      fi
      rm -rf "$tmp"
    fi
  fi
done < requirements.txt
ls "$dest" | wc -l
du -sh "$dest"
