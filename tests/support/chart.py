"""Rendering the chart: one place for the helm flags, used by `make manifests` and the tests."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "pipeq"
KUBE_VERSION = "1.36.0"


@functools.lru_cache(maxsize=None)
def helm_bin() -> str:
    out = subprocess.run([str(ROOT / "tools" / "build.sh")], capture_output=True, text=True, check=True).stdout
    return str(Path(out.strip()) / "helm")


#: the value sets the tests render and the linters check (tests/cluster/test_chart_lint.py)
VALUE_SETS: dict[str, list[str]] = {
    "default": [],
    "s3": ["storage.type=s3", "storage.s3.bucket=lab-jobs", "storage.s3.endpoint=http://minio.storage:9000",
           "storage.s3.existingSecret=pipeq-s3"],
    "oidc": ["api.auth.oidc.issuer=https://keycloak.example.org/realms/lab", "api.auth.oidc.audience=pipeq",
             "api.auth.oidc.webClientId=pipeq-web", "api.auth.oidc.adminGroups[0]=pipeq-admins",
             "api.auth.oidc.userGroups[0]=genomics", "quotas.activeJobs=20", "quotas.groups.genomics.activeJobs=50",
             "fairShare.weights.genomics=2"],
    "external-redis": ["redis.enabled=false", "redis.external.existingSecret=pipeq-redis-url"],
    "no-networkpolicy": ["networkPolicy.enabled=false"],
    "monitoring": ["metrics.serviceMonitor.enabled=true", "metrics.podMonitor.enabled=true",
                   "metrics.prometheusRule.enabled=true"],
    "site-knobs": ["imagePullSecrets[0].name=regcred", "priorityClassName=batch",
                   "image.digest=sha256:" + "a" * 64, "api.nodeSelector.disk=ssd", "operator.tolerations[0].key=infra",
                   "operator.tolerations[0].operator=Exists", "redis.podAnnotations.backup=velero",
                   "workerPool.extraVolumes[0].name=refs", "workerPool.extraVolumes[0].persistentVolumeClaim.claimName=refs",
                   "workerPool.extraVolumeMounts[0].name=refs", "workerPool.extraVolumeMounts[0].mountPath=/refs",
                   "workerPool.extraVolumeMounts[0].readOnly=true",
                   "serviceAccountAnnotations.iam\\.gke\\.io/gcp-service-account=pipeq@p.iam.gserviceaccount.com"],
}


def render(*sets: str, namespace: str = "pipeq", release: str = "pipeq", hooks: bool = False) -> str:
    """``helm template`` of the chart (CRDs included; hooks and test pods only with ``hooks``)."""
    cmd = [helm_bin(), "template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION,
           "--include-crds"]
    if not hooks:
        cmd += ["--skip-tests", "--no-hooks"]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def objects(*sets: str, **kw) -> list[dict]:
    """The rendered chart as objects."""
    import yaml

    return [d for d in yaml.safe_load_all(render(*sets, **kw)) if d]


#: manifests/ holds no secret: it names Secrets the user makes first (MANIFEST_HEADER)
MANIFEST_SETS = ["api.auth.existingSecret=pipeq-api-token", "redis.auth.existingSecret=pipeq-redis-auth"]
MANIFEST_HEADER = """\
# Rendered from helm/pipeq with default values by `make manifests`; do not edit.
# For namespace pipeq only: the RBAC subjects, the operator's --namespace and the
# Redis URL name it. It holds no secret; make these two first:
#   kubectl create namespace pipeq
#   kubectl -n pipeq create secret generic pipeq-api-token --from-literal=token="$(openssl rand -hex 20)"
#   P=$(openssl rand -hex 16); kubectl -n pipeq create secret generic pipeq-redis-auth \\
#     --from-literal=password="$P" --from-literal=url="redis://:$P@pipeq-redis:6379/0"
#   kubectl apply -n pipeq -f manifests/
# The chart's hooks are not in it (helm runs them): the CRD is applied with the rest, and
# before deleting it all, delete the WorkerPools first (kubectl -n pipeq delete workerpools --all).
"""


def manifests_text() -> str:
    return MANIFEST_HEADER + render(*MANIFEST_SETS)


def render_manifests(outdir: Path) -> None:
    """manifests/pipeq.yaml: the chart with default values, for `kubectl apply -f manifests/`."""
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "pipeq.yaml").write_text(manifests_text())


if __name__ == "__main__":
    if sys.argv[1:2] == ["render"]:
        render_manifests(ROOT / sys.argv[2])
