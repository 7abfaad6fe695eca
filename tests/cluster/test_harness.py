"""Tests of the test harness itself: the real control plane and the process node.

What Kubernetes itself does with pods (which pod a scale-down deletes, by its deletion cost;
SIGTERM, then SIGKILL at the end of the grace period) is not claimed of the process node:
what pipeq relies on of it is shown on a real kubelet by the kind suite (tests/kind: a
scale-down under load removes only idle pods; a force-deleted busy pod's job runs again).
The process node keeps what the operator's tests need of a node."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.cluster import Cluster, kubectl_path, port_open, wait_for
from tests.support.processnode import ProcessNode, make_pipeq_shim

pytestmark = pytest.mark.cluster
CHART = Path(__file__).parent / "testchart"


def sleep_deployment(name: str, replicas: int, **template_labels: str) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": replicas, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": {**labels, **template_labels}}, "spec": {
                "terminationGracePeriodSeconds": 3,
                "containers": [{"name": "sleep", "image": "busybox", "command": ["sleep"], "args": ["3600"]}],
            }},
        },
    }


def live_pods(cluster: Cluster, ns: str, app: str) -> list[dict]:
    """Pods of the app that are not being deleted."""
    items = cluster.get_json("pods", "-n", ns, "-l", f"app={app}")["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def node_procs(cluster: Cluster, ns: str) -> dict[str, int]:
    return {name: pid for (n, name), pid in cluster.node.processes().items() if n == ns}


def proc_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().split("=", 1) for e in raw if b"=" in e)


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]
    except FileNotFoundError:
        return True
    return state == "Z"


def test_deployment_scales_0_3_1_and_processes_follow(cluster, namespace):
    cluster.apply(sleep_deployment("sleepy", 0), namespace=namespace)
    wait_for(lambda: (d := cluster.get_json("deployment", "sleepy", "-n", namespace)).get("status", {}).get("observedGeneration")
             == d["metadata"]["generation"], timeout=30, what="the Deployment controller to see the Deployment")
    assert live_pods(cluster, namespace, "sleepy") == []
    assert node_procs(cluster, namespace) == {}

    cluster.kubectl("scale", "deployment/sleepy", "--replicas=3", "-n", namespace)
    wait_for(lambda: len([p for p in live_pods(cluster, namespace, "sleepy") if ready(p)]) == 3,
             timeout=30, what="3 ready pods")
    procs = wait_for(lambda: (lambda d: d if len(d) == 3 else None)(node_procs(cluster, namespace)),
                     timeout=10, what="3 processes")
    pods = {p["metadata"]["name"]: p for p in live_pods(cluster, namespace, "sleepy")}
    assert set(procs) == set(pods)
    for name, pid in procs.items():
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", b"3600"]
        assert proc_env(pid)["HOSTNAME"] == name
        status = pods[name]["status"]
        assert status["phase"] == "Running" and status["podIP"] == "127.0.0.1"
        assert status["containerStatuses"][0]["state"]["running"]
        assert pods[name]["spec"]["nodeName"] == cluster.node.name
    rollout = cluster.kubectl("rollout", "status", "deployment/sleepy", "-n", namespace, "--timeout=30s")
    assert "successfully rolled out" in rollout.stdout

    cluster.kubectl("scale", "deployment/sleepy", "--replicas=1", "-n", namespace)
    wait_for(lambda: len(cluster.get_json("pods", "-n", namespace, "-l", "app=sleepy")["items"]) == 1,
             timeout=30, what="scale-down to 1 pod (pods deleted, not just terminating)")
    left = node_procs(cluster, namespace)
    assert len(left) == 1 and set(left) <= set(procs)
    for name, pid in procs.items():
        if name not in left:
            wait_for(lambda: gone(pid), timeout=5, what=f"process {pid} of {name} to end")
    assert not gone(next(iter(left.values())))


def test_helm_install_and_kubectl_get(cluster, namespace):
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.36."), version
    assert version["serverVersion"]["minor"] == "36"
    assert "v3." in cluster.helm("version", "--short").stdout

    out = cluster.helm("install", "demo", str(CHART), "-n", namespace, "--wait", "--timeout", "60s")
    assert "STATUS: deployed" in out.stdout
    releases = json.loads(cluster.helm("list", "-n", namespace, "-o", "json").stdout)
    assert [(r["name"], r["status"]) for r in releases] == [("demo", "deployed")]

    cm = cluster.get_json("configmap", "demo-config", "-n", namespace)
    assert cm["data"]["message"] == "hello from the test chart"
    assert cm["data"]["kubeVersion"].startswith("v1.36.")
    # kubectl on its own, with nothing but the kubeconfig
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    got = subprocess.run([kubectl_path(), "--kubeconfig", str(cluster.kubeconfig), "get", "deployment",
                          "demo-sleeper", "-n", namespace, "-o", "jsonpath={.status.readyReplicas}"],
                         capture_output=True, text=True, env=env, timeout=30)
    assert got.returncode == 0, got.stderr
    assert got.stdout == "1"
    (pid,) = [pid for (ns, _), pid in cluster.node.processes().items() if ns == namespace]
    assert proc_env(pid)["MESSAGE"] == "hello from the test chart"

    cluster.helm("uninstall", "demo", "-n", namespace, "--wait", "--timeout", "60s")
    wait_for(lambda: not cluster.get_json("pods", "-n", namespace)["items"], timeout=30,
             what="the chart's pod to be deleted")
    assert gone(pid)


def test_pod_env_commands_and_exit_phases(cluster, namespace):
    cluster.kubectl("create", "configmap", "cfg", "--from-literal=color=blue", "-n", namespace)
    cluster.kubectl("create", "secret", "generic", "sec", "--from-literal=token=s3cret", "-n", namespace)
    script = 'echo "host=$HOSTNAME ns=$POD_NS color=$COLOR token=$TOKEN plain=$PLAIN"; command -v pipeq; exit 3'
    cluster.apply({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "once"},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": "x", "command": ["sh", "-c"], "args": [script],
            "env": [
                {"name": "PLAIN", "value": "p-$(POD_NS)"},
                {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "color"}}},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}},
            ],
        }]},
    }, namespace=namespace)
    pod = wait_for(lambda: (lambda p: p if p["status"].get("phase") == "Failed" else None)(
        cluster.get_json("pod", "once", "-n", namespace)), timeout=20, what="pod Failed")
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    log = cluster.node.pod_log(namespace, "once")
    # PLAIN is defined before POD_NS, so $(POD_NS) stays unexpanded, as in Kubernetes
    assert f"host=once ns={namespace} color=blue token=s3cret plain=p-$(POD_NS)" in log
    assert "/shims/pipeq" in log

    # the shim runs pipeq from this checkout and venv
    cluster.apply({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pipeq-help"},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": "x", "command": ["pipeq", "--help"]}]},
    }, namespace=namespace)
    wait_for(lambda: cluster.get_json("pod", "pipeq-help", "-n", namespace)["status"].get("phase") == "Succeeded",
             timeout=30, what="pipeq --help to succeed")
    assert "worker" in cluster.node.pod_log(namespace, "pipeq-help")


def test_stopping_leaves_no_process_port_or_data_behind(tmp_path):
    """A second, short-lived cluster: start, run a pod that forks, stop; nothing remains."""
    c = Cluster(tmp_path / "c")
    c.start()
    node = None
    try:
        node = ProcessNode(c.kubeconfig, tmp_path / "node", name="leakcheck",
                           path_prefix=[make_pipeq_shim(tmp_path / "shims")]).start()
        c.apply({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "forker"},
            "spec": {"containers": [{"name": "main", "image": "x", "command": [
                "sh", "-c", "sleep 987654 & exec sleep 987653"]}]},
        }, namespace="default")
        wait_for(lambda: ("default", "forker") in node.processes(), timeout=30, what="the pod's process")
        wait_for(lambda: _marked(), timeout=5, what="the pod's background child")
        pids = c.pids() + node.all_pids()
        ports = dict(c.ports)
        data_dir = c.data_dir
        assert data_dir.exists()
    finally:
        if node:
            node.stop()
        c.stop()
    assert [p for p in pids if not gone(p)] == []
    assert [n for n, p in ports.items() if port_open(p)] == []
    assert not data_dir.exists()
    assert not c.kubeconfig.exists()
    assert _marked() == [], "the pod's forked child outlived the stop"
    strays = [pid for pid in _all_pids() if str(tmp_path) in _cmdline(pid)]
    assert strays == []


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _marked() -> list[int]:
    return [pid for pid in _all_pids() if _cmdline(pid).strip() == "sleep 987654" and not gone(pid)]


def bare_pod(name: str, script: str, restart: str = "Always", grace: int = 30) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": grace,
                     "containers": [{"name": "main", "image": "x", "command": ["sh", "-c", script]}]}}


def test_restart_policy_always_restarts_a_crashing_process(cluster, namespace):
    cluster.apply(bare_pod("crashy", "echo RUN-MARK; exit 2"), namespace=namespace)

    def restarted():
        st = cluster.get_json("pod", "crashy", "-n", namespace)["status"]
        cs = (st.get("containerStatuses") or [{}])[0]
        return cs if cs.get("restartCount", 0) >= 2 else None

    cs = wait_for(restarted, timeout=20, what="two restarts")
    assert cs["lastState"]["terminated"]["exitCode"] == 2
    assert cluster.node.pod_log(namespace, "crashy").splitlines().count("RUN-MARK") >= 2


def test_readiness_probe_gates_ready(cluster, namespace):
    from tests.support.cluster import free_port

    port = free_port()
    pod = bare_pod("web", f"sleep 1.5; exec python3 -m http.server {port} --bind 127.0.0.1")
    pod["spec"]["containers"][0]["ports"] = [{"name": "http", "containerPort": port}]
    pod["spec"]["containers"][0]["readinessProbe"] = {
        "httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}
    cluster.apply(pod, namespace=namespace)
    first = wait_for(lambda: (lambda p: p if p["status"].get("phase") == "Running" else None)(
        cluster.get_json("pod", "web", "-n", namespace)), timeout=20, what="Running")
    assert not ready(first), "Ready before the probe passed"
    assert first["status"]["containerStatuses"][0]["started"] is True
    wait_for(lambda: ready(cluster.get_json("pod", "web", "-n", namespace)), timeout=20,
             what="Ready once the server answers")
