"""A full disk: the API refuses uploads it cannot keep (507, nothing left), a job whose
worker cannot write fails with that reason, and the API stays up."""

from __future__ import annotations

import os
import subprocess

import pytest
from fastapi.testclient import TestClient

from pipeq.api.app import create_app
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


def test_full_disk_at_upload_is_507_and_leaves_nothing(settings, conn, dataset, small_disk):
    settings.data_dir = small_disk / "data"
    with TestClient(create_app(settings)) as client:
        fill(small_disk / "filler")
        r = client.post("/run_pipeline", files=_files(dataset))
        assert r.status_code == 507 and "cannot store the uploads" in r.json()["detail"], r.text
        assert list((settings.data_dir / "jobs").iterdir()) == []
        assert conn.llen(f"rq:queue:{settings.queue}") == 0
        assert client.get("/healthz").status_code == 200


def test_full_disk_in_the_worker_fails_the_job_with_the_reason(settings, workers, dataset, small_disk, tmp_path):
    settings.data_dir = small_disk / "data"
    settings.pipeline = pipelines.write(tmp_path, "pipe.sh", pipelines.SLEEPY)
    with TestClient(create_app(settings)) as client:
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
