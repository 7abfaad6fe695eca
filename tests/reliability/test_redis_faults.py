"""Redis crashes and outages: accepted jobs survive (AOF, appendfsync always), the API says
503 while Redis is away and recovers by itself, workers reconnect by themselves."""

from __future__ import annotations

import time

import pytest

from tests.conftest import wait_for
from tests.support import pipelines

pytestmark = pytest.mark.reliability


def _files(dataset):
    files = [("reads", (p.name, p.read_bytes())) for p in dataset.reads]
    return files + [("reference", (dataset.reference.name, dataset.reference.read_bytes()))]


@pytest.mark.parametrize("kill", [True, False], ids=["crash", "clean-restart"])
def test_restart_with_jobs_queued_and_running_loses_none(redis_server, settings, make_client, workers, dataset, tmp_path, kill):
    settings.pipeline = pipelines.write(tmp_path, "pipe.sh", pipelines.SLEEPY)
    with make_client() as client:
        ids = [client.post("/run_pipeline", files=_files(dataset)).json()["job_id"] for _ in range(6)]
        for n in range(2):
            workers.start(f"rw{n}", PIPEQ_TEST_SLEEP=2)
        wait_for(lambda: sum(client.get(f"/job_status/{i}").json()["status"] == "started" for i in ids) == 2, what="2 running")
        redis_server.restart(kill=kill)  # the API answered 202 for all six before this
        t0 = time.monotonic()

        def done():
            return all(client.get(f"/job_status/{i}").json()["status"] == "finished" for i in ids)

        wait_for(done, timeout=90, interval=0.5, what="all six jobs to finish after the restart")
        print(f"\nRedis {'killed -9' if kill else 'restarted'}: 6/6 finished, 0 lost, {time.monotonic() - t0:.1f}s to drain")
        assert all(w.poll() is None for w in workers.procs.values()), "workers must survive the outage"


def test_outage_gives_503_and_recovers_without_restart(redis_server, settings, client, dataset):
    assert client.get("/readyz").status_code == 200
    redis_server.stop()
    try:
        r = client.post("/run_pipeline", files=_files(dataset))
        assert r.status_code == 503 and "Redis is unreachable" in r.json()["detail"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "unreachable" in ready.json()["detail"]
        assert client.get("/jobs").status_code == 503
        assert client.get("/healthz").status_code == 200
        assert not any((settings.data_dir / "jobs").iterdir())
    finally:
        redis_server.start()
    wait_for(lambda: client.get("/readyz").status_code == 200, timeout=10, what="readyz to recover")
    assert client.post("/run_pipeline", files=_files(dataset)).status_code == 202
