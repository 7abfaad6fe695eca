"""Nobody let in, on Kubernetes: the chart installed into a namespace that enforces the
`restricted` Pod Security Standard; `kubectl auth can-i` as each ServiceAccount shows the
operator can do what it needs and no more (no Secret but the one it is given by name,
nothing in other namespaces), and the
API and worker accounts have no Kubernetes rights at all (only the self-reviews every
authenticated account has). tests/cluster/test_chart.py checks the same install from the
chart's side; this test lists every right with `can-i --list`."""

from __future__ import annotations

import uuid

import pytest

from tests.support import chart
from tests.support.cluster import free_port

pytestmark = [pytest.mark.reliability, pytest.mark.cluster]

CRD = chart.CHART / "crds" / "workerpools.yaml"
# what every authenticated account may do (RBAC's system:basic-user and discovery roles)
SELF_REVIEWS = {"selfsubjectaccessreviews.authorization.k8s.io", "selfsubjectrulesreviews.authorization.k8s.io",
                "selfsubjectreviews.authentication.k8s.io"}


def _resource_rules(cluster, sa, ns):
    out = cluster.kubectl("auth", "can-i", "--list", f"--as={sa}", "-n", ns).stdout
    rules = {}
    for line in out.splitlines()[1:]:
        cols = line.split()
        if not cols or cols[0].startswith("["):  # non-resource URLs: no resource
            continue
        rules[cols[0]] = line
    return rules


def test_service_accounts_have_only_the_rights_they_need(cluster, namespace):
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=latest", "--overwrite")
    release = f"rbac-{uuid.uuid4().hex[:6]}"
    sets = ["redis.enabled=false", "redis.external.url=redis://127.0.0.1:1/0", "workerPool.minReplicas=0",
            "api.replicas=0", f"operator.livenessPort={free_port()}", f"operator.metricsPort={free_port()}",
            "operator.redisSecrets={pool-redis}"]
    cluster.helm("install", release, str(chart.CHART), "-n", namespace, *[a for s in sets for a in ("--set", s)])
    try:
        sa = f"system:serviceaccount:{namespace}:{release}-pipeq"

        def can(who, *args, ns=namespace):
            r = cluster.kubectl("auth", "can-i", *args, f"--as={sa}-{who}", "-n", ns, check=False)
            return r.stdout.strip() == "yes"

        # the API and the workers: nothing beyond the self-reviews, here or anywhere
        for who in ("api", "worker"):
            extra = set(_resource_rules(cluster, f"{sa}-{who}", namespace)) - SELF_REVIEWS
            assert extra == set(), f"the {who} ServiceAccount has rights: {extra}"
            assert not can(who, "get", "secrets", "--all-namespaces")

        # the operator: what it needs
        # (a subresource is --subresource: can-i reads "deployments.apps/scale" as the
        # Deployment named "scale", and said yes to a Role without the scale rule)
        for args in (("get", "workerpools.pipeq.dev"), ("watch", "workerpools.pipeq.dev"),
                     ("patch", "workerpools.pipeq.dev", "--subresource=status"), ("create", "deployments.apps"),
                     ("patch", "deployments.apps"), ("patch", "deployments.apps", "--subresource=scale"),
                     ("list", "pods"), ("patch", "pods"), ("create", "events")):
            assert can("operator", *args), f"the operator cannot {' '.join(args)}"
        # ... the one Secret it is given, for a pool's redis.secretRef, by name ...
        assert can("operator", "get", "secrets/pool-redis")
        assert not can("operator", "get", "secrets/pool-redis", ns="default")
        assert not can("operator", "get", "secrets/other") and not can("operator", "patch", "secrets/pool-redis")
        # ... and no more: no other Secrets, nothing in another namespace, no pods of its own
        for verb in ("get", "list", "watch"):
            assert not can("operator", verb, "secrets")
            assert not can("operator", verb, "secrets", ns="default")
        assert not can("operator", "create", "pods") and not can("operator", "delete", "namespaces")
        assert not can("operator", "exec", "pods") and not can("operator", "create", "pods/exec")
        for verb, res in (("patch", "deployments.apps"), ("list", "pods"), ("patch", "workerpools.pipeq.dev")):
            assert not can("operator", verb, res, ns="default"), f"namespaced operator can {verb} {res} in default"
        assert not can("operator", "create", "clusterrolebindings") and not can("operator", "escalate", "roles")
        operator_rules = _resource_rules(cluster, f"{sa}-operator", namespace)
        assert not any(r.startswith("*") for r in operator_rules), "the operator has a wildcard rule"

        # restricted PSS is enforced (a privileged pod is refused) and the chart's pods pass it
        bad = cluster.kubectl("run", "priv", "--image=x", "-n", namespace, "--restart=Never",
                              "--overrides", '{"spec":{"containers":[{"name":"priv","image":"x","securityContext":{"privileged":true}}]}}',
                              check=False)
        assert bad.returncode != 0 and "restricted" in bad.stderr, bad.stderr
        events = cluster.kubectl("get", "events", "-n", namespace, "-o", "jsonpath={.items[*].reason}").stdout
        assert "FailedCreate" not in events, cluster.kubectl("get", "events", "-n", namespace).stdout
        print(f"\nrbac: api/worker have no rights ({len(SELF_REVIEWS)} self-reviews only); operator has "
              f"{len(operator_rules)} resource rules, one Secret by name, nothing outside {namespace}; restricted PSS enforced")
    finally:
        cluster.kubectl("scale", "deployment", f"{release}-pipeq-operator", "-n", namespace, "--replicas=0", check=False)
        cluster.helm("uninstall", release, "-n", namespace, "--wait", check=False)
