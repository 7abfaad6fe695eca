"""One pool's scaler: the state its daemon carries between polls, and the poll itself.

At an enqueue's signal, else every ``pollIntervalSeconds``: one Redis round trip
(``queue.queue_stats``), requeue of abandoned jobs, ``scaling.decide``; then API writes
only for what changed: replicas first when they go up (nothing else stands between a
burst and its workers), pod annotations (job id, deletion cost; before replicas when they
go down), an Event; the status is handed to ``status.StatusWriter``, which writes it
outside the decision path. Deployments and pods come from the watch indexes
(``handlers.pool_deployments``, ``handlers.pool_pods``), not from requests.
"""

from __future__ import annotations

import base64
import datetime as dt
import threading
import time
from typing import Any

import kopf
import redis

from pipeq import queue, scaling
from pipeq.operator import builders, deployment, metrics
from pipeq.operator.kube import FIELD_MANAGER, Kube
from pipeq.operator.status import StatusWriter
from pipeq.signals import Signals

#: how long our own replica write wins over the (maybe not yet updated) Deployment index
BELIEF_SECONDS = 5.0
#: how long a pool may miss its Deployment before the scaler re-creates it
MISSING_DEPLOYMENT_SECONDS = 10.0
#: how long the Redis URL read from a pool's Secret is used before it is read again (a
#: rotated Secret is followed within this), and how soon a failed read is tried again
SECRET_SECONDS, SECRET_RETRY_SECONDS = 30.0, 5.0
#: how soon a daemon waiting for its next poll notices that its pool is gone
STOP_CHECK_SECONDS = 1.0


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class SecretUnreadable(Exception):
    """The pool's redis.secretRef names a Secret the operator cannot read a Redis URL from."""


class PoolScaler:
    """The state one pool's daemon carries between polls."""

    def __init__(self, namespace: str, name: str, kube: Kube, default_redis_url: str, logger,
                 signals: Signals | None = None, status_writer: StatusWriter | None = None) -> None:
        self.namespace, self.name, self.logger = namespace, name, logger
        self.kube, self.default_redis_url = kube, default_redis_url
        self.status_writer = status_writer or StatusWriter(kube)
        #: set by an enqueue on the pool's queue (signals) or by nothing: the poll goes on
        self.wake = threading.Event()
        self.signals = signals
        self.watching: tuple[str, str] | None = None  # the (Redis URL, queue) signals wake us for
        self.conn: redis.Redis | None = None
        self.conn_url: str | None = None
        self.lower_since: float | None = None
        self.redis_ok: bool | None = None
        self.redis_error = ""
        self.secret_problem = False  # the error is the pool's Secret, not Redis
        # the last read of the pool's Secret: ((name, key), URL or "", problem or "", when)
        self.secret_read: tuple[tuple[str, str], str, str, float] | None = None
        self.belief: tuple[int, float] | None = None  # (replicas we set, monotonic time)
        self.last_scale: tuple[str, str] | None = None  # (time, reason)
        self.missing_since: float | None = None
        self.started = time.monotonic()
        self.stats: queue.QueueStats | None = None
        self.lock = deployment.pool_lock(namespace, name)

    def connection(self, url: str) -> redis.Redis:
        if url != self.conn_url:
            if self.conn is not None:
                self.conn.close()
            # short timeouts: a poll must never hang for long on a dead Redis
            self.conn, self.conn_url = queue.connect(url, timeout=2.0), url
        return self.conn

    def follow(self, url: str, queue_name: str) -> None:
        """Be woken by enqueues on ``queue_name`` at ``url`` (and no longer by the previous
        pair, after a spec change or a rotated Secret)."""
        if self.signals is None or self.watching == (url, queue_name):
            return
        self.unfollow()
        self.signals.watch(url, queue_name, self.wake)
        self.watching = (url, queue_name)

    def unfollow(self) -> None:
        if self.signals is not None and self.watching is not None:
            self.signals.unwatch(*self.watching, self.wake)
            self.watching = None

    def redis_url(self, spec: dict) -> str:
        """The URL to poll: the pool's, or the one in the Secret its redis.secretRef names
        (read again after SECRET_SECONDS). Raises SecretUnreadable: such a pool is never
        polled with the operator's own URL, which may be another Redis."""
        ref = builders.redis_secret_ref(spec)
        if ref is None:
            return builders.redis_url_for_operator(spec, self.default_redis_url)
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
            url = self.redis_url(spec)
            conn = self.connection(url)
            self.follow(url, s["queue"])
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
                    deployment.ensure(body, self.kube, self.default_redis_url, self.logger)
                except (kopf.TemporaryError, kopf.PermanentError) as e:
                    self.logger.warning("re-creating the Deployment: %s", e)
            self.write_status(body, s, None, None, stats)
            return None
        self.missing_since = None
        started = time.monotonic()
        with self.lock:
            decision = self.decide_and_scale(body, s, dep, pod_list, stats, redis_ok)
        # A burst still arriving (this poll scaled, and a later enqueue has woken the next
        # one): the next poll's status supersedes this one.
        if not (self.wake.is_set() and self.belief and self.belief[1] >= started):
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

        # 4. Replicas, only when they change, with an Event saying why; up at once, before
        # any other write.
        if decision.desired > current:
            self.scale(body, current, decision)

        # 5. Pods say which job they run and how dear they are: before any scale-down.
        if stats is not None:
            self.annotate_pods(pod_list, stats.busy)
        if decision.desired < current:
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
        self.status_writer.submit(pool, status)


def serve(stopped: kopf.DaemonStopped, body: kopf.Body, namespace: str, name: str, memo: kopf.Memo, logger,
          deployments, pods) -> None:
    """A pool's daemon: decide at once when a job is enqueued on its queue, else every
    pollIntervalSeconds, until the pool goes (``body`` is live: spec changes reach the next
    poll). The scaler is in ``memo.scalers`` meanwhile (for the liveness probe) and the pool
    in ``memo.pools`` (its finalizer released on exit)."""
    scaler = PoolScaler(namespace, name, memo.kube, memo.redis_url, logger, memo.signals, memo.status_writer)
    key = (namespace, name)
    memo.scalers[key] = scaler
    memo.pools.add(key)
    try:
        while not stopped:
            # cleared before the poll: an enqueue during it makes the next one start at once
            scaler.wake.clear()
            try:
                scaler.step(body, deployments, pods)
            except Exception:  # one bad poll must not end the pool's scaling
                logger.exception("poll failed")
            deadline = time.monotonic() + builders.pool_settings(body.get("spec") or {})["poll"]
            while not stopped and (left := deadline - time.monotonic()) > 0:
                if scaler.wake.wait(min(left, STOP_CHECK_SECONDS)):
                    break
    finally:
        scaler.unfollow()
        memo.status_writer.forget(key)
        memo.scalers.pop(key, None)
        deployment.forget_lock(namespace, name)
        metrics.forget(namespace, name)
        if scaler.conn is not None:
            scaler.conn.close()
