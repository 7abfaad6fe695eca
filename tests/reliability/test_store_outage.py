"""A job survives a 30 s outage of its object store (issue 21): a real versitygw is stopped
while the job's pipeline runs and stays down past its end, so the worker meets the outage
when it publishes; started again 30 s after it went down, the job finishes on its first
attempt, its pipeline run once, no retry spent, and its results are the job's."""

from __future__ import annotations

import time

import pytest

from pipeq import queue
from tests.conftest import wait_for
from tests.support import pipelines

pytestmark = pytest.mark.reliability

OUTAGE = 30.0


def files_of(dataset):
    files = [("reads", (p.name, p.read_bytes())) for p in dataset.reads]
    files.append(("reference", (dataset.reference.name, dataset.reference.read_bytes())))
    return files


def test_a_job_survives_a_30_s_store_outage_mid_run(settings, make_client, dataset, workers, tmp_path, monkeypatch, conn):
    from tests.support.s3server import own_job_store

    with own_job_store(tmp_path / "s3", settings, monkeypatch) as server:
        settings.pipeline = pipelines.write(tmp_path, "pipe.sh", pipelines.SLEEPY)
        settings.log_upload_interval = 1.0  # the log's uploads meet the outage too
        trace = tmp_path / "trace"
        with make_client() as client:
            job_id = client.post("/run_pipeline", files=files_of(dataset)).json()["job_id"]
            workers.start("w1", PIPEQ_TEST_SLEEP=5, PIPEQ_TEST_TRACE=trace)
            wait_for(lambda: trace.exists(), timeout=30, what="the pipeline to run")
            server.stop()
            down = time.monotonic()

            def still_running_after_the_outage() -> bool:
                s = client.get(f"/job_status/{job_id}").json()
                assert s["status"] == "started" and s["attempt"] == 1, s  # not failed, not requeued
                return "end" in trace.read_text() and time.monotonic() - down >= OUTAGE

            # the pipeline ends while the store is down: the worker publishes into the outage
            wait_for(still_running_after_the_outage, timeout=OUTAGE + 30, interval=0.5, what="the outage's 30 s")
            server.start()
            s = wait_for(lambda: (s := client.get(f"/job_status/{job_id}").json())["status"] not in ("queued", "started") and s,
                         timeout=60, what="the job to end")
            took = time.monotonic() - down
        print(f"\nstore down {OUTAGE:.0f} s mid-run: the job finished {took - OUTAGE:.1f} s after the store came back")
        assert s["status"] == "finished" and s["attempt"] == 1, s
        assert s["result"]["files"] == ["report.json", "result.txt"], s
        assert trace.read_text().count("start ") == 1, "the pipeline ran more than once"
        assert queue.fetch_job(conn, job_id).retries_left == settings.retries  # no retry spent
