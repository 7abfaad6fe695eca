"""KEDA 2.21 and pipeq's operator side by side on one kind cluster (issue 17): burst → first
replica, burst → full scale, and a scale-down while jobs are busy.

    make bench-keda    # = PYTHONPATH=. $(scripts/venv.sh)/bin/python -m bench.keda [--bursts 5] [--json out.json]

What runs: a kind cluster ``pipeq-keda`` with pipeq's images and chart (tests/support/kind.py),
deleted at the end, also on failure. On it, KEDA v2.21.0 as its own module ships it
(``config/minimal`` from the Go module cache: CRDs, RBAC, the operator, the metrics adapter
behind the APIService ``v1beta1.external.metrics.k8s.io``; the operator makes the
certificates), from an image of the binaries ``tools/gobuild.sh keda`` builds
(bench/keda/). Both scalers drive the same worker pods (pipeq's worker image, a sleeping
pipeline from a ConfigMap, ``tests.support.kind.SLEEPER``) on queues of the chart's Redis:
a WorkerPool for pipeq; for KEDA, the Deployment pipeq's builders make from the same pool
spec plus a ScaledObject with KEDA's Redis list scaler on the RQ queue's list
(``listLength: 1``), as a KEDA user writes it for RQ.

1. Bursts, from 0 replicas: ``--burst-size`` jobs at once, more than ``maxReplicas`` (so full
   scale, replicas = maxReplicas, is reachable by a scaler that counts only queued jobs);
   burst → first replica change and burst → replicas = maxReplicas (bench.scale's loop).
   pipeq at its defaults (poll 0.5 s, enqueue signals); KEDA at ``pollingInterval`` 1 and at
   its default 30, each with ``cooldownPeriod`` 5 (its default 300 would keep every burst's
   pods 5 minutes) so that the bursts can follow each other.
2. Scale-down while jobs are busy: 2 long and 2 short jobs at once; the same scale-down
   window for both (pipeq's ``scaleDownDelaySeconds``; KEDA's ``cooldownPeriod`` and its HPA's
   scale-down stabilization window). Counted: jobs interrupted — finished only at a later
   attempt, failed or stopped, or left ``started`` with no worker to requeue them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from kubernetes import config as kube_config
from rq import Queue

from bench.scale import ReplicaWatch, run_bursts, summarize
from pipeq import queue
from pipeq.operator import builders
from tests.support.kind import NAMESPACE, RELEASE, SLEEPER, TAG, KindCluster, docker_down, docker_up, kind_bin, run
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = "pipeq-keda"
KEDA_VERSION = "v2.21.0"
KEDA_IMAGE = f"pipeq-bench/keda:{KEDA_VERSION}"  # the name bench/keda/kustomization.yaml gives both Deployments
#: the chart's Redis, for the worker pods (namespace pipeq) and for KEDA's operator (namespace keda)
REDIS_URL = f"redis://{RELEASE}-redis:6379/0"
KEDA_REDIS_ADDRESS = f"{RELEASE}-redis.{NAMESPACE}.svc.cluster.local:6379"
MAX_REPLICAS = 4
PIPELINE_TIMEOUT = 300
FINAL = ("finished", "failed", "canceled", "stopped")


# ---- KEDA on the cluster -------------------------------------------------------------------
def keda_module_dir() -> Path:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    out = run(go, "-C", str(ROOT / "tools" / "keda"), "list", "-m", "-json", "github.com/kedacore/keda/v2").stdout
    return Path(json.loads(out)["Dir"])


def install_keda(kind: KindCluster, work: Path) -> None:
    """KEDA's image (from tools/keda's binaries) loaded into the node; its module's
    config/minimal with bench/keda/kustomization.yaml applied; back when the APIService is
    Available (the API server reaches the adapter with the operator's certificates)."""
    bin_dir = run(str(ROOT / "tools" / "gobuild.sh"), "keda", timeout=3600).stdout.strip()
    run("docker", "build", "-q", "-f", str(ROOT / "bench" / "keda" / "Dockerfile"), "-t", KEDA_IMAGE, bin_dir,
        env=dict(os.environ, DOCKER_BUILDKIT="0"), timeout=600)
    run(kind_bin(), "load", "docker-image", "--name", kind.name, KEDA_IMAGE, timeout=900)
    config = work / "keda-config"
    shutil.copytree(keda_module_dir() / "config", config, copy_function=shutil.copyfile)
    for p in [config, *config.rglob("*")]:  # the module cache is read-only
        p.chmod(0o755 if p.is_dir() else 0o644)
    (config / "pipeq").mkdir()
    shutil.copy(ROOT / "bench" / "keda" / "kustomization.yaml", config / "pipeq")
    kind.kubectl("apply", "--server-side", "-f", "-", input=kind.kubectl("kustomize", str(config / "pipeq")), timeout=300)
    for deploy in ("keda-operator", "keda-metrics-apiserver"):
        kind.kubectl("rollout", "status", "-n", "keda", f"deploy/{deploy}", "--timeout=300s", timeout=310)
    kind.kubectl("wait", "--for=condition=Available", "apiservice/v1beta1.external.metrics.k8s.io", "--timeout=300s",
                 timeout=310)


def queued_list(q: str) -> str:
    """RQ's list of the queued jobs of queue ``q`` (rq:queue:<name>), named by RQ itself."""
    return Queue.redis_queue_namespace_prefix + q


# ---- the worker pods both scalers drive ----------------------------------------------------
def pool_spec(q: str, scale_down_delay: float) -> dict:
    """A WorkerPool's spec: pipeq's worker image running the sleeping pipeline."""
    return {
        "queue": q, "redis": {"url": REDIS_URL}, "image": f"pipeq-worker:{TAG}", "imagePullPolicy": "Never",
        "minReplicas": 0, "maxReplicas": MAX_REPLICAS, "pipeline": {"timeoutSeconds": PIPELINE_TIMEOUT},
        "scaling": {"scaleDownDelaySeconds": scale_down_delay},
        "securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001},
        "resources": {"requests": {"cpu": "20m", "memory": "96Mi"}},
        "env": [{"name": "PIPEQ_PIPELINE", "value": "/opt/test/pipeline.sh"}, {"name": "PIPEQ_DATA_DIR", "value": "/data"}],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": f"{RELEASE}-data"}},
                    {"name": "pipeline", "configMap": {"name": "sleeper", "defaultMode": 0o755}}],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "pipeline", "mountPath": "/opt/test"}],
    }


class PipeqPool:
    """A WorkerPool: pipeq's operator scales it."""

    def __init__(self, kind: KindCluster, name: str, q: str, scale_down_delay: float):
        self.kind, self.name, self.queue = kind, name, q
        self.deployment = builders.deployment_name(name)
        self.selector = ",".join(f"{k}={v}" for k, v in builders.selector(name).items())
        kind.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps({
            "apiVersion": "pipeq.dev/v1alpha1", "kind": "WorkerPool", "metadata": {"name": name},
            "spec": pool_spec(q, scale_down_delay)}))
        wait_for(lambda: kind.kubectl("get", "deployment", self.deployment, "-n", NAMESPACE, check=False).strip(),
                 timeout=60, what=f"{name}'s Deployment")

    def delete(self) -> None:
        self.kind.kubectl("delete", "workerpool", self.name, "-n", NAMESPACE, "--timeout=180s", timeout=200)


class KedaPool:
    """The same worker Deployment, scaled by a ScaledObject (KEDA's Redis list scaler on the
    RQ queue's list). ``grace``: the pods' terminationGracePeriodSeconds; None leaves
    Kubernetes' default (30 s), as a Deployment written for KEDA has unless its author sets it."""

    def __init__(self, kind: KindCluster, name: str, q: str, *, polling: int, cooldown: int,
                 stabilization: int | None = None, grace: int | None = None):
        self.kind, self.name, self.queue = kind, name, q
        dep = builders.worker_deployment(name, pool_spec(q, 0), replicas=0, default_redis_url=REDIS_URL)
        # not pipeq's pool label: pipeq's operator must not see these pods
        own = {"app": name}
        dep["metadata"]["labels"] = own
        dep["spec"]["selector"] = {"matchLabels": own}
        dep["spec"]["template"]["metadata"]["labels"] = copy.deepcopy(own)
        pod = dep["spec"]["template"]["spec"]
        if grace is None:
            del pod["terminationGracePeriodSeconds"]
        else:
            pod["terminationGracePeriodSeconds"] = grace
        self.deployment, self.selector = dep["metadata"]["name"], f"app={name}"
        so = {
            "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": name},
            "spec": {
                "scaleTargetRef": {"name": self.deployment}, "pollingInterval": polling, "cooldownPeriod": cooldown,
                "minReplicaCount": 0, "maxReplicaCount": MAX_REPLICAS,
                "triggers": [{"type": "redis", "metadata": {"address": KEDA_REDIS_ADDRESS, "listLength": "1",
                                                            "listName": queued_list(q)}}],
            },
        }
        if stabilization is not None:
            so["spec"]["advanced"] = {"horizontalPodAutoscalerConfig": {
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": stabilization}}}}
        kind.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [dep, so]}))
        wait_for(lambda: kind.kubectl("get", "scaledobject", name, "-n", NAMESPACE, "-o",
                                      "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False) == "True",
                 timeout=120, interval=1, what=f"ScaledObject {name} Ready")

    def delete(self) -> None:
        self.kind.kubectl("delete", "scaledobject", self.name, "-n", NAMESPACE, "--timeout=120s", timeout=130)
        self.kind.kubectl("delete", "deployment", self.deployment, "-n", NAMESPACE, "--timeout=120s", timeout=130)


# ---- jobs ----------------------------------------------------------------------------------
class Redis:
    """The chart's Redis through a port-forward (restarted if it died)."""

    def __init__(self, kind: KindCluster):
        self.kind, self.url, self.conn = kind, None, None

    def __call__(self):
        url = self.kind.forward(f"svc/{RELEASE}-redis", 6379, scheme="redis") + "/0"
        if url != self.url:
            self.url, self.conn = url, queue.connect(url)
        return self.conn

    def enqueue(self, q: str, seconds: int, n: int, retries: int) -> tuple[list[str], list[float]]:
        """``n`` runs of the sleeping pipeline for ``seconds``: their ids and when each enqueue returned."""
        conn, ids, done = self(), [], []
        for _ in range(n):
            ids.append(uuid.uuid4().hex)
            queue.enqueue_run(conn, q, ids[-1], {"reads": [], "reference": "r", "sample": f"sleep-{seconds}"},
                              meta={}, retries=retries, ttl=3600)
            done.append(time.time())
        return ids, done

    def jobs(self, ids: list[str]) -> list[tuple[str, int]]:
        """(status, attempt) of each job."""
        out = []
        for job in queue.fetch_jobs(self(), ids):
            out.append((job.get_status(refresh=False).value, int(job.meta.get("attempt") or 0)))
        return out


def pods(kind: KindCluster, pool) -> list[dict]:
    """The pool's pods, terminating ones included."""
    return kind.get_json("pods", "-n", NAMESPACE, "-l", pool.selector)["items"]


def at_zero(kind: KindCluster, pool, watch: ReplicaWatch) -> bool:
    """0 replicas and no pod left but terminating ones (a pod deleted while its container was
    starting can outlive its SIGTERM: see docs/benchmarks.md)."""
    return watch.current() == 0 and not kind.pods(pool.selector)


# ---- 1. bursts -----------------------------------------------------------------------------
def bursts(kind: KindCluster, api, r: Redis, pool, n: int, size: int, polling: float, job_seconds: int) -> dict:
    watch = ReplicaWatch(api, NAMESPACE, pool.deployment)
    wait_for(lambda: at_zero(kind, pool, watch), timeout=120, interval=0.5, what=f"{pool.name} at 0")

    def reset() -> None:
        r().delete(queued_list(pool.queue))
        wait_for(lambda: at_zero(kind, pool, watch), timeout=2 * polling + job_seconds + 180, interval=0.5,
                 what=f"{pool.name} back at 0 pods")

    # a random pause puts the burst at a random phase of the scaler's poll
    rows = run_bursts(watch, lambda: r.enqueue(pool.queue, job_seconds, size, retries=0)[1], reset, n,
                      full=MAX_REPLICAS, pause=lambda: random.uniform(0.5, 1.5) + random.uniform(0, polling),
                      timeout=polling + 90)
    watch.close()
    return {"rows": rows, **summarize(rows)}


# ---- 2. scale-down while jobs are busy -----------------------------------------------------
def scale_down(kind: KindCluster, api, r: Redis, pool, long_s: int, short_s: int) -> dict:
    """2 long and 2 short jobs at once (retries 2, the product's default); follow until every
    job has ended, or the pool has had no pod for 30 s (a job still ``started`` then has no
    worker to requeue it)."""
    watch = ReplicaWatch(api, NAMESPACE, pool.deployment)
    wait_for(lambda: at_zero(kind, pool, watch), timeout=120, interval=0.5, what=f"{pool.name} at 0")
    long_ids, _ = r.enqueue(pool.queue, long_s, 2, retries=2)
    short_ids, _ = r.enqueue(pool.queue, short_s, 2, retries=2)
    t0, empty_since, removed = time.time(), None, set()
    deadline = t0 + 3 * long_s + 300
    while time.time() < deadline:
        jobs = r.jobs(long_ids + short_ids)
        now = pods(kind, pool)
        removed |= {p["metadata"]["name"] for p in now if p["metadata"].get("deletionTimestamp")}
        if all(s in FINAL for s, _ in jobs):
            break
        if watch.current() == 0 and not now:
            empty_since = empty_since or time.time()
            if time.time() - empty_since > 30:
                break
        else:
            empty_since = None
        time.sleep(1)
    seconds = time.time() - t0
    peak = watch.peak(t0)
    watch.close()
    kinds = {"finished at attempt 1": 0, "finished at a later attempt": 0, "failed or stopped": 0,
             "never finished (no worker left)": 0}
    for status, attempt in jobs:
        if status == "finished":
            kinds["finished at attempt 1" if attempt <= 1 else "finished at a later attempt"] += 1
        elif status in FINAL:
            kinds["failed or stopped"] += 1
        else:
            kinds["never finished (no worker left)"] += 1
    return {"jobs": [{"id": i, "length_s": long_s if i in long_ids else short_s, "status": s, "attempt": a}
                     for i, (s, a) in zip(long_ids + short_ids, jobs)],
            "interrupted": len(jobs) - kinds["finished at attempt 1"], **kinds, "peak_replicas": peak,
            "pods_removed": len(removed), "seconds": round(seconds, 1)}


# ---- the run -------------------------------------------------------------------------------
def fmt(s: dict, key: str) -> str:
    if not s.get(f"{key}_seen"):
        return "never"
    return f"{s[key + '_p50']:.2f} s / {s[key + '_p95']:.2f} s / {s[key + '_max']:.2f} s"


def loads(d: dict) -> str:
    """The machine's 1-minute load average at the start and the end of a phase."""
    return "–".join(str(x) for x in d.get("load", []))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.keda", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bursts", type=int, default=5, help="bursts per scaler")
    ap.add_argument("--burst-size", type=int, default=2 * MAX_REPLICAS)
    ap.add_argument("--burst-job-seconds", type=int, default=5)
    ap.add_argument("--long", type=int, default=90, help="seconds of the long jobs of the scale-down (short: 5)")
    ap.add_argument("--window", type=int, default=15,
                    help="the scale-down window of both: scaleDownDelaySeconds; cooldownPeriod and the HPA's stabilization")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", action="store_true", help="leave the cluster up at the end (for debugging)")
    args = ap.parse_args(argv)
    started = docker_up()
    work = Path(tempfile.mkdtemp(prefix="pipeq-bench-keda-"))
    kind = KindCluster(CLUSTER, work / "kind")
    out: dict = {"settings": vars(args) | {"json": None, "max_replicas": MAX_REPLICAS}, "bursts": {}, "scale_down": {}}
    try:
        # KEDA's scaler and the benchmark's pools name Redis by a plain URL: no password, and
        # no NetworkPolicy keeping KEDA's pods from it (the chart's defaults close both)
        kind.up({"workerPool.minReplicas": 0, "redis.auth.enabled": False, "networkPolicy.enabled": False})
        install_keda(kind, work)
        out["setup"] = kind.timings
        kind.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "sleeper"}, "data": {"pipeline.sh": SLEEPER}}))
        api = kube_config.new_client_from_config(config_file=str(kind.kubeconfig))
        r = Redis(kind)
        tag = uuid.uuid4().hex[:4]

        def burst_phase(label, pool, polling):
            load = os.getloadavg()[0]
            try:
                out["bursts"][label] = bursts(kind, api, r, pool, args.bursts, args.burst_size, polling, args.burst_job_seconds)
            finally:
                pool.delete()
            s = out["bursts"][label]
            s["load"] = [round(load, 1), round(os.getloadavg()[0], 1)]  # the machine's, at the start and end
            print(f"{label}: first {fmt(s, 'first')}; full {fmt(s, 'full')} ({s['full_seen']}/{s['bursts']}, peak {s['peak_max']})",
                  flush=True)

        burst_phase("pipeq", PipeqPool(kind, "pq-burst", f"pq-burst-{tag}", 5), 0.5)
        burst_phase("KEDA, pollingInterval 1", KedaPool(kind, "keda-burst-1", f"keda-burst-1-{tag}", polling=1, cooldown=5), 1)
        burst_phase("KEDA, pollingInterval 30 (default)",
                    KedaPool(kind, "keda-burst-30", f"keda-burst-30-{tag}", polling=30, cooldown=5), 30)

        def down_phase(label, pool):
            load = os.getloadavg()[0]
            try:
                out["scale_down"][label] = scale_down(kind, api, r, pool, args.long, 5)
            finally:
                pool.delete()
            d = out["scale_down"][label]
            d["load"] = [round(load, 1), round(os.getloadavg()[0], 1)]
            print(f"{label}: {d['interrupted']} of 4 interrupted ({d})", flush=True)

        w = args.window
        down_phase("pipeq", PipeqPool(kind, "pq-down", f"pq-down-{tag}", w))
        down_phase("KEDA, pollingInterval 1, grace 30 s (Kubernetes' default)",
                   KedaPool(kind, "keda-down", f"keda-down-{tag}", polling=1, cooldown=w, stabilization=w))
        down_phase(f"KEDA, pollingInterval 1, grace {builders.GRACE_MARGIN + PIPELINE_TIMEOUT} s (pipeq's)",
                   KedaPool(kind, "keda-down-g", f"keda-down-g-{tag}", polling=1, cooldown=w, stabilization=w,
                            grace=builders.termination_grace(pool_spec("x", w))))
    finally:
        if args.keep:
            print(f"kept: export KUBECONFIG={kind.kubeconfig}; scripts/kind-cluster.sh delete {CLUSTER}")
        else:
            kind.delete()
            shutil.rmtree(work, ignore_errors=True)
        if started:
            docker_down()
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))
    print_tables(out)
    return 0


def print_tables(out: dict) -> None:
    print(f"\nbursts of {out['settings']['burst_size']} jobs of {out['settings']['burst_job_seconds']} s, "
          f"maxReplicas {MAX_REPLICAS}, from 0 (p50 / p95 / max)")
    print(f"| scaler | bursts | burst → first replica | burst → replicas = {MAX_REPLICAS} | bursts reaching {MAX_REPLICAS} "
          "| first enqueue returned → first replica | the burst's enqueues | load |")
    print("|---|---|---|---|---|---|---|---|")
    for label, s in out["bursts"].items():
        print(f"| {label} | {s['bursts']} | {fmt(s, 'first')} | {fmt(s, 'full')} | {s['full_seen']} of {s['bursts']} | "
              f"{fmt(s, 'first_own')} | {fmt(s, 'enqueued')} | {loads(s)} |")
    print(f"\nscale-down while busy: 2 jobs of {out['settings']['long']} s and 2 of 5 s at once, "
          f"scale-down window {out['settings']['window']} s")
    print("| scaler | interrupted | finished at attempt 1 | at a later attempt | failed or stopped | never finished "
          "| peak replicas | pods removed | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, d in out["scale_down"].items():
        print(f"| {label} | {d['interrupted']} of 4 | {d['finished at attempt 1']} | {d['finished at a later attempt']} | "
              f"{d['failed or stopped']} | {d['never finished (no worker left)']} | {d['peak_replicas']} | "
              f"{d['pods_removed']} | {loads(d)} |")


if __name__ == "__main__":
    sys.exit(main())
