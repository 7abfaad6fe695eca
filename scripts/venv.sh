#!/usr/bin/env bash
# Print the path of pipeq's virtualenv, creating it first if it is missing.
#
# The venv lives outside the checkout (CI runs in a fresh clone on the same machine) and is
# keyed by the Python version and a hash of the requirements files, so a change of pins
# builds a new one and an unchanged checkout reuses the old one at once. Concurrent callers
# wait on a lock; `.complete` marks a venv whose install finished.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
key=$( { "$py" -c 'import sys; print(sys.version)'; cat requirements.txt requirements-dev.txt; } | sha256sum | cut -c1-12)
cache=${PIPEQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pipeq}
venv="$cache/venv-$key"
if [ ! -f "$venv/.complete" ]; then
  mkdir -p "$cache"
  exec 9>"$cache/venv.lock"
  flock 9
  if [ ! -f "$venv/.complete" ]; then
    echo "pipeq: creating virtualenv $venv (a few minutes, once)" >&2
    rm -rf "$venv"
    "$py" -m venv "$venv" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip >&2
    "$venv/bin/pip" install -q --disable-pip-version-check -r requirements-dev.txt >&2
    touch "$venv/.complete"
  fi
fi
echo "$venv"
