"""End to end on the test control plane: `helm install` the chart into a restricted
namespace, its API, operator and worker pods run as real processes on the process node,
a real pipeline run is submitted over REST, and the pool scales up and back down."""

from __future__ import annotations

import base64

import pytest

from tests.e2e.body import run_end_to_end
from tests.support import chart
from tests.support.cluster import free_port, wait_for

pytestmark = pytest.mark.cluster


def test_helm_install_run_scale_and_uninstall(cluster, namespace, redis_server, tmp_path):
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    api_port = free_port()
    release = "pipeq"
    sets = [
        # no DNS or Service routing on the process node: everything meets on 127.0.0.1
        "redis.enabled=false", f"redis.external.url={redis_server.url}",
        f"queue=e2e-{namespace}", f"api.port={api_port}", f"data.mountPath={tmp_path / 'data'}",
        f"operator.livenessPort={free_port()}", f"operator.metricsPort={free_port()}",
        "workerPool.scaleDownDelaySeconds=3", "workerPool.pollIntervalSeconds=1",
    ]
    cluster.helm("install", release, str(chart.CHART), "-n", namespace, *[a for s in sets for a in ("--set", s)])
    try:
        # api.auth is on by default: the token the chart generated, from its Secret
        token = cluster.kubectl("get", "secret", f"{release}-api-token", "-n", namespace, "-o",
                                "jsonpath={.data.token}").stdout
        seen = run_end_to_end(
            f"http://127.0.0.1:{api_port}",
            lambda *a: cluster.kubectl(*a).stdout,
            namespace, "default", tmp_path / "sim", scale_down_timeout=90, ready_timeout=30,
            headers={"Authorization": f"Bearer {base64.b64decode(token).decode()}"},
        )
        print("\n" + seen["table"])
    except BaseException:
        print(cluster.kubectl("get", "all,events", "-n", namespace, check=False).stdout[-6000:])
        for (ns, pod) in cluster.node.processes():
            if ns == namespace:
                print(f"--- {pod}\n{cluster.node.pod_log(ns, pod)[-3000:]}")
        raise
    r = cluster.helm("uninstall", release, "-n", namespace, "--wait", "--timeout=60s", check=False)
    assert r.returncode == 0, r.stderr + cluster.kubectl("get", "all,workerpools,pvc", "-n", namespace, "-o",
        "custom-columns=KIND:.kind,NAME:.metadata.name,DELETING:.metadata.deletionTimestamp,FINALIZERS:.metadata.finalizers", check=False).stdout
    wait_for(lambda: not [k for k in cluster.node.processes() if k[0] == namespace], timeout=60, what="every pod process to end")

    def left():  # the namespace's own default ServiceAccount is not ours; the data PVC and the API token are kept on purpose
        names = cluster.kubectl("get", "deployments,pods,workerpools,sa,roles,rolebindings,secrets,pvc", "-n", namespace, "-o", "name").stdout.split()
        return [n for n in names if n not in ("serviceaccount/default", f"secret/{release}-api-token") and not n.endswith("-data")]

    wait_for(lambda: left() == [], timeout=60, what=f"nothing of the release left (still {left()})")
