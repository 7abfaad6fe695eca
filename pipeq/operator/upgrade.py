"""The chart's pre-install/pre-upgrade hook: bring what ``helm upgrade`` cannot change itself.

Helm installs ``crds/`` on the first install and never again, so a changed CRD would not
reach the cluster and the API server would prune a new WorkerPool field silently. This
hook runs before helm touches the release's objects and

- replaces the CRD ``workerpools.pipeq.dev`` with the chart's (the YAML in
  ``$PIPEQ_CHART_CRD``, from a ConfigMap, or ``--crd-file``), keeping the labels and annotations others put on it;
- when ``--statefulset NAME --service-name SVC`` are given and that StatefulSet governs
  another Service (``serviceName`` is immutable: chart 0.1.0's was the ClusterIP Service),
  deletes it with its pod orphaned, so helm creates it anew; the new StatefulSet adopts the
  running Redis pod and its PVC (the same labels and claim), then rolls it.

Usage: pipeq chart-upgrade [--crd-file PATH] [--namespace NS --statefulset NAME --service-name SVC]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import yaml

CRD_NAME = "workerpools.pipeq.dev"


def merged_crd(current: dict, chart: dict) -> dict:
    """The CRD to write: the chart's spec, on the current object's metadata (its
    resourceVersion, so a concurrent change fails the write instead of being lost), with the
    chart's labels and annotations added to the ones already there."""
    meta = dict(current["metadata"])
    for key in ("labels", "annotations"):
        meta[key] = {**(current["metadata"].get(key) or {}), **(chart["metadata"].get(key) or {})}
    return {"apiVersion": chart["apiVersion"], "kind": chart["kind"], "metadata": meta, "spec": chart["spec"]}


def apply_crd(ext, text: str, attempts: int = 5) -> str:
    """Replace the CRD with the one in YAML ``text``; returns what was done."""
    from kubernetes.client.exceptions import ApiException

    chart = yaml.safe_load(text)
    if chart["metadata"]["name"] != CRD_NAME:
        raise SystemExit(f"the chart's CRD is {chart['metadata']['name']}, not {CRD_NAME}")
    for attempt in range(attempts):
        try:
            # the wire form (camelCase), as the API takes it back
            raw = ext.api_client.sanitize_for_serialization(ext.read_custom_resource_definition(CRD_NAME))
        except ApiException as e:
            if e.status == 404:
                raise SystemExit(f"CRD {CRD_NAME} is not installed: helm installs it from crds/ "
                                 "(do not pass --skip-crds with crds.install=true)") from None
            raise
        try:
            # a replace with the same spec changes nothing (no new generation)
            done = ext.replace_custom_resource_definition(CRD_NAME, merged_crd(raw, chart))
            return f"CRD {CRD_NAME} applied (generation {done.metadata.generation})"
        except ApiException as e:
            if e.status != 409 or attempt == attempts - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def recreate_statefulset(apps, namespace: str, name: str, service_name: str) -> str:
    """Delete StatefulSet ``name`` with its pods orphaned when it governs another Service than
    ``service_name`` (helm then creates the new one, which adopts them)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        sts = apps.read_namespaced_stateful_set(name, namespace)
    except ApiException as e:
        if e.status == 404:
            return f"StatefulSet {namespace}/{name}: none yet"
        raise
    if sts.spec.service_name == service_name:
        return f"StatefulSet {namespace}/{name} already governed by {service_name}"
    apps.delete_namespaced_stateful_set(name, namespace, body=client.V1DeleteOptions(propagation_policy="Orphan"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            apps.read_namespaced_stateful_set(name, namespace)
        except ApiException as e:
            if e.status == 404:
                return (f"StatefulSet {namespace}/{name} deleted (pods orphaned) to change its serviceName "
                        f"{sts.spec.service_name} → {service_name}")
            raise
        time.sleep(0.5)
    raise SystemExit(f"StatefulSet {namespace}/{name} is still there after 60 s")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pipeq chart-upgrade", description=__doc__.split("\n\n")[0])
    p.add_argument("--crd-file", help="default: the YAML in $PIPEQ_CHART_CRD")
    p.add_argument("--namespace")
    p.add_argument("--statefulset")
    p.add_argument("--service-name")
    a = p.parse_args(argv)
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    text = open(a.crd_file).read() if a.crd_file else os.environ.get("PIPEQ_CHART_CRD")
    if not text:
        raise SystemExit("pipeq chart-upgrade: no CRD (--crd-file, or $PIPEQ_CHART_CRD)")
    print(apply_crd(client.ApiextensionsV1Api(), text), flush=True)
    if a.statefulset:
        print(recreate_statefulset(client.AppsV1Api(), a.namespace, a.statefulset, a.service_name), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
