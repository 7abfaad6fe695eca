#!/usr/bin/env bash
# Print the name of a kind node image for the Kubernetes version of tools/go.mod (1.36.5),
# building it only when it is missing.
#
#   scripts/kind-node-image.sh            # ensure an image, print its name
#   scripts/kind-node-image.sh --check    # print the assembled image's name; exit 1 if absent
#
# kind's published image (kindest/node:v1.36.5) is used where it is present or can be pulled
# (a laptop). Where no registry answers (this project's machines), the image is assembled from
# Go modules and Debian packages (tools/README.md, "kind node image"):
#   - kubelet, kubeadm, kubectl, kube-scheduler, kube-proxy: `tools/build.sh node`; etcd,
#     kube-apiserver, kube-controller-manager: `tools/build.sh` (one module, one build cache);
#   - CoreDNS, local-path-provisioner, pause: `tools/gobuild.sh coredns|local-path-provisioner|pause`;
#   - the images kubeadm expects (`kubeadm config images list`), under exactly those names,
#     plus the provisioner and its helper, are imported into the node's containerd with
#     `ctr -n k8s.io images import --no-unpack` (as `kind build node-image` does), so no pod
#     ever pulls;
#   - the node's base: tools/kind-node/Dockerfile (debian:bookworm-slim, Debian's systemd,
#     containerd 1.6, runc, CNI plugins, and kind's images/base/files from the kind module).
# The result is cached in Docker as pipeq/kind-node:<k8s>-<hash of every input>, so it is
# rebuilt only when an input changes. Legacy builder only (DOCKER_BUILDKIT=0).
#
# Starts dockerd through scripts/docker.sh when none answers and leaves it running (the
# cluster needs it; `scripts/docker.sh down` stops what was started).
# Environment: PIPEQ_KIND_PUBLISHED_IMAGE (default kindest/node:<k8s>; empty: never use one),
# PIPEQ_CACHE.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v go >/dev/null || PATH="$PATH:/usr/local/go/bin"
export DOCKER_BUILDKIT=0
cache=${PIPEQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pipeq}
log() { echo "pipeq: kind-node-image: $*" >&2; }

k8s=$(cd tools && go mod edit -json | python3 -c '
import json, sys
print(next(r["Version"] for r in json.load(sys.stdin)["Require"] if r["Path"] == "k8s.io/kubernetes"))')
published=${PIPEQ_KIND_PUBLISHED_IMAGE-kindest/node:$k8s}
base_image=debian:bookworm-slim

scripts/docker.sh base >&2

# Everything the image is made from: these scripts and files, every Go module's go.mod/go.sum
# (the kind version among them), the pause source, and the base image's id (which stands for
# scripts/docker.sh's part).
inputs=(scripts/kind-node-image.sh tools/build.sh tools/gobuild.sh tools/cache.sh
        tools/go.mod tools/go.sum tools/kind-node/* tools/{coredns,pause}/main.go
        tools/{kind,coredns,local-path-provisioner,pause}/go.mod
        tools/{kind,coredns,local-path-provisioner}/go.sum)
hash=$( { sha256sum "${inputs[@]}"; docker image inspect -f '{{.Id}}' "$base_image"; } \
        | sha256sum | cut -c1-12)
tag=pipeq/kind-node:$k8s-$hash

if [ "${1:-}" = --check ]; then
  echo "$tag"; docker image inspect "$tag" >/dev/null 2>&1; exit
fi
if [ -n "$published" ] && docker image inspect "$published" >/dev/null 2>&1; then
  echo "$published"; exit 0
fi
if docker image inspect "$tag" >/dev/null 2>&1; then echo "$tag"; exit 0; fi
if [ -n "$published" ] && timeout 60 docker pull -q "$published" >/dev/null 2>&1; then
  echo "$published"; exit 0
fi

mkdir -p "$cache"
exec 7>"$cache/kind-node-image.lock"
flock 7
if docker image inspect "$tag" >/dev/null 2>&1; then echo "$tag"; exit 0; fi
log "no node image for $k8s can be pulled: assembling $tag (once per change of its inputs)"
start=$(date +%s)
work=$(mktemp -d)
cid=""
made=()
cleanup() {
  [ -z "$cid" ] || docker rm -f "$cid" >/dev/null 2>&1 || true
  [ ${#made[@]} -eq 0 ] || docker rmi "${made[@]}" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

cp_bin=$(tools/build.sh)
node_bin=$(tools/build.sh node)
coredns_bin=$(tools/gobuild.sh coredns)
lpp_bin=$(tools/gobuild.sh local-path-provisioner)
pause_bin=$(tools/gobuild.sh pause)
kind_dir=$(cd tools/kind && go mod download -json sigs.k8s.io/kind | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
lpp_version=$(cd tools/local-path-provisioner && go list -m -f '{{.Version}}' github.com/rancher/local-path-provisioner)
log "binaries ready after $(( $(date +%s) - start ))s"

# An image of one static binary, named as the node will ask for it.
scratch_image() { # NAME BINARY [ENTRYPOINT]
  local name=$1 binary=$2 entrypoint=${3:-} dir="$work/rootfs-${1//[\/:]/_}"
  mkdir -p "$dir/usr/local/bin" "$dir/tmp"
  chmod 1777 "$dir/tmp"
  cp "$binary" "$dir/usr/local/bin/"
  local changes=(--change "ENV PATH=/usr/local/bin:/usr/bin:/bin")
  [ -z "$entrypoint" ] || changes+=(--change "ENTRYPOINT [\"$entrypoint\"]")
  tar -C "$dir" -c . | docker import "${changes[@]}" - "$name" >/dev/null
  rm -rf "$dir"
  made+=("$name")
}

# The names kubeadm will use, from kubeadm itself.
images=()
pause_image=""
coredns_image=""
for ref in $("$node_bin/kubeadm" config images list --kubernetes-version "$k8s" 2>/dev/null); do
  name=${ref##*/}; name=${name%%:*}
  case $name in
    kube-apiserver|kube-controller-manager) scratch_image "$ref" "$cp_bin/$name" ;;
    kube-scheduler) scratch_image "$ref" "$node_bin/$name" ;;
    etcd) scratch_image "$ref" "$cp_bin/etcd" ;;
    coredns) scratch_image "$ref" "$coredns_bin/coredns" /usr/local/bin/coredns; coredns_image=$ref ;;
    pause) scratch_image "$ref" "$pause_bin/pause" /usr/local/bin/pause; pause_image=$ref ;;
    kube-proxy)
      mkdir -p "$work/kube-proxy"
      cp "$node_bin/kube-proxy" tools/kind-node/{kube-proxy.Dockerfile,iptables-wrapper} "$work/kube-proxy/"
      docker build -q -f "$work/kube-proxy/kube-proxy.Dockerfile" -t "$ref" "$work/kube-proxy" >/dev/null
      made+=("$ref") ;;
    *) log "kubeadm lists $ref, which this script does not know how to make"; exit 1 ;;
  esac
  images+=("$ref")
done
[ -n "$pause_image" ] && [ -n "$coredns_image" ] || { log "kubeadm listed no pause or coredns image"; exit 1; }
# The default StorageClass: rancher's provisioner and, for its helper pods (mkdir/rm with a
# shell), the Debian base that is local anyway (its layer is kube-proxy's base layer too).
lpp_image=localhost/pipeq/local-path-provisioner:$lpp_version
helper_image=docker.io/library/$base_image
scratch_image "$lpp_image" "$lpp_bin/local-path-provisioner"
images+=("$lpp_image" "$helper_image")
log "component images ready after $(( $(date +%s) - start ))s: ${images[*]}"

# The node's build context: kind's base files, with the modes kind's Dockerfile gives them
# (COPY --chmod, which the legacy builder lacks), our files and the node's binaries.
ctx="$work/node"
mkdir -p "$ctx/bin" "$ctx/kind/manifests"
cp -r "$kind_dir/images/base/files" "$ctx/files"
chmod -R u+w,go-w "$ctx/files"
find "$ctx/files" -type d -exec chmod 0755 {} +
find "$ctx/files" -type f -exec chmod 0644 {} +
chmod 0755 "$ctx"/files/usr/local/bin/* "$ctx"/files/kind/bin/*
# ours replaces kind's containerd config (and, present before the install, it would stop
# Debian's containerd package at its conffile prompt)
rm "$ctx/files/etc/containerd/config.toml"
cp tools/kind-node/{Dockerfile,cni.template,pipeq-unclaimed.service} "$ctx/"
sed "s|@PAUSE_IMAGE@|$pause_image|" tools/kind-node/containerd-config.toml > "$ctx/containerd-config.toml"
cp "$node_bin"/{kubelet,kubeadm,kubectl} "$ctx/bin/"
echo "$k8s" > "$ctx/kind/version"
# kind's own storage manifest (pkg/build/nodeimage/const_storage.go), with our two images
python3 - "$kind_dir/pkg/build/nodeimage/const_storage.go" "$lpp_image" "$helper_image" \
  > "$ctx/kind/manifests/default-storage.yaml" <<'PY'
import re, sys
src, provisioner, helper = sys.argv[1], sys.argv[2], sys.argv[3]
go = open(src).read()
manifest = re.search(r"const defaultStorageManifest = `(.*?)\n`", go, re.S).group(1)
manifest = manifest.replace("` + storageProvisionerImage + `", provisioner)
manifest = manifest.replace("` + storageHelperImage + `", helper)
assert "`" not in manifest and provisioner in manifest and helper in manifest, manifest
print(manifest)
PY
base_tag=pipeq/kind-node-base:$hash
docker build -q -t "$base_tag" "$ctx" >/dev/null
made+=("$base_tag")
log "node base ready after $(( $(date +%s) - start ))s"

# Preload: containerd alone in the base (privileged, as kind's build does), then commit.
cid=$(docker run -d --privileged --entrypoint containerd "$base_tag")
for _ in $(seq 60); do docker exec "$cid" ctr version >/dev/null 2>&1 && break; sleep 0.5; done
docker save "${images[@]}" \
  | docker exec -i "$cid" ctr -n k8s.io images import --all-platforms --no-unpack --digests - >/dev/null
have=$(docker exec "$cid" ctr -n k8s.io images ls -q)
for ref in "${images[@]}"; do
  grep -qxF "$ref" <<<"$have" || { log "$ref missing from the node's containerd after the import"; exit 1; }
done
docker exec "$cid" pkill containerd
timeout 30 docker wait "$cid" >/dev/null
docker commit \
  --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' \
  --change "LABEL dev.pipeq.kind-node.assembled=$k8s" \
  "$cid" "$tag" >/dev/null
# older assembled images are dead weight (one still used by a cluster stays)
for old in $(docker images pipeq/kind-node --format '{{.Repository}}:{{.Tag}}'); do
  [ "$old" = "$tag" ] || docker rmi "$old" >/dev/null 2>&1 || true
done
log "built $tag in $(( $(date +%s) - start ))s ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
echo "$tag"
