"""Prometheus metrics of the API: submissions (this process) and queue facts (read at scrape)."""

from __future__ import annotations

import redis
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

from pipeq import metrics_store
from pipeq.queue import get_queue

REGISTRY = CollectorRegistry()
SUBMISSIONS = Counter("pipeq_submissions", "Pipeline runs submitted, by outcome.", ["outcome"], registry=REGISTRY)


class QueueCollector:
    """Queue depth, jobs by status and pipeline durations, read from Redis at each scrape."""

    def __init__(self, conn: redis.Redis, queue: str):
        self.conn, self.queue = conn, queue

    def collect(self):
        q = self.queue
        rq_queue = get_queue(self.conn, q)
        registries = (rq_queue.started_job_registry, rq_queue.finished_job_registry,
                      rq_queue.failed_job_registry, rq_queue.canceled_job_registry)
        try:
            with self.conn.pipeline(transaction=False) as p:
                p.llen(rq_queue.key)
                for registry in registries:
                    p.zcard(registry.key)
                queued, started, finished, failed, canceled = p.execute()
            durations = metrics_store.read_durations(self.conn)
        except redis.RedisError:
            return
        depth = GaugeMetricFamily("pipeq_queue_depth", "Jobs waiting in the queue.", labels=["queue"])
        depth.add_metric([q], queued)
        yield depth
        by_status = GaugeMetricFamily("pipeq_jobs", "Jobs kept in Redis, by status.", labels=["queue", "status"])
        for name, value in (("queued", queued), ("started", started), ("finished", finished), ("failed", failed), ("canceled", canceled)):
            by_status.add_metric([q, name], value)
        yield by_status
        hist = HistogramMetricFamily("pipeq_pipeline_duration_seconds", "Pipeline run durations, by outcome.", labels=["outcome"])
        for outcome, values in durations.items():
            buckets = sorted(
                ((k[3:], v) for k, v in values.items() if k.startswith("le:")),
                key=lambda kv: float("inf") if kv[0] == "+Inf" else float(kv[0]),
            )
            hist.add_metric([outcome], buckets=buckets, sum_value=values.get("sum", 0.0))
        yield hist
