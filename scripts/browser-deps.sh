#!/usr/bin/env bash
# Install Debian's chromium for the browser tests (never a browser download). Idempotent:
# nothing is done when /usr/bin/chromium exists.
set -euo pipefail
[ -x /usr/bin/chromium ] && exit 0
sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
echo "pipeq: installing chromium for the browser tests" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null
$sudo apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
