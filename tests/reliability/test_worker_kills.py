"""20 jobs, 5 busy workers SIGKILLed at random moments: every job finishes, none is lost,
none ran to completion twice. Prints the figures docs/reliability.md quotes."""

from __future__ import annotations

import os
import random
import re
import signal
import time
from collections import defaultdict

import pytest

from pipeq import queue
from tests.conftest import wait_for
from tests.support import pipelines

pytestmark = pytest.mark.reliability

JOBS, KILLS, POOL = 20, 5, 4


def test_killed_workers_lose_and_duplicate_nothing(settings, make_client, workers, dataset, tmp_path):
    settings.pipeline = pipelines.write(tmp_path, "pipe.sh", pipelines.SLEEPY)
    # a lease long enough that a loaded CI machine does not stall a renewal past it
    settings.lease_seconds, settings.retries = 5, 3
    trace = tmp_path / "trace"
    env = dict(PIPEQ_TEST_SLEEP=2, PIPEQ_TEST_TRACE=trace)
    rng = random.Random(20)
    files = [("reads", (p.name, p.read_bytes())) for p in dataset.reads]
    files.append(("reference", (dataset.reference.name, dataset.reference.read_bytes())))
    with make_client() as client:
        ids = [client.post("/run_pipeline", files=files).json()["job_id"] for _ in range(JOBS)]
        spawned = 0

        def spawn():
            nonlocal spawned
            spawned += 1
            return workers.start(f"kw{spawned}", **env)

        alive = [spawn() for _ in range(POOL)]
        kills: list[tuple[str, float, int]] = []  # (job_id, time of the kill, killed attempt)
        gone = defaultdict(list)  # job_id -> when the killed attempts' processes were all gone
        while len(kills) < KILLS:
            time.sleep(rng.uniform(0.3, 1.5))
            stats = queue.queue_stats(client.app.state.redis, settings.queue).busy
            # a killed worker's mark stays until its registration expires: skip the dead
            busy = {n: j for n, j in stats.items() if workers.procs[n].poll() is None}
            if not busy:
                continue
            name, job_id = rng.choice(sorted(busy.items()))
            proc = workers.procs[name]
            os.kill(proc.pid, signal.SIGKILL)  # the worker alone, as the OOM killer would
            proc.wait()
            at = time.time()
            alive.remove(proc)
            alive.append(spawn())
            status = client.get(f"/job_status/{job_id}").json()
            if status["status"] in ("finished", "failed"):
                # the busy mark was read just before the job ended: not a kill mid-job
                continue
            # the guard must now kill that attempt's pipeline (nothing else does)
            attempt = status["attempt"]
            wait_for(lambda: not pipelines.processes_matching(f"{job_id}/work/attempt-{attempt}"),
                     timeout=settings.kill_grace + 5, interval=0.05, what="the killed worker's pipeline to die")
            kills.append((job_id, at, attempt))
            gone[job_id].append(time.time())

        def all_final():
            return all(client.get(f"/job_status/{i}").json()["status"] in ("finished", "failed") for i in ids)

        wait_for(all_final, timeout=120, interval=0.5, what="every job to end")
        statuses = {i: client.get(f"/job_status/{i}").json() for i in ids}

    finished = [i for i, s in statuses.items() if s["status"] == "finished"]
    starts, ends = defaultdict(list), defaultdict(list)  # job_id -> [(time, attempt)]
    for line in trace.read_text().splitlines():
        kind, _pid, ts, outdir = line.split()
        job_id, attempt = re.search(r"/jobs/([0-9a-f]{32})/work/attempt-(\d+)", outdir).groups()
        (starts if kind == "start" else ends)[job_id].append((float(ts), int(attempt)))
    runs = {j: [(t0, min([t for t, n in ends[j] if n == a] or [float("inf")]), a) for t0, a in starts[j]] for j in ids}
    # ran to completion twice at the same time: two attempts that both ended, overlapping
    duplicated = [j for j, r in runs.items()
                  if any(a != b and e1 < float("inf") and e2 < float("inf") and s1 < e2 and s2 < e1
                         for s1, e1, a in r for s2, e2, b in r)]
    # a kill after the pipeline's last line but before the job was recorded as finished:
    # at-least-once means it may run again (one after the other, never at once)
    rerun = [j for j in ids if len(ends[j]) > 1]
    # No two attempts at once: no other attempt started after a kill before the killed
    # attempt's processes were gone. (The killed attempt's own pipeline may still write its
    # start line just after the kill, while the guard takes it down: that is not a second
    # attempt.)
    def gone_after(job_id, at):
        return min(g for g in gone[job_id] if g >= at)

    overlapping = [(j, a, [(t - at, n) for t, n in starts[j] if at < t < gone_after(j, at) and n != a])
                   for j, at, a in kills]
    overlapping = [o for o in overlapping if o[2]]
    recoveries = []
    for job_id, at, a in kills:
        if any(n == a and t < at for t, n in ends[job_id]):
            continue  # its pipeline had already ended: nothing to recover (see rerun)
        later = [t for t, n in starts[job_id] if t > at and n != a]
        recoveries.append(min(later) - at if later else float("inf"))

    print(f"\n{len(finished)}/{JOBS} finished, {JOBS - len(finished)} lost, {len(duplicated)} duplicated, {len(overlapping)} overlapping"
          f" ({len(rerun)} run again after their pipeline had ended)")
    print("killed attempt's pipeline gone after: " + ", ".join(f"{gone_after(j, at) - at:.2f}s" for j, at, _ in kills))
    print("recovery of each killed job (kill → next start): " + ", ".join(f"{r:.1f}s" for r in recoveries))
    assert len(finished) == JOBS, {i: s["status"] for i, s in statuses.items() if s["status"] != "finished"}
    assert duplicated == [] and overlapping == [], (duplicated, overlapping)
    # every killed attempt was followed by another: the attempt the kill found may be 0 (the
    # worker had taken the job but its task had not yet counted an attempt), so not ">= 2"
    assert all(statuses[j]["attempt"] > a for j, _, a in kills), [(statuses[j]["attempt"], a) for j, _, a in kills]
    assert max(recoveries) <= 60
