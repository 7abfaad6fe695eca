"""Delete a namespace's WorkerPools and wait until they are gone: the chart's pre-delete hook.

``helm uninstall`` deletes the operator together with the pools; the pools' kopf finalizer
is then never removed and the uninstall hangs. Run before anything is deleted, while the
operator still runs, this lets it stop each pool's scaler and release it.

Usage: pipeq delete-pools NAMESPACE [TIMEOUT_SECONDS]
"""

from __future__ import annotations

import sys
import time

from pipeq.operator.kube import Kube


def main(argv: list[str]) -> int:
    namespace = argv[0]
    timeout = float(argv[1]) if len(argv) > 1 else 30.0
    kube = Kube(pool_size=4)
    for pool in kube.list_pools(namespace):
        if kube.delete_pool(namespace, pool["metadata"]["name"]):
            print(f"deleting WorkerPool {namespace}/{pool['metadata']['name']}", flush=True)
    deadline = time.monotonic() + timeout
    while items := kube.list_pools(namespace):
        if time.monotonic() > deadline:
            # No operator released them (it is not running): release them here, or the
            # uninstall would hang. The pools' Deployments go with them (owner references).
            for pool in items:
                if why := kube.release_finalizer(namespace, pool["metadata"]["name"]):
                    raise SystemExit(f"releasing WorkerPool {namespace}/{pool['metadata']['name']}: {why}")
            print(f"released WorkerPools in {namespace} that no operator released within {timeout:.0f} s", flush=True)
            deadline = time.monotonic() + timeout
        time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
