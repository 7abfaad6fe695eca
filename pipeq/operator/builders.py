"""Pure builders: a WorkerPool in, Kubernetes manifests and patches out.

No I/O and no clock here, so each manifest the operator sends is unit-tested without a
cluster (tests/unit/test_builders.py). The handlers add the owner reference (kopf.adopt)
and send them.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

from pipeq import scaling
from pipeq.queue import DEFAULT_QUEUE
from pipeq.settings import DEFAULT_PIPELINE_TIMEOUT

POOL_LABEL = "pipeq.dev/pool"
JOB_ANNOTATION = "pipeq.dev/job"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
#: pod-deletion-cost of a worker running a job (the ReplicaSet removes lower costs first)
BUSY_COST = 1000
#: pod-deletion-cost of an idle worker
IDLE_COST = 0
#: What the node autoscalers read: a busy worker's node is not drained for consolidation
#: (Cluster Autoscaler, Karpenter); an idle one's may be. Set only while a job runs.
SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"
DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"
#: seconds beyond the pipeline timeout that a worker told to stop is given to finish its job:
#: the worker's own kill grace after the timeout, recording the result, and slack.
GRACE_MARGIN = 60
CONTAINER = "worker"
#: the worker's scratch at /tmp (the root filesystem is read-only); named so as not to clash
#: with the pool's own volumes
TMP_VOLUME = "pipeq-tmp"
#: variables the operator sets on every worker; the pool's env may not override them
OPERATOR_ENV = ("PIPEQ_QUEUE", "PIPEQ_REDIS_URL", "PIPEQ_PIPELINE_TIMEOUT", "PIPEQ_WORKER_NAME")

#: a pool's defaults (the CRD repeats them for the API server; tests/unit keeps it in step)
DEFAULTS: dict[str, Any] = {
    "queue": DEFAULT_QUEUE,
    "imagePullPolicy": "IfNotPresent",
    "minReplicas": 0,
    "maxReplicas": scaling.MAX_WORKERS,
    "jobsPerWorker": scaling.JOBS_PER_WORKER,
    "paused": False,
}


def deployment_name(pool: str) -> str:
    """The worker Deployment of pool ``pool`` (pods are named ``<pool>-workers-<hash>-<id>``)."""
    return f"{pool}-workers"


def selector(pool: str) -> dict[str, str]:
    return {POOL_LABEL: pool, "app.kubernetes.io/component": "worker"}


def labels(pool: str) -> dict[str, str]:
    return {
        **selector(pool),
        "app.kubernetes.io/name": "pipeq",
        "app.kubernetes.io/managed-by": "pipeq-operator",
    }


def pool_settings(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The pool's knobs with the CRD's defaults filled in (the API server defaults them too;
    this keeps the operator right against a pool stored before a default existed)."""
    s = {**DEFAULTS, **{k: v for k, v in spec.items() if v is not None}}
    s["timeout"] = int((spec.get("pipeline") or {}).get("timeoutSeconds") or DEFAULT_PIPELINE_TIMEOUT)
    knobs = spec.get("scaling") or {}
    s["poll"] = float(knobs.get("pollIntervalSeconds") or scaling.POLL_INTERVAL)
    delay = knobs.get("scaleDownDelaySeconds")
    s["scaleDownDelay"] = float(scaling.SCALE_DOWN_DELAY if delay is None else delay)
    return s


def redis_secret_ref(spec: Mapping[str, Any]) -> tuple[str, str] | None:
    """(Secret name, key) of a pool whose Redis URL is in a Secret, else None."""
    ref = (spec.get("redis") or {}).get("secretRef")
    return (ref["name"], ref.get("key") or "url") if ref else None


def redis_url_for_operator(spec: Mapping[str, Any], default_url: str) -> str | None:
    """The URL the operator polls: the pool's own URL, else the operator's PIPEQ_REDIS_URL;
    None for a pool with a secretRef, whose URL the operator reads from that Secret."""
    if redis_secret_ref(spec):
        return None
    return (spec.get("redis") or {}).get("url") or default_url


def redis_env(spec: Mapping[str, Any], default_url: str) -> dict[str, Any]:
    if ref := redis_secret_ref(spec):
        return {"name": "PIPEQ_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": ref[0], "key": ref[1]}}}
    return {"name": "PIPEQ_REDIS_URL", "value": (spec.get("redis") or {}).get("url") or default_url}


def worker_env(spec: Mapping[str, Any], default_url: str) -> list[dict[str, Any]]:
    """The pool's env first (minus what the operator sets), then the operator's."""
    s = pool_settings(spec)
    own = [
        {"name": "PIPEQ_QUEUE", "value": s["queue"]},
        redis_env(spec, default_url),
        {"name": "PIPEQ_PIPELINE_TIMEOUT", "value": str(s["timeout"])},
        # the RQ worker is named after its pod, so busy workers map to pods
        {"name": "PIPEQ_WORKER_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    user = [copy.deepcopy(e) for e in spec.get("env") or [] if e.get("name") not in OPERATOR_ENV]
    return user + own


def termination_grace(spec: Mapping[str, Any]) -> int:
    """A worker told to stop finishes its job: the grace period outlasts the pipeline timeout."""
    return pool_settings(spec)["timeout"] + GRACE_MARGIN


def worker_deployment(name: str, spec: Mapping[str, Any], *, replicas: int, default_redis_url: str) -> dict[str, Any]:
    """The worker Deployment of pool ``name`` with ``replicas`` replicas (the handlers pass the
    current count, so that re-applying the template never rescales)."""
    s = pool_settings(spec)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec["image"],
        "imagePullPolicy": s["imagePullPolicy"],
        # args, not command: the image's entrypoint (tini, then pipeq) stays PID 1 and reaps
        # what pipelines leave behind
        "args": ["worker"],
        "env": worker_env(spec, default_redis_url),
        # The restricted Pod Security Standard, container part, and a read-only root.
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [*copy.deepcopy(spec.get("volumeMounts") or []), {"name": TMP_VOLUME, "mountPath": "/tmp"}],
    }
    if spec.get("resources"):
        container["resources"] = copy.deepcopy(spec["resources"])
    pod: dict[str, Any] = {
        "containers": [container],
        "terminationGracePeriodSeconds": termination_grace(spec),
        # The restricted Pod Security Standard, pod part; the pool's own (runAsUser, fsGroup
        # for the data volume, ...) on top.
        "securityContext": {
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
            **copy.deepcopy(spec.get("securityContext") or {}),
        },
        # Workers talk to Redis, never to the Kubernetes API.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "volumes": [*copy.deepcopy(spec.get("volumes") or []), {"name": TMP_VOLUME, "emptyDir": {}}],
    }
    for key in ("nodeSelector", "tolerations", "affinity", "topologySpreadConstraints", "serviceAccountName",
                "imagePullSecrets", "priorityClassName"):
        if spec.get(key):
            pod[key] = copy.deepcopy(spec[key])
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": deployment_name(name), "labels": labels(name)},
        "spec": {
            "replicas": int(replicas),
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector(name)},
            # New template: start the new worker before an old one is asked to stop (the old
            # one finishes its job first, within its grace period).
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": labels(name)}, "spec": pod},
        },
    }


def pod_annotations(pod_annotations_now: Mapping[str, str] | None, job_id: str | None) -> dict[str, str | None] | None:
    """The annotation patch that makes a worker pod say what it runs and how dear it is to
    scale-down and to the node autoscalers: busy → its job id, a high deletion cost, not
    safe to evict, do not disrupt; idle → no job, low cost, the autoscalers' annotations
    removed. None when the pod already says so (no API write). A pod without a deletion
    cost has cost 0 to the ReplicaSet, which is IDLE_COST: a new, idle pod needs no write (a
    scale-up to N would otherwise cost N pod patches on the way)."""
    now = dict(pod_annotations_now or {})
    now.setdefault(DELETION_COST, str(IDLE_COST))
    want: dict[str, str | None] = {
        JOB_ANNOTATION: job_id,
        DELETION_COST: str(BUSY_COST if job_id else IDLE_COST),
        SAFE_TO_EVICT: "false" if job_id else None,
        DO_NOT_DISRUPT: "true" if job_id else None,
    }
    patch = {k: v for k, v in want.items() if now.get(k) != v}
    return patch or None


def condition(type_: str, ok: bool, reason: str, message: str, now_iso: str,
              previous: list[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """A status condition; lastTransitionTime kept from ``previous`` when status is unchanged."""
    status = "True" if ok else "False"
    for c in previous or []:
        if c.get("type") == type_ and c.get("status") == status:
            return {"type": type_, "status": status, "reason": reason, "message": message,
                    "lastTransitionTime": c.get("lastTransitionTime") or now_iso}
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": now_iso}


def scale_message(old: int, new: int, reason: str) -> str:
    """The Event text of a scale change: 'scaled 1→4: 7 queued, 1 running'."""
    return f"scaled {old}→{new}: {reason}"


FINALIZER = "pipeq.dev/operator"


def finalizer_removal(finalizers: list[str] | None, finalizer: str = FINALIZER) -> list[dict] | None:
    """The JSON patch that takes ``finalizer`` off a resource whose finalizers are
    ``finalizers`` (None when it is not there). It tests the entry before removing it, so a
    list that changed meanwhile fails the patch (422) instead of losing another finalizer."""
    finalizers = list(finalizers or [])
    if finalizer not in finalizers:
        return None
    i = finalizers.index(finalizer)
    return [{"op": "test", "path": f"/metadata/finalizers/{i}", "value": finalizer},
            {"op": "remove", "path": f"/metadata/finalizers/{i}"}]
