#!/usr/bin/env bash
# Build pipeq's images with Docker: pipeq (API and operator) and pipeq-worker, the targets
# `api` and `worker` of ./Dockerfile (one build stage), and pipeq-redis (redis_image/Dockerfile,
# for clusters that cannot pull the chart's default Redis), all tagged TAG.
#
#   scripts/images.sh [--tag TAG] [pipeq] [worker] [redis]     # default: all three, TAG 0.1.0
#
# Python packages come from a wheelhouse built on this machine (cached by a hash of
# requirements.txt) and copied into build/wheels, and the images install from it alone
# (PIP_NO_INDEX=1): containers here cannot verify PyPI's certificate, and a laptop saves the
# downloads. A plain `docker build .` works too where the container reaches PyPI.
# Needs a running Docker (scripts/docker.sh up) and the base image (scripts/docker.sh base).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tag=0.1.0
if [ "${1:-}" = "--tag" ]; then tag=$2; shift 2; fi
which=("$@"); [ ${#which[@]} -eq 0 ] && which=(pipeq worker redis)
cache=${PIPEQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pipeq}

key=$( { echo cp311-manylinux; cat requirements.txt; grep -A3 "^\[build-system\]" pyproject.toml; } | sha256sum | cut -c1-12)
wheels="$cache/wheels-$key"
if [ ! -f "$wheels/.complete" ]; then
  mkdir -p "$cache"
  exec 9>"$cache/wheels.lock"; flock 9
  if [ ! -f "$wheels/.complete" ]; then
    echo "pipeq: building the wheelhouse $wheels (once per requirements.txt)" >&2
    rm -rf "$wheels"; mkdir -p "$wheels"
    # the images' python is Debian bookworm's 3.11: wheels for CPython 3.11 on glibc
    # with pipeq's build backend (pyproject.toml's build-system), for the isolated build of pipeq
    build_requires=$(python3 -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"])')
    "$(scripts/venv.sh)/bin/pip" wheel -q --disable-pip-version-check -r requirements.txt $build_requires -w "$wheels" >&2
    touch "$wheels/.complete"
  fi
fi
# the worker image ships the pinned plotly for fastp.html (build/vendor/)
scripts/plotly.sh >/dev/null
find build/wheels -name '*.whl' -delete 2>/dev/null || true
mkdir -p build/wheels
cp "$wheels"/*.whl build/wheels/

export DOCKER_BUILDKIT=0
# Each build that changes an image leaves the one it replaced, and its build stage's result,
# untagged (~0.9 GB a code change, kept by a machine that runs CI again and again): build()
# removes the image it replaced, and the end of this script all but the newest stage results.
build() {  # NAME DOCKERFILE [TARGET]
  local start old new; start=$(date +%s.%N)
  old=$(docker image inspect -f '{{.Id}}' "$1:$tag" 2>/dev/null || true)
  docker build -q --build-arg PIP_NO_INDEX=1 -f "$2" ${3:+--target "$3"} -t "$1:$tag" . >/dev/null
  new=$(docker image inspect -f '{{.Id}}' "$1:$tag")
  # refused (and left) while another tag or a container uses it
  if [ -n "$old" ] && [ "$old" != "$new" ]; then docker rmi "$old" >/dev/null 2>&1 || true; fi
  printf 'pipeq: built %s:%s in %ss (%s)\n' "$1" "$tag" "$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')" \
    "$(docker image inspect -f '{{.Size}}' "$1:$tag" | awk '{printf "%.0f MB", $1/1e6}')" >&2
}
for w in "${which[@]}"; do
  case $w in
    pipeq) build pipeq Dockerfile api ;;
    worker) build pipeq-worker Dockerfile worker ;;
    redis) build pipeq-redis redis_image/Dockerfile ;;
    *) echo "scripts/images.sh: unknown image $w (pipeq, worker, redis)" >&2; exit 2 ;;
  esac
done
# the newest results of the build stages are the cache of the next build: keep two
docker images -q -f dangling=true -f label=pipeq.dev/stage=build | tail -n +3 | xargs -r docker rmi >/dev/null 2>&1 || true
