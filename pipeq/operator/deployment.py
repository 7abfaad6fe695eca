"""A pool's worker Deployment: server-side applied from ``builders.worker_deployment``,
owned by the pool, with its current replicas kept.

``pool_lock`` serializes this with the pool's scaler, so a re-apply never undoes a scale.
"""

from __future__ import annotations

import threading

import kopf

from pipeq.operator import builders
from pipeq.operator.kube import FIELD_MANAGER, Kube

_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def pool_lock(namespace: str, name: str) -> threading.Lock:
    """One lock per pool, held by its scaler while it decides and scales and by ``ensure``
    while it re-applies the Deployment (whichever of the two runs first)."""
    with _locks_guard:
        return _locks.setdefault((namespace, name), threading.Lock())


def forget_lock(namespace: str, name: str) -> None:
    """Drop a gone pool's lock."""
    with _locks_guard:
        _locks.pop((namespace, name), None)


def ensure(body: kopf.Body, kube: Kube, default_redis_url: str, logger) -> dict:
    """Create or update the pool's worker Deployment, keeping its current replicas.

    Raises kopf.TemporaryError for what a retry may fix, kopf.PermanentError when the API
    server refuses the manifest itself."""
    name, namespace, spec = body["metadata"]["name"], body["metadata"]["namespace"], body.get("spec", {})
    dep_name = builders.deployment_name(name)
    # The pool's scaler must not change replicas between our read and our write, or the
    # write would undo its scale (the applied manifest carries replicas: see builders).
    with pool_lock(namespace, name):
        try:
            replicas = kube.apps.read_namespaced_deployment(dep_name, namespace).spec.replicas or 0
        except kube.ApiException as e:
            if e.status != 404:
                raise kopf.TemporaryError(f"reading Deployment {dep_name}: {e.reason}", delay=5)
            replicas = builders.pool_settings(spec)["minReplicas"]
        manifest = builders.worker_deployment(name, spec, replicas=replicas, default_redis_url=default_redis_url)
        kopf.adopt(manifest, owner=body)
        try:
            kube.apps.patch_namespaced_deployment(
                dep_name, namespace, manifest, field_manager=FIELD_MANAGER, force=True,
                _content_type="application/apply-patch+yaml")
        except kube.ApiException as e:
            if 400 <= e.status < 500 and e.status not in (409, 429):
                raise kopf.PermanentError(f"the API server refused Deployment {dep_name}: {e.body}")
            raise kopf.TemporaryError(f"writing Deployment {dep_name}: {e.reason}", delay=5)
    logger.info("Deployment %s applied (%d replicas)", dep_name, replicas)
    return manifest
