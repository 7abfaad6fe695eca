"""The kind suite's cluster: one kind cluster per session with pipeq's chart installed
(tests/support/kind.py), deleted at the end, and the Docker daemon stopped if the suite
started it.

With CI=true the suite must run: a Docker that cannot be started fails it. Elsewhere it
skips, saying why, only where no Docker can be started."""

from __future__ import annotations

import os
import sys

import pytest

from tests.support.kind import KindCluster, KindUnavailable, docker_down, docker_up, prepare

_docker = {"started": False, "unavailable": None, "error": None}


def pytest_collection_modifyitems(config, items):
    """Start Docker and build what the cluster needs (the node image, pipeq's images) before
    any test starts: a cold build (tens of minutes, once) would run into the per-test timeout."""
    selected = [i for i in items if "tests/kind/" in i.nodeid.replace(os.sep, "/")]
    for item in selected:
        item.add_marker(pytest.mark.kind)
    if not selected:
        return
    try:
        _docker["started"] = docker_up()
        print("\npipeq: preparing the kind suite (node image, images: cached after the first run)...",
              file=sys.stderr, flush=True)
        prepare()
    except KindUnavailable as e:
        _docker["unavailable"] = str(e)
    except Exception as e:  # noqa: BLE001  (reported by the fixture, on each test)
        _docker["error"] = f"{type(e).__name__}: {e}"


def pytest_sessionfinish(session, exitstatus):
    if _docker["started"]:
        docker_down()


@pytest.fixture(scope="session")
def kind(tmp_path_factory):
    if _docker["unavailable"]:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the kind suite must run on CI: {_docker['unavailable']}")
        pytest.skip(f"the kind suite needs Docker: {_docker['unavailable']}")
    if _docker["error"]:
        pytest.fail(f"preparing the kind suite failed: {_docker['error']}")
    cluster = KindCluster("pipeq-test", tmp_path_factory.mktemp("kind"))
    try:
        cluster.up()
        yield cluster
    finally:
        if os.environ.get("PIPEQ_KEEP_KIND") != "1":
            cluster.delete()
