"""`pipeq dev` as a user runs it: one command, an embedded Redis, the API, autoscaled workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from pipeq.redis_server import free_port
from tests.conftest import ROOT, wait_for
from tests.support import pipelines


@pytest.fixture
def dev(tmp_path):
    port = free_port()
    pipeline = pipelines.write(tmp_path, "pipe.sh", pipelines.SLEEPY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPEQ_")}
    env.update(
        PYTHONPATH=str(ROOT),
        PIPEQ_PORT=str(port),
        PIPEQ_DATA_DIR=str(tmp_path / "data"),
        PIPEQ_PIPELINE=str(pipeline),
        PIPEQ_MIN_WORKERS="0",
        PIPEQ_MAX_WORKERS="3",
        PIPEQ_SCALE_DOWN_DELAY="1",
        PIPEQ_TEST_SLEEP="2",
    )
    proc = subprocess.Popen([sys.executable, "-m", "pipeq", "dev"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(base), timeout=20, what="pipeq dev to answer")
        yield proc, base, tmp_path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)


def _up(base):
    try:
        return httpx.get(base + "/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _workers(tmp_path) -> int:
    """Worker processes: forked by the warm fork server (same command line as the server,
    so: that command line, minus the server), or started afresh (``pipeq worker``)."""
    forked = pipelines.processes_matching("pipeq.dev_forkserver", env=str(tmp_path))
    fresh = pipelines.processes_matching("pipeq worker", env=str(tmp_path))
    return max(0, len(forked) - 1) + len(fresh)


def test_dev_scales_from_zero_runs_jobs_and_stops_cleanly(dev, dataset):
    proc, base, tmp_path = dev
    assert _workers(tmp_path) == 0
    files = [("reads", (p.name, p.read_bytes())) for p in dataset.reads] + [("reference", (dataset.reference.name, dataset.reference.read_bytes()))]
    ids = [httpx.post(base + "/run_pipeline", files=files, timeout=10).json()["job_id"] for _ in range(3)]
    wait_for(lambda: _workers(tmp_path) == 3, timeout=10, what="3 workers")
    for job_id in ids:
        wait_for(lambda: httpx.get(f"{base}/job_status/{job_id}").json()["status"] == "finished", timeout=30, what=f"{job_id} finished")
    wait_for(lambda: _workers(tmp_path) == 0, timeout=15, what="scale back to zero")
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0
    assert "workers 0→" in out and "→0" in out, out
    assert pipelines.processes_matching("", env=str(tmp_path / "data")) == []  # redis-server and all children gone


def _start_dev(tmp_path, port: int, **extra) -> subprocess.Popen:
    """``pipeq dev`` as ``make run`` starts it, in a process group of its own (as a shell
    gives the foreground job one), so that a signal to the group is a Ctrl-C in a terminal."""
    pipeline = pipelines.write(tmp_path, "pipe.sh", pipelines.SLEEPY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPEQ_")}
    env.update(
        PYTHONPATH=str(ROOT), PIPEQ_PORT=str(port), PIPEQ_DATA_DIR=str(tmp_path / "data"),
        PIPEQ_PIPELINE=str(pipeline), PIPEQ_MIN_WORKERS="1", PIPEQ_MAX_WORKERS="2", **extra,
    )
    return subprocess.Popen([sys.executable, "-m", "pipeq", "dev"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _submit_and_wait_started(base: str, dataset) -> str:
    files = [("reads", (p.name, p.read_bytes())) for p in dataset.reads] + [("reference", (dataset.reference.name, dataset.reference.read_bytes()))]
    job_id = httpx.post(base + "/run_pipeline", files=files, timeout=10).json()["job_id"]
    wait_for(lambda: httpx.get(f"{base}/job_status/{job_id}").json().get("stage") == "work", timeout=30, what="the job's pipeline running")
    return job_id


def test_ctrl_c_with_a_job_running_stops_in_order_and_the_job_runs_again(tmp_path, dataset):
    """Ctrl-C (SIGINT to the whole foreground group) with a run in progress: the workers stop
    first (the running attempt ends and gives its job back), then the API, Redis last, in
    about a second and without a Redis error; the next ``pipeq dev`` runs the job again."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start_dev(tmp_path, port, PIPEQ_TEST_SLEEP="120")
    try:
        wait_for(lambda: _up(base), timeout=30, what="pipeq dev to answer")
        job_id = _submit_and_wait_started(base, dataset)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        out = proc.communicate(timeout=30)[0]
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    print(f"\npipeq dev stopped {took:.2f} s after Ctrl-C with a job running")
    assert proc.returncode == 0, out
    assert took < 3.0, out
    for bad in ("could not connect", "failed to persist", "Traceback", "Redis unreachable"):
        assert bad not in out, out
    assert pipelines.processes_matching("", env=str(tmp_path / "data")) == []  # redis-server, API, workers, pipeline
    # the interrupted job is not lost: the next start runs it to the end
    proc = _start_dev(tmp_path, port, PIPEQ_TEST_SLEEP="0")
    try:
        wait_for(lambda: _up(base), timeout=30, what="pipeq dev to answer again")
        wait_for(lambda: httpx.get(f"{base}/job_status/{job_id}").json()["status"] == "finished", timeout=30, what="the job finished on the next start")
        assert httpx.get(f"{base}/job_status/{job_id}").json()["attempt"] == 2  # one interrupted, one whole
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=30)


def test_nothing_outlives_a_killed_pipeq_dev(tmp_path, dataset):
    """``pipeq dev`` SIGKILLed (no chance to clean up): Redis, the API, the fork server, the
    workers and the running pipeline all end with it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start_dev(tmp_path, port, PIPEQ_TEST_SLEEP="120")
    try:
        wait_for(lambda: _up(base), timeout=30, what="pipeq dev to answer")
        _submit_and_wait_started(base, dataset)
        proc.kill()
        proc.wait(timeout=10)
        wait_for(lambda: pipelines.processes_matching("", env=str(tmp_path / "data")) == [], timeout=15, what="every process of pipeq dev gone")
    finally:
        for pid in pipelines.processes_matching("", env=str(tmp_path / "data")):
            os.kill(pid, signal.SIGKILL)
        proc.communicate(timeout=10)
