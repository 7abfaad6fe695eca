"""What scaling reads from Redis: queued, running (live leases), expired leases, busy workers."""

from __future__ import annotations

import time

from rq import Worker, worker_registration
from rq.registry import StartedJobRegistry

from pipeq import keys, queue
from pipeq.settings import Settings

Q = "pipeline_tasks"
WORKER = Worker.redis_worker_namespace_prefix


def enqueue(conn, n, name=Q, settings=None):
    return [
        queue.enqueue_run(conn, name, f"{i:032x}", {"reads": [], "reference": "r"}, meta={}, retries=1, ttl=60, settings=settings)
        for i in range(n)
    ]


def test_queue_stats_counts_in_one_round_trip(conn):
    enqueue(conn, 3)
    now = time.time()
    conn.zadd(StartedJobRegistry(Q, connection=conn).key, {"a:1": now + 30, "b:2": now + 30, "c:3": now - 1})
    conn.hset(WORKER + "w1", queue.BUSY_FIELD, "a")
    conn.hset(WORKER + "w2", "state", "idle")
    conn.hset(WORKER + "dead", queue.BUSY_FIELD, "c")  # killed: its mark outlives its lease
    conn.sadd(worker_registration.WORKERS_BY_QUEUE_KEY % Q, *(WORKER + w for w in ("w1", "w2", "gone", "dead")))
    stats = queue.queue_stats(conn, Q)
    assert (stats.queued, stats.running, stats.expired) == (3, 2, 1)
    assert stats.busy == {"w1": "a"}


def test_reap_requeues_an_abandoned_job_with_retries_left(conn):
    (job,) = enqueue(conn, 1)
    q = queue.get_queue(conn, Q)
    q.pop_job_id()
    job.set_status("started")
    conn.zadd(job.started_job_registry.key, {f"{job.id}:exec1": time.time() - 1})
    assert queue.reap_abandoned(conn, Q) == 1
    assert q.job_ids == [job.id]
    assert queue.queue_stats(conn, Q).expired == 0
    assert queue.reap_abandoned(conn, Q) == 0


def test_jobs_index_drops_expired_entries(conn):
    conn.zadd(keys.JOBS_INDEX, {"old": time.time() - 120})
    enqueue(conn, 1)
    assert conn.zrange(keys.JOBS_INDEX, 0, -1) == [f"{0:032x}".encode()]


def test_status_position_is_exact_near_either_end_and_bounded_between(conn, monkeypatch):
    from pipeq import jobs

    monkeypatch.setattr(jobs, "POSITION_SCAN", 10)
    # the RQ queue's own scan: with the fair share off every job is in it (backlogged jobs'
    # positions are exact, tests/integration/test_fairshare.py)
    enqueue(conn, 30, name="long", settings=Settings(fair_share=False))
    at = {i: jobs.fetch_for_status(conn, f"{i:032x}")[1] for i in (0, 9, 10, 15, 19, 20, 29)}
    assert at == {0: 0, 9: 9, 10: None, 15: None, 19: None, 20: 20, 29: 29}
    assert jobs.fetch_for_status(conn, "f" * 32) is None


def test_clean_ups_at_once_requeue_an_abandoned_job_once(conn):
    """Workers, the operator and pipeq dev all reap; RQ's clean-up reads the expired entries and
    requeues them in a later transaction, so without one lock two reapers requeued one job
    twice, and two workers ran it as the same attempt (seen in the worker-kill test)."""
    import threading

    q = queue.get_queue(conn, Q)
    for _ in range(20):
        conn.flushdb()
        (job,) = enqueue(conn, 1)
        q.pop_job_id()
        job.set_status("started")
        conn.zadd(job.started_job_registry.key, {f"{job.id}:exec1": time.time() - 1})
        start = threading.Barrier(8)

        def reap():
            start.wait()
            queue.reap_abandoned(conn, Q)  # redis-py clients are thread-safe

        threads = [threading.Thread(target=reap) for _ in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert q.job_ids == [job.id]
