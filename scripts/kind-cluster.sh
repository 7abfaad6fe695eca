#!/usr/bin/env bash
# A kind cluster on the node image of scripts/kind-node-image.sh, checked before it is handed
# over.
#
#   scripts/kind-cluster.sh create NAME [--kubeconfig PATH] [--workers N] [--no-check]
#   scripts/kind-cluster.sh delete NAME [--kubeconfig PATH]
#
# `create` makes one control-plane node (+ N workers), its API server on 127.0.0.1 (a free
# port; the kubeconfig says which), writes the kubeconfig to PATH (default
# .kind/NAME/kubeconfig under the repository) and prints its path. It returns once every node
# is Ready, CoreDNS answers and, unless --no-check, a pod in a namespace enforcing the
# `restricted` Pod Security level, as uid 10001 with an fsGroup, has written to a PVC of the
# default StorageClass, resolved `kubernetes.default` (the search path) and reached a Service
# by its DNS name through its ClusterIP (kube-proxy, iptables mode). On failure it prints what
# it saw and deletes the cluster.
#
# On the assembled image (no registry here): no default CNI (kindnetd cannot be had), a
# bridge conflist that containerd writes from each node's podCIDR, routes between the nodes'
# pod CIDRs added here, and kubelet's `failCgroupV1: false` (this machine has cgroup v1).
# kind, kubectl (run inside the node: always the node's own version) and Docker come from
# the repository's scripts; a dockerd it had to start is left running for the cluster.
set -Eeuo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
usage() { echo "usage: scripts/kind-cluster.sh create|delete NAME [--kubeconfig PATH] [--workers N] [--no-check]" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1 name=$2; shift 2
kubeconfig="$root/.kind/$name/kubeconfig"
workers=0
check=1
while [ $# -gt 0 ]; do
  case $1 in
    --kubeconfig) kubeconfig=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --no-check) check=0; shift ;;
    *) usage ;;
  esac
done
[[ $workers =~ ^[0-9]+$ ]] || usage
log() { echo "pipeq: kind-cluster: $*" >&2; }
kind="$("$root/tools/gobuild.sh" kind)/kind"
control=$name-control-plane
# kubectl as the cluster's admin, inside the control-plane node
k() { docker exec -i "$control" kubectl --kubeconfig=/etc/kubernetes/admin.conf "$@"; }

delete() {
  "$kind" delete cluster --name "$name" --kubeconfig "$kubeconfig" >&2
  rm -f "$kubeconfig"
}

config() { # IMAGE
  local assembled=$1
  echo "kind: Cluster"
  echo "apiVersion: kind.x-k8s.io/v1alpha4"
  echo "networking:"
  echo "  apiServerAddress: 127.0.0.1"
  [ -z "$assembled" ] || echo "  disableDefaultCNI: true"
  echo "nodes:"
  echo "- role: control-plane"
  for _ in $(seq "$workers"); do echo "- role: worker"; done
  # kubelet 1.36 refuses a cgroup v1 host unless told not to (a no-op on cgroup v2)
  cat <<'EOF'
kubeadmConfigPatches:
- |
  kind: KubeletConfiguration
  failCgroupV1: false
EOF
}

# Plain bridges do not route between nodes: each node learns every other node's pod CIDR.
add_routes() {
  local nodes n m
  nodes=$(k get nodes -o jsonpath='{range .items[*]}{.metadata.name} {.spec.podCIDR} {.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}')
  while read -r n _ _; do
    while read -r m cidr ip; do
      [ "$n" = "$m" ] || docker exec "$n" ip route replace "$cidr" via "$ip"
    done <<<"$nodes"
  done <<<"$nodes"
}

all_have_pod_cidrs() {
  [ "$(k get nodes -o jsonpath='{range .items[*]}{.spec.podCIDR}{"\n"}{end}' | grep -c /)" -eq $(( workers + 1 )) ]
}

until_ok() { # SECONDS WHAT COMMAND...
  local deadline=$(( $(date +%s) + $1 )) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then log "timed out waiting for $what"; return 1; fi
    sleep 1
  done
}

# The proof that pods can be run as the product runs them (see the header).
smoke() {
  local image=$1 coredns
  coredns=$(k -n kube-system get deploy coredns -o jsonpath='{.spec.template.spec.containers[0].image}')
  k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: kind-check
  labels:
    pod-security.kubernetes.io/enforce: restricted
---
apiVersion: v1
kind: ConfigMap
metadata: {name: echo, namespace: kind-check}
data:
  Corefile: |
    .:1053 {
      health :8080
      whoami
    }
---
apiVersion: v1
kind: Pod
metadata: {name: echo, namespace: kind-check, labels: {app: echo}}
spec:
  securityContext: {runAsNonRoot: true, runAsUser: 10001, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: echo
    image: $coredns
    imagePullPolicy: Never
    args: ["-conf", "/etc/coredns/Corefile"]
    ports: [{containerPort: 8080}]
    readinessProbe: {httpGet: {path: /health, port: 8080}, periodSeconds: 1}
    securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
    volumeMounts: [{name: conf, mountPath: /etc/coredns}]
  volumes: [{name: conf, configMap: {name: echo}}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: kind-check}
spec:
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data, namespace: kind-check}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 10Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: kind-check}
spec:
  restartPolicy: Never
  securityContext: {runAsNonRoot: true, runAsUser: 10001, runAsGroup: 10001, fsGroup: 10001, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: client
    image: $image
    imagePullPolicy: Never
    securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
    command:
    - bash
    - -ec
    - |
      id
      echo written-by-\$(id -u) > /data/probe && cat /data/probe && ls -ln /data
      getent hosts echo.kind-check.svc.cluster.local
      getent hosts kubernetes.default
      for i in \$(seq 30); do
        (exec 3<>/dev/tcp/echo.kind-check.svc.cluster.local/80) 2>/dev/null && break
        sleep 1
      done
      exec 3<>/dev/tcp/echo.kind-check.svc.cluster.local/80
      printf 'GET /health HTTP/1.0\r\n\r\n' >&3
      reply=\$(cat <&3)
      echo "\$reply"
      [[ \$reply == *"200 OK"* ]]
    volumeMounts: [{name: data, mountPath: /data}]
  volumes: [{name: data, persistentVolumeClaim: {claimName: data}}]
EOF
  local phase=""
  for _ in $(seq 120); do
    phase=$(k -n kind-check get pod client -o jsonpath='{.status.phase}')
    [ "$phase" = Succeeded ] || [ "$phase" = Failed ] && break
    sleep 1
  done
  k -n kind-check logs client >&2 || true
  if [ "$phase" != Succeeded ]; then
    log "the check pod ended as '${phase:-unknown}'"
    k -n kind-check get pods,pvc,svc,endpointslices -o wide >&2 || true
    k -n kind-check describe pods >&2 || true
    k -n local-path-storage get pods -o wide >&2 || true
    return 1
  fi
  k delete namespace kind-check --wait=false >/dev/null
}

create() {
  local start image assembled helper=debian:bookworm-slim
  start=$(date +%s)
  # a failed create deletes what it made: never a cluster that was there before
  if "$kind" get clusters 2>/dev/null | grep -qxF "$name"; then
    log "a kind cluster named $name exists already (scripts/kind-cluster.sh delete $name)"; exit 1
  fi
  image=$("$root/scripts/kind-node-image.sh")
  assembled=$(docker image inspect -f '{{index .Config.Labels "dev.pipeq.kind-node.assembled"}}' "$image")
  mkdir -p "$(dirname "$kubeconfig")"
  log "creating $name on $image ($workers workers)"
  if ! config "$assembled" | "$kind" create cluster --name "$name" --image "$image" \
      --kubeconfig "$kubeconfig" --config - >&2; then
    log "kind create failed"; delete >/dev/null 2>&1 || true; exit 1
  fi
  trap 'log "cluster $name failed its checks: deleting it"; delete' ERR
  if [ -n "$assembled" ]; then
    until_ok 60 "every node's podCIDR" all_have_pod_cidrs
    add_routes
  fi
  k wait --for=condition=Ready node --all --timeout=120s >&2
  k -n kube-system rollout status deploy/coredns --timeout=120s >&2
  until_ok 60 "CoreDNS to answer" \
    docker exec "$control" bash -c 'exec 3<>/dev/tcp/$(kubectl --kubeconfig=/etc/kubernetes/admin.conf -n kube-system get svc kube-dns -o jsonpath={.spec.clusterIP})/53'
  if [ $check = 1 ]; then
    # the published image has no Debian image inside: give it ours
    [ -n "$assembled" ] || "$kind" load docker-image --name "$name" "$helper" >&2
    smoke "docker.io/library/$helper"
  fi
  trap - ERR
  log "cluster $name ready in $(( $(date +%s) - start ))s; API $(grep -m1 'server:' "$kubeconfig" | awk '{print $2}')"
  echo "$kubeconfig"
}

case $cmd in
  create) create ;;
  delete) delete ;;
  *) usage ;;
esac
