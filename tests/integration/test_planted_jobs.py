"""Nothing a client writes to Redis runs as code (issue 23): jobs planted straight in Redis —
a pickle whose loading would create a file, a JSON job naming ``os.system`` (with a failure
callback naming it too), a hash RQ cannot read — are failed as "refused job" by a real
worker, without loading or importing anything of them, and the worker goes on to serve the
next good job. Reading their status through the API loads nothing either."""

from __future__ import annotations

import json
import pickle
import uuid
import zlib

import pytest

from pipeq import queue
from pipeq.worker import refusal
from tests.conftest import wait_for
from tests.support import pipelines


class _Touch:
    """Unpickling this opens (creates) ``path``: a stand-in for any code a pickle can run."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def settings(settings, tmp_path):
    settings.pipeline = pipelines.write(tmp_path, "quick.sh", pipelines.SLEEPY)
    return settings


def plant(conn, queue_name: str, fields: dict) -> str:
    """A job hash written as a client with access to Redis could, put at the queue's tail."""
    job_id = uuid.uuid4().hex
    base = {"status": "queued", "origin": queue_name, "created_at": "2026-01-01T00:00:00.000000Z",
            "enqueued_at": "2026-01-01T00:00:00.000000Z", "retries_left": 2, "timeout": -1}
    conn.hset(queue.PipeqJob.key_for(job_id), mapping={**base, **fields})
    conn.rpush(queue.get_queue(conn, queue_name).key, job_id)
    return job_id


def status(client, job_id):
    r = client.get(f"/job_status/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()


def submit(client, dataset):
    files = [("reads", (p.name, p.read_bytes())) for p in dataset.reads]
    files.append(("reference", (dataset.reference.name, dataset.reference.read_bytes())))
    r = client.post("/run_pipeline", files=files, data={"sample": "S1"})
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def test_planted_jobs_are_refused_unloaded_and_the_worker_serves_the_next(client, conn, settings, workers, dataset, tmp_path):
    marker_pickle, marker_system = tmp_path / "unpickled", tmp_path / "os-system-ran"
    evil = pickle.dumps(_Touch(str(marker_pickle)))
    pickled = plant(conn, settings.queue, {"data": zlib.compress(evil), "meta": evil, "description": "pickled"})
    system = plant(conn, settings.queue, {
        "data": zlib.compress(json.dumps(["os.system", None, [f"touch {marker_system}"], {}]).encode()),
        "failure_callback_name": "os.system", "description": "os.system",
    })
    unreadable = plant(conn, settings.queue, {"data": b"[]", "status": "no-such-status"})
    # the API reads the planted jobs as JSON too: its status read must not unpickle the meta
    assert status(client, pickled)["status"] == "queued" and not marker_pickle.exists()

    w = workers.start(PIPEQ_TEST_SLEEP=0)
    good = submit(client, dataset)
    done = wait_for(lambda: (s := status(client, good))["status"] in ("finished", "failed") and s, timeout=60, what="the good job")
    assert done["status"] == "finished", done
    assert w.poll() is None, "the worker quit"

    refused = {j: status(client, j) for j in (pickled, system, unreadable)}
    for job_id, s in refused.items():
        assert s["status"] == "failed" and s["error"]["reason"] == refusal.REASON, (job_id, s)
        assert s["attempt"] == 0  # never started: no retry spent, nothing run
    assert "not JSON" in refused[pickled]["error"]["message"]
    assert "'os.system'" in refused[system]["error"]["message"] and queue.TASK in refused[system]["error"]["message"]
    assert "cannot be read" in refused[unreadable]["error"]["message"]
    assert not marker_pickle.exists(), "a pickle was loaded"
    assert not marker_system.exists(), "os.system ran"
    assert queue.get_queue(conn, settings.queue).count == 0
    listed = client.get("/jobs").json()
    assert listed["total"] == 1 and not marker_pickle.exists()


def test_the_workers_check_refuses_what_pipeq_does_not_enqueue(conn):
    """The check by itself, on jobs made with RQ's own API: pipeq's task as the API enqueues
    it passes; anything else is refused with a sentence naming what it asked for."""

    def job(func, *, job_id=None, args=(), kwargs=None):
        return queue.PipeqJob.create(func, args=args, kwargs=kwargs or {}, connection=conn, id=job_id or uuid.uuid4().hex)

    ok = {"reads": ["r1.fq.gz", "r2.fq.gz"], "reference": "ref.fa", "sample": "S1", "sources": {"ref.fa": "s3://b/ref.fa"}}
    assert refusal.refusal(job(queue.TASK, kwargs=ok)) is None
    assert "'os.system'" in refusal.refusal(job("os.system", args=["true"]))
    assert "not a pipeq job id" in refusal.refusal(job(queue.TASK, job_id="rq-style-id", kwargs=ok))
    assert "keywords" in refusal.refusal(job(queue.TASK, args=["x"], kwargs=ok))
    assert "keywords" in refusal.refusal(job(queue.TASK, kwargs={**ok, "outdir": "/"}))
    assert "path" in refusal.refusal(job(queue.TASK, kwargs={**ok, "reference": "../../etc/passwd"}))
    assert "path" in refusal.refusal(job(queue.TASK, kwargs={**ok, "sources": {"../x": "https://h/x"}}))
    with pytest.raises(queue.NotPipeqTask):
        job("os.system").func  # what RQ's perform would call: refused before any import
