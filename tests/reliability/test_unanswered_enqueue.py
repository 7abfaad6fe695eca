"""A submission whose enqueue gets no answer: Redis stalls (SIGSTOP) while the transaction
is in flight and the API's reply timeout passes, then resumes and runs the transaction. The
API must not delete the inputs of the job that now exists: a 202 is a queued job with its
inputs, a 503 leaves no job and no folder, and the job is queued once."""

from __future__ import annotations

import os
import signal

import pytest
import redis
from rq.job import Job

from pipeq import keys, queue
from tests.conftest import wait_for

pytestmark = pytest.mark.reliability

FQ = b"".join(b"@r%d\nACGTACGT\n+\nIIIIIIII\n" % i for i in range(20))
FA = b">c\n" + b"ACGT" * 20 + b"\n"


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_unanswered_enqueue_keeps_a_queued_jobs_inputs(client, settings, conn, redis_server, monkeypatch):
    client.app.state.redis = queue.connect(redis_server.url, timeout=0.5)
    pid = redis_server.proc.pid
    real_execute = redis.client.Pipeline.execute
    stalls = []

    def execute(self, *args, **kwargs):
        # the enqueue's transaction (it adds to the jobs index): Redis stops before it is sent
        # and resumes once the API has given up waiting for its reply
        if stalls or not any(c[0][:2] == ("ZADD", keys.JOBS_INDEX) for c in self.command_stack):
            return real_execute(self, *args, **kwargs)
        stalls.append(pid)
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: _state(pid) == "T", timeout=5, what="redis-server stopped")
        try:
            return real_execute(self, *args, **kwargs)
        finally:
            os.kill(pid, signal.SIGCONT)

    monkeypatch.setattr(redis.client.Pipeline, "execute", execute)
    try:
        r = client.post("/run_pipeline", files=[("reads", ("r.fq", FQ)), ("reference", ("ref.fa", FA))])
    finally:
        os.kill(pid, signal.SIGCONT)
    assert stalls, "the enqueue never ran"
    assert r.status_code in (202, 503), r.text
    jobs_dir = settings.data_dir / "jobs"
    folders = sorted(p.name for p in jobs_dir.iterdir()) if jobs_dir.exists() else []
    queued = queue.get_queue(conn, settings.queue).get_job_ids()
    print(f"\nunanswered enqueue: {r.status_code}, queued {queued}, folders {folders}")
    if r.status_code == 202:
        job_id = r.json()["job_id"]
        assert queued == [job_id]
        assert folders == [job_id]
        assert sorted(p.name for p in (jobs_dir / job_id / "inputs").iterdir()) == ["r.fq", "ref.fa"]
    else:
        assert queued == [] and conn.keys(Job.key_for("*")) == []
        assert folders == []
