"""The chart closed by default, read from what it renders: the values schema refuses unknown
keys, Redis has a password that every component gets from a Secret, the API wants a token
(or OIDC), the NetworkPolicies select exactly pipeq's pods (matched against the rendered
pods and the worker pods pipeq/operator/builders.py makes from the rendered WorkerPool),
and the site knobs reach every pod."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeq.operator import builders
from tests.support import chart

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((chart.CHART / "values.schema.json").read_text())
POD_KINDS = ("Deployment", "StatefulSet", "Pod")


def template(*sets: str) -> subprocess.CompletedProcess:
    cmd = [chart.helm_bin(), "template", "pipeq", str(chart.CHART), "--kube-version", chart.KUBE_VERSION]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.run(cmd, capture_output=True, text=True)


def pod_specs(docs) -> dict[str, dict]:
    """Kind/name → (labels, pod spec) of every pod the objects make, worker pods included
    (built from the rendered WorkerPool as the operator builds them)."""
    out = {}
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            t = d["spec"]["template"]
            out[f"{d['kind']}/{d['metadata']['name']}"] = (t["metadata"]["labels"], t["spec"])
        elif d["kind"] == "Pod":
            out[f"Pod/{d['metadata']['name']}"] = (d["metadata"]["labels"], d["spec"])
        elif d["kind"] == "WorkerPool":
            dep = builders.worker_deployment(d["metadata"]["name"], d["spec"], replicas=1, default_redis_url="redis://x:6379/0")
            t = dep["spec"]["template"]
            out[f"WorkerPool/{d['metadata']['name']}"] = (t["metadata"]["labels"], t["spec"])
    return out


def env(spec) -> dict[str, dict]:
    return {e["name"]: e for c in spec["containers"] for e in c.get("env") or []}


def by(docs, kind, suffix=""):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix))


# ---- the values schema -------------------------------------------------------------------

def test_every_object_of_the_values_schema_refuses_unknown_keys():
    loose = []

    def walk(node, path):
        if not isinstance(node, dict):
            return
        if node.get("type") == "object" or "properties" in node:
            passthrough = "passed through" in node.get("description", "")
            if "properties" in node and node.get("additionalProperties") is not False:
                loose.append(path)
            elif "properties" not in node and "additionalProperties" not in node and not passthrough:
                loose.append(path)
        for key, sub in node.items():
            if key in ("if", "then", "else"):
                continue  # conditions on keys the object already lists
            if key in ("properties",):
                for name, s in sub.items():
                    walk(s, f"{path}.{name}")
            elif isinstance(sub, dict):
                walk(sub, f"{path}/{key}")
            elif isinstance(sub, list):
                for i, s in enumerate(sub):
                    walk(s, f"{path}/{key}[{i}]")

    walk(SCHEMA, "")
    assert not loose, f"objects that take any key: {loose}"


@pytest.mark.parametrize("typo, where", [
    ("networkPolicy.enable=true", "/networkPolicy': additional properties 'enable'"),
    ("redis.auth.existingSecrt=x", "/redis/auth': additional properties 'existingSecrt'"),
    ("api.auth.oidc.issur=https://idp", "/api/auth/oidc': additional properties 'issur'"),
    ("workerPool.extraVolumeMounts[0].nme=x", "/workerPool/extraVolumeMounts/0'"),
    ("api.resources.limits.memory=lots", "/api/resources/limits/memory'"),
    ("metrics.serviceMonitor.enabeld=true", "/metrics/serviceMonitor': additional properties 'enabeld'"),
])
def test_a_typo_fails_the_render_with_a_clear_message(typo, where):
    r = template(typo)
    assert r.returncode != 0 and where in r.stderr, r.stderr


# ---- Redis: a password by default ----------------------------------------------------------

def test_redis_has_a_generated_password_every_component_reads_from_its_secret():
    docs = chart.objects()
    secret = by(docs, "Secret", "-redis-auth")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    import base64

    password = base64.b64decode(secret["data"]["password"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password), "alphanumeric: URL-safe as it is"
    assert base64.b64decode(secret["data"]["url"]).decode() == f"redis://:{password}@pipeq-redis:6379/0"
    ref = {"name": "pipeq-redis-auth", "key": "url"}
    for name in ("-api", "-operator"):
        e = env(by(docs, "Deployment", name)["spec"]["template"]["spec"])["PIPEQ_REDIS_URL"]
        assert e == {"name": "PIPEQ_REDIS_URL", "valueFrom": {"secretKeyRef": ref}}
    pool = by(docs, "WorkerPool")
    assert pool["spec"]["redis"] == {"secretRef": ref}
    worker = pod_specs([pool])["WorkerPool/default"][1]
    assert env(worker)["PIPEQ_REDIS_URL"]["valueFrom"]["secretKeyRef"] == ref
    # the operator may read that Secret (it polls the pool's Redis), by name only
    role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"].endswith("-redis-secrets"))
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["pipeq-redis-auth"]}]
    redis = by(docs, "StatefulSet", "-redis")
    c = redis["spec"]["template"]["spec"]["containers"][0]
    assert c["command"][c["command"].index("--requirepass") + 1] == "$(REDISCLI_AUTH)"
    assert c["command"][c["command"].index("--protected-mode") + 1] == "yes"
    assert c["env"] == [{"name": "REDISCLI_AUTH", "valueFrom": {"secretKeyRef": {"name": "pipeq-redis-auth", "key": "password"}}}]
    # no password in any pod spec: every Redis URL in the render is a reference
    assert password not in yaml.safe_dump([d for d in docs if d["kind"] != "Secret"])
    # the StatefulSet is governed by a headless Service
    headless = by(docs, "Service", "-redis-headless")
    assert redis["spec"]["serviceName"] == headless["metadata"]["name"] and headless["spec"]["clusterIP"] == "None"
    assert template().stdout != template().stdout, "each render draws a new password (an install keeps the stored one)"


def test_redis_existing_secret_and_auth_off():
    docs = chart.objects("redis.auth.existingSecret=site-redis", "redis.auth.passwordKey=pw", "redis.auth.urlKey=u")
    assert not [d for d in docs if d["kind"] == "Secret" and "redis" in d["metadata"]["name"]]
    assert by(docs, "WorkerPool")["spec"]["redis"] == {"secretRef": {"name": "site-redis", "key": "u"}}
    c = by(docs, "StatefulSet", "-redis")["spec"]["template"]["spec"]["containers"][0]
    assert c["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "site-redis", "key": "pw"}
    off = chart.objects("redis.auth.enabled=false")
    c = by(off, "StatefulSet", "-redis")["spec"]["template"]["spec"]["containers"][0]
    assert "--requirepass" not in c["command"] and c["command"][c["command"].index("--protected-mode") + 1] == "no"
    assert by(off, "WorkerPool")["spec"]["redis"] == {"url": "redis://pipeq-redis:6379/0"}


def test_external_redis_with_tls_and_an_acl_user():
    docs = chart.objects("redis.enabled=false", "redis.external.existingSecret=ext", "redis.external.secretKey=url")
    assert not [d for d in docs if d["kind"] == "StatefulSet" or (d["kind"] == "Secret" and "redis" in d["metadata"]["name"])]
    assert by(docs, "WorkerPool")["spec"]["redis"] == {"secretRef": {"name": "ext", "key": "url"}}
    assert env(by(docs, "Deployment", "-api")["spec"]["template"]["spec"])["PIPEQ_REDIS_URL"]["valueFrom"]["secretKeyRef"] == \
        {"name": "ext", "key": "url"}
    plain = chart.objects("redis.enabled=false", "redis.external.url=rediss://pipeq:s3cret@redis.example.org:6380/2")
    assert env(by(plain, "Deployment", "-operator")["spec"]["template"]["spec"])["PIPEQ_REDIS_URL"]["value"] == \
        "rediss://pipeq:s3cret@redis.example.org:6380/2"
    r = template("redis.enabled=false")
    assert r.returncode != 0 and "external" in r.stderr
    r = template("redis.enabled=false", "redis.external.url=http://x")
    assert r.returncode != 0 and "/redis/external/url" in r.stderr


# ---- the API: auth on by default -----------------------------------------------------------

def test_api_wants_a_token_by_default_and_oidc_quotas_when_set():
    docs = chart.objects()
    api_env = env(by(docs, "Deployment", "-api")["spec"]["template"]["spec"])
    assert api_env["PIPEQ_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "pipeq-api-token", "key": "token"}
    assert not {k for k in api_env if k.startswith(("PIPEQ_OIDC", "PIPEQ_QUOTA", "PIPEQ_FAIR", "PIPEQ_ADMIN", "PIPEQ_USER"))}
    assert by(docs, "Secret", "-api-token")["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    docs = chart.objects(*chart.VALUE_SETS["oidc"], "quotas.submissionsPerMinute=30", "api.auth.oidc.userGroups[1]=lab")
    api_env = {k: v.get("value") for k, v in env(by(docs, "Deployment", "-api")["spec"]["template"]["spec"]).items()}
    assert api_env["PIPEQ_OIDC_ISSUER"] == "https://keycloak.example.org/realms/lab"
    assert api_env["PIPEQ_OIDC_AUDIENCE"] == "pipeq" and api_env["PIPEQ_OIDC_GROUPS_CLAIM"] == "groups"
    assert api_env["PIPEQ_ADMIN_GROUPS"] == "pipeq-admins" and api_env["PIPEQ_USER_GROUPS"] == "genomics,lab"
    assert api_env["PIPEQ_OIDC_WEB_CLIENT_ID"] == "pipeq-web"
    assert api_env["PIPEQ_QUOTA_ACTIVE_JOBS"] == "20" and api_env["PIPEQ_QUOTA_SUBMISSIONS_PER_MINUTE"] == "30"
    assert json.loads(api_env["PIPEQ_QUOTA_GROUPS"]) == {"genomics": {"activeJobs": 50}}
    assert json.loads(api_env["PIPEQ_FAIR_SHARE_WEIGHTS"]) == {"genomics": 2}
    worker = pod_specs([by(docs, "WorkerPool")])["WorkerPool/default"][1]
    assert json.loads(env(worker)["PIPEQ_FAIR_SHARE_WEIGHTS"]["value"]) == {"genomics": 2}


def test_notes_say_how_to_read_the_token_and_sign_in(cluster, namespace):
    # a dry run installs no crds/, and helm maps every object (the WorkerPool) first
    cluster.kubectl("apply", "--server-side", "-f", str(chart.CHART / "crds" / "workerpools.yaml"))
    out = cluster.helm("install", "pipeq", str(chart.CHART), "--dry-run=server", "-n", namespace,
                       "--set", "api.auth.oidc.issuer=https://idp.example.org/realms/lab",
                       "--set", "api.auth.oidc.webClientId=web").stdout
    notes = out.split("NOTES:", 1)[1]
    assert f"kubectl -n {namespace} get secret pipeq-api-token -o jsonpath='{{.data.token}}' | base64 -d" in notes
    assert "Users sign in with https://idp.example.org/realms/lab" in notes and "client web" in notes
    assert "WARNING" not in notes


# ---- NetworkPolicy -----------------------------------------------------------------------

def selects(selector: dict, labels: dict) -> bool:
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        has, val = e["key"] in labels, labels.get(e["key"])
        ok = {"Exists": has, "DoesNotExist": not has, "In": val in e.get("values", []),
              "NotIn": not has or val not in e.get("values", [])}[e["operator"]]
        if not ok:
            return False
    return True


def admitted(policies, pod_labels: dict, port: int, from_labels: dict) -> bool:
    """Would a same-namespace pod with ``from_labels`` reach ``port`` of a pod with
    ``pod_labels`` under ``policies`` (isolated when any selects it)?"""
    mine = [p for p in policies if selects(p["spec"]["podSelector"], pod_labels) and "Ingress" in p["spec"]["policyTypes"]]
    if not mine:
        return True
    for p in mine:
        for rule in p["spec"].get("ingress") or []:
            ports = [x["port"] for x in rule.get("ports") or []]
            if ports and port not in ports:
                continue
            peers = rule.get("from")
            if not peers or any("podSelector" in peer and "namespaceSelector" not in peer
                                and selects(peer["podSelector"], from_labels) for peer in peers):
                return True
    return False


def test_network_policies_let_only_pipeqs_pods_reach_redis():
    docs = chart.objects()
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pods = pod_specs(docs)
    labels = {k.split("/", 1)[1].removeprefix("pipeq-"): v[0] for k, v in pods.items()}
    assert set(labels) == {"api", "operator", "redis", "default"}, labels
    # every pod of the release is selected by a policy (the worker pods too)
    assert all(any(selects(p["spec"]["podSelector"], lab) for p in policies) for lab in labels.values())
    redis = labels["redis"]
    for client in ("api", "operator", "default"):
        assert admitted(policies, redis, 6379, labels[client]), client
    stranger = {"app": "something-else"}
    other_release = {"app.kubernetes.io/name": "pipeq", "app.kubernetes.io/instance": "other", "app.kubernetes.io/component": "api"}
    assert not admitted(policies, redis, 6379, stranger)
    assert not admitted(policies, redis, 6379, other_release)
    # a pod cannot make itself a worker without the operator's pool label
    assert not admitted(policies, redis, 6379, {"app.kubernetes.io/name": "pipeq", "app.kubernetes.io/component": "worker"})
    assert admitted(policies, labels["api"], 8000, stranger) and not admitted(policies, labels["api"], 6379, stranger)
    assert not admitted(policies, labels["default"], 8000, labels["api"]), "nothing connects to a worker"
    assert admitted(policies, labels["operator"], 9090, stranger) and not admitted(policies, labels["operator"], 8080, stranger)
    # the API's ingress from a list of peers
    peer = "networkPolicy.api.ingress[0].podSelector.matchLabels.app\\.kubernetes\\.io/name=ingress-nginx"
    limited = [d for d in chart.objects(peer) if d["kind"] == "NetworkPolicy"]
    assert not admitted(limited, labels["api"], 8000, stranger)
    assert admitted(limited, labels["api"], 8000, {"app.kubernetes.io/name": "ingress-nginx"})
    assert not [d for d in chart.objects("networkPolicy.enabled=false") if d["kind"] == "NetworkPolicy"]


# ---- site knobs ----------------------------------------------------------------------------

def test_site_knobs_reach_every_pod():
    docs = chart.objects(*chart.VALUE_SETS["site-knobs"], hooks=True)
    pods = pod_specs(docs)
    assert {"Pod/pipeq-crd", "Pod/pipeq-uninstall", "Pod/pipeq-test-api", "WorkerPool/default"} <= set(pods)
    for name, (_, spec) in pods.items():
        assert spec.get("imagePullSecrets") == [{"name": "regcred"}], name
        assert spec.get("priorityClassName") == "batch", name
        for c in spec["containers"]:
            assert c.get("resources", {}).get("limits", {}).get("memory") or name.startswith("WorkerPool"), f"{name}: no resources"
    digest = "sha256:" + "a" * 64
    assert pods["Deployment/pipeq-api"][1]["containers"][0]["image"] == f"pipeq@{digest}"
    assert pods["Deployment/pipeq-api"][1]["nodeSelector"] == {"disk": "ssd"}
    assert pods["Deployment/pipeq-operator"][1]["tolerations"] == [{"key": "infra", "operator": "Exists"}]
    redis = by(docs, "StatefulSet", "-redis")["spec"]["template"]["metadata"]
    assert redis["annotations"] == {"backup": "velero"}
    worker = pods["WorkerPool/default"][1]
    assert {"name": "refs", "persistentVolumeClaim": {"claimName": "refs"}} in worker["volumes"]
    assert {"name": "refs", "mountPath": "/refs", "readOnly": True} in worker["containers"][0]["volumeMounts"]
    accounts = {d["metadata"]["name"]: d["metadata"].get("annotations") for d in docs if d["kind"] == "ServiceAccount"}
    for sa in ("pipeq-api", "pipeq-operator", "pipeq-worker"):
        assert accounts[sa] == {"iam.gke.io/gcp-service-account": "pipeq@p.iam.gserviceaccount.com"}, sa


# ---- observability -------------------------------------------------------------------------

def exported_metrics() -> set[str]:
    names = set()
    for f in ("pipeq/api/metrics.py", "pipeq/operator/metrics.py"):
        for kind, name in re.findall(r'(Counter|Gauge|Histogram|GaugeMetricFamily|HistogramMetricFamily)\("([a-z_]+)"',
                                     (ROOT / f).read_text()):
            names.add(name)
            if kind.startswith("Histogram"):
                names |= {f"{name}_count", f"{name}_sum", f"{name}_bucket"}
            if kind == "Counter":
                names |= {name if name.endswith("_total") else f"{name}_total"}
    return names


def test_monitoring_objects_only_when_enabled_and_alerts_on_real_metrics():
    kinds = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    default = chart.objects()
    assert not kinds & {d["kind"] for d in default}
    svc = by(default, "Service", "-operator-metrics")
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics"}]
    docs = chart.objects(*chart.VALUE_SETS["monitoring"])
    assert kinds <= {d["kind"] for d in docs}
    sm = by(docs, "ServiceMonitor")
    api_ep = next(e for e in sm["spec"]["endpoints"] if e["port"] == "http")
    assert api_ep["authorization"]["credentials"] == {"name": "pipeq-api-token", "key": "token"}
    rules = by(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]
    known = exported_metrics() | {"up"}
    for rule in rules:
        used = set(re.findall(r"\b(pipeq_[a-z_]+|up)\b", rule["expr"]))
        assert used and used <= known, (rule["alert"], used - known)
    assert {r["alert"] for r in rules} >= {"PipeqQueueStalled", "PipeqJobsFailing", "PipeqRedisUnreachable"}


def test_crd_hook_ships_the_crd_file_as_it_is():
    docs = chart.objects(hooks=True)
    cm = by(docs, "ConfigMap", "-crd")
    assert cm["data"]["workerpools.yaml"].strip() == (chart.CHART / "crds" / "workerpools.yaml").read_text().strip()
    role = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"].startswith("pipeq-crd"))
    assert role["rules"] == [{"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
                              "resourceNames": ["workerpools.pipeq.dev"], "verbs": ["get", "update"]}]
    assert not [d for d in chart.objects("crds.install=false", hooks=True) if d["metadata"]["name"].startswith("pipeq-crd")]


def test_the_operator_serves_only_its_own_releases_pools():
    """Two releases in one cluster never both scale a pool: the operator watches the pools
    labelled with its release, and the chart's own pool carries that label."""
    docs = chart.objects()
    e = env(by(docs, "Deployment", "-operator")["spec"]["template"]["spec"])
    assert e["PIPEQ_OPERATOR_POOL_SELECTOR"]["value"] == "app.kubernetes.io/instance=pipeq"
    selector = dict(kv.split("=") for kv in e["PIPEQ_OPERATOR_POOL_SELECTOR"]["value"].split(","))
    pool_labels = by(docs, "WorkerPool")["metadata"]["labels"]
    assert all(pool_labels.get(k) == v for k, v in selector.items()), pool_labels
    out = template("operator.watchPools=all")
    assert out.returncode == 0, out.stderr
    assert "PIPEQ_OPERATOR_POOL_SELECTOR" not in out.stdout


def test_no_pod_gets_service_variables_that_pipeqs_settings_would_read():
    """Kubernetes injects <SERVICE>_PORT=tcp://... for every Service of the namespace unless
    enableServiceLinks is off; the Service <release>-operator-metrics made that
    PIPEQ_OPERATOR_METRICS_PORT, which the API's settings refused (it crashed on kind)."""
    docs = chart.objects()
    for name, (_, spec) in pod_specs(docs).items():
        assert spec.get("enableServiceLinks") is False, name
