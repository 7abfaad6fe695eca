"""The process node: a TEST HARNESS that runs pods as local processes. It is NOT a kubelet.

It exists so that the cluster tests and the end-to-end tests can run pipeq's pods (``pipeq
worker``, ``pipeq api``, ``pipeq operator``) as real processes against the real control plane
of ``tests.support.cluster``, on a machine with no container runtime. What it does, and no
more:

- registers a Node (Ready, 127.0.0.1, label ``pipeq.dev/process-node=true``);
- binds every pending pod without a node to itself (there is no scheduler);
- runs each of its pods' FIRST container's ``command`` + ``args`` (``$(VAR)`` expanded) as
  a local process in its own process group, in a per-pod directory, with the node's
  environment plus: ``PATH`` prefixed with ``path_prefix`` (where the ``pipeq`` shim is),
  ``HOSTNAME`` = the pod's name, ``KUBECONFIG`` = the admin kubeconfig (pods reach the API
  with it: there are no service-account tokens on disk), ``envFrom`` (ConfigMaps and
  Secrets) and ``env`` (``value``; ``valueFrom`` fieldRef metadata.name/namespace/uid/
  labels/annotations, spec.nodeName/serviceAccountName, status.podIP/hostIP;
  secretKeyRef; configMapKeyRef). Images, volumes and volumeMounts, liveness/startup
  probes, resources, securityContext, init containers and the other containers are
  ignored (the other containers are reported as running, so a pod's Ready means "its first
  container's process runs, and passes its readiness probe"). A container with no
  ``command`` runs the ``entrypoint`` given to the node (default ``pipeq``: the entrypoint of
  pipeq's images, less the tini in front of it) with its ``args``; with no entrypoint set
  either, the pod fails with reason ``NoCommand``;
- networking is the machine's: podIP is 127.0.0.1, two pods listening on one port clash,
  and there is no kube-proxy or cluster DNS (Services and their Endpoints exist as objects,
  but nothing answers at a ClusterIP or a service name: point pods at 127.0.0.1:<port>);
- paths are the machine's: a pod that writes to its volumeMount path writes there on the
  host (give pods paths under a test's tmp dir through their env);
- ``kubectl logs``/``exec``/``port-forward`` need a kubelet and don't work: read a pod's
  output with ``ProcessNode.pod_log(namespace, name)``;
- reports the pod Running as soon as the process starts, and Ready at once, or, when the
  first container has a readinessProbe (httpGet, tcpSocket or exec; initialDelaySeconds,
  periodSeconds, timeoutSeconds, success/failureThreshold honoured), when the probe passes;
  output goes to ``<workdir>/logs/<namespace>_<pod>.log`` (see ``pod_log``);
- when the process exits: restartPolicy Always (and OnFailure on a non-zero exit) restarts
  it after 1, 2, 4 ... 30 s (reported as CrashLoopBackOff meanwhile, restartCount counts);
  otherwise the pod becomes Succeeded (exit 0) or Failed. Whatever the main process left in
  its process group is killed when it exits;
- when a pod gets a deletionTimestamp: SIGTERM to the process group, SIGKILL after the
  pod's grace period (deletionGracePeriodSeconds, else terminationGracePeriodSeconds, else
  30 s), then deletes the pod with grace 0 once the process is gone. No preStop hooks.

It watches pods with the ``kubernetes`` client in one thread and does everything else
(binding, processes, status) in a second thread, the only one that starts pod processes;
a readiness probe runs in a thread of its own per process.
Pod processes get the parent-death signal, so they die with the test process even on a
hard kill. ``stop()`` kills every process it started.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

SETPRIV = shutil.which("setpriv")
MERGE_PATCH = "application/merge-patch+json"
_VAR_RE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def make_pipeq_shim(directory: Path | str, python: str | None = None, root: Path | str | None = None) -> Path:
    """Write ``<directory>/pipeq``: runs ``<venv python> -m pipeq "$@"`` with PYTHONPATH at the
    checkout, so pod commands ``pipeq worker|api|operator`` work. Returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    python = python or sys.executable
    root = Path(root) if root else Path(__file__).resolve().parents[2]
    shim = directory / "pipeq"
    shim.write_text(
        "#!/bin/sh\n"
        "# test harness shim (tests/support/processnode.py): pipeq from the checkout and its venv\n"
        f'PYTHONPATH="{root}${{PYTHONPATH:+:$PYTHONPATH}}" exec "{python}" -m pipeq "$@"\n'
    )
    shim.chmod(0o755)
    return directory


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known vars are replaced, $$ is a literal $, unknown
    references stay as they are."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_RE.sub(sub, value)


class EnvError(Exception):
    """A referenced ConfigMap/Secret/key is missing (the kubelet's CreateContainerConfigError)."""


@dataclass
class _PodProc:
    uid: str
    namespace: str
    name: str
    popen: subprocess.Popen | None = None
    restarts: int = 0
    started_at: str = ""
    terminating: bool = False  # SIGTERM sent because of deletion
    kill_at: float = 0.0
    restart_at: float | None = None  # waiting to restart (crash loop back-off)
    retry_at: float | None = None  # waiting to retry a start (env not resolvable yet)
    done: bool = False  # terminal phase reported, never restarts
    last_exit: int | None = None  # exit code of the current run (None while it runs)
    prev_exit: int | None = None  # exit code of the previous run (for lastState)
    history: list[int] = field(default_factory=list)  # pids, for tests
    ready: bool = False  # what was last reported as the first container's readiness
    env: dict = field(default_factory=dict)  # the process's environment (for exec probes)
    cwd: str = ""  # and its working directory

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


class ProcessNode:
    """Runs the pods bound to one Node as local processes; see the module docstring."""

    def __init__(self, kubeconfig: Path | str, workdir: Path | str, name: str = "process-node",
                 path_prefix: list[Path | str] = (), env: dict[str, str] | None = None,
                 pod_kubeconfig: Path | str | None = None, entrypoint: list[str] | None = ["pipeq"]):
        self.kubeconfig = str(kubeconfig)
        self.entrypoint = list(entrypoint or [])
        self.workdir = Path(workdir).resolve()
        self.name = name
        self.path_prefix = [str(p) for p in path_prefix]
        self.extra_env = dict(env or {})
        self.pod_kubeconfig = str(pod_kubeconfig or kubeconfig)
        self._events: queue.Queue = queue.Queue()
        self._pods: dict[str, dict] = {}  # uid -> latest pod seen (worker thread only)
        self._procs: dict[str, _PodProc] = {}
        self._lock = threading.Lock()  # guards _procs for readers in other threads
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watch: watch.Watch | None = None
        self.errors: list[str] = []  # unexpected exceptions in the threads (tests may assert empty)

    # ---- public ------------------------------------------------------------------------
    def start(self) -> "ProcessNode":
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        (self.workdir / "pods").mkdir(parents=True, exist_ok=True)
        self._api = config.new_client_from_config(config_file=self.kubeconfig)
        self._core = client.CoreV1Api(self._api)
        self._register_node()
        watch_api = config.new_client_from_config(config_file=self.kubeconfig)
        for target, arg in ((self._watch_loop, watch_api), (self._work_loop, None)):
            t = threading.Thread(target=target, args=(arg,) if arg else (), daemon=True,
                                 name=f"processnode-{target.__name__}")
            t.start()
            self._threads.append(t)
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Stop watching and kill every pod process: SIGTERM, SIGKILL after ``grace`` seconds."""
        self._stop.set()
        self._close_watch()
        for t in self._threads:
            t.join(10)
        with self._lock:
            procs = list(self._procs.values())
        for pp in procs:
            if pp.alive():
                _killpg(pp.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for pp in procs:
            if pp.popen is None:
                continue
            try:
                pp.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _killpg(pp.popen.pid, signal.SIGKILL)
            try:
                pp.popen.wait(5)
            except subprocess.TimeoutExpired:
                pass
        try:
            self._api.close()
        except Exception:
            pass

    def _close_watch(self) -> None:
        # Unblock the watch thread now rather than at its timeout: an open watch would also
        # hold up the API server's graceful shutdown.
        w = self._watch
        if w is None:
            return
        w.stop()
        resp = getattr(w, "_resp", None)
        if resp is not None:
            for close in (getattr(resp, "shutdown", None), resp.close):
                try:
                    if close:
                        close()
                except Exception:
                    pass

    def processes(self) -> dict[tuple[str, str], int]:
        """{(namespace, pod name): pid} of the pod processes running now."""
        with self._lock:
            return {(p.namespace, p.name): p.popen.pid for p in self._procs.values() if p.alive()}

    def all_pids(self) -> list[int]:
        """Every pid this node ever started (for leak checks)."""
        with self._lock:
            return [pid for p in self._procs.values() for pid in p.history]

    def pod_log(self, namespace: str, name: str) -> str:
        """What the pod's process wrote (stdout and stderr, every restart)."""
        try:
            return self._log_path(namespace, name).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ---- node --------------------------------------------------------------------------
    def _register_node(self) -> None:
        labels = {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux",
                  "kubernetes.io/arch": "amd64", "pipeq.dev/process-node": "true"}
        node = client.V1Node(api_version="v1", kind="Node",
                             metadata=client.V1ObjectMeta(name=self.name, labels=labels))
        try:
            self._core.create_node(node)
        except ApiException as e:
            if e.status != 409:
                raise
        now = _now()
        cpus = str(os.cpu_count() or 1)
        mem = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 1024}Ki"
        res = {"cpu": cpus, "memory": mem, "pods": "110", "ephemeral-storage": "100Gi"}
        status = {"status": {
            "capacity": res, "allocatable": res,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": self.name}],
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "ProcessNodeReady",
                 "message": "pipeq test harness process node (not a kubelet)",
                 "lastHeartbeatTime": now, "lastTransitionTime": now},
                *({"type": t, "status": "False", "reason": "ProcessNode",
                   "lastHeartbeatTime": now, "lastTransitionTime": now}
                  for t in ("MemoryPressure", "DiskPressure", "PIDPressure")),
            ],
            "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": os.uname().release,
                         "osImage": "pipeq process node (test harness)", "containerRuntimeVersion": "process://",
                         "kubeletVersion": "v0.0.0-processnode", "kubeProxyVersion": "",
                         "operatingSystem": "linux", "architecture": "amd64"},
        }}
        self._core.patch_node_status(self.name, status, _content_type=MERGE_PATCH)

    # ---- watch thread ------------------------------------------------------------------
    def _watch_loop(self, api) -> None:
        core = client.CoreV1Api(api)
        known: set[str] = set()
        rv = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    resp = core.list_pod_for_all_namespaces(_preload_content=False, _request_timeout=30)
                    data = json.loads(resp.data)
                    rv = data["metadata"]["resourceVersion"]
                    seen = set()
                    for pod in data.get("items") or []:
                        seen.add(pod["metadata"]["uid"])
                        self._events.put(("MODIFIED", pod))
                    for uid in known - seen:
                        self._events.put(("DELETED", {"metadata": {"uid": uid}}))
                    known = seen
                w = self._watch = watch.Watch()
                if self._stop.is_set():
                    break
                for ev in w.stream(core.list_pod_for_all_namespaces, resource_version=rv,
                                   allow_watch_bookmarks=True, timeout_seconds=30,
                                   _request_timeout=60, deserialize=False):
                    if self._stop.is_set():
                        w.stop()
                        break
                    typ, obj = ev["type"], ev["object"]
                    if typ == "ERROR":
                        rv = None  # expired: list again
                        break
                    rv = obj["metadata"].get("resourceVersion", rv)
                    if typ == "BOOKMARK":
                        continue
                    uid = obj["metadata"]["uid"]
                    if typ == "DELETED":
                        known.discard(uid)
                    else:
                        known.add(uid)
                    self._events.put((typ, obj))
            except Exception as e:
                if self._stop.is_set():
                    break
                if not (isinstance(e, ApiException) and e.status == 410):
                    self._note(f"watch: {e!r}")
                rv = None
                self._stop.wait(0.5)
        try:
            api.close()
        except Exception:
            pass

    # ---- worker thread -----------------------------------------------------------------
    def _work_loop(self) -> None:
        while not self._stop.is_set():
            try:
                typ, pod = self._events.get(timeout=0.1)
            except queue.Empty:
                pass
            else:
                try:
                    self._handle(typ, pod)
                except Exception:
                    self._note(f"handling {typ} {pod.get('metadata', {}).get('name')}: {traceback.format_exc()}")
            try:
                self._tick()
            except Exception:
                self._note(f"tick: {traceback.format_exc()}")

    def _note(self, msg: str) -> None:
        self.errors.append(msg)
        try:
            with open(self.workdir / "logs" / "processnode.log", "a") as f:
                f.write(f"{_now()} {msg}\n")
        except OSError:
            pass

    def _handle(self, typ: str, pod: dict) -> None:
        if typ == "PROBE":  # from a prober thread: {"uid", "popen", "ready"}
            pp = self._procs.get(pod["uid"])
            current = self._pods.get(pod["uid"])
            if (pp and current and pp.popen is pod["popen"] and pp.alive() and not pp.terminating
                    and pp.ready != pod["ready"]):
                pp.ready = pod["ready"]
                self._report_running(pp, current)
            return
        uid = pod["metadata"]["uid"]
        if typ == "DELETED":
            self._pods.pop(uid, None)
            pp = self._procs.get(uid)
            if pp and pp.alive() and not pp.terminating:
                spec = pod.get("spec") or {}
                self._begin_termination(pp, spec.get("terminationGracePeriodSeconds", 30))
            return
        old = self._pods.get(uid)
        if old and int(old["metadata"].get("resourceVersion", 0)) > int(pod["metadata"].get("resourceVersion", 0)):
            return  # a relist raced a newer watch event
        self._pods[uid] = pod
        self._reconcile(uid)

    def _reconcile(self, uid: str) -> None:
        pod = self._pods.get(uid)
        if pod is None:
            return
        meta, spec = pod["metadata"], pod.get("spec") or {}
        ns, name = meta["namespace"], meta["name"]
        node = spec.get("nodeName")
        if not node:
            if not meta.get("deletionTimestamp"):
                self._bind(ns, name)
            return
        if node != self.name:
            return
        pp = self._procs.get(uid)
        if meta.get("deletionTimestamp"):
            if pp and pp.alive():
                if not pp.terminating:
                    grace = meta.get("deletionGracePeriodSeconds")
                    if grace is None:
                        grace = spec.get("terminationGracePeriodSeconds", 30)
                    self._begin_termination(pp, grace)
            else:
                self._delete_now(pod)
            return
        phase = (pod.get("status") or {}).get("phase")
        if pp is None:
            if phase in ("Succeeded", "Failed"):
                return
            pp = _PodProc(uid=uid, namespace=ns, name=name)
            with self._lock:
                self._procs[uid] = pp
            self._start(pp, pod)

    def _tick(self) -> None:
        now = time.monotonic()
        for uid, pp in list(self._procs.items()):
            if pp.popen is not None and pp.popen.poll() is not None and pp.last_exit is None:
                self._exited(pp)
            if pp.terminating and pp.alive() and now >= pp.kill_at:
                _killpg(pp.popen.pid, signal.SIGKILL)
            if pp.restart_at is not None and now >= pp.restart_at:
                pp.restart_at = None
                pod = self._pods.get(uid)
                if pod and not pod["metadata"].get("deletionTimestamp"):
                    self._start(pp, pod)
            if pp.retry_at is not None and now >= pp.retry_at:
                pp.retry_at = None
                pod = self._pods.get(uid)
                if pod and not pod["metadata"].get("deletionTimestamp"):
                    self._start(pp, pod)
            if uid not in self._pods and not pp.alive() and pp.last_exit is not None or (
                    uid not in self._pods and pp.popen is None):
                with self._lock:
                    self._procs.pop(uid, None)

    # ---- API calls ---------------------------------------------------------------------
    def _bind(self, ns: str, name: str) -> None:
        body = client.V1Binding(
            api_version="v1", kind="Binding", metadata=client.V1ObjectMeta(name=name),
            target=client.V1ObjectReference(api_version="v1", kind="Node", name=self.name))
        try:
            self._core.create_namespaced_pod_binding(name, ns, body, _preload_content=False)
        except ApiException as e:
            if e.status not in (404, 409):  # gone, or bound meanwhile
                raise

    def _delete_now(self, pod: dict) -> None:
        meta = pod["metadata"]
        body = client.V1DeleteOptions(grace_period_seconds=0,
                                      preconditions=client.V1Preconditions(uid=meta["uid"]))
        try:
            self._core.delete_namespaced_pod(meta["name"], meta["namespace"], body=body,
                                             _preload_content=False)
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    def _patch_status(self, pp: _PodProc, status: dict) -> None:
        try:
            self._core.patch_namespaced_pod_status(pp.name, pp.namespace, {"status": status},
                                                   _content_type=MERGE_PATCH, _preload_content=False)
        except ApiException as e:
            if e.status != 404:
                raise

    # ---- processes ---------------------------------------------------------------------
    def _log_path(self, ns: str, name: str) -> Path:
        return self.workdir / "logs" / f"{ns}_{name}.log"

    def _start(self, pp: _PodProc, pod: dict) -> None:
        spec = pod.get("spec") or {}
        containers = spec.get("containers") or [{}]
        c = containers[0]
        command = c.get("command") or self.entrypoint
        if not command:
            pp.done = True
            self._report_terminal(pp, pod, "Failed", None, "NoCommand",
                                  "the process node runs only containers with a command")
            return
        try:
            cenv = self._container_env(pod, c)
        except EnvError as e:
            pp.retry_at = time.monotonic() + 1.0
            self._report_waiting(pp, pod, "CreateContainerConfigError", str(e))
            return
        env = dict(os.environ)
        for k in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
            env.pop(k, None)  # in-cluster config needs a token file that isn't there
        env.update(self.extra_env)
        if self.path_prefix:
            env["PATH"] = os.pathsep.join(self.path_prefix + [env.get("PATH", os.defpath)])
        env["HOSTNAME"] = pp.name
        env["KUBECONFIG"] = self.pod_kubeconfig
        env.update(cenv)
        argv = [expand(a, cenv) for a in command + (c.get("args") or [])]
        cwd = c.get("workingDir")
        if not cwd or not os.path.isdir(cwd):
            cwd = self.workdir / "pods" / pp.namespace / pp.name
            cwd.mkdir(parents=True, exist_ok=True)
        prefix = [SETPRIV, "--pdeathsig", "KILL", "--"] if SETPRIV else []
        log = self._log_path(pp.namespace, pp.name)
        with open(log, "ab") as out:
            out.write(f"--- {_now()} start #{pp.restarts}: {argv}\n".encode())
            out.flush()
            try:
                if prefix and not shutil.which(argv[0], path=env["PATH"]) and "/" not in argv[0]:
                    raise FileNotFoundError(argv[0])
                popen = subprocess.Popen(prefix + argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as e:
                out.write(f"--- cannot start: {e}\n".encode())
                popen = None
        if pp.last_exit is not None:
            pp.prev_exit = pp.last_exit
        pp.last_exit = None
        if popen is None:
            pp.popen = _Exited(127)
            return  # _tick reports it as an exit with code 127
        pp.popen = popen
        pp.env, pp.cwd = env, str(cwd)
        pp.history.append(popen.pid)
        pp.started_at = _now()
        probe = c.get("readinessProbe")
        pp.ready = not probe
        self._report_running(pp, pod)
        if probe:
            threading.Thread(target=self._probe_loop, args=(pp, popen, c, probe), daemon=True,
                             name=f"probe-{pp.namespace}/{pp.name}").start()

    def _begin_termination(self, pp: _PodProc, grace) -> None:
        pp.terminating = True
        pp.restart_at = None
        pp.kill_at = time.monotonic() + max(0, int(grace or 0))
        self._log_line(pp, f"SIGTERM (grace {grace}s)")
        _killpg(pp.popen.pid, signal.SIGTERM)

    def _exited(self, pp: _PodProc) -> None:
        code = pp.popen.returncode
        if code < 0:
            code = 128 - code  # killed by signal N: 128+N, as a container runtime reports it
        pp.last_exit = code
        if not isinstance(pp.popen, _Exited):
            _killpg(pp.popen.pid, signal.SIGKILL)  # what the main process left behind
        self._log_line(pp, f"exited {code}")
        pod = self._pods.get(pp.uid)
        if pp.terminating or pod is None or pod["metadata"].get("deletionTimestamp"):
            pp.done = True
            if pod is not None:
                self._delete_now(pod)
            return
        policy = (pod.get("spec") or {}).get("restartPolicy", "Always")
        if policy == "Always" or (policy == "OnFailure" and code != 0):
            delay = min(30.0, 2.0 ** pp.restarts)
            pp.restarts += 1
            pp.restart_at = time.monotonic() + delay
            self._report_waiting(pp, pod, "CrashLoopBackOff",
                                 f"back-off {delay:.0f}s restarting the process (exit {code})", code)
            return
        pp.done = True
        self._report_terminal(pp, pod, "Succeeded" if code == 0 else "Failed", code,
                              "Completed" if code == 0 else "Error", "")

    def _log_line(self, pp: _PodProc, msg: str) -> None:
        try:
            with open(self._log_path(pp.namespace, pp.name), "a") as f:
                f.write(f"--- {_now()} {msg}\n")
        except OSError:
            pass

    # ---- env ---------------------------------------------------------------------------
    def _container_env(self, pod: dict, c: dict) -> dict[str, str]:
        ns = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for src in c.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                ref = src["configMapRef"]
                data = self._read_ref("configmap", ns, ref["name"], ref.get("optional", False))
            elif "secretRef" in src:
                ref = src["secretRef"]
                data = self._read_ref("secret", ns, ref["name"], ref.get("optional", False))
            else:
                continue
            for k, v in (data or {}).items():
                env[prefix + k] = v
        for e in c.get("env") or []:
            name = e["name"]
            if "valueFrom" not in e:
                env[name] = expand(e.get("value", ""), env)
                continue
            vf = e["valueFrom"]
            if "fieldRef" in vf:
                value = _field(pod, vf["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
                kind = "secret" if "secretKeyRef" in vf else "configmap"
                ref = vf["secretKeyRef"] if kind == "secret" else vf["configMapKeyRef"]
                optional = ref.get("optional", False)
                data = self._read_ref(kind, ns, ref["name"], optional)
                if data is None or ref["key"] not in data:
                    if optional:
                        continue
                    raise EnvError(f"{kind} {ns}/{ref['name']} has no key {ref['key']!r}")
                value = data[ref["key"]]
            else:
                continue  # resourceFieldRef: not supported, left unset
            if value is not None:
                env[name] = value
        return env

    def _read_ref(self, kind: str, ns: str, name: str, optional: bool) -> dict[str, str] | None:
        try:
            if kind == "secret":
                resp = self._core.read_namespaced_secret(name, ns, _preload_content=False)
                obj = json.loads(resp.data)
                import base64

                data = {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()}
                data.update(obj.get("stringData") or {})
                return data
            resp = self._core.read_namespaced_config_map(name, ns, _preload_content=False)
            return dict(json.loads(resp.data).get("data") or {})
        except ApiException as e:
            if e.status == 404:
                if optional:
                    return None
                raise EnvError(f"{kind} {ns}/{name} not found") from None
            raise

    # ---- status ------------------------------------------------------------------------
    def _conditions(self, ready: bool, reason: str = "") -> list[dict]:
        now = _now()
        r = "True" if ready else "False"
        extra = {} if ready else {"reason": reason or "ContainersNotReady"}
        return [
            {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": r, "lastTransitionTime": now, **extra},
            {"type": "ContainersReady", "status": r, "lastTransitionTime": now, **extra},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
        ]

    def _container_statuses(self, pp: _PodProc, pod: dict, first_state: dict, ready: bool,
                            last_state: dict | None = None) -> list[dict]:
        out = []
        for i, c in enumerate((pod.get("spec") or {}).get("containers") or []):
            st = {"name": c["name"], "image": c.get("image", ""), "imageID": "",
                  "containerID": f"process://{pp.popen.pid}" if pp.popen and not isinstance(pp.popen, _Exited) else "",
                  "restartCount": pp.restarts if i == 0 else 0,
                  "ready": ready, "started": "running" in first_state,
                  "state": first_state if i == 0 else {"running": {"startedAt": pp.started_at or _now()}}}
            if i == 0 and last_state:
                st["lastState"] = last_state
            out.append(st)
        return out

    def _base_status(self, pod: dict) -> dict:
        status = pod.get("status") or {}
        return {"hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
                "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
                "startTime": status.get("startTime") or _now()}

    def _report_running(self, pp: _PodProc, pod: dict) -> None:
        last = None
        if pp.restarts and pp.prev_exit is not None:
            last = {"terminated": {"exitCode": pp.prev_exit, "reason": "Error" if pp.prev_exit else "Completed"}}
        self._patch_status(pp, {
            **self._base_status(pod), "phase": "Running", "reason": None, "message": None,
            "conditions": self._conditions(pp.ready),
            "containerStatuses": self._container_statuses(
                pp, pod, {"running": {"startedAt": pp.started_at}}, pp.ready, last),
        })

    # ---- readiness probes (one thread per running process that has one) -----------------
    def _probe_loop(self, pp: _PodProc, popen: subprocess.Popen, c: dict, probe: dict) -> None:
        period = max(1, int(probe.get("periodSeconds", 10)))
        timeout = max(1, int(probe.get("timeoutSeconds", 1)))
        need_ok = max(1, int(probe.get("successThreshold", 1)))
        need_fail = max(1, int(probe.get("failureThreshold", 3)))
        ready, oks, fails = False, 0, 0
        if self._stop.wait(int(probe.get("initialDelaySeconds", 0))):
            return
        while not self._stop.is_set() and pp.popen is popen and popen.poll() is None:
            try:
                ok = self._probe_once(pp, c, probe, timeout)
            except Exception:
                ok = False
            oks, fails = (oks + 1, 0) if ok else (0, fails + 1)
            if not ready and oks >= need_ok or ready and fails >= need_fail:
                ready = not ready
                self._events.put(("PROBE", {"uid": pp.uid, "popen": popen, "ready": ready}))
            if self._stop.wait(period):
                return

    def _probe_once(self, pp: _PodProc, c: dict, probe: dict, timeout: int) -> bool:
        def port(p) -> int:
            if isinstance(p, int) or str(p).isdigit():
                return int(p)
            for cp in c.get("ports") or []:
                if cp.get("name") == p:
                    return int(cp["containerPort"])
            raise ValueError(f"no container port named {p!r}")

        if "httpGet" in probe:
            import http.client
            import ssl

            h = probe["httpGet"]
            host = h.get("host") or "127.0.0.1"
            if h.get("scheme", "HTTP").upper() == "HTTPS":
                conn = http.client.HTTPSConnection(host, port(h["port"]), timeout=timeout,
                                                   context=ssl._create_unverified_context())
            else:
                conn = http.client.HTTPConnection(host, port(h["port"]), timeout=timeout)
            try:
                conn.request("GET", h.get("path") or "/",
                             headers={x["name"]: x["value"] for x in h.get("httpHeaders") or []})
                return 200 <= conn.getresponse().status < 400
            finally:
                conn.close()
        if "tcpSocket" in probe:
            import socket

            t = probe["tcpSocket"]
            with socket.create_connection((t.get("host") or "127.0.0.1", port(t["port"])), timeout=timeout):
                return True
        if "exec" in probe:
            r = subprocess.run(probe["exec"].get("command") or ["false"], env=pp.env, cwd=pp.cwd or None,
                               timeout=timeout,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return r.returncode == 0
        return True  # grpc: not supported, counts as ready

    def _report_waiting(self, pp: _PodProc, pod: dict, reason: str, message: str,
                        exit_code: int | None = None) -> None:
        last = {"terminated": {"exitCode": exit_code, "reason": "Error" if exit_code else "Completed",
                               "finishedAt": _now()}} if exit_code is not None else None
        phase = "Running" if pp.restarts else "Pending"
        self._patch_status(pp, {
            **self._base_status(pod), "phase": phase,
            "conditions": self._conditions(False),
            "containerStatuses": self._container_statuses(
                pp, pod, {"waiting": {"reason": reason, "message": message}}, False, last),
        })

    def _report_terminal(self, pp: _PodProc, pod: dict, phase: str, code: int | None,
                         reason: str, message: str) -> None:
        term = {"terminated": {"exitCode": code if code is not None else 1, "reason": reason,
                               "message": message, "finishedAt": _now(),
                               "startedAt": pp.started_at or _now()}}
        status = {**self._base_status(pod), "phase": phase, "conditions": self._conditions(False, "PodCompleted"),
                  "containerStatuses": self._container_statuses(pp, pod, term, False)}
        if reason == "NoCommand":
            status.update(reason="NoCommand", message=message)
        self._patch_status(pp, status)


class _Exited:
    """Stands in for a Popen whose exec failed (command not found): exit code 127."""

    pid = -1

    def __init__(self, code: int):
        self.returncode = code

    def poll(self):
        return self.returncode


def _field(pod: dict, path: str) -> str | None:
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    return {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
    }.get(path)


def _killpg(pid: int, sig: int) -> None:
    if pid <= 0:
        return
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
