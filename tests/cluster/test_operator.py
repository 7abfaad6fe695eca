"""The WorkerPool operator on the real control plane, with real workers on the process node.

One operator (``python -m pipeq.operator.main``, cluster-wide) serves the module; each test
has its own namespace and its own queue on the session's redis-server. The workers run a
stand-in pipeline that sleeps as long as its job's sample says ("sleep-3": 3 s), so a test
is about scaling, not about the pipeline.
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.request
import uuid
from datetime import timezone
from pathlib import Path

import pytest

from pipeq import queue
from pipeq.redis_server import RedisServer
from tests.support.cluster import ROOT, free_port, wait_for
from tests.support.servers import Process

pytestmark = pytest.mark.cluster

CRD = ROOT / "helm" / "pipeq" / "crds" / "workerpools.yaml"
SLEEPER = """#!/usr/bin/env bash
while [ $# -gt 0 ]; do
  case "$1" in --outdir) outdir=$2; shift 2 ;; --sample) sample=$2; shift 2 ;; *) shift ;; esac
done
echo "PROGRESS 10 sleep ${sample#sleep-}"
sleep "${sample#sleep-}"
echo '{"sample": "x", "variants": 0}' > "$outdir/report.json"
echo "PROGRESS 100 done"
"""


class Operator:
    """``pipeq operator`` with its liveness probe and metrics on free ports, its output in ``log``."""

    def __init__(self, env: dict, log: Path):
        self.liveness = free_port()
        self.metrics = free_port()
        self.log = log
        self.proc = Process(
            "pipeq operator",
            [sys.executable, "-m", "pipeq.operator.main", "--liveness", f"http://127.0.0.1:{self.liveness}/healthz"],
            log, env=dict(env, PIPEQ_OPERATOR_METRICS_PORT=str(self.metrics), PYTHONPATH=str(ROOT)), cwd=ROOT)
        self.start()

    def start(self) -> None:
        self.proc.start()

    def get(self, port: int, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.read().decode()

    def alive(self) -> bool:
        try:
            return bool(self.get(self.liveness, "/healthz"))
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.stop(grace=20)

    def tail(self, n: int = 40) -> str:
        return self.proc.tail(n)


@pytest.fixture(scope="module")
def operator(cluster, redis_server, tmp_path_factory):
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "crd/workerpools.pipeq.dev", "--timeout=30s")
    op = Operator(dict(cluster.env(), PIPEQ_REDIS_URL=redis_server.url), tmp_path_factory.mktemp("operator") / "operator.log")
    try:
        wait_for(op.alive, timeout=30, what="the operator's liveness endpoint")
        yield op
    finally:
        op.stop()
        print("--- operator log (tail) ---\n" + op.tail())


class Pools:
    """Make WorkerPools in one namespace; each test gets its own queue."""

    def __init__(self, cluster, namespace: str, redis_url: str, tmp: Path):
        self.cluster, self.ns, self.redis_url, self.tmp = cluster, namespace, redis_url, tmp
        self.script = tmp / "sleeper.sh"
        self.script.write_text(SLEEPER)
        self.script.chmod(0o755)
        self.queue = f"q-{uuid.uuid4().hex[:8]}"
        self.conn = queue.connect(redis_url)

    def create(self, name: str = "pool", redis_url: str | None = None, **spec) -> dict:
        body = {
            "apiVersion": "pipeq.dev/v1alpha1", "kind": "WorkerPool",
            "metadata": {"name": name},
            "spec": {
                "queue": self.queue, "image": "pipeq-worker:test",
                "redis": {"url": redis_url or self.redis_url},
                "minReplicas": 0, "maxReplicas": 4,
                "pipeline": {"timeoutSeconds": 120},
                "scaling": {"pollIntervalSeconds": 0.2, "scaleDownDelaySeconds": 3},
                "env": [
                    {"name": "PIPEQ_PIPELINE", "value": str(self.script)},
                    {"name": "PIPEQ_DATA_DIR", "value": str(self.tmp / "data")},
                    {"name": "PIPEQ_LEASE_SECONDS", "value": "6"},
                    {"name": "PIPEQ_MAINTENANCE_INTERVAL", "value": "1"},
                    {"name": "PIPEQ_KILL_GRACE", "value": "1"},
                ],
                **spec,
            },
        }
        self.cluster.apply(body, namespace=self.ns)
        return body

    def enqueue(self, seconds: float, n: int = 1, conn=None) -> list[str]:
        ids = []
        for _ in range(n):
            job_id = uuid.uuid4().hex
            queue.enqueue_run(conn or self.conn, self.queue, job_id, {"reads": [], "reference": "r", "sample": f"sleep-{seconds}"},
                              meta={}, retries=1, ttl=600)
            ids.append(job_id)
        return ids

    def status(self, job_id: str, conn=None) -> str:
        return queue.fetch_job(conn or self.conn, job_id).get_status(refresh=True).value

    def replicas(self, name: str = "pool") -> int | None:
        r = self.cluster.kubectl("get", "deployment", f"{name}-workers", "-n", self.ns, "-o",
                                 "jsonpath={.spec.replicas}", check=False)
        return int(r.stdout) if r.returncode == 0 and r.stdout.strip() else None

    def pool(self, name: str = "pool") -> dict:
        return self.cluster.get_json("workerpool", name, "-n", self.ns)

    def pods(self, name: str = "pool") -> list[dict]:
        items = self.cluster.get_json("pods", "-n", self.ns, "-l", f"pipeq.dev/pool={name}")["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def events(self, name: str = "pool") -> list[dict]:
        items = self.cluster.get_json("events", "-n", self.ns, "--field-selector",
                                      f"involvedObject.kind=WorkerPool,involvedObject.name={name}")["items"]
        # timestamps have whole seconds and two steps of one burst can share one: the
        # resourceVersion (etcd's revision, one server here) orders them as they were written
        return sorted(items, key=lambda e: (e.get("lastTimestamp") or e.get("eventTime") or "", int(e["metadata"]["resourceVersion"])))

    def condition(self, type_: str, name: str = "pool") -> str | None:
        for c in (self.pool(name).get("status") or {}).get("conditions") or []:
            if c["type"] == type_:
                return c["status"]
        return None


@pytest.fixture
def pools(cluster, operator, namespace, redis_server, tmp_path):
    p = Pools(cluster, namespace, redis_server.url, tmp_path)
    yield p
    # delete the pools while the operator runs (it removes its finalizer) and their workers go
    cluster.kubectl("delete", "workerpools", "--all", "-n", namespace, "--timeout=60s", check=False)
    p.conn.close()


def test_crd_is_documented_and_validated(cluster, operator, namespace):
    explain = cluster.kubectl("explain", "workerpool.spec").stdout
    for field in ("queue", "redis", "image", "minReplicas", "maxReplicas", "jobsPerWorker", "pipeline",
                  "scaling", "paused", "resources", "env", "nodeSelector", "tolerations", "affinity",
                  "topologySpreadConstraints", "volumes"):
        assert re.search(rf"^\s+{field}\s+<", explain, re.M), field
    assert "scale-up is immediate" in cluster.kubectl("explain", "workerpool.spec.scaling.scaleDownDelaySeconds").stdout
    bad = cluster.kubectl("apply", "-n", namespace, "-f", "-", check=False, input=json.dumps({
        "apiVersion": "pipeq.dev/v1alpha1", "kind": "WorkerPool", "metadata": {"name": "bad"},
        "spec": {"image": "w", "minReplicas": 3, "maxReplicas": 2}}))
    assert bad.returncode != 0 and "minReplicas must not exceed maxReplicas" in bad.stderr
    bad = cluster.kubectl("apply", "-n", namespace, "-f", "-", check=False, input=json.dumps({
        "apiVersion": "pipeq.dev/v1alpha1", "kind": "WorkerPool", "metadata": {"name": "bad"},
        "spec": {"image": "w", "pipeline": {"timeoutSeconds": 0}}}))
    assert bad.returncode != 0 and "timeoutSeconds" in bad.stderr


def test_replicas_follow_the_queue_up_at_once_and_down_after_the_delay(cluster, pools, operator):
    pools.create(maxReplicas=4, scaling={"pollIntervalSeconds": 0.2, "scaleDownDelaySeconds": 3})
    wait_for(lambda: pools.replicas() == 0, timeout=30, what="the worker Deployment at 0 replicas")
    wait_for(lambda: pools.condition("Ready") == "True", timeout=10, what="Ready=True")
    assert pools.condition("RedisReachable") == "True"

    t0 = time.monotonic()
    jobs = pools.enqueue(3, n=3)
    wait_for(lambda: pools.replicas() == 3, timeout=10, interval=0.02, what="3 replicas")
    reaction = time.monotonic() - t0
    assert reaction < 2.0, f"burst → replicas took {reaction:.2f}s"

    # workers start, take the jobs, and their pods say which job they run
    wait_for(lambda: sorted(p["metadata"].get("annotations", {}).get("pipeq.dev/job", "") for p in pools.pods()) == sorted(jobs),
             timeout=30, what="each pod annotated with its job")
    costs = {p["metadata"]["annotations"]["controller.kubernetes.io/pod-deletion-cost"] for p in pools.pods()}
    assert costs == {"1000"}

    # the printer columns
    table = cluster.kubectl("get", "wp", "-n", pools.ns).stdout.splitlines()
    assert table[0].split() == ["NAME", "QUEUE", "QUEUED", "RUNNING", "DESIRED", "READY", "MIN", "MAX", "AGE"]
    row = table[1].split()
    assert row[:2] == ["pool", pools.queue] and row[4] == "3" and row[6:8] == ["0", "4"]

    wait_for(lambda: all(pools.status(j) == "finished" for j in jobs), timeout=60, what="every job finished")
    wait_for(lambda: pools.replicas() == 0, timeout=30, what="scale-down to 0")
    down_at = time.time()
    # The delay runs from the first job's end: from then on fewer workers were wanted without
    # a break (busy ones are never removed). Pods that start apart end their jobs apart, so
    # the last job's end can be closer to the scale-down than the delay.
    first_end = min(queue.fetch_job(pools.conn, j).ended_at.replace(tzinfo=timezone.utc) for j in jobs).timestamp()
    held = down_at - first_end
    assert held >= 3 - 0.5, f"scaled down {held:.1f}s after the first job ended; the delay is 3s"

    status = pools.pool()["status"]
    assert status["queued"] == 0 and status["running"] == 0 and status["desired"] == 0
    assert status["observedGeneration"] == pools.pool()["metadata"]["generation"]
    assert re.fullmatch(r"scaled \d+→0: 0 queued, 0 running", status["lastScaleReason"])
    messages = [e["message"] for e in pools.events() if e["reason"] == "Scaled"]
    # the burst may be seen mid-way (0→1, then 1→3): every step says why
    assert re.fullmatch(r"scaled 0→[123]: [123] queued, 0 running", messages[0]), messages
    assert messages[-1].startswith("scaled 3→0: "), messages

    # metrics per pool
    text = operator.get(operator.metrics, "/metrics")
    assert f'pipeq_pool_desired_replicas{{namespace="{pools.ns}",pool="pool"}} 0.0' in text
    assert f'pipeq_pool_scale_events_total{{direction="up",namespace="{pools.ns}",pool="pool"}}' in text


def test_an_enqueue_wakes_the_scaler_long_before_its_poll(cluster, pools):
    """The enqueue's signal, not the poll, scales: with a 60 s poll, a job enqueued after the
    first poll gets its worker within seconds (the fallback poll would take up to a minute)."""
    pools.create(maxReplicas=2, scaling={"pollIntervalSeconds": 60, "scaleDownDelaySeconds": 0})
    wait_for(lambda: (pools.pool().get("status") or {}).get("conditions"), timeout=30, what="the first poll's status")
    assert pools.replicas() == 0
    t0 = time.monotonic()
    pools.enqueue(1, n=2)
    wait_for(lambda: pools.replicas() == 2, timeout=20, interval=0.02, what="2 replicas")
    assert time.monotonic() - t0 < 20


def test_scale_down_removes_idle_workers_and_every_job_finishes(cluster, pools):
    pools.create(maxReplicas=4, scaling={"pollIntervalSeconds": 0.2, "scaleDownDelaySeconds": 1})
    wait_for(lambda: pools.replicas() == 0, timeout=30, what="the worker Deployment")
    long_job = pools.enqueue(15)[0]
    short = pools.enqueue(2, n=3)
    wait_for(lambda: pools.replicas() == 4, timeout=10, interval=0.05, what="4 replicas")

    def busy_pod():
        for p in pools.pods():
            if p["metadata"].get("annotations", {}).get("pipeq.dev/job") == long_job:
                return p["metadata"]["name"]
    keeper = wait_for(busy_pod, timeout=30, what="the pod running the long job")

    wait_for(lambda: all(pools.status(j) == "finished" for j in short), timeout=60, what="the short jobs finished")
    wait_for(lambda: pools.replicas() == 1, timeout=20, what="scale-down to the one busy worker")
    wait_for(lambda: [p["metadata"]["name"] for p in pools.pods()] == [keeper], timeout=30,
             what="only the busy worker's pod left")
    assert pools.status(long_job) == "started"
    # the status is written after the decision that changed it: wait for it, not a snapshot
    wait_for(lambda: (pools.pool().get("status") or {}).get("busy") == 1, timeout=10, what="status.busy 1")
    # still busy two leases (6 s each) into the 15 s job: the worker's hash, which says which
    # job it runs, once expired one lease into any longer job, and the pod was marked idle
    started = queue.fetch_job(pools.conn, long_job).started_at.timestamp()
    wait_for(lambda: time.time() > started + 12, timeout=30, what="the long job two leases old")
    assert pools.status(long_job) == "started"
    annotations = next(p for p in pools.pods() if p["metadata"]["name"] == keeper)["metadata"].get("annotations", {})
    assert annotations.get("pipeq.dev/job") == long_job, annotations
    assert annotations.get("controller.kubernetes.io/pod-deletion-cost") == "1000", annotations
    # the node autoscalers leave a busy worker's node alone
    assert annotations.get("cluster-autoscaler.kubernetes.io/safe-to-evict") == "false", annotations
    assert annotations.get("karpenter.sh/do-not-disrupt") == "true", annotations
    assert (pools.pool().get("status") or {}).get("busy") == 1
    wait_for(lambda: pools.status(long_job) == "finished", timeout=60, what="the long job finished on its worker")
    wait_for(lambda: pools.replicas() == 0, timeout=20, what="scale to zero")
    assert pools.status(long_job) == "finished" and all(pools.status(j) == "finished" for j in short)


def test_paused_pool_is_left_alone_and_spec_changes_apply_live(cluster, pools):
    pools.create(paused=True, minReplicas=0)
    wait_for(lambda: pools.replicas() == 0, timeout=30, what="the worker Deployment")
    job = pools.enqueue(1)[0]
    # a paused pool polls but never scales: the poll that saw the job wrote the status after
    # its (non-)scale
    wait_for(lambda: (pools.pool().get("status") or {}).get("queued") == 1, timeout=10, what="a poll that saw the job")
    assert pools.replicas() == 0
    cluster.kubectl("patch", "workerpool", "pool", "-n", pools.ns, "--type=merge", "-p", '{"spec": {"paused": false}}')
    wait_for(lambda: pools.replicas() == 1, timeout=5, what="scale-up once unpaused")
    wait_for(lambda: pools.status(job) == "finished", timeout=60, what="the job finished")
    # a spec change reaches the Deployment (server-side apply) without resetting replicas
    cluster.kubectl("patch", "workerpool", "pool", "-n", pools.ns, "--type=merge", "-p",
                    '{"spec": {"minReplicas": 2, "pipeline": {"timeoutSeconds": 300}}}')
    wait_for(lambda: pools.replicas() == 2, timeout=10, what="minReplicas raised to 2")

    def timeout_env():
        dep = cluster.get_json("deployment", "pool-workers", "-n", pools.ns)
        env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
        return env.get("PIPEQ_PIPELINE_TIMEOUT") == "300" and dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 300
    wait_for(timeout_env, timeout=10, what="the new timeout in the pod template")
    assert pools.replicas() == 2


def test_deleting_a_pool_garbage_collects_its_deployment(cluster, pools):
    pools.create(minReplicas=1)
    wait_for(lambda: len(pools.pods()) == 1, timeout=30, what="one worker pod")
    dep = cluster.get_json("deployment", "pool-workers", "-n", pools.ns)
    owner = dep["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner.get("controller")) == ("WorkerPool", "pool", True)
    cluster.kubectl("delete", "workerpool", "pool", "-n", pools.ns, "--timeout=30s")
    wait_for(lambda: pools.replicas() is None, timeout=30, what="the Deployment garbage-collected")
    wait_for(lambda: not pools.pods(), timeout=30, what="the worker pods gone")


def _metric(operator, name: str, namespace: str, pool: str = "pool") -> float:
    """The value of one of the operator's per-pool metrics (0 while it has none)."""
    for line in operator.get(operator.metrics, "/metrics").splitlines():
        if line.startswith(name + "{") and f'namespace="{namespace}"' in line and f'pool="{pool}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_redis_outage_holds_replicas_and_says_so(cluster, pools, operator, tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        conn = queue.connect(server.url)
        pools.create(redis_url=server.url, scaling={"pollIntervalSeconds": 0.2, "scaleDownDelaySeconds": 0})
        wait_for(lambda: pools.replicas() == 0, timeout=30, what="the worker Deployment")
        pools.enqueue(30, n=2, conn=conn)
        wait_for(lambda: pools.replicas() == 2, timeout=10, what="2 replicas")
        server.stop()
        wait_for(lambda: pools.condition("RedisReachable") == "False", timeout=10, what="RedisReachable=False")
        # ten polls that could not reach Redis: with no scale-down delay, a blind scaler
        # would have scaled to 0 at the first
        wait_for(lambda: _metric(operator, "pipeq_pool_redis_errors_total", pools.ns) >= 10, timeout=20,
                 what="ten polls while Redis is down")
        assert pools.replicas() == 2
        assert any(e["type"] == "Warning" and e["reason"] == "RedisUnreachable" for e in pools.events())
        server.start()
        wait_for(lambda: pools.condition("RedisReachable") == "True", timeout=10, what="RedisReachable=True again")
        assert any(e["reason"] == "RedisReachable" for e in pools.events())
        conn.close()
    finally:
        server.stop()


def test_a_pool_with_a_secret_ref_scales_by_the_redis_in_its_secret(cluster, pools, tmp_path):
    """The workers of a secretRef pool use the Redis in the Secret; the operator must poll
    that one, not its own PIPEQ_REDIS_URL (here the session's server, where this queue is
    empty)."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        conn = queue.connect(server.url)
        cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pool-redis"},
                       "stringData": {"address": server.url}}, namespace=pools.ns)
        pools.create(redis={"secretRef": {"name": "pool-redis", "key": "address"}})
        wait_for(lambda: pools.replicas() == 0, timeout=30, what="the worker Deployment")
        jobs = pools.enqueue(2, n=2, conn=conn)
        wait_for(lambda: pools.replicas() == 2, timeout=10, what="2 replicas for the 2 jobs in the Secret's Redis")
        assert pools.condition("RedisReachable") == "True"
        wait_for(lambda: all(pools.status(j, conn=conn) == "finished" for j in jobs), timeout=60, what="both jobs finished")
        conn.close()
    finally:
        server.stop()


def test_a_pool_whose_secret_cannot_be_read_is_held_and_says_why(cluster, pools):
    pools.create(redis={"secretRef": {"name": "no-such-secret"}})
    wait_for(lambda: pools.replicas() == 0, timeout=30, what="the worker Deployment")
    pools.enqueue(30, n=2)  # on the operator's own Redis: it must not scale by that one

    def unreadable():
        c = next((c for c in (pools.pool().get("status") or {}).get("conditions") or [] if c["type"] == "RedisReachable"), None)
        return c if c and c["status"] == "False" and c["reason"] == "SecretUnreadable" else None
    cond = wait_for(unreadable, timeout=15, what="RedisReachable=False, SecretUnreadable")
    assert f"Secret {pools.ns}/no-such-secret" in cond["message"] and "not found" in cond["message"], cond
    events = [e for e in pools.events() if e["reason"] == "RedisSecretUnreadable"]
    assert events and events[0]["type"] == "Warning" and "no-such-secret" in events[0]["message"], events
    # the status was written by the poll that held: a scale would have come first
    assert pools.replicas() == 0 and pools.pool()["status"]["desired"] == 0
    # once the Secret exists, the pool scales by the Redis it names
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "no-such-secret"},
                   "stringData": {"url": pools.redis_url}}, namespace=pools.ns)
    wait_for(lambda: pools.replicas() == 2, timeout=20, what="2 replicas once the Secret is readable")
    assert pools.condition("RedisReachable") == "True"


def test_operator_restart_resumes_pools_without_a_replica_reset(cluster, pools, operator):
    pools.create(minReplicas=0, scaling={"pollIntervalSeconds": 0.2, "scaleDownDelaySeconds": 30})
    wait_for(lambda: pools.replicas() == 0, timeout=30, what="the worker Deployment")
    jobs = pools.enqueue(20, n=2)
    wait_for(lambda: pools.replicas() == 2, timeout=10, what="2 replicas")
    generation = cluster.get_json("deployment", "pool-workers", "-n", pools.ns)["metadata"]["generation"]
    operator.stop()
    try:
        jobs += pools.enqueue(20, n=1)  # while no operator runs: the next one must see it
    finally:
        operator.start()
    wait_for(operator.alive, timeout=30, what="the operator back")
    wait_for(lambda: pools.replicas() == 3, timeout=15, what="3 replicas after the restart")
    # the resume handler re-applies the Deployment: had it reset the replicas on the way
    # (to minReplicas, say), the Deployment's spec would have changed more than once
    dep = cluster.get_json("deployment", "pool-workers", "-n", pools.ns)
    assert dep["metadata"]["generation"] == generation + 1, "the replicas changed on the way to 3"
    wait_for(lambda: all(pools.status(j) == "finished" for j in jobs), timeout=90, what="the jobs finished")
