"""Scale-down under load, on the real control plane with the process node and the operator:
jobs of mixed lengths run on several workers, the queue drains, the pool scales down while
some jobs still run, and not one job is interrupted (each finishes on its first attempt).

Uses the cluster fixtures of tests/cluster (imported by tests/reliability/conftest.py)."""

from __future__ import annotations

import threading
import time

import pytest

from pipeq import queue
from tests.support.cluster import wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.cluster]


def test_scale_down_under_load_interrupts_no_job(cluster, pools):  # noqa: F811
    pools.create(maxReplicas=4, scaling={"pollIntervalSeconds": 0.2, "scaleDownDelaySeconds": 1})
    wait_for(lambda: pools.replicas() == 0, timeout=30, what="the worker Deployment")
    ids = pools.enqueue(20, n=2) + pools.enqueue(1, n=6) + pools.enqueue(4, n=2) + pools.enqueue(1, n=4)

    seen: list[tuple[float, int, int]] = []  # (time, replicas, jobs started)
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            started = sum(pools.status(j) == "started" for j in ids)
            seen.append((time.monotonic(), pools.replicas() or 0, started))
            time.sleep(0.3)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        wait_for(lambda: all(pools.status(j) in ("finished", "failed") for j in ids), timeout=150, interval=0.5,
                 what="every job to end")
        wait_for(lambda: pools.replicas() == 0, timeout=30, what="scale to zero")
    finally:
        stop.set()
        watcher.join()

    jobs = [queue.fetch_job(pools.conn, j) for j in ids]
    statuses = [j.get_status(refresh=True).value for j in jobs]
    attempts = [int(j.meta.get("attempt") or 0) for j in jobs]
    peak = max(r for _, r, _ in seen)
    # scale-downs that happened while some job was still running
    downs_under_load = sum(1 for (_, r0, _), (_, r1, s1) in zip(seen, seen[1:]) if r1 < r0 and s1 > 0)
    interrupted = sum(1 for s, a in zip(statuses, attempts) if s != "finished" or a != 1)
    print(f"\nscale-down under load: {statuses.count('finished')}/{len(ids)} finished, {interrupted} interrupted; "
          f"replicas peaked at {peak}, {downs_under_load} scale-downs while jobs ran, then 0")
    t0 = seen[0][0]
    changes = [f"{t - t0:.0f}s:{r} ({n} running)" for i, (t, r, n) in enumerate(seen) if i == 0 or r != seen[i - 1][1]]
    print("  replicas over time: " + ", ".join(changes))
    assert statuses == ["finished"] * len(ids), statuses
    assert attempts == [1] * len(ids), attempts  # no job was retried: none lost its worker
    assert peak >= 3 and downs_under_load >= 1, changes
