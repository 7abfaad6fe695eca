"""The kind suite's cluster: one kind cluster per session with pipeq's chart installed
(tests/support/kind.py), deleted at the end, and the Docker daemon stopped if the suite
started it.

The cluster comes up in the background while the rest of the session's tests run (making
it takes a few minutes, most of them waiting on the node; a cold build of the node image and
the images, tens of minutes), so a whole `make test` does not wait for it in line. Under
pytest-xdist the kind tests are one group pinned to one worker (tests/support/parallel.py):
only that worker brings the cluster up, from its session start.

With CI=true the suite must run: a Docker that cannot be started fails it. Elsewhere it
skips, saying why, only where no Docker can be started."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from tests.support import kind_s3, parallel
from tests.support.kind import KindCluster, KindUnavailable, docker_down, docker_up, prepare

_state: dict = {"started": False, "unavailable": None, "error": None, "cluster": None, "thread": None,
                "workdir": None, "s3_error": None}
#: set when Docker and the images are ready (or cannot be), when the suite's release is
#: installed, and when the object-storage release is
_prepared = threading.Event()
_ready = threading.Event()
_s3_ready = threading.Event()


def _is_kind(item) -> bool:
    return "tests/kind/" in item.nodeid.replace(os.sep, "/")


def pytest_collection_modifyitems(config, items):
    """Mark the kind tests and run them last: their cluster comes up meanwhile, behind every
    other test of the session instead of the ones that sort before tests/kind/ (under xdist
    they are one group, the first unit of one worker: tests/support/parallel.py)."""
    for item in items:
        if _is_kind(item):
            item.add_marker(pytest.mark.kind)
    items[:] = [i for i in items if not _is_kind(i)] + [i for i in items if _is_kind(i)]


def pytest_collection_finish(session):
    """Once the tests to run are known, in the one process that runs the kind tests: start
    Docker, build what the cluster needs (the node image, pipeq's images: cached after the
    first build), then bring the cluster up, all in a thread. The kind fixture waits for it
    (the tests' timeouts leave fixtures out: a cold build takes longer than any test)."""
    if session.config.option.collectonly or not any(_is_kind(i) for i in session.items):
        return
    if not parallel.runs_group(session.config, parallel.KIND):
        return
    _state["workdir"] = Path(tempfile.mkdtemp(prefix="pipeq-kind-"))
    # two worker nodes: the object-storage release spreads its pool over them
    cluster = KindCluster("pipeq-test", _state["workdir"], workers=2)

    def bring_up():
        try:
            _bring_up(cluster)
        finally:  # whatever failed: nothing waits for what will not come
            _prepared.set()
            _ready.set()
            _s3_ready.set()

    _state["thread"] = threading.Thread(target=bring_up, name="kind-up", daemon=True)
    _state["thread"].start()


def _bring_up(cluster: KindCluster) -> None:
    try:
        _state["started"] = docker_up()
        print("\npipeq: preparing the kind suite (node image, images: cached after the first run)...",
              file=sys.stderr, flush=True)
        prepare()
    except KindUnavailable as e:
        _state["unavailable"] = str(e)
        return
    except Exception as e:  # noqa: BLE001  (reported by the fixture, on each test)
        _state["error"] = f"{type(e).__name__}: {e}"
        return
    finally:
        _prepared.set()
    try:
        cluster.up()
        _state["cluster"] = cluster
    except Exception as e:  # noqa: BLE001
        _state["error"] = f"{type(e).__name__}: {e}"
        cluster.delete()
        return
    finally:
        _ready.set()
    # the second release while the first one's tests run
    try:
        cluster.timed("object-storage release", kind_s3.up, cluster, cluster.redis_image)
    except Exception as e:  # noqa: BLE001
        _state["s3_error"] = f"{type(e).__name__}: {e}"
    finally:
        _s3_ready.set()


def pytest_sessionfinish(session, exitstatus):
    if _state["thread"] is not None:
        _state["thread"].join(timeout=900)
        if _state["cluster"] is not None and os.environ.get("PIPEQ_KEEP_KIND") != "1":
            _state["cluster"].delete()
        if _state["workdir"] and os.environ.get("PIPEQ_KEEP_KIND") != "1":
            shutil.rmtree(_state["workdir"], ignore_errors=True)
    if _state["started"]:
        docker_down()


@pytest.fixture(scope="session")
def kind():
    if _state["thread"] is not None:
        # Docker and the builds: cached they take a minute; cold, up to CI's 90 minutes
        _prepared.wait(timeout=5400)
    if _state["unavailable"]:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the kind suite must run on CI: {_state['unavailable']}")
        pytest.skip(f"the kind suite needs Docker: {_state['unavailable']}")
    if _state["thread"] is None:
        pytest.fail("the kind cluster was not started in this process (its tests must run on the "
                    f"xdist worker {parallel.GROUPS[parallel.KIND][1]}: tests/support/parallel.py)")
    if _prepared.is_set():
        _ready.wait(timeout=900)
    if _state["error"] or _state["cluster"] is None:
        pytest.fail(f"the kind cluster could not be made ready: {_state['error'] or 'it took over 15 minutes'}")
    yield _state["cluster"]


@pytest.fixture(scope="session")
def kind_s3_release(kind):
    """The suite's cluster once the release with ``storage.type=s3`` is installed too."""
    _s3_ready.wait(timeout=600)
    if _state["s3_error"] or not _s3_ready.is_set():
        pytest.fail(f"the object-storage release could not be installed: {_state['s3_error'] or 'it took over 10 minutes'}")
    return kind
