"""Tests of the test harness itself: the real control plane and the process node."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.cluster import Cluster, kubectl_path, port_open, wait_for
from tests.support.processnode import ProcessNode, make_pipeq_shim

pytestmark = pytest.mark.cluster
CHART = Path(__file__).parent / "testchart"
COST = "controller.kubernetes.io/pod-deletion-cost"


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


def test_scale_down_deletes_lowest_pod_deletion_cost_first(cluster, namespace):
    cluster.apply(sleep_deployment("costly", 3, marked="yes"), namespace=namespace)
    pods = wait_for(lambda: (lambda ps: ps if len(ps) == 3 and all(map(ready, ps)) else None)(
        live_pods(cluster, namespace, "costly")), timeout=30, what="3 ready pods")
    names = sorted(p["metadata"]["name"] for p in pods)
    costs = {names[0]: "100", names[1]: "-5", names[2]: "7"}  # not in name order on purpose
    for name, cost in costs.items():
        cluster.kubectl("annotate", "pod", name, f"{COST}={cost}", "-n", namespace)
    # The ReplicaSet controller must have seen the annotations before the scale-down. Its pod
    # informer takes pod changes in order: once it counts a change made after them (a pod
    # that lost a template label is no longer "fully labeled"), it has them too.
    cluster.kubectl("label", "pod", names[1], "marked-", "-n", namespace)
    wait_for(lambda: cluster.get_json("replicasets", "-n", namespace, "-l", "app=costly")["items"][0]
             ["status"].get("fullyLabeledReplicas") == 2, timeout=30, what="the ReplicaSet controller to see the pods' changes")

    def remaining() -> set[str]:
        return {p["metadata"]["name"] for p in live_pods(cluster, namespace, "costly")}

    cluster.kubectl("scale", "deployment/costly", "--replicas=2", "-n", namespace)
    wait_for(lambda: len(remaining()) == 2, timeout=30, what="scale-down to 2")
    assert remaining() == {names[0], names[2]}, "the pod with cost -5 goes first"
    cluster.kubectl("scale", "deployment/costly", "--replicas=1", "-n", namespace)
    wait_for(lambda: len(remaining()) == 1, timeout=30, what="scale-down to 1")
    assert remaining() == {names[0]}, "the pod with cost 100 stays"
    wait_for(lambda: set(node_procs(cluster, namespace)) == {names[0]}, timeout=10,
             what="only the cost-100 pod's process left")


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


def test_pod_deletion_sigterm_grace_then_sigkill(cluster, namespace):
    # one pod finishes its work on SIGTERM within the grace period, one ignores SIGTERM
    polite = 'trap "echo got TERM; sleep 1; echo done; exit 0" TERM; echo trapped; while :; do sleep 0.1; done'
    stubborn = 'trap "echo ignoring TERM" TERM; echo trapped; while :; do sleep 0.1; done'
    cluster.apply([bare_pod("polite", polite, grace=10), bare_pod("stubborn", stubborn, grace=2)],
                  namespace=namespace)
    for pod in ("polite", "stubborn"):
        wait_for(lambda: "trapped" in cluster.node.pod_log(namespace, pod).splitlines(), timeout=20,
                 what=f"{pod}'s shell to set its trap")
    t0 = time.monotonic()
    cluster.kubectl("delete", "pod", "polite", "stubborn", "-n", namespace, "--wait=false")
    wait_for(lambda: not cluster.get_json("pods", "-n", namespace)["items"], timeout=20,
             what="both pods removed after their processes ended")
    took = time.monotonic() - t0
    assert 2 <= took < 10, took  # stubborn: killed at its 2 s grace, not polite's 10 s
    # (the log's "--- " lines are the node's own notes: start, SIGTERM, exit code)
    polite_log = cluster.node.pod_log(namespace, "polite").splitlines()
    own = [line for line in polite_log if not line.startswith("--- ")]
    assert own[-2:] == ["got TERM", "done"] and polite_log[-1].endswith("exited 0")
    stubborn_log = cluster.node.pod_log(namespace, "stubborn").splitlines()
    assert "ignoring TERM" in stubborn_log and stubborn_log[-1].endswith("exited 137")  # SIGKILL


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
