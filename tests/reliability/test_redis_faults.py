"""Redis crashes and outages: accepted jobs survive (AOF, appendfsync always), the API says
503 while Redis is away and recovers by itself, workers reconnect by themselves."""

from __future__ import annotations

import os
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


def _restart_under_a_running_job(redis_server, settings, make_client, workers, dataset, tmp_path, outage: float):
    """One job running a 3-lease pipeline; Redis stopped for ``outage`` s mid-run, then
    started again (AOF: its registry entry comes back with the score of its last renewal).
    Returns the job's final status, how many times its pipeline started, and the margins
    (lease expiry − now, s) seen while it ran before the restart."""
    from pipeq import queue

    settings.pipeline = pipelines.write(tmp_path, "pipe.sh", pipelines.SLEEPY)
    trace = tmp_path / "trace"
    with make_client() as client:
        job_id = client.post("/run_pipeline", files=_files(dataset)).json()["job_id"]
        workers.start("rr", PIPEQ_TEST_SLEEP=3 * settings.lease_seconds, PIPEQ_TEST_TRACE=trace)
        wait_for(lambda: trace.exists(), timeout=30, what="the pipeline to start")
        registry = queue.started_registry(client.app.state.redis, settings.queue).key
        margins, since = [], time.monotonic()

        def a_renewal_period_seen() -> bool:
            (score,) = [s for _, s in client.app.state.redis.zrange(registry, 0, -1, withscores=True)] or [0.0]
            margins.append(score - time.time())
            return time.monotonic() - since >= settings.lease_seconds / 2

        # the margin a restart has is the lease's expiry minus now: sampled over more than
        # one renewal (every lease / 3), the smallest is the longest restart always ridden out
        wait_for(a_renewal_period_seen, timeout=30, interval=0.05, what="a renewal period")
        pid = int(trace.read_text().split()[1])
        redis_server.stop()
        down = time.monotonic()
        # the pipeline runs on while Redis is away (that is the check of each poll)
        wait_for(lambda: (os.path.exists(f"/proc/{pid}") or pytest.fail("the pipeline ended in the outage"))
                 and time.monotonic() - down >= outage, timeout=outage + 10, interval=0.05, what=f"{outage} s of outage")
        redis_server.start()
        s = wait_for(lambda: (s := client.get(f"/job_status/{job_id}").json())["status"] in ("finished", "failed") and s,
                     timeout=12 * settings.lease_seconds, interval=0.2, what="the job to end")
    return s, trace.read_text().count("start "), margins


def test_a_redis_restart_short_against_the_lease_reruns_no_running_job(redis_server, settings, make_client, workers, dataset, tmp_path):
    """Short is shorter than the lease's margin, which its renewals every lease / 3 keep above
    2/3 of the lease: a restart of half a lease (3 s of a 6 s lease) is ridden out, the job
    finishes on its first attempt and its pipeline runs once."""
    settings.lease_seconds = 6
    s, starts, margins = _restart_under_a_running_job(redis_server, settings, make_client, workers, dataset, tmp_path, outage=3.0)
    print(f"\nlease {settings.lease_seconds} s: margin {min(margins):.2f}–{max(margins):.2f} s over {len(margins)} reads; "
          f"3 s restart: {s['status']}, attempt {s['attempt']}, pipeline started {starts}×")
    # the margin itself is a figure (docs/reliability.md), not asserted: on a loaded machine a
    # renewal comes late; what must hold is that the restart was ridden out
    assert min(margins) > 0, margins
    assert s["status"] == "finished" and s["attempt"] == 1 and starts == 1, (s, starts)


def test_a_redis_restart_longer_than_the_lease_requeues_the_job_once(redis_server, settings, make_client, workers, dataset, tmp_path):
    """Past the lease the attempt cannot prove it still owns the job: it stops, and the job is
    requeued (one retry) and finishes once on its next attempt; no two attempts publish."""
    settings.lease_seconds = 6
    s, starts, _ = _restart_under_a_running_job(redis_server, settings, make_client, workers, dataset, tmp_path, outage=8.0)
    print(f"\nlease {settings.lease_seconds} s, 8 s restart: {s['status']}, attempt {s['attempt']}, pipeline started {starts}×")
    assert s["status"] == "finished" and s["attempt"] == 2 and starts == 2, (s, starts)
