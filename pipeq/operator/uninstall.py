"""Delete a namespace's WorkerPools and wait until they are gone: the chart's pre-delete hook.

``helm uninstall`` deletes the operator together with the pools; the pools' kopf finalizer
is then never removed and the uninstall hangs. Run before anything is deleted, while the
operator still runs, this lets it stop each pool's scaler and release it.

Usage: pipeq delete-pools NAMESPACE [TIMEOUT_SECONDS]
"""

from __future__ import annotations

import sys
import time

from pipeq.operator.builders import finalizer_removal
from pipeq.operator.handlers import GROUP, PLURAL, VERSION


def main(argv: list[str]) -> int:
    from kubernetes import client, config

    namespace = argv[0]
    timeout = float(argv[1]) if len(argv) > 1 else 30.0
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.CustomObjectsApi()
    pools = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    for pool in pools:
        name = pool["metadata"]["name"]
        try:
            api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            print(f"deleting WorkerPool {namespace}/{name}", flush=True)
        except client.exceptions.ApiException as e:
            if e.status != 404:
                raise
    deadline = time.monotonic() + timeout
    while items := api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]:
        if time.monotonic() > deadline:
            # No operator released them (it is not running): release them here, or the
            # uninstall would hang. The pools' Deployments go with them (owner references).
            for pool in items:
                patch = finalizer_removal(pool["metadata"].get("finalizers"))
                if patch is not None:
                    try:
                        api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, pool["metadata"]["name"], patch)
                    except client.exceptions.ApiException as e:
                        if e.status not in (404, 409, 422):
                            raise
            print(f"released WorkerPools in {namespace} that no operator released within {timeout:.0f} s", flush=True)
            deadline = time.monotonic() + timeout
        time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
