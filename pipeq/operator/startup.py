"""The operator's start: every kopf setting with its reason, and what the handlers share.

``start`` is the body of the one ``@kopf.on.startup`` handler (``handlers.startup``).
"""

from __future__ import annotations

import logging
import socket

import kopf

from pipeq.operator import builders, metrics
from pipeq.operator.kube import GROUP, PLURAL, VERSION, Kube
from pipeq.operator.status import StatusWriter
from pipeq.signals import Signals
from pipeq.settings import Settings, get_settings


def configure(settings: kopf.OperatorSettings, config: Settings) -> None:
    """kopf's settings, each with why; ``config`` is pipeq's own (the operator's fields)."""
    # Standalone, no peering: the chart runs one operator pod with strategy Recreate, and
    # peering would need a ClusterKopfPeering resource and cluster-wide RBAC for it.
    settings.peering.standalone = True
    settings.peering.mandatory = False
    # Keep kopf's bookkeeping in annotations under our own prefix: the CRD's status schema
    # is structural (status.kopf would be pruned), and status belongs to the scaler.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="pipeq.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="pipeq.dev", key="last-handled-configuration")
    settings.persistence.finalizer = builders.FINALIZER
    # Watches: the server closes a watch after at most 5 minutes, so a silently broken
    # connection (a load balancer dropping idle streams) is noticed and re-established.
    settings.watching.server_timeout = 300
    # ...and the client gives up a bit later than the server would, never before it.
    settings.watching.client_timeout = 330
    # Watch only the pools' own pods and Deployments, filtered by the API server: the
    # indexes need nothing else, and every pod of a large cluster would cost memory and
    # bandwidth for nothing.
    settings.watching.label_selectors["", "v1", "pods"] = builders.POOL_LABEL
    settings.watching.label_selectors["apps", "v1", "deployments"] = builders.POOL_LABEL
    # Only this release's pools, when the chart says which (PIPEQ_OPERATOR_POOL_SELECTOR): two
    # releases' operators in one cluster would otherwise both scale every pool, each
    # undoing the other's replicas. Filtered by the API server, like the pods.
    if config.operator_pool_selector:
        settings.watching.label_selectors[GROUP, VERSION, PLURAL] = config.operator_pool_selector
    # Fail fast on a dead API server at connect time; retries follow kopf's backoffs.
    settings.watching.connect_timeout = 10
    # Reconnect quickly after a dropped watch: missed pods mean stale deletion costs.
    settings.watching.reconnect_backoff = 0.5
    # Events: only the ones we post explicitly ("Scaled", "RedisUnreachable", ...). Log
    # lines as Events (one per handler run, per poll warning) would bury them and load the
    # API server, so the loggers are not posted.
    settings.posting.enabled = True
    settings.posting.loggers = False
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = "pipeq-operator"
    settings.posting.reporting_instance = socket.gethostname()  # the pod's name on Kubernetes
    # Every pool runs a sync daemon in kopf's thread pool for its whole life: size the pool
    # for many pools plus the short create/update handlers (the default is ~cpus+4).
    settings.execution.max_workers = config.operator_max_pools + 16
    # A failed Deployment write is retried soon: the pool must not wait a minute for workers.
    settings.execution.default_backoff = 5
    # Daemons stop when their pool goes; a daemon between polls exits within one interval.
    settings.background.cancellation_polling = 1
    # Bounded API requests: a hung request must not stall a pool's scaler.
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    # Watching named namespaces only (the chart's namespace scope): nothing to discover, so
    # no scanning, which would list namespaces cluster-wide, a right the operator lacks
    # there; kopf retried that for ~55 s at every start before serving any pool.
    # Cluster-wide or with glob patterns, kopf scans (and the chart grants the right).
    namespaces = config.operator_namespace_list
    settings.scanning.disabled = bool(namespaces) and not any(c in n for n in namespaces for c in "*?[!")


def start(settings: kopf.OperatorSettings, memo: kopf.Memo, logger) -> None:
    """Configure kopf and fill the memo every handler shares (per-resource memos are shallow
    copies of this one, so they share its dict and set). pipeq's settings are in
    ``memo.settings`` when ``main.run`` started the operator (``kopf run -m pipeq.operator``
    alone reads them from the environment)."""
    config: Settings = memo.get("settings") or get_settings()
    memo.settings = config
    configure(settings, config)
    memo.kube = Kube(pool_size=settings.execution.max_workers)
    # every pool this operator has served, for releasing their finalizers on exit
    memo.pools = set()
    # the pools' scalers by (namespace, name), for the liveness probe
    memo.scalers = {}
    # every pool's status writes, in one thread off the scalers' decisions
    memo.status_writer = StatusWriter(memo.kube)
    # the enqueue signals that wake the pools' scalers, one subscriber per Redis
    memo.signals = Signals()
    # the Redis of pools that name none (and of their workers)
    memo.redis_url = config.redis_url
    if config.operator_metrics_port > 0:
        metrics.serve(config.operator_metrics_port)
        logger.info("metrics on :%s/metrics", config.operator_metrics_port)
