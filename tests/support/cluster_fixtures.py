"""Fixtures of the cluster tests: a real control plane and a process node, once per session
(a pytest plugin, loaded by tests/conftest.py).

    @pytest.mark.cluster
    def test_something(cluster, namespace):
        cluster.apply({...manifest dict...}, namespace=namespace)   # or a YAML string / Path
        cluster.kubectl("get", "pods", "-n", namespace)             # CompletedProcess, text
        cluster.helm("install", "x", "helm/pipeq", "-n", namespace, "--wait")
        cluster.get_json("deployment", "x", "-n", namespace)        # parsed kubectl get -o json
        cluster.node.processes()                                     # {(ns, pod): pid}
        cluster.node.pod_log(namespace, "pod-name")                  # a pod process's output
        wait_for(lambda: ..., timeout=30, what="...")                # from tests.support.cluster

``cluster`` is a ``tests.support.cluster.Cluster``: ``.kubeconfig`` (admin, system:masters),
``.server``, ``.env()`` (os.environ + KUBECONFIG, for subprocesses), ``.api_client()``
(kubernetes Python client), ``.node`` (the ``ProcessNode``). Pod commands find ``pipeq`` on
PATH (a shim running this venv's python with the checkout on PYTHONPATH).

The binaries come from ``make tools``; when they are missing, collecting a test that uses
this fixture builds them first (a cold build takes about 10 minutes on 2 cores). Each
session gets its own work directory, ``.cluster/pytest-<pid>/`` (kubeconfig, certs, logs,
the pods' output), so parallel sessions in one checkout
don't collide; it is removed at the end unless PIPEQ_KEEP_CLUSTER_LOGS=1.

The control plane starts in the background at the session's start (under load it takes a
minute or more) in the one process that runs the tests which use it: the session, or under
pytest-xdist the worker that the ``cluster`` group is given to (tests/support/parallel.py).
Anywhere else it starts when a test first asks for it.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import uuid
from pathlib import Path

import pytest

from tests.support import parallel
from tests.support.cluster import ROOT, Cluster, ClusterError, port_open, tools_bin_dir
from tests.support.processnode import ProcessNode, make_pipeq_shim

#: the control plane being started in the background, and how that went
_early: dict = {"thread": None, "cluster": None, "node": None, "error": None, "used": False}
_ready = threading.Event()
#: set once the control plane is stopped: the thread that started it may end (its processes
#: run under ``setpriv --pdeathsig KILL``, and the parent whose death kills them is that thread)
_released = threading.Event()


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "cluster: runs against the real Kubernetes control plane of tests/support/cluster.py "
        "(etcd, kube-apiserver, kube-controller-manager, process node); built by `make tools`",
    )


def pytest_collection_modifyitems(session, config, items):
    """Build the control plane's binaries, when missing, before any test starts: a cold
    build (~10 min) inside the fixture would run into pytest's per-test timeout."""
    if not any("cluster" in getattr(i, "fixturenames", ()) or i.get_closest_marker("cluster") for i in items):
        return
    try:
        tools_bin_dir(build=False)
    except ClusterError:
        print("\npipeq: building the test control plane (tools/build.sh, once, ~10 min)...",
              file=sys.stderr, flush=True)
        try:
            tools_bin_dir(build=True)
        except ClusterError as e:  # the cluster fixture reports it on each test
            print(f"pipeq: {e}", file=sys.stderr, flush=True)


def _uses_cluster(item) -> bool:
    return "cluster" in getattr(item, "fixturenames", ()) or item.get_closest_marker("cluster") is not None


def pytest_collection_finish(session):
    """Start the control plane in the background when this process runs the cluster group."""
    if session.config.option.collectonly or not parallel.runs_group(session.config, parallel.CLUSTER):
        return
    if not any(_uses_cluster(i) and parallel.group_of(i.nodeid) == parallel.CLUSTER for i in session.items):
        return
    _early["thread"] = threading.Thread(target=_start_early, name="control-plane-up", daemon=True)
    _early["thread"].start()


def _start_early() -> None:
    try:
        _early["cluster"], _early["node"] = _start()
    except Exception as e:  # noqa: BLE001  (raised again by the fixture)
        _early["error"] = e
        return
    finally:
        _ready.set()
    _released.wait()


def pytest_sessionfinish(session, exitstatus):
    """Stop a control plane started early that no test used (the session ended first)."""
    if _early["thread"] is None or _early["used"]:
        return
    _ready.wait()
    if _early["cluster"] is not None:
        _early["node"].stop()
        _early["cluster"].stop()
        shutil.rmtree(_workdir(), ignore_errors=True)
    _released.set()


def _workdir() -> Path:
    return ROOT / ".cluster" / f"pytest-{os.getpid()}"


def _start() -> tuple[Cluster, ProcessNode]:
    """A started control plane with a process node (stopped again if the node fails)."""
    workdir = _workdir()
    shutil.rmtree(workdir, ignore_errors=True)
    c = Cluster(workdir)
    c.start()
    try:
        shims = make_pipeq_shim(workdir / "shims")
        node = ProcessNode(c.kubeconfig, workdir / "node", path_prefix=[shims]).start()
    except BaseException:
        c.stop()
        raise
    c.node = node
    return c, node


@pytest.fixture(scope="session")
def cluster():
    """A started control plane with a process node; stopped (and checked) at session end."""
    if _early["thread"] is not None:
        _early["used"] = True
        _ready.wait()
        if _early["error"] is not None:
            raise _early["error"]
        c, node = _early["cluster"], _early["node"]
    else:
        c, node = _start()
    workdir = _workdir()
    try:
        yield c
    finally:
        node.stop()
        ports = dict(c.ports)
        c.stop()
        leftover = [pid for pid in node.all_pids() if _exists(pid)]
        if not os.environ.get("PIPEQ_KEEP_CLUSTER_LOGS"):
            shutil.rmtree(workdir, ignore_errors=True)
        _released.set()
        assert not leftover, f"pod processes left running after stop: {leftover}"
        assert not [p for p in ports.values() if port_open(p)], f"ports still open: {ports}"


@pytest.fixture
def namespace(cluster):
    """A fresh namespace for one test, deleted afterwards (without waiting)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _exists(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False
