"""Scaling benchmark of the WorkerPool operator on the real test control plane.

    $(scripts/venv.sh)/bin/python -m bench.scale [--bursts 25] [--burst-size 4] [--pools 50] [--idle-seconds 30]

(``--pools 0``: the reaction only; ``--tmpfs``: etcd and Redis on /dev/shm, without fsync costs.)

What it runs: etcd + kube-apiserver + kube-controller-manager and the process node
(tests/support), a redis-server of its own, and the operator (``python -m pipeq.operator.main``)
as a subprocess, all on this machine. Two measurements:

1. Reaction. One pool (defaults from the CRD: pollIntervalSeconds 0.5; scaleDownDelaySeconds
   0 so that each burst starts from 0 replicas). Each burst enqueues ``--burst-size`` jobs at
   once (``queue.enqueue_run``, whose signal wakes the operator; the time of these enqueues
   themselves is reported too); a watch on the pool's Deployment timestamps the first replica change (reaction) and
   the moment spec.replicas reaches the burst size (full). Then the queue is emptied and the
   pool goes back to 0 before the next burst, after a random pause (so bursts land at every
   phase of the poll).
2. Idle cost. ``--pools`` pools with minReplicas 0 and an empty queue each; after they settle,
   over ``--idle-seconds``: Redis commands/s (INFO), API server requests/s (its
   apiserver_request_total, minus the same window with the operator stopped), and the
   operator's CPU.

It prints a table (and writes it as JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis

from pipeq import queue
from pipeq.redis_server import RedisServer
from tests.support.cluster import ROOT, Cluster, free_port, wait_for
from tests.support.processnode import ProcessNode, make_pipeq_shim

CRD = ROOT / "helm" / "pipeq" / "crds" / "workerpools.yaml"
SLEEPER = """#!/usr/bin/env bash
while [ $# -gt 0 ]; do case "$1" in --outdir) outdir=$2; shift 2 ;; *) shift ;; esac; done
echo '{"sample": "x", "variants": 0}' > "$outdir/report.json"
"""


def pool_manifest(name: str, q: str, redis_url: str, work: Path, **spec) -> dict:
    return {
        "apiVersion": "pipeq.dev/v1alpha1", "kind": "WorkerPool", "metadata": {"name": name},
        "spec": {
            "queue": q, "image": "pipeq-worker:bench", "redis": {"url": redis_url},
            "minReplicas": 0, "maxReplicas": 16,
            "env": [{"name": "PIPEQ_PIPELINE", "value": str(work / "sleeper.sh")},
                    {"name": "PIPEQ_DATA_DIR", "value": str(work / "data")}],
            **spec,
        },
    }


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


POOL_RESOURCES = ("workerpools", "deployments", "pods", "events")


def api_requests(cluster: Cluster) -> tuple[float, float]:
    """API server requests so far: all of them, and those on the resources the operator
    reads or writes (the controllers' and the node's traffic on them is nil when idle)."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    total = ours = 0.0
    for m in re.finditer(r"^apiserver_request_total\{([^}]*)\} (\S+)$", text, re.M):
        total += float(m.group(2))
        if re.search(r'resource="(%s)"' % "|".join(POOL_RESOURCES), m.group(1)):
            ours += float(m.group(2))
    return total, ours


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Operator:
    def __init__(self, env: dict, log: Path):
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeq.operator.main", "--no-liveness"], env=dict(env, PYTHONPATH=str(ROOT)),
                                     cwd=ROOT, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class ReplicaWatch:
    """Timestamps every spec.replicas a Deployment reports, from a watch stream."""

    def __init__(self, api, namespace: str, name: str):
        """``api``: a kubernetes.client.ApiClient (``Cluster.api_client()``, or one from a kubeconfig)."""
        from kubernetes import watch

        self.api = api
        self.seen: list[tuple[float, int]] = []
        self.cond = threading.Condition()
        self.stop_flag = False
        self.w = watch.Watch()
        self.ns, self.name = namespace, name
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        from kubernetes import client

        apps = client.AppsV1Api(self.api)
        while not self.stop_flag:
            try:
                for ev in self.w.stream(apps.list_namespaced_deployment, self.ns,
                                        field_selector=f"metadata.name={self.name}", timeout_seconds=60):
                    with self.cond:
                        self.seen.append((time.time(), ev["object"].spec.replicas or 0))
                        self.cond.notify_all()
            except Exception:
                time.sleep(0.1)

    def wait(self, predicate, since: float, timeout: float = 20) -> float | None:
        deadline = time.time() + timeout
        with self.cond:
            while True:
                for t, r in self.seen:
                    if t >= since and predicate(r):
                        return t
                left = deadline - time.time()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def current(self) -> int | None:
        with self.cond:
            return self.seen[-1][1] if self.seen else None

    def changes(self, since: float, until: float) -> int:
        """How many times spec.replicas changed between two instants: one per scale write
        that changed it (the Deployment controller's own writes repeat the value)."""
        with self.cond:
            values = [r for t, r in self.seen if t < since][-1:] + [r for t, r in self.seen if since <= t <= until]
        return sum(1 for a, b in zip(values, values[1:]) if a != b)

    def peak(self, since: float) -> int:
        """The most replicas asked for since ``since``."""
        with self.cond:
            return max((r for t, r in self.seen if t >= since), default=self.seen[-1][1] if self.seen else 0)

    def close(self) -> None:
        self.stop_flag = True
        self.w.stop()


def run_bursts(watch: ReplicaWatch, enqueue: Callable[[], list[float]], reset: Callable[[], None], n: int, full: int,
               pause: Callable[[], float] = lambda: random.uniform(0.5, 1.5), timeout: float = 20) -> list[dict]:
    """``n`` bursts, shared by this benchmark and bench.keda. Each: sleep ``pause()`` (a random
    pause puts bursts at every phase of a poll), ``enqueue()`` (the burst's jobs; returns when
    each enqueue returned), then from the burst's start the seconds to the first replica change
    (``first``) and to spec.replicas >= ``full`` (``full``), None when not seen within
    ``timeout``; the same from the first / last enqueue's return (``first_own``, ``full_own``:
    the scaler's own share); the peak replicas asked for; how many replica changes it took to
    reach ``full`` (``changes``: 1 when one write saw the whole burst); then ``reset()`` (empty
    the queue, wait back at 0)."""
    rows = []
    for _ in range(n):
        time.sleep(pause())
        t0 = time.time()
        done = enqueue()
        t1 = watch.wait(lambda r: r > 0, since=t0, timeout=timeout)
        t2 = watch.wait(lambda r: r >= full, since=t0, timeout=max(0.0, t0 + timeout - time.time())) if t1 is not None else None
        rows.append({"enqueued": done[-1] - t0, "peak": watch.peak(t0),
                     "changes": None if t2 is None else watch.changes(t0, t2),
                     "first": None if t1 is None else t1 - t0, "full": None if t2 is None else t2 - t0,
                     "first_own": None if t1 is None else t1 - done[0], "full_own": None if t2 is None else t2 - done[-1]})
        reset()
    return rows


def summarize(rows: list[dict]) -> dict:
    """p50/p95/max of each timing of ``run_bursts`` rows, over the bursts where it was seen
    (``<key>_seen`` says in how many)."""
    out: dict = {"bursts": len(rows), "peak_max": max(r["peak"] for r in rows)}
    changes = [r["changes"] for r in rows if r.get("changes") is not None]
    if changes:
        out.update({"changes_mean": statistics.mean(changes), "changes_max": max(changes)})
    for key in ("enqueued", "first", "full", "first_own", "full_own"):
        values = [r[key] for r in rows if r[key] is not None]
        out[f"{key}_seen"] = len(values)
        if values:
            out.update({f"{key}_p50": percentile(values, 50), f"{key}_p95": percentile(values, 95), f"{key}_max": max(values)})
    return out


def bench_bursts(cluster, ns, redis_url, work, n: int, size: int) -> dict:
    q = f"burst-{uuid.uuid4().hex[:6]}"
    conn = queue.connect(redis_url)
    cluster.apply(pool_manifest("burst", q, redis_url, work, scaling={"scaleDownDelaySeconds": 0}), namespace=ns)
    watch = ReplicaWatch(cluster.api_client(), ns, "burst-workers")
    wait_for(lambda: watch.current() == 0, timeout=60, what="the burst pool's Deployment at 0")

    def enqueue() -> list[float]:
        done = []  # when each enqueue returned
        for _ in range(size):
            queue.enqueue_run(conn, q, uuid.uuid4().hex, {"reads": [], "reference": "r"}, meta={}, retries=0, ttl=60)
            done.append(time.time())
        return done

    def reset() -> None:
        conn.delete(queue.get_queue(conn, q).key)
        wait_for(lambda: watch.current() == 0, timeout=60, what="the pool back at 0")

    rows = run_bursts(watch, enqueue, reset, n, full=size)
    watch.close()
    conn.close()
    if any(r["full"] is None for r in rows):
        raise SystemExit(f"replicas never followed a burst (seen {watch.seen[-5:]})")
    s = summarize(rows)
    return {"bursts": n, "burst_size": size,
            "reaction_p50": s["first_p50"], "reaction_p95": s["first_p95"],
            "full_p50": s["full_p50"], "full_p95": s["full_p95"], "full_max": s["full_max"],
            "enqueue_p50": s["enqueued_p50"], "enqueue_p95": s["enqueued_p95"],
            "first_enqueued_to_reaction_p50": s["first_own_p50"],
            "first_enqueued_to_reaction_p95": s["first_own_p95"],
            "last_enqueued_to_full_p50": s["full_own_p50"],
            "last_enqueued_to_full_p95": s["full_own_p95"],
            "scale_writes_mean": s["changes_mean"], "scale_writes_max": s["changes_max"]}


def bench_idle(cluster, ns, redis_url, work, op: Operator, env: dict, log: Path, pools: int, seconds: float) -> dict:
    for i in range(pools):
        cluster.apply(pool_manifest(f"idle-{i:02d}", f"idle-{i:02d}", redis_url, work), namespace=ns)

    def settled():
        items = cluster.get_json("workerpools", "-n", ns)["items"]
        idle = [p for p in items if p["metadata"]["name"].startswith("idle-")]
        return len(idle) == pools and all((p.get("status") or {}).get("conditions") for p in idle)
    wait_for(settled, timeout=120, interval=1, what=f"{pools} pools with a status")
    time.sleep(5)
    r = redis.Redis.from_url(redis_url)

    def redis_counts():
        info = r.info("all")
        return info["total_commands_processed"], info.get("cmdstat_eval", {}).get("calls", 0) + info.get("cmdstat_evalsha", {}).get("calls", 0)

    c0, e0, (a0, p0), cpu0, t0 = *redis_counts(), api_requests(cluster), cpu_seconds(op.proc.pid), time.time()
    time.sleep(seconds)
    c1, e1, (a1, p1), cpu1, t1 = *redis_counts(), api_requests(cluster), cpu_seconds(op.proc.pid), time.time()
    dt = t1 - t0
    # the same window without the operator: what the API server serves anyway (controllers, node)
    op.stop()
    time.sleep(3)
    (b0, _), tb0 = api_requests(cluster), time.time()
    time.sleep(seconds)
    (b1, _), tb1 = api_requests(cluster), time.time()
    r.close()
    return {
        "pools": pools, "window_s": round(dt, 1),
        "redis_cmds_per_s": (c1 - c0 - 1) / dt,
        "redis_round_trips_per_pool_per_s": (e1 - e0) / dt / pools,
        "api_req_per_s_with_operator": (a1 - a0 - 1) / dt,
        "api_req_per_s_baseline": (b1 - b0 - 1) / (tb1 - tb0),
        "api_req_per_s_operator": (a1 - a0 - 1) / dt - (b1 - b0 - 1) / (tb1 - tb0),
        "api_req_per_s_pool_resources": (p1 - p0) / dt,
        "operator_cpu_percent": 100 * (cpu1 - cpu0) / dt,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bursts", type=int, default=25)
    ap.add_argument("--burst-size", type=int, default=4)
    ap.add_argument("--pools", type=int, default=50)
    ap.add_argument("--idle-seconds", type=float, default=30)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--tmpfs", action="store_true",
                    help="etcd's data and Redis's AOF in /dev/shm: their fsyncs cost nothing, so a disk busy with "
                         "other work does not time itself into the operator's figures")
    args = ap.parse_args(argv)

    work = (Path("/dev/shm") if args.tmpfs else ROOT / ".cluster") / f"bench-scale-{os.getpid()}"
    if args.tmpfs:
        tempfile.tempdir = str(work)  # the Cluster keeps etcd's data in a temporary directory
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "sleeper.sh").write_text(SLEEPER)
    (work / "sleeper.sh").chmod(0o755)
    cluster = Cluster(work / "cluster")
    node = op = server = None
    ok = False
    try:
        cluster.start()
        node = ProcessNode(cluster.kubeconfig, work / "node", path_prefix=[make_pipeq_shim(work / "shims")]).start()
        server = RedisServer(work / "redis").start()
        cluster.kubectl("apply", "--server-side", "-f", str(CRD))
        cluster.kubectl("wait", "--for=condition=Established", "crd/workerpools.pipeq.dev", "--timeout=30s")
        cluster.kubectl("create", "namespace", "bench")
        env = dict(cluster.env(), PIPEQ_REDIS_URL=server.url)
        log = work / "operator.log"
        op = Operator(env, log)
        bursts = bench_bursts(cluster, "bench", server.url, work, args.bursts, args.burst_size)
        cluster.kubectl("delete", "workerpool", "burst", "-n", "bench", "--timeout=60s")
        idle = bench_idle(cluster, "bench", server.url, work, op, env, log, args.pools, args.idle_seconds) if args.pools else None
        ok = True
    finally:
        if op:
            op.stop()
        if node:
            node.stop()
        cluster.stop()
        if server:
            server.stop()
        if not ok and args.tmpfs:
            shutil.rmtree(work, ignore_errors=True)  # memory, not disk: never left behind
        elif not ok:
            print(f"bench.scale failed; its logs are in {work} (delete it when read)", file=sys.stderr)
    rows = [
        (f"burst → first replica change, p50 ({bursts['bursts']} bursts of {bursts['burst_size']})", f"{bursts['reaction_p50']:.3f} s"),
        ("burst → first replica change, p95", f"{bursts['reaction_p95']:.3f} s"),
        (f"burst → replicas = {bursts['burst_size']}, p50", f"{bursts['full_p50']:.3f} s"),
        (f"burst → replicas = {bursts['burst_size']}, p95", f"{bursts['full_p95']:.3f} s"),
        (f"burst → replicas = {bursts['burst_size']}, max", f"{bursts['full_max']:.3f} s"),
        (f"the burst's own {bursts['burst_size']} enqueues, p50 / p95", f"{bursts['enqueue_p50']:.3f} s / {bursts['enqueue_p95']:.3f} s"),
        ("first enqueue returned → first replica change, p50 / p95",
         f"{bursts['first_enqueued_to_reaction_p50']:.3f} s / {bursts['first_enqueued_to_reaction_p95']:.3f} s"),
        (f"last enqueue returned → replicas = {bursts['burst_size']}, p50 / p95",
         f"{bursts['last_enqueued_to_full_p50']:.3f} s / {bursts['last_enqueued_to_full_p95']:.3f} s"),
        (f"replica changes until replicas = {bursts['burst_size']}, mean / max",
         f"{bursts['scale_writes_mean']:.2f} / {bursts['scale_writes_max']}"),
    ]
    if idle:
        rows += [
            (f"idle, {idle['pools']} pools: Redis commands/s", f"{idle['redis_cmds_per_s']:.1f}"),
            ("idle: Redis round trips per pool per s", f"{idle['redis_round_trips_per_pool_per_s']:.2f}"),
            ("idle: API requests/s on workerpools, deployments, pods, events", f"{idle['api_req_per_s_pool_resources']:.2f}"),
            ("idle: API requests/s, all, with the operator", f"{idle['api_req_per_s_with_operator']:.2f}"),
            ("idle: API requests/s, baseline without operator", f"{idle['api_req_per_s_baseline']:.2f}"),
            ("idle: operator CPU", f"{idle['operator_cpu_percent']:.1f} %"),
        ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  value")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if args.json:
        args.json.write_text(json.dumps({"bursts": bursts, "idle": idle}, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
