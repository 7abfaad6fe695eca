"""The chart's pre-upgrade hook (``pipeq chart-upgrade``, pipeq/operator/upgrade.py) on a
real API server: a CRD from an older chart is replaced by the chart's, so a new WorkerPool
field is kept instead of pruned; a StatefulSet governed by another Service is deleted with
its pods orphaned (serviceName is immutable), and left alone once it is right."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from pipeq.operator import upgrade
from tests.support import chart

pytestmark = pytest.mark.cluster

CRD_TEXT = (chart.CHART / "crds" / "workerpools.yaml").read_text()


def clients(cluster):
    from kubernetes import client, config

    api = config.new_client_from_config(str(cluster.kubeconfig))
    return client.ApiextensionsV1Api(api), client.AppsV1Api(api)


def test_the_hook_upgrades_the_crd_so_a_new_field_is_kept(cluster, namespace):
    ext, _ = clients(cluster)
    old = yaml.safe_load(CRD_TEXT)
    props = old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    del props["priorityClassName"]  # the CRD as chart 0.1.0 had it
    old["metadata"].setdefault("labels", {})["site/owner"] = "platform"
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(old))
    pool = {"apiVersion": "pipeq.dev/v1alpha1", "kind": "WorkerPool", "metadata": {"name": "p", "namespace": namespace},
            "spec": {"image": "w", "priorityClassName": "batch"}}
    try:
        # strict validation refuses the field; without it the API server prunes it silently
        r = cluster.kubectl("apply", "-f", "-", input=json.dumps(pool), check=False)
        assert r.returncode != 0 and 'unknown field "spec.priorityClassName"' in r.stderr
        cluster.kubectl("apply", "--validate=false", "-f", "-", input=json.dumps(pool))
        got = json.loads(cluster.kubectl("get", "workerpool", "p", "-n", namespace, "-o", "json").stdout)
        assert "priorityClassName" not in got["spec"], "the old CRD prunes the new field (why the hook exists)"
        assert "applied" in upgrade.apply_crd(ext, CRD_TEXT)
        cluster.kubectl("apply", "-f", "-", input=json.dumps(pool))
        got = json.loads(cluster.kubectl("get", "workerpool", "p", "-n", namespace, "-o", "json").stdout)
        assert got["spec"]["priorityClassName"] == "batch"
        stored = ext.read_custom_resource_definition(upgrade.CRD_NAME)
        assert stored.metadata.labels["site/owner"] == "platform", "labels others set are kept"
        generation = stored.metadata.generation
        upgrade.apply_crd(ext, CRD_TEXT)  # again: nothing changes
        assert ext.read_custom_resource_definition(upgrade.CRD_NAME).metadata.generation == generation
    finally:
        upgrade.apply_crd(ext, CRD_TEXT)
        cluster.kubectl("delete", "workerpool", "p", "-n", namespace, "--ignore-not-found", "--wait=false")
    with pytest.raises(SystemExit, match="not workerpools.pipeq.dev"):
        other = copy.deepcopy(yaml.safe_load(CRD_TEXT))
        other["metadata"]["name"] = "others.example.org"
        upgrade.apply_crd(ext, yaml.safe_dump(other))


def test_the_hook_recreates_a_statefulset_whose_service_name_changed(cluster, namespace):
    _, apps = clients(cluster)
    sts = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "r", "namespace": namespace},
           "spec": {"serviceName": "r", "replicas": 0, "selector": {"matchLabels": {"app": "r"}},
                    "template": {"metadata": {"labels": {"app": "r"}},
                                 "spec": {"containers": [{"name": "c", "image": "redis"}]}}}}
    assert "none yet" in upgrade.recreate_statefulset(apps, namespace, "r", "r-headless")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(sts))
    assert "already governed" in upgrade.recreate_statefulset(apps, namespace, "r", "r")
    assert "deleted (pods orphaned)" in upgrade.recreate_statefulset(apps, namespace, "r", "r-headless")
    assert cluster.kubectl("get", "statefulset", "r", "-n", namespace, "--ignore-not-found").stdout.strip() == ""
    sts["spec"]["serviceName"] = "r-headless"  # what helm then creates
    cluster.kubectl("apply", "-f", "-", input=json.dumps(sts))
    assert "already governed" in upgrade.recreate_statefulset(apps, namespace, "r", "r-headless")
