"""What the operator reports: Prometheus metrics, one series per pool (labels: namespace, pool), and the liveness probe's body.

Served on PIPEQ_OPERATOR_METRICS_PORT (the chart sets it) at /metrics; not served when unset.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LABELS = ("namespace", "pool")

queued = Gauge("pipeq_pool_queued_jobs", "Jobs waiting in the pool's queue.", LABELS)
running = Gauge("pipeq_pool_running_jobs", "Jobs running on the pool's queue (live leases).", LABELS)
busy = Gauge("pipeq_pool_busy_workers", "Workers of the pool's queue running a job.", LABELS)
desired = Gauge("pipeq_pool_desired_replicas", "Replicas the operator set on the pool's Deployment.", LABELS)
replicas = Gauge("pipeq_pool_replicas", "Worker pods of the pool (Deployment status).", LABELS)
ready = Gauge("pipeq_pool_ready_replicas", "Ready worker pods of the pool.", LABELS)
redis_up = Gauge("pipeq_pool_redis_up", "1 when the pool's Redis answered the last poll.", LABELS)
scale_events = Counter("pipeq_pool_scale_events_total", "Replica changes made by the operator.", LABELS + ("direction",))
redis_errors = Counter("pipeq_pool_redis_errors_total", "Polls that could not reach Redis.", LABELS)
poll_seconds = Histogram("pipeq_pool_poll_seconds", "Time of one poll (Redis round trip and decision).",
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))

PER_POOL = (queued, running, busy, desired, replicas, ready, redis_up, redis_errors)


def forget(namespace: str, pool: str) -> None:
    """Drop a deleted pool's series."""
    for m in PER_POOL:
        try:
            m.remove(namespace, pool)
        except KeyError:
            pass
    for direction in ("up", "down"):
        try:
            scale_events.remove(namespace, pool, direction)
        except KeyError:
            pass


def liveness(scalers: dict) -> dict:
    """The liveness endpoint's body: how many pools are scaled and how many reach Redis."""
    scalers = dict(scalers)  # daemons come and go meanwhile
    return {"pools": len(scalers), "redis_unreachable": sum(1 for s in scalers.values() if s.redis_ok is False)}


def serve(port: int, registry: CollectorRegistry = REGISTRY) -> None:
    start_http_server(port, registry=registry)
