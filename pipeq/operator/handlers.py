"""The WorkerPool controller: kopf handlers, and the per-pool scaler they run.

- ``configure`` (the one ``@kopf.on.startup``): every operator setting, each with its reason.
- ``ensure_deployment`` (create/resume/spec update): server-side-applies the pool's worker
  Deployment from ``builders.worker_deployment``, owned by the pool (``kopf.adopt``).
- two indexes keep the pools' Deployments and worker pods in memory from their watch
  streams, so a poll reads them without an API request.
- ``autoscale`` (one daemon per pool): every ``pollIntervalSeconds`` one Redis round trip
  (``queue.queue_stats``), requeue of abandoned jobs, ``scaling.decide``; then API writes
  only for what changed: pod annotations (job id, deletion cost), replicas, an Event, status.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import threading
import time
from typing import Any

import kopf
import redis

from pipeq import queue, scaling
from pipeq.operator import builders, metrics
from pipeq.settings import get_settings

GROUP, VERSION, PLURAL = "pipeq.dev", "v1alpha1", "workerpools"
FIELD_MANAGER = "pipeq-operator"
#: how long our own replica write wins over the (maybe not yet updated) Deployment index
BELIEF_SECONDS = 5.0
#: how long a pool may miss its Deployment before the scaler re-creates it
MISSING_DEPLOYMENT_SECONDS = 10.0
#: how long the Redis URL read from a pool's Secret is used before it is read again (a
#: rotated Secret is followed within this), and how soon a failed read is tried again
SECRET_SECONDS, SECRET_RETRY_SECONDS = 30.0, 5.0

log = logging.getLogger("pipeq.operator")


class Kube:
    """The kubernetes clients the handlers share (thread-safe; one connection pool)."""

    def __init__(self) -> None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        conf = client.Configuration.get_default_copy()
        # one connection per pool daemon that may write at once, not urllib3's default 4
        conf.connection_pool_maxsize = 64
        api = client.ApiClient(conf)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.ApiException = client.exceptions.ApiException


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger, **_: Any) -> None:
    # Standalone, no peering: the chart runs one operator pod with strategy Recreate, and
    # peering would need a ClusterKopfPeering resource and cluster-wide RBAC for it.
    settings.peering.standalone = True
    settings.peering.mandatory = False
    # Keep kopf's bookkeeping in annotations under our own prefix: the CRD's status schema
    # is structural (status.kopf would be pruned), and status belongs to the scaler.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="pipeq.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="pipeq.dev", key="last-handled-configuration")
    settings.persistence.finalizer = builders.FINALIZER
    # Watches: the server closes a watch after at most 5 minutes, so a silently broken
    # connection (a load balancer dropping idle streams) is noticed and re-established.
    settings.watching.server_timeout = 300
    # ...and the client gives up a bit later than the server would, never before it.
    settings.watching.client_timeout = 330
    # Watch only the pools' own pods and Deployments, filtered by the API server: the
    # indexes need nothing else, and every pod of a large cluster would cost memory and
    # bandwidth for nothing.
    settings.watching.label_selectors["", "v1", "pods"] = builders.POOL_LABEL
    settings.watching.label_selectors["apps", "v1", "deployments"] = builders.POOL_LABEL
    # Fail fast on a dead API server at connect time; retries follow kopf's backoffs.
    settings.watching.connect_timeout = 10
    # Reconnect quickly after a dropped watch: missed pods mean stale deletion costs.
    settings.watching.reconnect_backoff = 0.5
    # Events: only the ones we post explicitly ("Scaled", "RedisUnreachable", ...). Log
    # lines as Events (one per handler run, per poll warning) would bury them and load the
    # API server, so the loggers are not posted.
    settings.posting.enabled = True
    settings.posting.loggers = False
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = "pipeq-operator"
    settings.posting.reporting_instance = os.environ.get("HOSTNAME", "pipeq-operator")
    # Every pool runs a sync daemon in kopf's thread pool for its whole life: size the pool
    # for many pools plus the short create/update handlers (the default is ~cpus+4).
    settings.execution.max_workers = int(os.environ.get("PIPEQ_OPERATOR_MAX_POOLS", "256")) + 16
    # A failed Deployment write is retried soon: the pool must not wait a minute for workers.
    settings.execution.default_backoff = 5
    # Daemons stop when their pool goes; a daemon between polls exits within one interval.
    settings.background.cancellation_polling = 1
    # Bounded API requests: a hung request must not stall a pool's scaler.
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10

    memo.kube = Kube()
    # every pool this operator has served, for releasing their finalizers on exit
    memo.pools = set()
    # the pools' scalers by (namespace, name), for the liveness probe (per-resource memos
    # are shallow copies of this one, so they share this dict)
    memo.scalers = {}
    memo.redis_url = get_settings().redis_url
    port = os.environ.get("PIPEQ_OPERATOR_METRICS_PORT")
    if port and int(port) > 0:
        metrics.serve(int(port))
        logger.info("metrics on :%s/metrics", port)


# ---------------------------------------------------------------------------- the Deployment

_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def pool_lock(namespace: str, name: str) -> threading.Lock:
    """One lock per pool, held by its scaler while it decides and scales and by ``ensure``
    while it re-applies the Deployment (whichever of the two runs first)."""
    with _locks_guard:
        return _locks.setdefault((namespace, name), threading.Lock())


def ensure(body: kopf.Body, memo: kopf.Memo, logger) -> dict:
    """Create or update the pool's worker Deployment, keeping its current replicas."""
    name, namespace, spec = body["metadata"]["name"], body["metadata"]["namespace"], body.get("spec", {})
    kube: Kube = memo.kube
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
        manifest = builders.worker_deployment(name, spec, replicas=replicas, default_redis_url=memo.redis_url)
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


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def ensure_deployment(body: kopf.Body, memo: kopf.Memo, logger, **_: Any) -> None:
    ensure(body, memo, logger)


# ---------------------------------------------------------------------------- what the watches say


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


# ---------------------------------------------------------------------------- the scaler


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class SecretUnreadable(Exception):
    """The pool's redis.secretRef names a Secret the operator cannot read a Redis URL from."""


class PoolScaler:
    """The state one pool's daemon carries between polls."""

    def __init__(self, namespace: str, name: str, memo: kopf.Memo, logger) -> None:
        self.namespace, self.name, self.memo, self.logger = namespace, name, memo, logger
        self.kube: Kube = memo.kube
        self.conn: redis.Redis | None = None
        self.conn_url: str | None = None
        self.lower_since: float | None = None
        self.redis_ok: bool | None = None
        self.redis_error = ""
        self.secret_problem = False  # the error is the pool's Secret, not Redis
        # the last read of the pool's Secret: ((name, key), URL or "", problem or "", when)
        self.secret_read: tuple[tuple[str, str], str, str, float] | None = None
        self.belief: tuple[int, float] | None = None  # (replicas we set, monotonic time)
        self.status: dict | None = None
        self.last_scale: tuple[str, str] | None = None  # (time, reason)
        self.missing_since: float | None = None
        self.started = time.monotonic()
        self.stats: queue.QueueStats | None = None
        self.lock = pool_lock(namespace, name)

    def connection(self, url: str) -> redis.Redis:
        if url != self.conn_url:
            if self.conn is not None:
                self.conn.close()
            # short timeouts: a poll must never hang for long on a dead Redis
            self.conn, self.conn_url = queue.connect(url, timeout=2.0), url
        return self.conn

    def redis_url(self, spec: dict) -> str:
        """The URL to poll: the pool's, or the one in the Secret its redis.secretRef names
        (read again after SECRET_SECONDS). Raises SecretUnreadable: such a pool is never
        polled with the operator's own URL, which may be another Redis."""
        ref = builders.redis_secret_ref(spec)
        if ref is None:
            return builders.redis_url_for_operator(spec, self.memo.redis_url)
        now, read = time.monotonic(), self.secret_read
        if read is None or read[0] != ref or now - read[3] > (SECRET_SECONDS if read[1] else SECRET_RETRY_SECONDS):
            try:
                read = (ref, self._read_secret(*ref), "", now)
            except SecretUnreadable as e:
                read = (ref, "", str(e), now)
            self.secret_read = read
        if read[2]:
            raise SecretUnreadable(read[2])
        return read[1]

    def _read_secret(self, name: str, key: str) -> str:
        where = f"Secret {self.namespace}/{name}"
        try:
            secret = self.kube.core.read_namespaced_secret(name, self.namespace)
        except self.kube.ApiException as e:
            why = {403: "forbidden (the operator reads only the Secrets its RBAC names: the chart's operator.redisSecrets)",
                   404: "not found"}.get(e.status, f"{e.status} {e.reason}")
            raise SecretUnreadable(f"cannot read {where} of redis.secretRef: {why}") from None
        raw = (secret.data or {}).get(key)
        if raw is None:
            raise SecretUnreadable(f"{where} of redis.secretRef has no key {key!r}")
        url = base64.b64decode(raw).decode(errors="replace").strip()
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise SecretUnreadable(f"key {key!r} of {where} is not a Redis URL")
        return url

    def step(self, body: kopf.Body, deployments, pods) -> scaling.Decision | None:
        t0 = time.perf_counter()
        spec = dict(body.get("spec") or {})
        s = builders.pool_settings(spec)
        key = (self.namespace, self.name)
        dep = next(iter(deployments.get(key, [])), None)
        pod_list = [p for p in pods.get(key, []) if not p["deleting"]]

        # 1. Redis: one round trip, and requeue what dead workers left.
        try:
            conn = self.connection(self.redis_url(spec))
            stats = queue.queue_stats(conn, s["queue"])
            if stats.expired:
                queue.reap_abandoned(conn, s["queue"])
            redis_ok = True
        except (redis.RedisError, OSError, SecretUnreadable) as e:
            stats, redis_ok = None, False
            self.redis_error = str(e) or type(e).__name__
            self.secret_problem = isinstance(e, SecretUnreadable)
            metrics.redis_errors.labels(*key).inc()
        if redis_ok != self.redis_ok:
            if not redis_ok:
                kopf.warn(body, reason="RedisSecretUnreadable" if self.secret_problem else "RedisUnreachable",
                          message=f"holding replicas: {self.redis_error}")
                self.logger.warning("Redis unreachable, holding replicas: %s", self.redis_error)
            elif self.redis_ok is False:
                kopf.info(body, reason="RedisReachable", message="Redis answers again; scaling resumes")
                self.logger.info("Redis reachable again")
            self.redis_ok = redis_ok
        if stats is not None:
            self.stats = stats

        # 2. The Deployment (from the watch), re-created if it went missing.
        if dep is None:
            now_m = time.monotonic()
            self.missing_since = self.missing_since or now_m
            if now_m - self.missing_since > MISSING_DEPLOYMENT_SECONDS:
                self.missing_since = now_m
                try:
                    ensure(body, self.memo, self.logger)
                except (kopf.TemporaryError, kopf.PermanentError) as e:
                    self.logger.warning("re-creating the Deployment: %s", e)
            self.write_status(body, s, None, None, stats)
            return None
        self.missing_since = None
        with self.lock:
            decision = self.decide_and_scale(body, s, dep, pod_list, stats, redis_ok)
        self.write_status(body, s, dep, decision, stats)
        metrics.poll_seconds.observe(time.perf_counter() - t0)
        return decision

    def decide_and_scale(self, body, s, dep, pod_list, stats, redis_ok) -> scaling.Decision:
        current = dep["replicas"] if dep["replicas"] is not None else 1
        if self.belief and time.monotonic() - self.belief[1] < BELIEF_SECONDS:
            current = self.belief[0]
        else:
            self.belief = None

        # 3. The policy.
        decision = scaling.decide(
            queued=stats.queued if stats else 0,
            running=stats.running if stats else 0,
            busy=len(stats.busy) if stats else 0,
            current=current,
            min_replicas=s["minReplicas"],
            max_replicas=s["maxReplicas"],
            jobs_per_worker=s["jobsPerWorker"],
            scale_down_delay=s["scaleDownDelay"],
            paused=bool(s["paused"]),
            now=time.monotonic(),
            lower_since=self.lower_since,
            redis_reachable=redis_ok,
        )
        self.lower_since = decision.lower_since

        # 4. Pods say which job they run and how dear they are: before any scale-down.
        if stats is not None:
            self.annotate_pods(pod_list, stats.busy)

        # 5. Replicas, only when they change, with an Event saying why.
        if decision.desired != current:
            self.scale(body, current, decision)
        return decision

    def annotate_pods(self, pod_list: list[dict], busy: dict[str, str]) -> None:
        for p in pod_list:
            patch = builders.pod_annotations(p["annotations"], busy.get(p["name"]))
            if patch is None:
                continue
            try:
                self.kube.core.patch_namespaced_pod(p["name"], self.namespace, {"metadata": {"annotations": patch}})
                # the watch will say so too; until then do not patch again
                p["annotations"].update({k: v for k, v in patch.items() if v is not None})
                for k in [k for k, v in patch.items() if v is None]:
                    p["annotations"].pop(k, None)
            except self.kube.ApiException as e:
                if e.status != 404:  # a pod that just went is no matter
                    self.logger.warning("annotating pod %s: %s", p["name"], e.reason)

    def scale(self, body: kopf.Body, current: int, decision: scaling.Decision) -> None:
        dep_name = builders.deployment_name(self.name)
        try:
            self.kube.apps.patch_namespaced_deployment_scale(
                dep_name, self.namespace, {"spec": {"replicas": decision.desired}}, field_manager=FIELD_MANAGER)
        except self.kube.ApiException as e:
            self.logger.warning("scaling %s to %d: %s", dep_name, decision.desired, e.reason)
            return
        self.belief = (decision.desired, time.monotonic())
        message = builders.scale_message(current, decision.desired, decision.reason)
        self.last_scale = (_now_iso(), message)
        direction = "up" if decision.desired > current else "down"
        metrics.scale_events.labels(self.namespace, self.name, direction).inc()
        kopf.info(body, reason="Scaled", message=message)
        self.logger.info(message)

    def write_status(self, body: kopf.Body, s: dict, dep: dict | None, decision: scaling.Decision | None,
                     stats: queue.QueueStats | None) -> None:
        stats = stats or self.stats  # Redis down: the last counts seen, marked by the condition
        desired = decision.desired if decision else (dep["replicas"] if dep else 0)
        ready_n = dep["ready"] if dep else 0
        prev = (body.get("status") or {}).get("conditions") or []
        now = _now_iso()
        if dep is None:
            ready_cond = builders.condition("Ready", False, "NoDeployment", "the worker Deployment does not exist yet", now, prev)
        elif ready_n >= desired:
            ready_cond = builders.condition("Ready", True, "WorkersReady", f"{ready_n}/{desired} workers ready", now, prev)
        else:
            ready_cond = builders.condition("Ready", False, "WorkersStarting", f"{ready_n}/{desired} workers ready", now, prev)
        redis_cond = (builders.condition("RedisReachable", True, "Polled", "the queue answers", now, prev)
                      if self.redis_ok else
                      builders.condition("RedisReachable", False, "SecretUnreadable" if self.secret_problem else "Unreachable",
                                         f"holding replicas: {self.redis_error}"[:500], now, prev))
        status: dict[str, Any] = {
            "queued": stats.queued if stats else 0,
            "running": stats.running if stats else 0,
            "busy": len(stats.busy) if stats else 0,
            "target": decision.target if decision else desired,
            "desired": desired,
            "replicas": dep["current"] if dep else 0,
            "ready": ready_n,
            "deployment": builders.deployment_name(self.name),
            "observedGeneration": body.get("metadata", {}).get("generation"),
            "conditions": [ready_cond, redis_cond],
        }
        if self.last_scale:
            status["lastScaleTime"], status["lastScaleReason"] = self.last_scale
        pool = (self.namespace, self.name)
        metrics.queued.labels(*pool).set(status["queued"])
        metrics.running.labels(*pool).set(status["running"])
        metrics.busy.labels(*pool).set(status["busy"])
        metrics.desired.labels(*pool).set(desired)
        metrics.replicas.labels(*pool).set(status["replicas"])
        metrics.ready.labels(*pool).set(ready_n)
        metrics.redis_up.labels(*pool).set(1 if self.redis_ok else 0)
        if status == self.status:
            return
        try:
            self.kube.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, PLURAL, self.name, {"status": status})
            self.status = status
        except self.kube.ApiException as e:
            if e.status != 404:
                self.logger.warning("writing status: %s", e.reason)


# On pool deletion or operator exit: ask the loop to stop (it wakes at once from its wait),
# and give it 2 s before kopf gives up on it.
@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_backoff=2, cancellation_timeout=5)
def autoscale(stopped: kopf.DaemonStopped, body: kopf.Body, name: str, namespace: str, memo: kopf.Memo,
              logger, pool_deployments: kopf.Index, pool_pods: kopf.Index, **_: Any) -> None:
    """Poll the pool's queue every pollIntervalSeconds until the pool goes (``body`` is live:
    spec changes reach the next poll)."""
    scaler = PoolScaler(namespace, name, memo, logger)
    memo.scalers[(namespace, name)] = scaler
    memo.pools.add((namespace, name))
    try:
        while not stopped:
            try:
                scaler.step(body, pool_deployments, pool_pods)
            except Exception:  # one bad poll must not end the pool's scaling
                logger.exception("poll failed")
            poll = builders.pool_settings(body.get("spec") or {})["poll"]
            stopped.wait(poll)
    finally:
        memo.scalers.pop((namespace, name), None)
        with _locks_guard:
            _locks.pop((namespace, name), None)
        metrics.forget(namespace, name)
        if scaler.conn is not None:
            scaler.conn.close()


@kopf.on.cleanup()
def release_finalizers(memo: kopf.Memo, logger, **_: Any) -> None:
    """On exit, take our finalizer off every pool we served.

    kopf's finalizer only lets a pool's daemon stop cleanly, and with no operator running
    there is no daemon to stop. Left in place, it would hold a pool deleted together with
    the operator (``helm uninstall``) forever; the next operator puts it back.
    """
    finalizer = builders.FINALIZER
    for namespace, name in sorted(memo.get("pools") or ()):
        # The pool may change under us (helm deletes it at the same moment): a JSON patch
        # that tests the entry before removing it, retried on a conflict, never drops a
        # finalizer that is not ours.
        for _ in range(5):
            try:
                obj = memo.kube.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
                patch = builders.finalizer_removal(obj["metadata"].get("finalizers"), finalizer)
                if patch is None:
                    break
                memo.kube.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, patch)
                break
            except memo.kube.ApiException as e:
                if e.status == 404:
                    break
                if e.status not in (409, 422):
                    logger.warning("releasing the finalizer of %s/%s: %s", namespace, name, e.reason)
                    break


@kopf.on.probe(id="pools")
def probe_pools(memo: kopf.Memo, **_: Any) -> dict:
    """The liveness endpoint's body: how many pools are scaled and how many reach Redis."""
    scalers = dict(memo.get("scalers") or {})
    return {"pools": len(scalers), "redis_unreachable": sum(1 for s in scalers.values() if s.redis_ok is False)}

