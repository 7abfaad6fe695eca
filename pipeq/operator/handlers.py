"""The WorkerPool controller's kopf handlers: each body is one call into the module that
holds its work.

| handler | calls |
|---|---|
| ``configure`` (the one ``@kopf.on.startup``) | ``startup.start``: every kopf setting with its reason |
| ``ensure_deployment`` (create, resume, spec update) | ``deployment.ensure`` |
| ``pool_deployments``, ``pool_pods`` (indexes) | the watch streams, so a poll needs no API request |
| ``autoscale`` (one daemon per pool) | ``scaler.run`` |
| ``release_finalizers`` (on exit) | ``Kube.release_finalizers`` |
| ``probe_pools`` (liveness) | ``metrics.liveness`` |
"""

from __future__ import annotations

from typing import Any

import kopf

from pipeq.operator import builders, deployment, metrics, scaler, startup
from pipeq.operator.kube import GROUP, PLURAL, VERSION


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger, **_: Any) -> None:
    startup.start(settings, memo, logger)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def ensure_deployment(body: kopf.Body, memo: kopf.Memo, logger, **_: Any) -> None:
    deployment.ensure(body, memo.kube, memo.redis_url, logger)


@kopf.index("apps", "v1", "deployments", labels={builders.POOL_LABEL: kopf.PRESENT})
def pool_deployments(namespace, name, labels, spec, status, meta, **_: Any):
    return {(namespace, labels[builders.POOL_LABEL]): {
        "name": name,
        "replicas": spec.get("replicas"),
        "current": status.get("replicas") or 0,
        "ready": status.get("readyReplicas") or 0,
        "generation": meta.get("generation"),
    }}


@kopf.index("", "v1", "pods", labels={builders.POOL_LABEL: kopf.PRESENT})
def pool_pods(namespace, name, labels, meta, **_: Any):
    return {(namespace, labels[builders.POOL_LABEL]): {
        "name": name,
        "annotations": dict(meta.get("annotations") or {}),
        "deleting": meta.get("deletionTimestamp") is not None,
    }}


# On pool deletion or operator exit: ask the loop to stop (it wakes at once from its wait),
# and give it 2 s before kopf gives up on it.
@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_backoff=2, cancellation_timeout=5)
def autoscale(stopped: kopf.DaemonStopped, body: kopf.Body, name: str, namespace: str, memo: kopf.Memo,
              logger, pool_deployments: kopf.Index, pool_pods: kopf.Index, **_: Any) -> None:
    scaler.serve(stopped, body, namespace, name, memo, logger, pool_deployments, pool_pods)


@kopf.on.cleanup()
def release_finalizers(memo: kopf.Memo, logger, **_: Any) -> None:
    memo.kube.release_finalizers(memo.get("pools") or (), logger)


@kopf.on.probe(id="pools")
def probe_pools(memo: kopf.Memo, **_: Any) -> dict:
    return metrics.liveness(memo.get("scalers") or {})
