"""A submission whose enqueue gets no answer (``pipeq.queue.enqueue_run``), each way it can
go, reached on purpose with a real fault and told apart by what Redis holds afterwards:

- nothing was sent (the WATCH got no answer): 503, nothing left;
- the transaction ran but its reply was lost (Redis stalled past the API's timeout, then
  ran it before the check): the check finds the job, 202, a queued job with its inputs;
- the transaction is still on its way when the check runs (a connection that holds its
  bytes): the check marks the submission abandoned, 503, nothing left, and the
  transaction, which watches that mark, does nothing when it arrives;
- the check gets no answer either (Redis stalled throughout): 503, and the inputs stay,
  since the job may exist; once Redis resumes, exactly one of the job and the mark exists.

The API's Redis client gets a 0.5 s reply timeout (the settings' 5 s would make each case
wait 5 s for nothing)."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid

import pytest
import redis
from rq import Queue
from rq.job import Job

from pipeq import keys, queue
from tests.conftest import wait_for

pytestmark = pytest.mark.reliability

FQ = b"".join(b"@r%d\nACGTACGT\n+\nIIIIIIII\n" % i for i in range(20))
FA = b">c\n" + b"ACGT" * 20 + b"\n"
FILES = [("reads", ("r.fq", FQ)), ("reference", ("ref.fa", FA))]


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@contextlib.contextmanager
def stopped(redis_server):
    """redis-server stopped (SIGSTOP) while the block runs: clients' bytes wait in its socket."""
    pid = redis_server.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: _state(pid) == "T", timeout=5, what="redis-server stopped")
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _is_enqueue(pipeline) -> bool:
    """The enqueue's transaction: the one that adds to the jobs index."""
    return any(c[0][:2] == ("ZADD", keys.JOBS_INDEX) for c in pipeline.command_stack)


class Outcome:
    """What a submission left: the answer, the job folders, the queue, jobs and marks."""

    def __init__(self, r, settings, conn):
        self.status = r.status_code
        self.body = r.text
        self.job_id = r.json().get("job_id") if r.status_code == 202 else None
        jobs_dir = settings.data_dir / "jobs"
        self.folders = sorted(p.name for p in jobs_dir.iterdir()) if jobs_dir.exists() else []
        self.jobs_dir = jobs_dir
        self.queued = Queue(settings.queue, connection=conn).get_job_ids()
        self.jobs = conn.keys(Job.key_for("*"))
        self.marks = conn.keys(keys.ABANDONED_PREFIX + "*")

    def inputs(self, job_id: str) -> list[str]:
        return sorted(p.name for p in (self.jobs_dir / job_id / "inputs").iterdir())


@pytest.fixture
def api(client, redis_server):
    """The API app with a 0.5 s Redis reply timeout."""
    client.app.state.redis = queue.connect(redis_server.url, timeout=0.5)
    return client


def test_enqueue_whose_watch_gets_no_answer_sends_nothing_and_leaves_nothing(api, settings, conn, redis_server, monkeypatch):
    real_watch = redis.client.Pipeline.watch
    seen = []

    def watch(self, *names):
        if seen or not any(str(n).startswith(keys.ABANDONED_PREFIX) for n in names):
            return real_watch(self, *names)
        seen.append(names)
        with stopped(redis_server):
            with pytest.raises(redis.RedisError) as e:
                real_watch(self, *names)
        raise e.value

    monkeypatch.setattr(redis.client.Pipeline, "watch", watch)
    out = Outcome(api.post("/run_pipeline", files=FILES), settings, conn)
    assert seen, "the enqueue never watched its mark"
    assert out.status == 503, out.body
    assert (out.folders, out.queued, out.jobs, out.marks) == ([], [], [], [])


def test_enqueue_that_ran_but_whose_reply_was_lost_is_found_and_keeps_its_inputs(api, settings, conn, redis_server, monkeypatch):
    real_execute = redis.client.Pipeline.execute
    errors = []

    def execute(self, *args, **kwargs):
        if errors or not _is_enqueue(self):
            return real_execute(self, *args, **kwargs)
        # Redis stops before the transaction is sent; the reply times out; Redis resumes and
        # runs the transaction from its socket before the API checks
        with stopped(redis_server):
            try:
                real_execute(self, *args, **kwargs)
            except redis.RedisError as e:
                errors.append(e)
        assert errors, "the transaction was answered although Redis was stopped"
        wait_for(lambda: conn.keys(Job.key_for("*")), timeout=10, what="the stalled transaction to run")
        raise errors[0]

    monkeypatch.setattr(redis.client.Pipeline, "execute", execute)
    out = Outcome(api.post("/run_pipeline", files=FILES), settings, conn)
    assert errors, "the enqueue never ran"
    assert out.status == 202, out.body
    job_id = out.job_id
    assert out.queued == [job_id] and out.folders == [job_id]
    assert out.inputs(job_id) == ["r.fq", "ref.fa"]
    assert out.marks == [], "the check found the job: nothing is marked abandoned"


def test_enqueue_still_on_its_way_is_given_up_and_does_nothing_when_it_arrives(api, settings, conn, redis_server, toxiproxy, monkeypatch):
    # the transaction's connection goes through a proxy that holds its bytes for 3 s (as a
    # connection stuck in retransmission would); the API's other commands reach Redis directly
    proxy = toxiproxy.proxy(f"enqueue-{uuid.uuid4().hex[:8]}", upstream=redis_server.port)
    slow = queue.connect(proxy.url, timeout=0.5)
    monkeypatch.setattr(api.app.state.redis, "pipeline", slow.pipeline)
    real_execute = redis.client.Pipeline.execute
    held = []

    def execute(self, *args, **kwargs):
        if held or not _is_enqueue(self):
            return real_execute(self, *args, **kwargs)
        held.append(proxy.add("latency", stream="upstream", latency=3000))
        return real_execute(self, *args, **kwargs)

    def execs() -> int:
        return int(conn.info("commandstats").get("cmdstat_exec", {}).get("calls", 0))

    monkeypatch.setattr(redis.client.Pipeline, "execute", execute)
    before = execs()
    try:
        out = Outcome(api.post("/run_pipeline", files=FILES), settings, conn)
        assert held, "the enqueue never ran"
        assert execs() == before, "the transaction reached Redis before the check: the test proves nothing"
        assert out.status == 503, out.body
        assert (out.folders, out.queued, out.jobs) == ([], [], [])
        assert len(out.marks) == 1, "the check marks the submission abandoned"
        # the held transaction arrives after the mark: its WATCH aborts it
        wait_for(lambda: execs() > before, timeout=10, what="the held transaction to reach Redis")
        assert (conn.keys(Job.key_for("*")), Queue(settings.queue, connection=conn).get_job_ids()) == ([], [])
    finally:
        slow.close()
        proxy.delete()


def test_enqueue_whose_check_gets_no_answer_keeps_the_inputs_of_a_job_that_may_exist(api, settings, conn, redis_server, monkeypatch):
    real_execute = redis.client.Pipeline.execute
    stall = contextlib.ExitStack()
    sent = []

    def execute(self, *args, **kwargs):
        if sent or not _is_enqueue(self):
            return real_execute(self, *args, **kwargs)
        sent.append(True)
        stall.enter_context(stopped(redis_server))  # until the API has answered
        return real_execute(self, *args, **kwargs)

    monkeypatch.setattr(redis.client.Pipeline, "execute", execute)
    with stall:
        r = api.post("/run_pipeline", files=FILES)
        assert sent, "the enqueue never ran"
        assert r.status_code == 503, r.text
    # Redis resumes and runs what waited in its sockets: the transaction and the checks, in
    # an order nobody chose
    (job_id,) = wait_for(lambda: [k.decode().rsplit(":", 1)[1] for k in conn.keys(Job.key_for("*")) + conn.keys(keys.ABANDONED_PREFIX + "*")],
                         timeout=10, what="the job or its mark")
    out = Outcome(r, settings, conn)
    assert out.folders == [job_id] and out.inputs(job_id) == ["r.fq", "ref.fa"], "the inputs of a job that may exist were deleted"
    exists = bool(out.jobs)
    assert exists != bool(out.marks), (out.jobs, out.marks)
    assert out.queued == ([job_id] if exists else [])
