"""Scale from zero on kind: how long a user waits, from submission to the pipeline's first
line, when the pool has no worker pod — and where the time goes.

    $(scripts/venv.sh)/bin/python -m bench.kind_start [--runs 10] [--json out.json]   # make bench-kind

What it runs: a kind cluster of its own (tests/support/kind.py: pipeq's images, the chart
with the default pool at minReplicas 0), deleted at the end. Each run waits until the pool
has no pod, submits a real run (small simulated reads) with POST /run_pipeline, and follows
it. Steps, all on this host's clock (the host, the node and the pods share one kernel clock):

- replicas set: the pool's Deployment seen with replicas > 0 (a watch, so the operator's
  write plus the watch's delivery);
- pod created, scheduled (nodeName set), container started (its state ``running``): the
  pod as a watch delivers it, not its timestamps, which have 1 s resolution;
- worker registered: the RQ worker's birth in Redis (the worker's clock, µs);
- first line: the pipeline's first line in the job's log, polled every 50 ms over REST.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import redis
from rq.worker import Worker

from pipeq import queue
from pipeq.operator import builders
from tests.support.kind import NAMESPACE, RELEASE, KindCluster, docker_down, docker_up
from tests.support.simdata import make_dataset
from tests.support.waiting import wait_for


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Sightings:
    """When this host first saw each step of the pool's scale-up, from two watches (the
    Deployment and the pool's pods) that run for the whole bench."""

    def __init__(self, kubeconfig: Path, pool: str = "default") -> None:
        from kubernetes import client, config, watch

        api = config.new_client_from_config(str(kubeconfig))
        self.apps, self.core, self.watch = client.AppsV1Api(api), client.CoreV1Api(api), watch
        self.pool, self.lock = pool, threading.Lock()
        self.replicas_set: list[float] = []  # each time replicas went from 0 to more
        self.pods: dict[str, dict[str, float]] = {}  # pod name -> step -> first seen
        self.stop = threading.Event()
        for target in (self._deployments, self._pods):
            threading.Thread(target=target, daemon=True).start()

    def _stream(self, fn, handle, **kw) -> None:
        while not self.stop.is_set():
            try:
                for ev in self.watch.Watch().stream(fn, NAMESPACE, timeout_seconds=60, **kw):
                    handle(ev["object"], time.time())
            except Exception:  # a dropped watch (the API server restarting): watch again
                time.sleep(0.2)

    def _deployments(self) -> None:
        last = [0]

        def handle(d, at):
            replicas = d.spec.replicas or 0
            with self.lock:
                if replicas > 0 and last[0] == 0:
                    self.replicas_set.append(at)
                last[0] = replicas
        self._stream(self.apps.list_namespaced_deployment, handle, field_selector=f"metadata.name={builders.deployment_name(self.pool)}")

    def _pods(self) -> None:
        def handle(pod, at):
            seen = {"pod_created": True, "scheduled": bool(pod.spec.node_name),
                    "container_started": any(c.state and c.state.running for c in pod.status.container_statuses or [])}
            with self.lock:
                steps = self.pods.setdefault(pod.metadata.name, {})
                for step, now in seen.items():
                    if now:
                        steps.setdefault(step, at)
        self._stream(self.core.list_namespaced_pod, handle, label_selector=f"{builders.POOL_LABEL}={self.pool}")

    def of(self, pod: str, since: float) -> dict[str, float]:
        """The steps of ``pod``, and the first replicas set after ``since``, in seconds after it."""
        with self.lock:
            row = {step: at - since for step, at in self.pods.get(pod, {}).items()}
            later = [t for t in self.replicas_set if t >= since]
        if later:
            row["replicas_set"] = later[0] - since
        return row


def one_run(kind: KindCluster, client: httpx.Client, files, conn: redis.Redis, seen: Sightings) -> dict[str, float]:
    wait_for(lambda: not kind.pods(f"{builders.POOL_LABEL}=default"), timeout=180, interval=0.5, what="the pool at zero pods")
    time.sleep(1)  # let the operator see zero too
    t0 = time.time()
    r = client.post("/run_pipeline", files=files, data={"sample": "cold"})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]

    def first_line():
        resp = client.get(f"/jobs/{job_id}/log")
        return time.time() if resp.status_code == 200 and resp.text.strip() else None

    t_line = wait_for(first_line, timeout=180, interval=0.05, what="the pipeline's first line")
    # the worker is named after its pod (PIPEQ_WORKER_NAME), and the job's status names it
    pod = client.get(f"/job_status/{job_id}").json()["worker"]
    row = {**seen.of(pod, t0), "first_line": t_line - t0}
    birth = conn.hget(Worker.redis_worker_namespace_prefix + pod, "birth")
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
        client = httpx.Client(base_url=kind.api_url(), timeout=30, headers=kind.api_headers())
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=60, what="the API")
        conn = queue.connect(kind.redis_url())
        seen = Sightings(kind.kubeconfig)
        steps = ["replicas_set", "pod_created", "scheduled", "container_started", "worker_registered", "first_line"]
        rows = []
        for i in range(a.runs):
            rows.append(one_run(kind, client, files, conn, seen))
            print(f"run {i + 1}: " + ", ".join(f"{k} {rows[-1][k]:.2f} s" for k in steps if k in rows[-1]), flush=True)
        seen.stop.set()
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
