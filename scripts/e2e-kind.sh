#!/usr/bin/env bash
# End-to-end on kind, for people with Docker: a kind cluster, both images built and loaded,
# the chart installed, then the same test body as on the test control plane
# (tests/e2e/body.py), then the cluster is deleted. Needs: docker, kind, kubectl, helm.
set -euo pipefail
cd "$(dirname "$0")/.."
for t in docker kind kubectl helm; do command -v $t >/dev/null || { echo "e2e-kind needs $t" >&2; exit 1; }; done
name=pipeq-e2e
kind create cluster --name "$name" --wait 120s
trap 'kind delete cluster --name "$name"' EXIT
docker build -t pipeq:e2e .
docker build -f worker_image/Dockerfile -t pipeq-worker:e2e .
kind load docker-image --name "$name" pipeq:e2e pipeq-worker:e2e
kubectl create namespace pipeq
kubectl label namespace pipeq pod-security.kubernetes.io/enforce=restricted
helm install pipeq helm/pipeq -n pipeq --wait --timeout 5m \
  --set image.tag=e2e --set workerImage.tag=e2e --set workerPool.scaleDownDelaySeconds=10
helm test pipeq -n pipeq
kubectl -n pipeq port-forward svc/pipeq-api 18000:80 >/dev/null 2>&1 &
pf=$!
trap 'kill $pf; kind delete cluster --name "$name"' EXIT
PY=$(scripts/venv.sh)/bin/python
PYTHONPATH=. $PY - <<'PYEOF'
import subprocess, tempfile
from pathlib import Path
from tests.e2e.body import run_end_to_end
kubectl = lambda *a: subprocess.run(["kubectl", *a], check=True, capture_output=True, text=True).stdout
seen = run_end_to_end("http://127.0.0.1:18000", kubectl, "pipeq", "default", Path(tempfile.mkdtemp()), scale_down_timeout=180)
print(seen["table"]); print("e2e-kind: OK", seen["job_id"])
PYEOF
helm uninstall pipeq -n pipeq --wait
