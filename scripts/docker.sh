#!/usr/bin/env bash
# Docker for the kind suite and the image builds, set up by the repository, not by hand.
#
#   scripts/docker.sh up      # a daemon that answers: prints "started" if this call started
#                             # one (then the caller stops it with `down`), "running" if one was up
#   scripts/docker.sh down    # stop the dockerd that `up` started; never touch another one
#   scripts/docker.sh base    # make sure the base image (debian:bookworm-slim) is there:
#                             # pulled if a registry answers, else built with debootstrap
#
# Installs Debian's docker.io (and debootstrap for `base`) when missing. In a sandbox whose
# capability bounding set lacks CAP_SYS_RESOURCE, `docker run --privileged` (which kind's
# nodes need) is refused by runc; there the dockerd we start uses scripts/runc-wrapper, which
# drops that one capability from each spec. A daemon we did not start is never reconfigured.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${PIPEQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pipeq}
state="$cache/dockerd"
BASE=${PIPEQ_BASE_IMAGE:-debian:bookworm-slim}
sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo

apt_install() {
  echo "pipeq: installing $*" >&2
  export DEBIAN_FRONTEND=noninteractive
  # apt's lock may be held by another install for a while: wait for it rather than fail
  $sudo apt-get -o DPkg::Lock::Timeout=300 update -qq >&2
  $sudo apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "$@" >&2
}

answers() { timeout 10 docker info >/dev/null 2>&1; }

lacks_sys_resource() {
  # CAP_SYS_RESOURCE is capability 24
  local bnd; bnd=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
  (( (0x$bnd >> 24 & 1) == 0 ))
}

up() {
  if command -v docker >/dev/null && answers; then echo running; return; fi
  command -v dockerd >/dev/null || apt_install docker.io
  # Debian's package may have started its own service on install
  if answers; then echo running; return; fi
  mkdir -p "$state"
  exec 8>"$state/lock"; flock 8
  if answers; then echo running; return; fi
  local args=(--data-root /var/lib/docker --storage-driver overlay2)
  if lacks_sys_resource; then
    args+=(--add-runtime "pipeq-runc=$root/scripts/runc-wrapper" --default-runtime pipeq-runc)
  fi
  echo "pipeq: starting dockerd (log: $state/dockerd.log)" >&2
  $sudo setsid dockerd "${args[@]}" >"$state/dockerd.log" 2>&1 < /dev/null &
  echo $! > "$state/pid"
  for _ in $(seq 120); do
    if answers; then echo started; return; fi
    kill -0 "$(cat "$state/pid")" 2>/dev/null || break
    sleep 0.5
  done
  echo "pipeq: dockerd did not come up; the end of its log:" >&2
  tail -20 "$state/dockerd.log" >&2
  exit 1
}

down() {
  [ -f "$state/pid" ] || return 0
  local pid; pid=$(cat "$state/pid")
  if kill -0 "$pid" 2>/dev/null && grep -q dockerd "/proc/$pid/cmdline" 2>/dev/null; then
    $sudo kill -TERM "$pid"
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && $sudo kill -KILL "$pid"
  fi
  rm -f "$state/pid"
}

base() {
  docker image inspect "$BASE" >/dev/null 2>&1 && return
  if timeout 30 docker pull -q "$BASE" >/dev/null 2>&1; then return; fi
  command -v debootstrap >/dev/null || apt_install debootstrap
  local suite=${BASE#*:}; suite=${suite%%-*}
  local dir; dir=$(mktemp -d)
  trap 'rm -rf "$dir"' RETURN
  echo "pipeq: no registry answers; building $BASE with debootstrap (about a minute)" >&2
  $sudo debootstrap --variant=minbase "$suite" "$dir" >&2
  # what the slim image trims: the apt lists and caches
  $sudo rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb
  $sudo tar -C "$dir" -c . | docker import -c 'CMD ["bash"]' \
    -m "debootstrap --variant=minbase $suite (scripts/docker.sh)" - "$BASE" >/dev/null
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  base) up >/dev/null; base ;;
  *) echo "usage: scripts/docker.sh up|down|base" >&2; exit 2 ;;
esac
