"""The lease's contract (pipeq/worker/lease.py) on a real redis-server: decided by what Redis
says, transient errors retried only while the lease lasts, check and record in one step."""

from __future__ import annotations

import time

import pytest
import redis
from rq.executions import Execution
from rq.job import Job

from pipeq import keys
from pipeq.queue import TASK, PipeqJob, connect
from pipeq.redis_server import free_port
from pipeq.worker.lease import Lease, LeaseLost, lease_client

QUEUE = "pipeline_tasks"


def make_lease(client, job: Job, member: str, seconds: float = 5.0) -> Lease:
    """The lease of execution ``member`` (RQ's ``<job_id>:<execution_id>``), entered in the registry."""
    execution = Execution(member.split(":", 1)[1], job.id, connection=job.connection)
    job.connection.zadd(job.started_job_registry.key, {execution.composite_key: time.time() + seconds})
    return Lease(client, job, execution.key, execution.composite_key, seconds=seconds, published_ttl=60, started_at=time.time())


@pytest.fixture
def job(conn):
    j = PipeqJob.create(TASK, connection=conn, origin=QUEUE, id="j1")
    j.save()
    return j


def test_a_live_lease_is_held_renewed_and_claims_once(conn, job):
    lease = make_lease(lease_client(conn, 5), job, "j1:a")
    assert lease.held()
    before = conn.zscore(job.started_job_registry.key, "j1:a")
    time.sleep(0.01)
    assert lease.renew() and conn.zscore(job.started_job_registry.key, "j1:a") > before
    assert lease.claim() and lease.claim(), "a retried claim (its reply lost) is still this attempt's"
    assert conn.get(keys.published("j1")) == b"j1:a"
    assert not lease.lost.is_set()


def test_a_lease_taken_over_is_lost_and_claims_nothing(conn, job):
    lease = make_lease(lease_client(conn, 5), job, "j1:a")
    # the entry ran out and a clean-up requeued the job; a new attempt holds it now
    conn.zrem(job.started_job_registry.key, "j1:a")
    successor = make_lease(lease_client(conn, 5), job, "j1:b")
    assert not lease.held() and lease.lost.is_set()
    assert not lease.renew()
    assert not make_lease(lease_client(conn, 5), job, "j1:a", seconds=-1).claim(), "an entry that ran out claims nothing"
    assert successor.claim() and conn.get(keys.published("j1")) == b"j1:b"


def test_transient_errors_are_retried_until_the_lease_runs_out(conn, job):
    # a client of a port where no Redis answers: every call is a ConnectionError
    dead = lease_client(connect(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2), 1.5)
    lease = make_lease(dead, job, "j1:a", seconds=1.5)
    t0 = time.monotonic()
    with pytest.raises(LeaseLost):
        lease.retrying(dead.ping)
    took = time.monotonic() - t0
    assert lease.retries >= 3 and lease.lost.is_set()
    assert 1.0 < took < 3.0, f"gave up after {took:.1f}s (the lease lasted 1.5 s)"
    assert not lease.held()  # and it stays lost


def test_a_redis_answer_that_is_not_transient_is_not_retried(conn, job):
    lease = make_lease(lease_client(conn, 5), job, "j1:a")
    with pytest.raises(redis.ResponseError):
        lease.retrying(conn.execute_command, "NO-SUCH-COMMAND")
    assert lease.retries == 0 and not lease.lost.is_set()
