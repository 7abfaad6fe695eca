"""A pipeline never outlives its timeout or its worker: a pipeline that forks children and
grandchildren, some ignoring SIGTERM, one even in a session of its own (as a daemonising
tool would), is killed entirely, checked by a scan of /proc."""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest

from tests.conftest import wait_for
from tests.support import pipelines

pytestmark = pytest.mark.reliability

# children and grandchildren ignoring TERM, a double fork, and an escapee in its own session
TREE = pipelines.HEADER + """
echo "PROGRESS 10 forking"
m=$PIPEQ_TEST_MARKER
( trap '' TERM; exec -a "$m-child" sleep 300 ) &
( ( trap '' TERM; exec -a "$m-grandchild" sleep 300 ) & exec -a "$m-child2" sleep 300 ) &
( ( ( trap '' TERM; exec -a "$m-orphan" sleep 300 ) & ) & ) &
setsid bash -c "trap '' TERM; exec -a $m-session sleep 300" &
echo "PROGRESS 50 waiting"
wait
"""
EXPECTED = 5


def _files(dataset):
    files = [("reads", (p.name, p.read_bytes())) for p in dataset.reads]
    return files + [("reference", (dataset.reference.name, dataset.reference.read_bytes()))]


def _left(marker):
    return pipelines.processes_matching(marker)


@pytest.fixture
def marker():
    m = f"pipeq-tree-{uuid.uuid4().hex[:8]}"
    yield m
    for pid in _left(m):  # never leave strays behind for other tests, even on failure
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_timeout_kills_the_whole_tree(settings, make_client, workers, dataset, tmp_path, marker):
    settings.pipeline = pipelines.write(tmp_path, "tree.sh", TREE)
    settings.pipeline_timeout, settings.kill_grace = 2, 1
    with make_client() as client:
        job_id = client.post("/run_pipeline", files=_files(dataset)).json()["job_id"]
        workers.start(PIPEQ_TEST_MARKER=marker)
        wait_for(lambda: len(_left(marker)) >= EXPECTED, timeout=20, what="the pipeline's processes")
        s = wait_for(lambda: (s := client.get(f"/job_status/{job_id}").json())["status"] in ("finished", "failed") and s,
                     timeout=30, what="the job to end")
        t_end = time.monotonic()
        left = _left(marker)
        print(f"\ntimeout: job failed ({s['error']['reason']}), {len(left)} processes left of {EXPECTED}+")
        assert s["status"] == "failed" and s["error"]["reason"] == "timeout", s
        assert left == [], [open(f"/proc/{p}/cmdline").read() for p in left]
        assert time.monotonic() - t_end < 1


def test_killed_worker_takes_the_whole_tree_with_it(settings, make_client, workers, dataset, tmp_path, marker):
    """SIGKILL of the worker alone (as the OOM killer would): the guard kills the tree."""
    settings.pipeline = pipelines.write(tmp_path, "tree.sh", TREE)
    settings.pipeline_timeout, settings.kill_grace, settings.retries = 600, 1, 0
    with make_client() as client:
        client.post("/run_pipeline", files=_files(dataset))
        proc = workers.start(PIPEQ_TEST_MARKER=marker)
        wait_for(lambda: len(_left(marker)) >= EXPECTED, timeout=20, what="the pipeline's processes")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        t0 = time.monotonic()
        wait_for(lambda: _left(marker) == [], timeout=settings.kill_grace + 5, interval=0.1,
                 what="every process of the pipeline to die with its worker")
        print(f"\nworker SIGKILLed: the whole pipeline tree gone in {time.monotonic() - t0:.1f}s")
