"""Markers of the reliability suite, and the gate that keeps the soak out of ordinary runs.

- ``reliability``: the fault, bad-input and security tests (part of ``make test``; together
  well under two minutes).
- ``soak``: the two-minute load soak. It runs only when asked for: ``make soak``
  (``-m soak``) or ``PIPEQ_SOAK=1``; any other run skips it, so ``make test`` and a plain
  ``pytest tests/reliability`` stay fast.
"""

from __future__ import annotations

import os

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "reliability: fault, bad-input and security suite")
    config.addinivalue_line("markers", "soak: long load test, run by make soak (or PIPEQ_SOAK=1) only")


def _soak_asked_for(config) -> bool:
    if os.environ.get("PIPEQ_SOAK") == "1":
        return True
    expr = (config.getoption("markexpr", default="") or "").replace(" ", "")
    return "soak" in expr and "notsoak" not in expr


def pytest_collection_modifyitems(config, items):
    if _soak_asked_for(config):
        return
    skip = pytest.mark.skip(reason="the soak runs only with `make soak` (-m soak) or PIPEQ_SOAK=1")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def toxiproxy(tmp_path_factory):
    """A toxiproxy-server (tests/support/toxiproxy.py) on a free port, for the session."""
    from tests.support.toxiproxy import Toxiproxy

    server = Toxiproxy(tmp_path_factory.mktemp("toxiproxy")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_proxy(toxiproxy, redis_server):
    """A proxy in front of the session's Redis, removed (with its toxics) after the test."""
    proxy = toxiproxy.proxy(f"redis-{os.getpid()}-{id(redis_server)}-{os.urandom(3).hex()}", upstream=redis_server.port)
    yield proxy
    proxy.delete()


@pytest.fixture
def pools(cluster, namespace, redis_server, conn, tmp_path):
    """The WorkerPool CRD, a running operator and ``Pools`` of tests/cluster/test_operator.py,
    on the session's Redis; the pools are deleted and the operator stopped at the end."""
    from tests.cluster.test_operator import CRD, Operator, Pools
    from tests.support.cluster import wait_for

    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "crd/workerpools.pipeq.dev", "--timeout=30s")
    op = Operator(dict(cluster.env(), PIPEQ_REDIS_URL=redis_server.url), tmp_path / "operator.log")
    p = Pools(cluster, namespace, redis_server.url, tmp_path)
    try:
        wait_for(op.alive, timeout=30, what="the operator's liveness endpoint")
        yield p
    finally:
        cluster.kubectl("delete", "workerpools", "--all", "-n", namespace, "--timeout=60s", check=False)
        op.stop()
        p.conn.close()
