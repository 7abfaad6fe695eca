"""KEDA 2.21's reaction to a burst on an RQ queue, on the same test control plane as
``bench.scale`` (issue 17): burst → first replica, at KEDA's default ``pollingInterval`` (30 s)
and at 1 s.

    tools/gobuild.sh keda && PYTHONPATH=. $(scripts/venv.sh)/bin/python -m bench.keda [--bursts 5]

What runs: the test control plane and the process node (tests/support), a redis-server, and
KEDA's operator (built from tools/keda) as a process outside the cluster, watching a
ScaledObject with KEDA's Redis list scaler on ``rq:queue:<queue>`` of a Deployment of pipeq
workers (the one ``builders.worker_deployment`` makes for a pool). pipeq's operator does not
run. The KEDA operator scales 0 → 1 itself ("activation"); above 1 its HPA needs KEDA's
metrics adapter registered as an APIService that the API server reaches, which this
loopback-only setup has not got: so only burst → first replica is measured, not full scale.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.scale import SLEEPER, ReplicaWatch, percentile
from pipeq import queue
from pipeq.operator import builders
from pipeq.redis_server import RedisServer
from tests.support.cluster import ROOT, Cluster, free_port, wait_for
from tests.support.processnode import ProcessNode, make_pipeq_shim

NS = "bench"


def keda_module_dir() -> Path:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    out = subprocess.run([go, "list", "-m", "-json", "github.com/kedacore/keda/v2"], cwd=ROOT / "tools" / "keda",
                         capture_output=True, text=True, check=True).stdout
    return Path(json.loads(out)["Dir"])


def self_signed(cert_dir: Path) -> None:
    """The operator's gRPC metrics service loads tls.crt/tls.key/ca.crt from --cert-dir."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=keda",
                    "-keyout", str(cert_dir / "tls.key"), "-out", str(cert_dir / "tls.crt")], check=True, capture_output=True)
    shutil.copy(cert_dir / "tls.crt", cert_dir / "ca.crt")


def start_keda(bin_dir: Path, env: dict, work: Path) -> subprocess.Popen:
    cert_dir = work / "certs"
    self_signed(cert_dir)
    return subprocess.Popen(
        [str(bin_dir / "operator"), "--zap-log-level=info",
         f"--metrics-bind-address=127.0.0.1:{free_port()}", f"--health-probe-bind-address=127.0.0.1:{free_port()}",
         f"--metrics-service-bind-address=127.0.0.1:{free_port()}", f"--cert-dir={cert_dir}",
         "--enable-webhook-patching=false", "--enable-apiservice-patching=false", f"--ca-dir={cert_dir}"],
        env=dict(env, WATCH_NAMESPACE="", POD_NAMESPACE="keda", KEDA_CLUSTER_OBJECT_NAMESPACE="keda",
                 OPERATOR_NAME="keda-operator"),
        stdout=open(work / "keda.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)


def scaled_object(name: str, target: str, q: str, redis_addr: str, polling: int) -> dict:
    return {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"name": target}, "pollingInterval": polling, "cooldownPeriod": 1,
            "minReplicaCount": 0, "maxReplicaCount": 16,
            "triggers": [{"type": "redis", "metadata": {"address": redis_addr, "listName": f"rq:queue:{q}", "listLength": "1"}}],
        },
    }


def bursts(cluster, conn, redis_addr, work, polling: int, n: int, size: int) -> dict:
    name, q = f"keda-{polling}", f"keda-{uuid.uuid4().hex[:6]}"
    spec = {"queue": q, "image": "pipeq-worker:bench", "redis": {"url": f"redis://{redis_addr}/0"},
            "env": [{"name": "PIPEQ_PIPELINE", "value": str(work / "sleeper.sh")},
                    {"name": "PIPEQ_DATA_DIR", "value": str(work / "data")}]}
    dep = builders.worker_deployment(name, spec, replicas=0, default_redis_url=f"redis://{redis_addr}/0")
    cluster.apply(dep, namespace=NS)
    cluster.apply(scaled_object(name, dep["metadata"]["name"], q, redis_addr, polling), namespace=NS)
    watch = ReplicaWatch(cluster, NS, dep["metadata"]["name"])
    wait_for(lambda: watch.current() == 0, timeout=60, what=f"{name} at 0")
    first = []
    for i in range(n):
        # KEDA's scale back to 0 happens at one of its polls: a pause of a random share of the
        # interval puts the burst at a random phase of the next one
        time.sleep(random.uniform(0.5, 1.5) + random.uniform(0, polling))
        t0 = time.time()
        for _ in range(size):
            queue.enqueue_run(conn, q, uuid.uuid4().hex, {"reads": [], "reference": "r"}, meta={}, retries=0, ttl=60)
        t1 = watch.wait(lambda r: r > 0, since=t0, timeout=polling * 3 + 30)
        if t1 is None:
            raise SystemExit(f"{name} burst {i}: no replica (seen {watch.seen[-5:]}); see {work / 'keda.log'}")
        first.append(t1 - t0)
        conn.delete(f"rq:queue:{q}")
        wait_for(lambda: watch.current() == 0, timeout=polling * 3 + 60, interval=0.2, what=f"{name} back at 0")
    watch.close()
    cluster.kubectl("delete", "scaledobject", name, "-n", NS, "--timeout=60s", check=False)
    return {"pollingInterval": polling, "bursts": n, "first_p50": percentile(first, 50), "first_p95": percentile(first, 95),
            "first_max": max(first)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.keda", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bursts", type=int, default=5)
    ap.add_argument("--burst-size", type=int, default=4)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    bin_dir = Path(subprocess.run([str(ROOT / "tools" / "gobuild.sh"), "keda"], capture_output=True, text=True, check=True).stdout.strip())
    work = ROOT / ".cluster" / f"bench-keda-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "sleeper.sh").write_text(SLEEPER)
    (work / "sleeper.sh").chmod(0o755)
    cluster = Cluster(work / "cluster")
    node = keda = server = None
    results = []
    try:
        cluster.start()
        node = ProcessNode(cluster.kubeconfig, work / "node", path_prefix=[make_pipeq_shim(work / "shims")]).start()
        server = RedisServer(work / "redis").start()
        for crd in sorted((keda_module_dir() / "config" / "crd" / "bases").glob("*.yaml")):
            cluster.kubectl("apply", "--server-side", "-f", str(crd))
        cluster.kubectl("wait", "--for=condition=Established", "crd/scaledobjects.keda.sh", "--timeout=30s")
        cluster.kubectl("create", "namespace", NS)
        cluster.kubectl("create", "namespace", "keda")
        keda = start_keda(bin_dir, cluster.env(), work)
        conn = queue.connect(server.url)
        addr = server.url.split("//", 1)[1].split("/", 1)[0]
        for polling in (1, 30):
            results.append(bursts(cluster, conn, addr, work, polling, args.bursts, args.burst_size))
        conn.close()
    finally:
        if keda and keda.poll() is None:
            keda.terminate()
            try:
                keda.wait(timeout=20)
            except subprocess.TimeoutExpired:
                keda.kill()
        if node:
            node.stop()
        cluster.stop()
        if server:
            server.stop()
    print(f"{'KEDA pollingInterval':<22} {'bursts':>6}  burst → first replica p50 / p95 / max")
    for r in results:
        print(f"{r['pollingInterval']:<22} {r['bursts']:>6}  {r['first_p50']:.3f} s / {r['first_p95']:.3f} s / {r['first_max']:.3f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
