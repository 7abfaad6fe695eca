"""No zombies in a worker pod: 100 jobs whose pipelines leave a background child behind.

The guard kills what a pipeline leaves running; it must also wait for it. Otherwise each
killed orphan is handed on, a zombie, to the worker, which in a pod without an init is
PID 1 and never collects it. The workers here run as child subreapers to stand in for PID 1.
"""

from __future__ import annotations

import uuid

import pytest

from pipeq import queue
from tests.conftest import wait_for
from tests.support import pipelines

pytestmark = pytest.mark.reliability

JOBS, POOL = 100, 2


def test_pipelines_that_leave_children_leave_no_zombies(settings, conn, workers, tmp_path):
    settings.pipeline = pipelines.write(tmp_path, "pipe.sh", pipelines.LEAVES_CHILD)
    marker = f"pipeq-zombie-{uuid.uuid4().hex[:8]}"
    ids = [uuid.uuid4().hex for _ in range(JOBS)]
    for job_id in ids:
        kwargs = {"reads": ["r.fq"], "reference": "ref.fa", "sample": None}
        queue.enqueue_run(conn, settings.queue, job_id, kwargs, meta={"attempt": 0}, retries=0, ttl=600)
    procs = [workers.start(as_pid1=True, PIPEQ_TEST_MARKER=marker) for _ in range(POOL)]

    def statuses():
        return [j.get_status(refresh=False) for j in queue.fetch_jobs(conn, ids)]

    wait_for(lambda: all(s in ("finished", "failed") for s in statuses()), timeout=120, what=f"{JOBS} jobs to end")
    assert statuses().count("finished") == JOBS
    assert pipelines.processes_matching(f"{marker}-bg") == []  # the guard killed every child...
    zombies = pipelines.zombies_of({p.pid for p in procs})
    print(f"\nzombies: {len(zombies)} under {POOL} workers after {JOBS} jobs that each left a child")
    assert zombies == []  # ... and waited for it
