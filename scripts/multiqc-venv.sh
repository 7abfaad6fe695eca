#!/usr/bin/env bash
# Print the path of a virtualenv holding MultiQC (pinned), creating it first if it is missing.
#
# MultiQC is a test tool here (tests/integration/test_multiqc.py reads finished jobs' folders
# with it) and for people who run it over many jobs (docs/pipeline.md): it stays out of
# pipeq's own venv and out of the product images. Cached like scripts/venv.sh, keyed by the
# Python version and the pin; concurrent callers wait on a lock.
set -euo pipefail
version=${PIPEQ_MULTIQC_VERSION:-1.35}
py=${PYTHON:-python3}
key=$( { "$py" -c 'import sys; print(sys.version)'; echo "multiqc==$version"; } | sha256sum | cut -c1-12)
cache=${PIPEQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pipeq}
venv="$cache/multiqc-$version-$key"
if [ ! -f "$venv/.complete" ]; then
  mkdir -p "$cache"
  exec 9>"$cache/multiqc.lock"
  flock 9
  if [ ! -f "$venv/.complete" ]; then
    echo "pipeq: creating MultiQC $version virtualenv $venv (a few minutes, once)" >&2
    rm -rf "$venv"
    "$py" -m venv "$venv" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip >&2
    "$venv/bin/pip" install -q --disable-pip-version-check "multiqc==$version" >&2
    touch "$venv/.complete"
  fi
fi
echo "$venv"
