"""The worker's promises, on real Redis with real worker processes: timeouts kill every
process, a lost worker's job is retried, a failed pipeline is not, cancel and stop work,
and a worker asked to stop finishes its job first."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest
from rq.registry import FailedJobRegistry, ScheduledJobRegistry

from pipeq import queue
from tests.conftest import wait_for
from tests.support import pipelines

FINAL = ("finished", "failed", "canceled", "stopped")


def submit(client, dataset, sample="S1"):
    files = [("reads", (p.name, p.read_bytes())) for p in dataset.reads]
    files.append(("reference", (dataset.reference.name, dataset.reference.read_bytes())))
    r = client.post("/run_pipeline", files=files, data={"sample": sample})
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def status(client, job_id):
    return client.get(f"/job_status/{job_id}").json()


def until(client, job_id, states=FINAL, timeout=30):
    return wait_for(lambda: (s := status(client, job_id))["status"] in states and s, timeout=timeout, what=f"{job_id} in {states}")


@pytest.fixture
def use_pipeline(settings, tmp_path):
    def use(body: str):
        settings.pipeline = pipelines.write(tmp_path, f"pipe-{uuid.uuid4().hex[:6]}.sh", body)
        return settings.pipeline

    return use


def test_timeout_kills_children_and_grandchildren(client, dataset, workers, settings, use_pipeline):
    use_pipeline(pipelines.FORKING)
    settings.pipeline_timeout = 2
    settings.kill_grace = 1
    marker = f"pipeq-marker-{uuid.uuid4().hex[:8]}"
    job_id = submit(client, dataset)
    workers.start(PIPEQ_TEST_MARKER=marker)
    wait_for(lambda: len(pipelines.processes_matching(marker)) >= 4, timeout=15, what="the pipeline's processes")
    s = until(client, job_id)
    assert s["status"] == "failed"
    assert s["error"]["reason"] == "timeout"
    assert "2 s" in s["error"]["message"]
    assert pipelines.processes_matching(marker) == []
    assert s["attempt"] == 1  # a timeout is not retried


def test_failed_pipeline_reports_reason_and_is_not_retried(client, dataset, workers, use_pipeline, settings, conn):
    use_pipeline(pipelines.FAILING)
    job_id = submit(client, dataset)
    workers.start()
    s = until(client, job_id)
    assert s["status"] == "failed"
    assert s["error"]["reason"] == "pipeline failed" and s["error"]["exit_code"] == 5
    assert "something went wrong in stage two" in s["error"]["stderr_tail"]
    # not retried: RQ holds it as failed with no retries left, nothing is queued for it again
    job = queue.fetch_job(conn, job_id)
    assert job.retries_left == 0 and job_id in FailedJobRegistry(settings.queue, connection=conn)
    assert queue.get_queue(conn, settings.queue).count == 0 and not ScheduledJobRegistry(settings.queue, connection=conn).get_job_ids()
    assert status(client, job_id)["attempt"] == 1


def test_job_of_a_killed_worker_is_retried_and_finishes(client, dataset, workers, settings, use_pipeline, tmp_path):
    use_pipeline(pipelines.SLEEPY)
    trace = tmp_path / "trace"
    job_id = submit(client, dataset)
    w1 = workers.start("doomed", PIPEQ_TEST_SLEEP=30, PIPEQ_TEST_TRACE=trace)
    until(client, job_id, states=("started",), timeout=15)
    wait_for(lambda: trace.exists(), what="the pipeline to start")
    os.kill(w1.pid, signal.SIGKILL)  # the worker only, as the OOM killer would
    killed_at = time.monotonic()
    # the guard takes the pipeline down with its worker
    pipeline_pid = int(trace.read_text().split()[1])
    wait_for(lambda: not os.path.exists(f"/proc/{pipeline_pid}"), timeout=10, what="the orphaned pipeline to die")
    workers.start("rescuer", PIPEQ_TEST_SLEEP=1, PIPEQ_TEST_TRACE=trace)
    s = until(client, job_id, timeout=40)
    recovery = time.monotonic() - killed_at
    assert s["status"] == "finished", s
    assert s["attempt"] == 2
    assert recovery < 30, f"recovered after {recovery:.1f}s"
    assert "result.txt" in s["result"]["files"]


def test_results_published_before_a_worker_died_are_not_run_again(client, dataset, workers, settings, use_pipeline, tmp_path):
    """A worker that published output/ and died before RQ recorded the job as finished: the
    retry returns that result instead of running the pipeline again."""
    from pipeq.storage import files as data_folder

    use_pipeline(pipelines.SLEEPY)
    trace = tmp_path / "trace"
    job_id = submit(client, dataset)
    out = data_folder.job_dir(settings.data_dir, job_id) / "output"
    out.mkdir()
    (out / "report.json").write_text('{"sample": "S1", "variants": 7}')
    (out / "calls.vcf").write_text("##fileformat=VCFv4.2\n")
    workers.start(PIPEQ_TEST_TRACE=trace)
    s = until(client, job_id)
    assert s["status"] == "finished", s
    assert s["result"] == {"files": ["calls.vcf", "report.json"], "summary": {"sample": "S1", "variants": 7}}
    assert not trace.exists(), "the pipeline ran again"


def test_stop_of_a_job_whose_worker_died_holds_for_its_next_attempt(client, dataset, workers, settings, use_pipeline, tmp_path):
    """RQ's stop command reaches only a live worker: a job whose worker died must not be
    retried after a DELETE, but end as stopped without running the pipeline again."""
    use_pipeline(pipelines.SLEEPY)
    trace = tmp_path / "trace"
    job_id = submit(client, dataset)
    doomed = workers.start("doomed", PIPEQ_TEST_SLEEP=30, PIPEQ_TEST_TRACE=trace)
    wait_for(lambda: trace.exists(), timeout=15, what="the pipeline to start")
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait()
    r = client.delete(f"/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["status"] == "started", r.text
    workers.start("next", PIPEQ_TEST_SLEEP=1, PIPEQ_TEST_TRACE=trace)
    s = until(client, job_id, timeout=40)
    assert s["status"] == "stopped" and s["error"]["reason"] == "stopped", s
    assert s["attempt"] == 2
    assert trace.read_text().count("start ") == 1, "the pipeline ran again"


def test_cancel_queued_and_stop_running(client, dataset, workers, use_pipeline, tmp_path):
    use_pipeline(pipelines.SLEEPY)
    trace = tmp_path / "trace"
    running = submit(client, dataset, "A")
    queued = submit(client, dataset, "B")
    workers.start(PIPEQ_TEST_SLEEP=60, PIPEQ_TEST_TRACE=trace)
    until(client, running, states=("started",))
    assert status(client, queued)["status"] == "queued"

    r = client.delete(f"/jobs/{queued}")
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    assert client.delete(f"/jobs/{queued}").status_code == 409

    wait_for(lambda: trace.exists(), what="the pipeline to start")
    pid = int(trace.read_text().split()[1])
    assert client.delete(f"/jobs/{running}").status_code == 200
    s = until(client, running, timeout=15)
    assert s["status"] == "stopped" and s["error"]["reason"] == "stopped"
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=5, what="the pipeline to be killed")


def test_cancel_of_a_job_a_worker_takes_meanwhile_stops_it(client, dataset, workers, use_pipeline, tmp_path, monkeypatch):
    """DELETE read the job as queued; a worker takes it before the cancel: the job must be
    stopped (its pipeline killed), not marked canceled while it runs on."""
    from pipeq.api.routers import jobs as jobs_router

    use_pipeline(pipelines.SLEEPY)
    trace = tmp_path / "trace"
    job_id = submit(client, dataset)
    real = jobs_router.job_or_404

    def stale_read(conn, job_id, *rest):
        found = real(conn, job_id, *rest)  # read while queued ...
        workers.start(PIPEQ_TEST_SLEEP=30, PIPEQ_TEST_TRACE=trace)
        wait_for(lambda: trace.exists(), timeout=15, what="a worker to take the job")  # ... taken since
        return found

    monkeypatch.setattr(jobs_router, "job_or_404", stale_read)
    assert status(client, job_id)["status"] == "queued"
    r = client.delete(f"/jobs/{job_id}")
    assert r.status_code == 200, r.text
    pid = int(trace.read_text().split()[1])
    s = until(client, job_id, timeout=15)
    assert s["status"] == "stopped" and s["error"]["reason"] == "stopped", s
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=5, what="the pipeline to be killed")


def test_delete_in_the_instant_a_worker_takes_the_job_stops_it_and_answers_200(make_client, dataset, settings, use_pipeline,
                                                                              tmp_path, monkeypatch):
    """A worker has taken the job off the queue but not yet recorded itself on it (RQ sets
    the job's worker only as the attempt starts): DELETE found it neither queued nor running
    and answered 500 (RQ's "Job is not currently executing"), although the stop took effect.
    Each DELETE here comes at one step of the take, with a 3 s stand-in pipeline."""
    from pipeq.worker import PipeqWorker, task

    use_pipeline(pipelines.SLEEPY)
    monkeypatch.setenv("PIPEQ_TEST_SLEEP", "3")
    monkeypatch.setattr(task, "get_settings", lambda: settings)
    answers = []
    with make_client(raise_server_exceptions=False) as client:
        worker = PipeqWorker([settings.queue], connection=client.app.state.redis, name=f"take-{uuid.uuid4().hex[:6]}")
        steps = {"execute_job": worker.execute_job, "prepare_execution": worker.prepare_execution,
                 "perform_job": worker.perform_job}

        def delete_then(step):
            def run(job, *args, **kwargs):
                r = client.delete(f"/jobs/{job.id}")
                answers.append((step, r.status_code, r.text))
                return steps[step](job, *args, **kwargs)
            return run

        for step in steps:
            job_id = submit(client, dataset, sample=step)
            setattr(worker, step, delete_then(step))
            worker.work(burst=True)
            delattr(worker, step)  # the worker's own step again
            s = status(client, job_id)
            assert s["status"] == "stopped" and s["error"]["reason"] == "stopped", (step, s)
    assert [a[:2] for a in answers] == [(step, 200) for step in steps], answers


def test_warm_shutdown_finishes_the_job(client, dataset, workers, use_pipeline, tmp_path):
    use_pipeline(pipelines.SLEEPY)
    trace = tmp_path / "trace"
    job_id = submit(client, dataset)
    w = workers.start(PIPEQ_TEST_SLEEP=2, PIPEQ_TEST_TRACE=trace)
    wait_for(lambda: trace.exists(), what="the pipeline to start")
    w.send_signal(signal.SIGTERM)
    assert until(client, job_id)["status"] == "finished"
    assert w.wait(timeout=10) == 0


def test_an_idle_worker_stopped_exits_0(workers, settings, conn):
    """A warm shutdown with no job done is a clean exit too (it was 1: a pod scaled away
    before its first job showed as an Error)."""
    from rq import Worker

    w = workers.start("idle-stop")
    wait_for(lambda: any(x.name == "idle-stop" for x in Worker.all(connection=conn)), what="the worker to register")
    w.send_signal(signal.SIGTERM)
    assert w.wait(timeout=15) == 0


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (its SigCgt mask in /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def test_a_worker_stopped_while_it_starts_exits_0_and_leaves_no_registration(workers, settings, conn, tmp_path):
    """A SIGTERM in the worker's first second (its imports, or just after it registered,
    before RQ's handlers are in) killed it outright: exit -15 and a registration left behind
    (CI met it once). Now it is held from before the imports, and the worker stops as soon
    as it is ready."""
    from rq import Worker

    log = tmp_path / "worker.log"
    w = workers.start("start-stop", log=log)
    wait_for(lambda: _catches_sigterm(w.pid), timeout=10, interval=0.002, what="the worker to hold SIGTERM")
    # held before the imports, so long before the registration (RQ's handlers come after it)
    assert "start-stop" not in [x.name for x in Worker.all(connection=conn)]
    w.send_signal(signal.SIGTERM)
    assert w.wait(timeout=30) == 0, log.read_text()
    assert "stop requested while starting" in log.read_text()
    assert "start-stop" not in [x.name for x in Worker.all(connection=conn)]


def test_a_stop_that_comes_after_the_stop_check_still_stops_the_run(client, dataset, settings, use_pipeline, tmp_path, monkeypatch):
    """The stop mark is read once as the attempt starts; a stop command that reaches the
    worker just after that read must still end the pipeline (it used to be cleared)."""
    from pipeq import queue
    from pipeq.worker import PipeqWorker, task

    use_pipeline(pipelines.SLEEPY)
    trace = tmp_path / "trace"
    monkeypatch.setenv("PIPEQ_TEST_SLEEP", "20")
    monkeypatch.setenv("PIPEQ_TEST_TRACE", str(trace))
    monkeypatch.setattr(task, "get_settings", lambda: settings)
    job_id = submit(client, dataset)
    worker = PipeqWorker([settings.queue], connection=client.app.state.redis, name=f"race-{uuid.uuid4().hex[:6]}")
    checked = queue.stop_requested

    def stop_right_after_the_check(conn, jid):
        seen = checked(conn, jid)
        worker.kill_horse()  # what RQ does on a stop command for the current job
        return seen

    monkeypatch.setattr(queue, "stop_requested", stop_right_after_the_check)
    t0 = time.monotonic()
    worker.work(burst=True)
    s = status(client, job_id)
    assert s["status"] in ("failed", "stopped") and s["error"]["reason"] == "stopped", s
    assert time.monotonic() - t0 < 15, "the pipeline ran on after the stop"


def test_a_worker_stays_busy_to_scaling_for_a_job_longer_than_its_lease(client, dataset, workers, settings, conn,
                                                                       use_pipeline, tmp_path):
    """Scaling spares a worker while its hash says which job it runs (queue.queue_stats'
    busy set, read by the operator to give its pod a high deletion cost). RQ sets that
    hash's expiry to the heartbeat TTL when a job starts, and a SimpleWorker sends no
    heartbeat while its job runs: with the TTL the lease (3 s here), the hash, busy mark
    and all, vanished 3 s into every longer job, and the operator marked the pod idle."""
    use_pipeline(pipelines.SLEEPY)
    trace = tmp_path / "trace"
    job_id = submit(client, dataset)
    name = f"longjob-{uuid.uuid4().hex[:6]}"
    workers.start(name, PIPEQ_TEST_SLEEP=3 * settings.lease_seconds, PIPEQ_TEST_TRACE=trace)
    wait_for(lambda: trace.exists(), timeout=15, what="the pipeline to start")
    seen = []
    deadline = time.monotonic() + 2.5 * settings.lease_seconds
    while time.monotonic() < deadline:
        seen.append(queue.queue_stats(conn, settings.queue).busy)
        time.sleep(0.25)
    assert all(b == {name: job_id} for b in seen), f"{sum(b != {name: job_id} for b in seen)} of {len(seen)} reads not busy"
    assert until(client, job_id, timeout=60)["status"] == "finished"
