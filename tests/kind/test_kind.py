"""What a user's `helm install` meets, on real pods: a kind cluster (a real kubelet, real
containers of pipeq's own images, the restricted Pod Security Standard enforced), the chart
installed with `helm install --wait`, and pipeq used as a user would (REST, kubectl).

The tests share one cluster (tests/kind/conftest.py) and run in this file's order; the last
one uninstalls the chart. Besides the chart's default pool (real pipeline.sh runs), a
second pool, ``slow``, runs a sleeping pipeline from a ConfigMap on its own queue, so that
jobs last long enough to be busy while pods are deleted and pools scale down.
"""

from __future__ import annotations

import subprocess
import uuid

import pytest
import redis

from pipeq import queue
from tests.e2e.body import run_end_to_end
from tests.support.kind import NAMESPACE, RELEASE, SLEEPER, TAG
from tests.support.waiting import wait_for

# the test itself, not the kind fixture, which waits for the cluster (a cold build takes longer)
pytestmark = [pytest.mark.kind, pytest.mark.timeout(900, func_only=True)]

SLOW_QUEUE = "slow"
FINAL = ("finished", "failed", "canceled", "stopped")


def kubectl_of(kind):
    return lambda *a: kind.kubectl(*a)


@pytest.fixture(scope="module")
def slow(kind):
    """The ``slow`` pool and a Redis client through a port-forward (``.conn()``)."""
    kind.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=f"""
apiVersion: v1
kind: ConfigMap
metadata: {{name: sleeper}}
data:
  pipeline.sh: |
{_indent(SLEEPER, 4)}
---
apiVersion: pipeq.dev/v1alpha1
kind: WorkerPool
metadata: {{name: slow, labels: {{app.kubernetes.io/instance: {RELEASE}}}}}
spec:
  queue: {SLOW_QUEUE}
  redis: {{secretRef: {{name: {RELEASE}-redis-auth, key: url}}}}
  image: pipeq-worker:{TAG}
  imagePullPolicy: Never
  minReplicas: 0
  maxReplicas: 3
  pipeline: {{timeoutSeconds: 120}}
  scaling: {{pollIntervalSeconds: 0.5, scaleDownDelaySeconds: 3}}
  securityContext: {{runAsUser: 10001, runAsGroup: 10001, fsGroup: 10001}}
  resources: {{requests: {{cpu: 20m, memory: 96Mi}}}}
  env:
    - {{name: PIPEQ_PIPELINE, value: /opt/test/pipeline.sh}}
    - {{name: PIPEQ_DATA_DIR, value: /data}}
    - {{name: PIPEQ_LEASE_SECONDS, value: "6"}}
    - {{name: PIPEQ_MAINTENANCE_INTERVAL, value: "1"}}
  volumes:
    - {{name: data, persistentVolumeClaim: {{claimName: {RELEASE}-data}}}}
    - {{name: pipeline, configMap: {{name: sleeper, defaultMode: 0755}}}}
  volumeMounts:
    - {{name: data, mountPath: /data}}
    - {{name: pipeline, mountPath: /opt/test}}
""")
    wait_for(lambda: kind.kubectl("get", "deployment", "slow-workers", "-n", NAMESPACE, check=False).strip(),
             timeout=60, what="the slow pool's Deployment")
    yield SlowPool(kind)


class SlowPool:
    def __init__(self, kind):
        self.kind = kind

    def conn(self) -> redis.Redis:
        return queue.connect(self.kind.redis_url())

    def read(self, fn):
        """fn(conn), retried while Redis or the forward to it is coming back."""
        def attempt():
            try:
                return (fn(self.conn()),)
            except (redis.ConnectionError, redis.TimeoutError, RuntimeError):
                return None
        return wait_for(attempt, timeout=120, interval=1, what="Redis through the port-forward")[0]

    def enqueue(self, seconds: int, n: int = 1) -> list[str]:
        ids = [uuid.uuid4().hex for _ in range(n)]
        for job_id in ids:
            self.read(lambda c: queue.enqueue_run(c, SLOW_QUEUE, job_id, {"reads": [], "reference": "r",
                                                                           "sample": f"sleep-{seconds}"},
                                                  meta={}, retries=2, ttl=900))
        return ids

    def statuses(self, ids) -> list[str]:
        return self.read(lambda c: [queue.fetch_job(c, j).get_status(refresh=True).value for j in ids])

    def attempts(self, ids) -> list[int]:
        return self.read(lambda c: [int(queue.fetch_job(c, j).meta.get("attempt") or 0) for j in ids])

    def pods(self) -> list[dict]:
        return self.kind.pods("pipeq.dev/pool=slow")

    def busy_pods(self) -> dict[str, str]:
        """pod name → the job it says it runs (the operator's annotation)."""
        return {p["metadata"]["name"]: job for p in self.pods()
                if (job := (p["metadata"].get("annotations") or {}).get("pipeq.dev/job"))}

    def replicas(self) -> int:
        return int(self.kind.kubectl("get", "deployment", "slow-workers", "-n", NAMESPACE,
                                     "-o", "jsonpath={.spec.replicas}") or 0)

    def trace(self) -> list[str]:
        pod = self.kind.pods("app.kubernetes.io/component=api")[0]["metadata"]["name"]
        r = self.kind.kubectl("exec", "-n", NAMESPACE, pod, "--", "cat", "/data/trace-slow.log", check=False)
        return r.splitlines()

    def errors(self, ids) -> dict[str, dict]:
        """job id → what the user is told about a job that did not finish, and its attempts."""
        from pipeq.jobs import to_status

        def read(c):
            out = {}
            for j in ids:
                s = to_status(queue.fetch_job(c, j), with_result=False)
                if s.status != "finished":
                    out[j] = {"status": s.status, "attempt": s.attempt, "error": s.error and s.error.model_dump()}
            return out
        return self.read(read)

    def wait_final(self, ids, timeout: float = 240) -> list[str]:
        wait_for(lambda: all(s in FINAL for s in self.statuses(ids)), timeout=timeout, interval=1,
                 what=f"{len(ids)} slow jobs to end")
        return self.statuses(ids)


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())


# ---- the tests, in order --------------------------------------------------------------

def test_chart_installs_in_a_restricted_namespace_and_helm_test_passes(kind):
    labels = kind.get_json("namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    out = kind.helm("test", RELEASE, "-n", NAMESPACE, "--timeout", "3m", timeout=200)
    assert "Phase:          Succeeded" in out or "Succeeded" in out, out
    for component in ("api", "operator", "redis"):
        (pod,) = kind.pods(f"app.kubernetes.io/component={component}")
        assert all(c["ready"] for c in pod["status"]["containerStatuses"]), pod["status"]


def test_a_real_run_over_rest_finds_the_planted_snps_and_the_pool_scales_0_1_0(kind, tmp_path):
    seen = run_end_to_end(kind.api_url(), kubectl_of(kind), NAMESPACE, "default", tmp_path,
                          headers=kind.api_headers(), scale_down_timeout=120, ready_timeout=120)
    print("\n" + seen["table"])
    assert "default" in seen["table"]


def test_the_default_install_refuses_redis_and_api_clients_without_credentials(kind):
    import httpx

    anonymous = queue.connect(kind.forward(f"svc/{RELEASE}-redis", 6379, scheme="redis") + "/0")
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with pytest.raises(redis.AuthenticationError):
        anonymous.lpush("rq:queue:pipeline_tasks", "planted")
    assert queue.connect(kind.redis_url()).ping()
    api = kind.api_url()
    assert httpx.get(f"{api}/readyz", timeout=10).status_code == 200  # probes stay open
    for path in ("/metrics", "/job_status/0123456789abcdef0123456789abcdef"):
        r = httpx.get(f"{api}{path}", timeout=10)
        assert r.status_code == 401, (path, r.status_code, r.text)
    assert httpx.get(f"{api}/metrics", headers=kind.api_headers(), timeout=10).status_code == 200


# The source files of the modules a worker imports whose bytecode is not in the image.
UNCOMPILED = ("import os, sys, importlib.util, pipeq.worker.main; "
              "files = [m.__file__ for m in list(sys.modules.values()) if (getattr(m, \"__file__\", None) or \"\").endswith(\".py\")]; "
              "missing = [f for f in files if not os.path.exists(importlib.util.cache_from_source(f))]; "
              "print(\"uncompiled\", len(missing), *missing[:3])")


def test_worker_runs_as_10001_on_a_read_only_root_and_writes_its_job_folder(kind, slow):
    # long enough for one exec into the busy pod (~1 s), which is all the test waits for
    (job_id,) = slow.enqueue(10)
    pod = wait_for(lambda: next(iter(slow.busy_pods()), None), timeout=90, what="a busy slow worker pod")
    script = ("id -u; id -g; touch /opt/x 2>/dev/null && echo root-writable || echo root-read-only; "
              f"ls -d /data/jobs/{job_id}/work* 2>/dev/null | head -1; touch /data/jobs/{job_id}/probe && echo job-writable; "
              "/opt/pipeq/bin/python -c 'import ssl; print(\"cas\", ssl.create_default_context().cert_store_stats()[\"x509_ca\"])'; "
              f"/opt/pipeq/bin/python -c '{UNCOMPILED}'; "
              "cat /proc/1/cmdline | tr '\\0' ' '")
    out = kind.kubectl("exec", "-n", NAMESPACE, pod, "--", "sh", "-c", script).splitlines()
    assert out[0] == "10001" and out[1] == "10001", out
    assert "root-read-only" in out, out
    assert "job-writable" in out, out
    assert out[-1].startswith("tini -- pipeq worker"), out  # PID 1 is the init, not Python
    # https:// inputs by URL are verified against the image's CA bundle (ca-certificates)
    assert int(next(line for line in out if line.startswith("cas ")).split()[1]) > 0, out
    # every module a worker imports has its bytecode in the image: nothing compiles at start
    assert next(line for line in out if line.startswith("uncompiled ")) == "uncompiled 0", out
    assert slow.wait_final([job_id]) == ["finished"]


def test_scale_0_to_n_to_0_and_scale_down_removes_only_idle_pods(kind, slow):
    """Long and short jobs: the pool grows to 3 pods, the short jobs end, the pool shrinks
    while the long ones still run — only idle pods go (a real SIGTERM from the kubelet), and
    every job finishes on its first attempt."""
    wait_for(lambda: slow.replicas() == 0 and not slow.pods(), timeout=120, what="the slow pool at zero")
    long = slow.enqueue(25, n=2)
    short = slow.enqueue(2, n=1)
    wait_for(lambda: slow.replicas() == 3, timeout=60, what="three replicas wanted")
    wait_for(lambda: sum(p["status"].get("phase") == "Running" for p in slow.pods()) == 3, timeout=120,
             what="three worker pods running")
    # the short job ends; the pool scales to 2 while both long jobs run
    wait_for(lambda: slow.statuses(short) == ["finished"], timeout=120, what="the short job to finish")
    wait_for(lambda: slow.replicas() <= 2, timeout=60, what="the pool to scale down under load")
    busy = slow.busy_pods()
    assert set(busy.values()) <= set(long), busy
    running = [s for s in slow.statuses(long) if s == "started"]
    assert running, "the long jobs ended before the scale-down: the test proves nothing"
    assert slow.wait_final(long) == ["finished", "finished"]
    assert slow.attempts(long + short) == [1, 1, 1], "a job lost its worker to the scale-down"
    wait_for(lambda: slow.replicas() == 0 and not slow.pods(), timeout=120, what="scale back to zero pods")


def test_a_force_deleted_busy_pod_loses_no_job_and_runs_it_to_completion_once(kind, slow):
    (job_id,) = slow.enqueue(15)
    pod = wait_for(lambda: next((p for p, j in slow.busy_pods().items() if j == job_id), None), timeout=90,
                   what="the job's pod")
    # the attempt is really under way: its pipeline has written its start line
    wait_for(lambda: f"start {job_id}" in slow.trace(), timeout=60, interval=0.5, what="the job's pipeline to start")
    kind.kubectl("delete", "pod", "-n", NAMESPACE, pod, "--grace-period=0", "--force")
    assert slow.wait_final([job_id], timeout=180) == ["finished"]
    (attempt,) = slow.attempts([job_id])
    assert attempt >= 2, "the job was not rerun after its pod was deleted"
    trace = slow.trace()
    assert trace.count(f"end {job_id}") == 1, trace


def test_redis_pod_deleted_with_jobs_queued_and_running_loses_none(kind, slow, tmp_path):
    ids = slow.enqueue(12, n=2) + slow.enqueue(3, n=4)  # 2 will run, 4 wait in the queue
    wait_for(lambda: "started" in slow.statuses(ids), timeout=90, what="a job to start")
    (redis_pod,) = kind.pods("app.kubernetes.io/component=redis")
    kind.kubectl("delete", "pod", "-n", NAMESPACE, redis_pod["metadata"]["name"], "--wait=false")
    wait_for(lambda: any(p["status"].get("phase") == "Running" and all(c.get("ready") for c in p["status"].get("containerStatuses") or [])
                         for p in kind.pods("app.kubernetes.io/component=redis")), timeout=180, what="Redis to come back")
    statuses = slow.wait_final(ids, timeout=300)
    print(f"\nafter a Redis pod deletion: {statuses.count('finished')}/{len(ids)} finished")
    assert statuses == ["finished"] * len(ids), (statuses, slow.errors(ids))


def test_helm_uninstall_leaves_no_pods(kind):
    kind.kubectl("delete", "workerpool", "slow", "-n", NAMESPACE, "--timeout=120s", check=False)
    kind.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "3m", timeout=200)
    wait_for(lambda: not kind.get_json("pods", "-n", NAMESPACE)["items"], timeout=120, what="every pod to go")
    left = kind.kubectl("get", "pvc,crd", "-n", NAMESPACE, "-o", "name")
    # on purpose: the data and Redis PVCs (a reinstall finds the jobs) and the CRD (helm never deletes CRDs)
    assert "customresourcedefinition.apiextensions.k8s.io/workerpools.pipeq.dev" in left, left
    assert f"persistentvolumeclaim/{RELEASE}-data" in left and f"persistentvolumeclaim/redis-data-{RELEASE}-redis-0" in left, left
    print("\nleft after helm uninstall, on purpose:\n" + left)
