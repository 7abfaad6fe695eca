"""A real S3-compatible server for the tests: versitygw with its POSIX backend.

Built from its Go module by ``tools/gobuild.sh versitygw`` (tools/versitygw/go.mod; about
4 minutes the first time on a machine, cached afterwards). :class:`VersityGW` runs it on a
free loopback port over a temporary folder (one sub-folder per bucket) and stops it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from tests.support.servers import Process, free_port, port_open

ROOT = Path(__file__).resolve().parents[2]
ACCESS_KEY = "pipeq-test"
SECRET_KEY = "pipeq-test-secret-key"
REGION = "us-east-1"


def versitygw_bin() -> Path:
    """The versitygw binary, built first if it is missing."""
    out = subprocess.run([str(ROOT / "tools" / "gobuild.sh"), "versitygw"], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1]) / "versitygw"


class VersityGW:
    """``versitygw posix`` on 127.0.0.1:<free port>, serving the folders under ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.port = free_port()
        self.proc: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self) -> VersityGW:
        data, sidecar = self.root / "data", self.root / "meta"
        data.mkdir(parents=True, exist_ok=True)
        sidecar.mkdir(exist_ok=True)
        self.proc = Process("versitygw", [
            str(versitygw_bin()),
            "--port", f"127.0.0.1:{self.port}",
            "--access", ACCESS_KEY,
            "--secret", SECRET_KEY,
            "--region", REGION,
            "--quiet",
            # metadata in a side folder: the tests' temporary folders need no xattrs
            "posix", "--sidecar", str(sidecar), str(data),
        ], self.root / "versitygw.log").start()
        self.proc.wait_until(lambda: port_open(self.port), "its port", timeout=30)
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
        self.proc = None

    def make_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def client(self):
        from pipeq.storage.s3 import client as s3

        return s3.client(endpoint_url=self.url, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION)


def set_env(env: dict[str, str]) -> dict[str, str | None]:
    """Set variables in this process; returns what they were (for :func:`restore_env`)."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    return old


def restore_env(old: dict[str, str | None]) -> None:
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@contextlib.contextmanager
def own_job_store(root: Path, settings, monkeypatch, bucket: str = "jobs"):
    """A versitygw of the test's own in ``root`` (to stop or to break under a job), holding
    ``settings``' job store (``s3://<bucket>/p``, scratch beside ``root``); stopped at the end."""
    server = VersityGW(root).start()
    try:
        server.make_bucket(bucket)
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        settings.storage, settings.scratch_dir = f"s3://{bucket}/p", root.parent / "scratch"
        yield server
    finally:
        server.stop()
