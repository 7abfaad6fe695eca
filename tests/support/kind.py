"""A kind cluster with pipeq installed from its chart: real images on a real kubelet.

Used by the kind suite (tests/kind/) and by people (`make kind-up` / `make kind-down`, which
run ``python -m tests.support.kind up|down``). Every step is one of the repository's scripts:
Docker (scripts/docker.sh), the node image (scripts/kind-node-image.sh: kind's own where it
can be pulled, else one assembled from Go modules), the cluster (scripts/kind-cluster.sh),
pipeq's images (scripts/images.sh, then ``kind load``), the chart (``helm install --wait`` into
a namespace that enforces the restricted Pod Security Standard), and a port-forward to the
API on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.support.cluster import kubectl_path, tools_bin_dir
from tests.support.servers import free_port
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "pipeq"
RELEASE = "pipeq"
#: the tag pipeq's images get for the cluster (loaded with kind load, never pulled)
TAG = "kind"
#: the chart's values for a one-node test cluster: small requests so that several workers
#: fit on 2 cores, quick scaling, and the images loaded into the node
VALUES = {
    "image.tag": TAG,
    "image.pullPolicy": "Never",
    "workerImage.tag": TAG,
    "workerImage.pullPolicy": "Never",
    "api.resources.requests.cpu": "50m",
    "operator.resources.requests.cpu": "50m",
    "redis.resources.requests.cpu": "50m",
    "workerPool.resources.requests.cpu": "50m",
    "workerPool.resources.requests.memory": "128Mi",
    "workerPool.resources.limits.memory": "1Gi",
    "workerPool.maxReplicas": 4,
    "workerPool.pollIntervalSeconds": 0.5,
    "workerPool.scaleDownDelaySeconds": 5,
    "data.size": "2Gi",
}
#: the chart's default Redis, used when it can be pulled; else the one scripts/images.sh builds
UPSTREAM_REDIS = "redis:7.2.7-alpine"

#: a pipeline.sh for worker pods (from a ConfigMap): sleeps for the seconds its sample names
#: (sleep-N) and writes a line when it starts and ends into the trace on the data volume (/data),
#: so a test can count how often a job really ran (tests/kind, bench/keda.py)
def sleeper(trace: str = "/data/trace-slow.log", with_pod: bool = False) -> str:
    """SLEEPER tracing into ``trace``; ``with_pod``: each line also names the pod ($HOSTNAME)."""
    pod = " $HOSTNAME" if with_pod else ""
    return f"""#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in --outdir) outdir=$2; shift 2 ;; --sample) sample=$2; shift 2 ;; *) shift ;; esac
done
job=${{outdir#*/jobs/}}; job=${{job%%/*}}
echo "start $job{pod}" >> {trace}
echo "PROGRESS 10 sleep ${{sample#sleep-}}"
sleep "${{sample#sleep-}}"
echo '{{"sample": "x", "variants": 0}}' > "$outdir/report.json"
echo "end $job{pod}" >> {trace}
echo "PROGRESS 100 done"
"""


SLEEPER = sleeper()


class KindUnavailable(RuntimeError):
    """No Docker can be started here (the kind suite skips with this reason, outside CI)."""


def log(msg: str) -> None:
    print(f"pipeq kind: {msg}", file=sys.stderr, flush=True)


def run(*cmd: str, timeout: float = 2700, check: bool = True, env: dict | None = None,
        input: str | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       env=env, input=input)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def docker_up() -> bool:
    """A Docker daemon that answers; True if this call started it (stop it with docker_down)."""
    r = run("scripts/docker.sh", "up", timeout=900, check=False)
    if r.returncode != 0:
        raise KindUnavailable(f"no Docker daemon could be started: {r.stderr.strip()[-1500:]}")
    return r.stdout.strip().endswith("started")


def docker_down() -> None:
    run("scripts/docker.sh", "down", timeout=120, check=False)


#: in the `kind up` folder: that command started the dockerd (so `kind down` stops it)
STARTED_MARK = "dockerd-started"


def note_docker_started(workdir: Path, started: bool) -> None:
    """Record in ``workdir`` that ``kind up`` started the Docker daemon, if it did
    (docker_up's answer); a second ``kind up`` that finds it running keeps the record."""
    if started:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / STARTED_MARK).write_text("scripts/docker.sh up started the dockerd; kind down stops it\n")


def docker_down_if_started(workdir: Path) -> bool:
    """``kind down``'s end: stop the dockerd if ``kind up`` started it (as the suite does),
    unless containers of others still run on it; True if it was stopped. A daemon that was
    up before ``kind up`` is never touched (scripts/docker.sh down stops only its own)."""
    mark = workdir / STARTED_MARK
    if not mark.exists():
        return False
    try:
        others = run("docker", "ps", "-q", timeout=30, check=False).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        others = []  # no docker client or no answer: nothing runs on it that could be hurt
    if others:
        log(f"leaving dockerd running: {len(others)} other container(s) still use it")
        return False
    docker_down()
    mark.unlink()
    return True


def prepare() -> None:
    """Build what a cluster needs, each cached after its first build: the node image, kind,
    helm, and pipeq's images."""
    run("scripts/kind-node-image.sh")
    kind_bin()
    tools_bin_dir(build=True)
    run("scripts/images.sh", "--tag", TAG)


def kind_bin() -> str:
    return str(Path(run("tools/gobuild.sh", "kind", timeout=1800).stdout.strip()) / "kind")


class KindCluster:
    """One kind cluster named ``name`` with its files (kubeconfig, logs) in ``workdir``."""

    def __init__(self, name: str, workdir: Path, workers: int = 0):
        self.name = name
        #: worker nodes besides the control plane (which then runs no pipeq pods: kind taints it)
        self.workers = workers
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = self.workdir / "kubeconfig"
        self.helm_bin = str(Path(tools_bin_dir(build=True)) / "helm")
        self._forwards: dict[tuple[str, str, int], tuple[subprocess.Popen, str]] = {}
        self.timings: dict[str, float] = {}
        self.redis_image = UPSTREAM_REDIS  # the one load_images found usable

    # ---- steps -------------------------------------------------------------------------
    def timed(self, what: str, fn, *args):
        start = time.monotonic()
        out = fn(*args)
        self.timings[what] = round(time.monotonic() - start, 1)
        log(f"{what}: {self.timings[what]} s")
        return out

    def up(self, values: dict[str, object] | None = None) -> "KindCluster":
        """Create the cluster, load pipeq's images and install the chart (helm install --wait)."""
        self.timed("node image", run, "scripts/kind-node-image.sh")  # built once, then cached in Docker
        self.timed("cluster", self.create)
        self.redis_image = self.timed("images", self.load_images)
        self.timed("chart", self.install, {**VALUES, "redis.image": self.redis_image, **(values or {})})
        return self

    def create(self) -> None:
        run("scripts/kind-cluster.sh", "delete", self.name, "--kubeconfig", str(self.kubeconfig), timeout=300, check=False)
        run("scripts/kind-cluster.sh", "create", self.name, "--kubeconfig", str(self.kubeconfig),
            "--workers", str(self.workers), timeout=900)

    def worker_nodes(self) -> list[str]:
        """The nodes pipeq's pods run on: the worker nodes, or the control plane alone."""
        names = self.kubectl("get", "nodes", "-o", "jsonpath={.items[*].metadata.name}").split()
        workers = [n for n in names if not n.endswith("-control-plane")]
        return workers or names

    def load(self, *images: str) -> None:
        """``kind load`` images into the nodes pipeq's pods run on (not a tainted control plane:
        each node costs a copy of every image)."""
        run(kind_bin(), "load", "docker-image", "--name", self.name, "--nodes", ",".join(self.worker_nodes()),
            *images, timeout=900)

    def load_images(self) -> str:
        """Build pipeq's images and load them into the node; returns the Redis image to use."""
        run("scripts/images.sh", "--tag", TAG, timeout=2400)
        images = [f"pipeq:{TAG}", f"pipeq-worker:{TAG}"]
        redis = UPSTREAM_REDIS
        if run("docker", "image", "inspect", UPSTREAM_REDIS, check=False).returncode != 0 and \
                run("docker", "pull", "-q", UPSTREAM_REDIS, timeout=60, check=False).returncode != 0:
            redis = f"pipeq-redis:{TAG}"  # Docker Hub is out of reach: Debian's redis-server
        images.append(redis)
        self.load(*images)
        return redis

    def install(self, values: dict[str, object], namespace: str = NAMESPACE, release: str = RELEASE,
                chart: str = "helm/pipeq") -> None:
        """``helm upgrade --install --wait`` of ``chart`` (this checkout's, by default) as
        ``release`` into ``namespace``, which enforces the restricted Pod Security Standard."""
        self.kubectl("create", "namespace", namespace, check=False)
        self.kubectl("label", "--overwrite", "namespace", namespace,
                     "pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/enforce-version=latest")
        # a values file, not --set: helm's --set makes a string of 0.5, which the schema refuses
        nested: dict = {}
        for key, value in values.items():
            *parents, leaf = key.split(".")
            d = nested
            for part in parents:
                d = d.setdefault(part, {})
            d[leaf] = value
        path = self.workdir / f"values-{release}.json"
        path.write_text(json.dumps(nested, indent=2))
        self.helm("upgrade", "--install", release, chart, "-n", namespace, "--wait", "--timeout", "5m",
                  "-f", str(path), timeout=420)

    def delete(self) -> None:
        self.stop_forward()
        run("scripts/kind-cluster.sh", "delete", self.name, timeout=300, check=False)

    # ---- access ------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        return dict(os.environ, KUBECONFIG=str(self.kubeconfig))

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None) -> str:
        return run(kubectl_path(), *args, env=self.env(), check=check, timeout=timeout, input=input).stdout

    def helm(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        return run(self.helm_bin, *args, env=self.env(), check=check, timeout=timeout).stdout

    def get_json(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def api_url(self) -> str:
        """http://127.0.0.1:<port> of the API Service."""
        return self.forward(f"svc/{RELEASE}-api", 80)

    def secret(self, name: str, key: str, namespace: str = NAMESPACE) -> str:
        """One key of a Secret, decoded."""
        import base64

        data = self.get_json("secret", name, "-n", namespace)["data"]
        return base64.b64decode(data[key]).decode()

    def api_headers(self, namespace: str = NAMESPACE, release: str = RELEASE) -> dict[str, str]:
        """The bearer token the chart generated (api.auth is on by default), as headers."""
        return {"Authorization": f"Bearer {self.secret(f'{release}-api-token', 'token', namespace)}"}

    def redis_url(self, namespace: str = NAMESPACE, release: str = RELEASE) -> str:
        """redis://:<password>@127.0.0.1:<port>/0: the release's Redis through a port-forward,
        with the password the chart generated (redis.auth is on by default)."""
        password = self.secret(f"{release}-redis-auth", "password", namespace)
        local = self.forward(f"svc/{release}-redis", 6379, scheme="redis", namespace=namespace)
        return local.replace("redis://", f"redis://:{password}@", 1) + "/0"

    def forward(self, target: str, port: int, scheme: str = "http", namespace: str = NAMESPACE) -> str:
        """``scheme://127.0.0.1:<local port>`` forwarded to ``port`` of ``target`` (e.g.
        svc/pipeq-redis) by kubectl port-forward; restarted when it has died (it does when
        the pod it forwards to goes away)."""
        key = (namespace, target, port)
        proc, url = self._forwards.get(key, (None, None))
        if proc is not None and proc.poll() is None:
            return f"{scheme}://{url}"
        out = open(self.workdir / "port-forward.log", "ab")
        proc = subprocess.Popen(
            [kubectl_path(), "port-forward", "-n", namespace, target, "--address", "127.0.0.1", f":{port}"],
            env=self.env(), stdout=subprocess.PIPE, stderr=out, text=True)
        line = proc.stdout.readline()
        m = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not m:
            proc.kill()
            raise RuntimeError(f"kubectl port-forward {target} said {line!r}")
        self._forwards[key] = (proc, f"127.0.0.1:{m.group(1)}")
        return f"{scheme}://127.0.0.1:{m.group(1)}"

    def stop_forward(self) -> None:
        for proc, _ in self._forwards.values():
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._forwards.clear()

    def pods(self, selector: str, namespace: str = NAMESPACE) -> list[dict]:
        items = self.get_json("pods", "-n", namespace, "-l", selector)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def wait_rollout(self, kind_name: str, timeout: float = 180, namespace: str = NAMESPACE) -> None:
        self.kubectl("rollout", "status", "-n", namespace, kind_name, f"--timeout={int(timeout)}s", timeout=timeout + 10)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.support.kind", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["up", "down"])
    p.add_argument("--name", default="pipeq")
    p.add_argument("--dir", default=".kind", help="where the kubeconfig and logs go")
    a = p.parse_args(argv)
    workdir = (ROOT / a.dir).resolve()
    if a.command == "down":
        pid = workdir / "port-forward.pid"
        if pid.exists():
            try:
                os.killpg(int(pid.read_text()), 15)
            except (ProcessLookupError, ValueError):
                pass
        KindCluster(a.name, workdir).delete()
        if docker_down_if_started(workdir):
            log("stopped the dockerd that kind up started")
        shutil.rmtree(workdir, ignore_errors=True)
        return 0
    note_docker_started(workdir, docker_up())
    start = time.monotonic()
    cluster = KindCluster(a.name, workdir).up()
    # a port-forward that outlives this command, stopped by `down`
    port = free_port()
    with open(workdir / "port-forward.log", "ab") as out:
        forward = subprocess.Popen(
            [kubectl_path(), "port-forward", "-n", NAMESPACE, f"svc/{RELEASE}-api", "--address", "127.0.0.1",
             f"{port}:80"], env=cluster.env(), stdout=out, stderr=out, start_new_session=True)
    (workdir / "port-forward.pid").write_text(str(forward.pid))
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _ready(url), timeout=60, what="the API to answer")
    print(f"pipeq on kind in {time.monotonic() - start:.0f} s ("
          + ", ".join(f"{k} {v} s" for k, v in cluster.timings.items()) + ")\n"
          f"  API:        {url}   (a kubectl port-forward; restart it with\n"
          f"              kubectl -n {NAMESPACE} port-forward svc/{RELEASE}-api {port}:80)\n"
          f"  kubeconfig: export KUBECONFIG={cluster.kubeconfig}\n"
          f"  then:       kubectl -n {NAMESPACE} get workerpools; make kind-down deletes the cluster")
    return 0


def _ready(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    sys.exit(main())
