"""Scale from zero on kind: how long a user waits, from submission to the pipeline's first
line, when the pool has no worker pod — and where the time goes.

    $(scripts/venv.sh)/bin/python -m bench.kind_start [--runs 10] [--json out.json]   # make bench-kind

What it runs: a kind cluster of its own (tests/support/kind.py: pipeq's images, the chart
with the default pool at minReplicas 0), deleted at the end. Each run waits until the pool
has no pod, submits a real run (small simulated reads) with POST /run_pipeline, and follows
it. Steps, each from its own clock:

- scheduled: the pod's PodScheduled condition (the API server's clock, 1 s resolution);
- container started: the container's startedAt (the kubelet's, 1 s resolution);
- worker registered: the RQ worker's birth in Redis (the worker's clock, µs);
- first line: the pipeline's first line in the job's log, polled every 50 ms over REST.

The host, the node and the pods share one kernel clock, so the steps can be subtracted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import redis
from rq.worker import Worker

from pipeq import queue
from tests.support.kind import NAMESPACE, RELEASE, KindCluster, docker_down, docker_up
from tests.support.simdata import make_dataset
from tests.support.waiting import wait_for


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def one_run(kind: KindCluster, client: httpx.Client, files, conn: redis.Redis) -> dict[str, float]:
    wait_for(lambda: not kind.pods("pipeq.dev/pool=default"), timeout=180, interval=0.5, what="the pool at zero pods")
    time.sleep(1)  # let the operator see zero too
    t0 = time.time()
    r = client.post("/run_pipeline", files=files, data={"sample": "cold"})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]

    def first_line():
        resp = client.get(f"/jobs/{job_id}/log")
        return time.time() if resp.status_code == 200 and resp.text.strip() else None

    t_line = wait_for(first_line, timeout=180, interval=0.05, what="the pipeline's first line")
    pod = next(p for p in kind.get_json("pods", "-n", NAMESPACE, "-l", "pipeq.dev/pool=default")["items"]
               if (p["metadata"].get("annotations") or {}).get("pipeq.dev/job") == job_id
               or p["status"].get("phase") == "Running")
    sched = next(c["lastTransitionTime"] for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    started = pod["status"]["containerStatuses"][0]["state"].get("running", {}).get("startedAt")
    # the worker is named after its pod (PIPEQ_WORKER_NAME)
    birth = conn.hget(Worker.redis_worker_namespace_prefix + pod["metadata"]["name"], "birth")
    row = {"first_line": t_line - t0, "scheduled": ts(sched) - t0}
    if started:
        row["container_started"] = ts(started) - t0
    if birth:
        row["worker_registered"] = ts(birth.decode()) - t0
    wait_for(lambda: client.get(f"/job_status/{job_id}").json()["status"] in ("finished", "failed"), timeout=180,
             interval=0.5, what="the job to end")
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--json")
    a = p.parse_args(argv)
    started = docker_up()
    work = Path(tempfile.mkdtemp(prefix="pipeq-bench-kind-"))
    kind = KindCluster("pipeq-bench", work)
    try:
        kind.up({"workerPool.scaleDownDelaySeconds": 2})
        print("set-up: " + ", ".join(f"{k} {v} s" for k, v in kind.timings.items()))
        ds = make_dataset(work / "data", seed=3, n_snps=4)
        files = [("reads", (q.name, q.read_bytes())) for q in ds.reads] + [("reference", (ds.reference.name, ds.reference.read_bytes()))]
        client = httpx.Client(base_url=kind.api_url(), timeout=30)
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=60, what="the API")
        conn = queue.connect(kind.forward(f"svc/{RELEASE}-redis", 6379, scheme="redis") + "/0")
        rows = []
        for i in range(a.runs):
            rows.append(one_run(kind, client, files, conn))
            print(f"run {i + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in rows[-1].items()), flush=True)
        steps = ["scheduled", "container_started", "worker_registered", "first_line"]
        print(f"\nscale from zero on kind, {len(rows)} runs (seconds after the submission)")
        print(f"{'step':<20}{'p50':>8}{'p95':>8}")
        table = {}
        for step in steps:
            values = sorted(r[step] for r in rows if step in r)
            if not values:
                continue
            p50 = statistics.median(values)
            p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
            table[step] = {"p50": round(p50, 2), "p95": round(p95, 2)}
            print(f"{step:<20}{p50:>8.2f}{p95:>8.2f}")
        if a.json:
            Path(a.json).write_text(json.dumps({"runs": rows, "table": table, "setup": kind.timings}, indent=2))
    finally:
        kind.delete()
        if started:
            docker_down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
