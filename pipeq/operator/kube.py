"""Kubernetes access of the operator and of ``pipeq delete-pools``: one configuration load,
one connection pool, and the WorkerPool resource's coordinates.

``Kube()`` finds the API server in-cluster, else through ``KUBECONFIG``. Its clients are
thread-safe and shared by every handler and every pool's scaler.
"""

from __future__ import annotations

from pipeq.operator import builders

GROUP, VERSION, PLURAL = "pipeq.dev", "v1alpha1", "workerpools"
#: the field manager of every server-side apply and scale write of the operator
FIELD_MANAGER = "pipeq-operator"


class Kube:
    """The Kubernetes clients (apps, core, custom objects) over one connection pool."""

    def __init__(self, pool_size: int = 64) -> None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        conf = client.Configuration.get_default_copy()
        # one connection per pool daemon that may write at once, not urllib3's default 4
        conf.connection_pool_maxsize = pool_size
        api = client.ApiClient(conf)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.ApiException = client.exceptions.ApiException

    def list_pools(self, namespace: str) -> list[dict]:
        return self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]

    def delete_pool(self, namespace: str, name: str) -> bool:
        """Ask the API server to delete a pool; False when it is already gone."""
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            return True
        except self.ApiException as e:
            if e.status != 404:
                raise
            return False

    def release_finalizer(self, namespace: str, name: str, tries: int = 5) -> str | None:
        """Take the operator's finalizer off a pool; None when done (or nothing to do), else
        why not. The pool may change under us (``helm uninstall`` deletes it at the same
        moment): the JSON patch tests the entry before removing it and is retried after a
        conflict, so it never drops a finalizer that is not ours."""
        for _ in range(tries):
            try:
                obj = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
                patch = builders.finalizer_removal(obj["metadata"].get("finalizers"))
                if patch is None:
                    return None
                # a JSON patch, said so: the client (kubernetes 36) sends custom objects'
                # patches as merge patches, and the API server refuses a list as one (400)
                self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, patch,
                                                           _content_type="application/json-patch+json")
                return None
            except self.ApiException as e:
                if e.status == 404:
                    return None
                if e.status not in (409, 422):
                    return f"{e.status} {e.reason}"
        return f"the pool kept changing ({tries} conflicts)"

    def release_finalizers(self, pools, logger) -> None:
        """On the operator's exit, take its finalizer off every pool it served.

        kopf's finalizer only lets a pool's daemon stop cleanly, and with no operator running
        there is no daemon to stop. Left in place, it would hold a pool deleted together with
        the operator (``helm uninstall``) forever; the next operator puts it back."""
        for namespace, name in sorted(pools):
            if why := self.release_finalizer(namespace, name):
                logger.warning("releasing the finalizer of %s/%s: %s", namespace, name, why)
