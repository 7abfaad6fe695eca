"""Fixtures shared by every test: a real redis-server, settings, test data, workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeq.redis_server import RedisServer
from pipeq.settings import Settings
from tests.support.waiting import wait_for  # noqa: F401  (re-exported for the tests)

ROOT = Path(__file__).resolve().parent.parent

# the scheduler that keeps the kind tests and the control plane's each on one xdist worker, and
# one control plane per session for every directory that needs it; one Keycloak likewise
pytest_plugins = ["tests.support.parallel", "tests.support.cluster_fixtures", "tests.support.keycloak"]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on a free port (AOF on, as in the chart); ``.restart()`` restarts it."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def conn(redis_server):
    """A client of the session's Redis, emptied before each test."""
    from pipeq.queue import connect

    c = connect(redis_server.url)
    c.flushall()
    yield c
    c.close()


@pytest.fixture
def settings(redis_server, conn, tmp_path) -> Settings:
    """Settings for one test: its own data folder and queue on the session's Redis."""
    return Settings(
        redis_url=redis_server.url,
        data_dir=tmp_path / "data",
        queue="pipeline_tasks",
        kill_grace=2.0,
        lease_seconds=3,
        maintenance_interval=1,
    )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (versitygw, POSIX backend) on a free port, for the session."""
    from tests.support.s3server import VersityGW

    server = VersityGW(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


@pytest.fixture(params=["file", "s3"])
def backend(request, settings, tmp_path, monkeypatch) -> Settings:
    """``settings`` on each storage backend in turn: the data folder, then a bucket of its
    own on the session's S3 server (the AWS variables set for the API and the workers)."""
    if request.param == "s3":
        import uuid

        server = request.getfixturevalue("s3_server")
        bucket = f"t-{uuid.uuid4().hex[:16]}"
        server.make_bucket(bucket)
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        settings.storage = f"s3://{bucket}/pipeq"
        settings.scratch_dir = tmp_path / "scratch"
    return settings


def settings_env(settings: Settings, **extra) -> dict[str, str]:
    """The environment that gives a child process these settings."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for name, value in settings.model_dump(mode="json").items():
        if value is not None:
            env[f"PIPEQ_{name.upper()}"] = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture
def make_client(settings):
    """Make a client of the API app in process: of ``settings`` as they are when it is made
    (after the test changed them), or of the settings given; its lifespan runs while
    ``with make_client() as client:`` lasts. Other keywords go to TestClient."""
    from fastapi.testclient import TestClient

    from pipeq.api.app import create_app

    def make(app_settings: Settings | None = None, **kwargs) -> TestClient:
        return TestClient(create_app(settings if app_settings is None else app_settings), **kwargs)

    return make


@pytest.fixture
def client(make_client):
    """The API app of these settings, in process (lifespan run). A test module that needs
    other settings overrides the ``settings`` fixture, asking for this one."""
    with make_client() as c:
        yield c


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """Simulated paired-end reads with planted SNPs, and their reference."""
    from tests.support.simdata import make_dataset

    return make_dataset(tmp_path_factory.mktemp("sim"), seed=7, n_snps=8)


class Workers:
    """Real ``pipeq worker`` processes, started on demand and stopped at the end of the test."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str | None = None, *, as_pid1: bool = False, log: Path | None = None, **env) -> subprocess.Popen:
        """Start a worker; ``as_pid1``: as a child subreaper, which orphans come to as they
        come to PID 1 of a pod without an init (see tests.support.subreaper); its output goes
        to ``log`` when given."""
        name = name or f"w{len(self.procs) + 1}-{os.getpid()}"
        wrap = [sys.executable, "-m", "tests.support.subreaper"] if as_pid1 else []
        out = open(log, "ab") if log is not None else None
        proc = subprocess.Popen(
            [*wrap, sys.executable, "-m", "pipeq", "worker"],
            env=settings_env(self.settings, PIPEQ_WORKER_NAME=name, **env),
            cwd=ROOT,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=out or (subprocess.PIPE if os.environ.get("PIPEQ_TEST_QUIET_WORKERS") else None),
        )
        if out is not None:
            out.close()
        self.procs[name] = proc
        return proc

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def workers(settings):
    w = Workers(settings)
    yield w
    w.stop()
