"""`pipeq api --workers N`: several API processes on one port, one Redis, one data folder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from pipeq import queue
from tests.conftest import ROOT, settings_env, wait_for
from tests.support.pipelines import processes_matching


def _api_processes(settings) -> list[int]:
    """This test's serving API processes: uvicorn spawns them with multiprocessing (its
    resource tracker is no API process)."""
    return processes_matching("spawn_main", env=f"PIPEQ_DATA_DIR={settings.data_dir}")


@pytest.fixture
def api_two(settings):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeq", "api", "--workers", "2", "--port", str(port)],
        env=settings_env(settings), cwd=ROOT, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200 and len(_api_processes(settings)) == 2
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout=30, what="two API processes")
        yield proc, url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _submit(url: str, dataset) -> httpx.Response:
    files = [("reads", (p.name, p.read_bytes())) for p in dataset.reads]
    files.append(("reference", (dataset.reference.name, dataset.reference.read_bytes())))
    return httpx.post(url + "/run_pipeline", files=files, data={"sample": "S1"}, timeout=30)


def test_two_processes_share_the_queue_and_a_killed_one_is_replaced(api_two, dataset, conn, settings):
    proc, url = api_two
    first = _api_processes(settings)
    assert len(first) == 2

    ids = []
    for _ in range(6):
        r = _submit(url, dataset)
        assert r.status_code == 202, r.text
        ids.append(r.json()["job_id"])
    assert len(set(ids)) == 6
    # every process sees every job: one Redis, one data folder
    for job_id in ids:
        body = httpx.get(f"{url}/job_status/{job_id}", timeout=10).json()
        assert body["status"] == "queued"
        assert (settings.data_dir / "jobs" / job_id / "inputs").is_dir()
    assert queue.get_queue(conn, settings.queue).count == 6

    # a refused upload leaves nothing, whichever process took it
    r = httpx.post(url + "/run_pipeline", files=[("reads", ("r.fq", b"not a fastq\n")), ("reference", ("x.fa", b">x\nACGT\n"))], timeout=10)
    assert r.status_code == 422
    assert sorted(p.name for p in (settings.data_dir / "jobs").iterdir()) == sorted(ids)

    # /metrics counts every process's submissions, whichever process answers the scrape
    for _ in range(6):
        with httpx.Client() as fresh:  # a new connection each time: any process may take it
            scraped = fresh.get(url + "/metrics", timeout=10).text
        assert 'pipeq_submissions_total{outcome="accepted"} 6.0' in scraped, scraped
        assert 'pipeq_submissions_total{outcome="rejected"} 1.0' in scraped

    victim = sorted(first)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(_api_processes(settings)) == 2 and victim not in _api_processes(settings),
             timeout=30, what="uvicorn to replace the killed API process")
    deadline = time.monotonic() + 10
    while True:  # the port answers throughout, from the survivor or the new process
        r = _submit(url, dataset)
        if r.status_code == 202 or time.monotonic() > deadline:
            break
    assert r.status_code == 202, r.text
    assert queue.get_queue(conn, settings.queue).count == 7
    # a counter does not go back when its process dies
    assert 'pipeq_submissions_total{outcome="accepted"} 7.0' in httpx.get(url + "/metrics", timeout=10).text
