"""The chart on a real API server: lint, server-side dry-run, install into a namespace that
enforces the restricted Pod Security Standard, RBAC as narrow as documented, plain
manifests in step with the chart, and uninstall leaving nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import yaml

from tests.support import chart
from tests.support.cluster import free_port, wait_for

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "helm" / "pipeq" / "crds" / "workerpools.yaml"
EXTERNAL = ["redis.enabled=false", "redis.external.url=redis://127.0.0.1:1/0"]
S3 = ["storage.type=s3", "storage.s3.bucket=lab-jobs", "storage.s3.endpoint=http://minio.storage:9000", "storage.s3.existingSecret=pipeq-s3"]


def restricted_namespace(cluster, name):
    cluster.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=latest", "--overwrite")


@pytest.mark.parametrize("sets", [[], ["operator.scope=cluster"], EXTERNAL + ["api.auth.enabled=true", "networkPolicy.enabled=true"], S3], ids=["default", "cluster-scope", "external-redis-auth", "s3"])
def test_lint_is_clean(sets):
    args = [chart.helm_bin(), "lint", "--strict", str(chart.CHART)] + [a for s in sets for a in ("--set", s)]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_values_schema_refuses_nonsense():
    r = subprocess.run([chart.helm_bin(), "lint", str(chart.CHART), "--set", "workerPool.maxReplicas=0", "--set", "operator.scope=everywhere"], capture_output=True, text=True)
    assert r.returncode != 0 and "maxReplicas" in r.stdout + r.stderr and "scope" in r.stdout + r.stderr


def test_s3_storage_has_no_data_volume_and_scratch_in_an_emptydir():
    import yaml

    docs = [d for d in yaml.safe_load_all(chart.render(*S3, "storage.scratch.sizeLimit=20Gi", 'storage.s3.serviceAccountAnnotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::1:role/p')) if d]
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim" and "data" in d["metadata"]["name"]]
    pool = next(d for d in docs if d["kind"] == "WorkerPool")
    assert pool["spec"]["volumes"] == [{"name": "scratch", "emptyDir": {"sizeLimit": "20Gi"}}]
    env = {e["name"]: e for e in pool["spec"]["env"]}
    assert env["PIPEQ_STORAGE"]["value"] == "s3://lab-jobs/pipeq" and env["PIPEQ_SCRATCH_DIR"]["value"] == "/scratch"
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.storage:9000"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "pipeq-s3", "key": "AWS_SECRET_ACCESS_KEY"}
    api = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-api"))
    assert [v["name"] for v in api["spec"]["template"]["spec"]["volumes"]] == ["tmp"]
    accounts = [d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"].endswith(("-api", "-worker"))]
    assert len(accounts) == 2 and all(a["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/p"} for a in accounts)
    r = subprocess.run([chart.helm_bin(), "lint", str(chart.CHART), "--set", "storage.type=s3"], capture_output=True, text=True)
    assert r.returncode != 0 and "bucket" in r.stdout + r.stderr


def test_pool_placement_values_reach_the_workerpool():
    import yaml

    spread = "workerPool.topologySpreadConstraints[0]."
    docs = yaml.safe_load_all(chart.render(
        f"{spread}maxSkew=1", f"{spread}topologyKey=kubernetes.io/hostname", f"{spread}whenUnsatisfiable=ScheduleAnyway",
        "workerPool.nodeSelector.disk=ssd", "workerPool.tolerations[0].key=bio", "workerPool.tolerations[0].operator=Exists"))
    spec = next(d for d in docs if d and d["kind"] == "WorkerPool")["spec"]
    assert spec["topologySpreadConstraints"] == [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                                  "whenUnsatisfiable": "ScheduleAnyway"}]
    assert spec["nodeSelector"] == {"disk": "ssd"} and spec["tolerations"] == [{"key": "bio", "operator": "Exists"}]
    assert "affinity" not in spec  # empty values leave the fields out
    default = next(d for d in yaml.safe_load_all(chart.render()) if d and d["kind"] == "WorkerPool")["spec"]
    assert not {"topologySpreadConstraints", "nodeSelector", "tolerations", "affinity"} & set(default)


@pytest.mark.parametrize("sets", [[], S3], ids=["volume", "s3"])
def test_rendered_chart_passes_server_side_dry_run(cluster, namespace, sets):
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    restricted_namespace(cluster, namespace)
    rendered = chart.render(*sets, namespace=namespace, release=f"dry-{namespace}")
    out = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=rendered)
    assert "created (server dry run)" in out.stdout


def test_manifests_are_rendered_from_the_chart():
    current = (ROOT / "manifests" / "pipeq.yaml").read_text()
    assert current == chart.manifests_text(), "manifests/ is stale: run `make manifests`"
    # no Secret in it (no password or token in git), and every namespace it names is pipeq's
    docs = [d for d in yaml.safe_load_all(current) if d]
    assert not [d for d in docs if d["kind"] == "Secret"]
    subjects = [s for d in docs for s in d.get("subjects") or []]
    assert subjects and {s["namespace"] for s in subjects} == {"pipeq"}


def test_install_in_restricted_namespace_with_narrow_rbac_and_clean_uninstall(cluster, namespace):
    restricted_namespace(cluster, namespace)
    # The API and the operator run as local processes on the process node; give them
    # a port of their own and nothing to connect to, so this test is only about objects.
    sets = EXTERNAL + ["workerPool.minReplicas=0", "api.replicas=0",
                       f"operator.livenessPort={free_port()}", f"operator.metricsPort={free_port()}"]
    release = f"rel-{namespace}"
    cluster.helm("install", release, str(chart.CHART), "-n", namespace, *[a for s in sets for a in ("--set", s)])
    sa = f"system:serviceaccount:{namespace}:{release}-pipeq"

    def can(who, verb, resource, ns=namespace):
        r = cluster.kubectl("auth", "can-i", verb, resource, f"--as={sa}-{who}", "-n", ns, check=False)
        return r.stdout.strip() == "yes"

    assert can("operator", "patch", "workerpools.pipeq.dev/status")
    assert can("operator", "create", "deployments.apps") and can("operator", "patch", "pods")
    assert can("operator", "create", "events")
    assert not can("operator", "get", "secrets"), "the operator must not read Secrets"
    assert not can("operator", "create", "pods")
    assert not can("operator", "patch", "deployments.apps", ns="default"), "namespaced mode stays in its namespace"
    assert not can("operator", "delete", "namespaces")
    for who in ("api", "worker"):
        for verb, res in (("get", "pods"), ("list", "secrets"), ("get", "workerpools.pipeq.dev")):
            assert not can(who, verb, res), f"{who} can {verb} {res}"

    # restricted PSS: the ReplicaSets could create their pods (no FailedCreate)
    cluster.kubectl("scale", "deployment", f"{release}-pipeq-operator", "-n", namespace, "--replicas=0")
    events = cluster.kubectl("get", "events", "-n", namespace, "-o", "jsonpath={.items[*].reason}").stdout
    assert "FailedCreate" not in events, cluster.kubectl("get", "events", "-n", namespace).stdout

    cluster.helm("uninstall", release, "-n", namespace, "--wait")
    # everything goes but the data PVC and the API token, kept on purpose (helm.sh/resource-policy:
    # keep: a reinstall finds the job folders, and clients keep their token)
    wait_for(lambda: sorted(cluster.kubectl("get", "all,pvc,sa,role,rolebinding,secret,workerpools,configmap", "-n", namespace,
                                            "-l", f"app.kubernetes.io/instance={release}", "-o", "name").stdout.split())
             == [f"persistentvolumeclaim/{release}-pipeq-data", f"secret/{release}-pipeq-api-token"],
             timeout=60, what="the release's objects to go")
    cluster_objs = cluster.kubectl("get", "clusterrole,clusterrolebinding", "-o", "name").stdout
    assert release not in cluster_objs
