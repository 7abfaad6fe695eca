"""A full disk: the API refuses uploads it cannot keep (507, nothing left), a job whose
worker cannot write fails with that reason, and the API stays up."""

from __future__ import annotations

import os
import subprocess

import pytest
from rq.job import Job

from pipeq import queue
from tests.conftest import wait_for
from tests.support import pipelines

pytestmark = pytest.mark.reliability


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (needs root, as CI and the dev machines are)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up (needs root): {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path):
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass


def _files(dataset):
    files = [("reads", (p.name, p.read_bytes())) for p in dataset.reads]
    return files + [("reference", (dataset.reference.name, dataset.reference.read_bytes()))]


def test_full_disk_at_upload_is_507_and_leaves_nothing(settings, make_client, conn, dataset, small_disk):
    settings.data_dir = small_disk / "data"
    with make_client() as client:
        fill(small_disk / "filler")
        r = client.post("/run_pipeline", files=_files(dataset))
        assert r.status_code == 507 and "cannot store the uploads" in r.json()["detail"], r.text
        assert list((settings.data_dir / "jobs").iterdir()) == []
        assert queue.get_queue(conn, settings.queue).count == 0
        assert client.get("/healthz").status_code == 200


def test_full_disk_in_the_worker_fails_the_job_with_the_reason(settings, make_client, workers, dataset, small_disk, tmp_path):
    settings.data_dir = small_disk / "data"
    settings.pipeline = pipelines.write(tmp_path, "pipe.sh", pipelines.SLEEPY)
    with make_client() as client:
        job_id = client.post("/run_pipeline", files=_files(dataset)).json()["job_id"]
        fill(small_disk / "filler")
        workers.start(PIPEQ_TEST_SLEEP=0)
        s = wait_for(lambda: (s := client.get(f"/job_status/{job_id}").json())["status"] in ("finished", "failed") and s, timeout=30, what="the job to end")
        assert s["status"] == "failed"
        assert s["error"]["reason"] in ("storage error", "pipeline failed"), s["error"]
        text = (s["error"]["message"] + s["error"]["stderr_tail"]).lower()
        assert "no space left" in text, s["error"]
        os.remove(small_disk / "filler")
        assert client.get("/readyz").status_code == 200


@pytest.fixture
def read_only_later(small_disk):
    """The small tmpfs, and a function that remounts it read-only (root ignores chmod, so
    a read-only mount is how an unwritable data folder is made here)."""

    def make_read_only():
        subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)

    yield small_disk, make_read_only
    subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=False)


def test_unwritable_data_folder_at_upload_is_507_and_api_stays_up(settings, make_client, conn, dataset, read_only_later):
    mnt, make_read_only = read_only_later
    settings.data_dir = mnt / "data"
    with make_client() as client:
        make_read_only()
        r = client.post("/run_pipeline", files=_files(dataset))
        print(f"\nread-only data folder at upload: {r.status_code} {r.json()['detail']}")
        assert r.status_code == 507 and "read-only file system" in r.json()["detail"].lower(), r.text
        assert queue.get_queue(conn, settings.queue).count == 0 and conn.keys(Job.key_for("*")) == []
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        assert client.get("/jobs").status_code == 200


def test_unwritable_data_folder_in_the_worker_fails_the_job_with_the_reason(settings, make_client, workers, dataset, tmp_path, read_only_later):
    mnt, make_read_only = read_only_later
    settings.data_dir = mnt / "data"
    settings.pipeline = pipelines.write(tmp_path, "pipe.sh", pipelines.SLEEPY)
    with make_client() as client:
        job_id = client.post("/run_pipeline", files=_files(dataset)).json()["job_id"]
        make_read_only()
        workers.start(PIPEQ_TEST_SLEEP=0)
        s = wait_for(lambda: (s := client.get(f"/job_status/{job_id}").json())["status"] in ("finished", "failed") and s, timeout=30, what="the job to end")
        print(f"\nread-only data folder in the worker: {s['status']}, {s['error']['reason']}: {s['error']['message']}")
        assert s["status"] == "failed" and s["error"]["reason"] == "storage error", s["error"]
        assert "read-only file system" in s["error"]["message"].lower(), s["error"]
        assert s["attempt"] == 1  # not retried: the next attempt would fail the same way
        assert client.get("/readyz").status_code == 200
