#!/usr/bin/env bash
# Install the system packages pipeq needs on Debian/Ubuntu: redis-server and the pipeline's tools.
# Idempotent and quick when everything is present (no apt call at all then).
set -euo pipefail
need=()
# openssl: the tests' TLS server certificates
for pair in redis-server:redis-server fastp:fastp minimap2:minimap2 samtools:samtools bcftools:bcftools bgzip:tabix openssl:openssl; do
  cmd=${pair%%:*}; pkg=${pair##*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
for extra in ${PIPEQ_EXTRA_DEBS:-}; do
  dpkg -s "$extra" >/dev/null 2>&1 || need+=("$extra")
done
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
echo "pipeq: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >&2
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
# Debian starts redis-server as a service on install; pipeq starts its own, so stop that one.
if [[ " ${need[*]} " == *" redis-server "* ]]; then
  ($sudo systemctl disable --now redis-server 2>/dev/null || $sudo service redis-server stop 2>/dev/null || true) >&2
fi
