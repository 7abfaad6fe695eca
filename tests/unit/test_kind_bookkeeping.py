"""`make kind-down` stops the dockerd that `make kind-up` started, and only that one.

A real process stands for the daemon (its command line names dockerd, which is what
scripts/docker.sh checks before it signals a pid), in a cache folder of the test's own: the
machine's Docker, if any, is never touched (the docker client is pointed at no daemon).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import pytest

from tests.support import kind
from tests.support.waiting import wait_for


@pytest.fixture
def fake_dockerd(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    (cache / "dockerd").mkdir(parents=True)
    monkeypatch.setenv("PIPEQ_CACHE", str(cache))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    # not this process's child (as the real one, started by a shell that has exited): a
    # child of ours would linger as a zombie, which kill -0 takes for alive
    pid = int(subprocess.run(["bash", "-c", "(exec -a dockerd-pipeq-test sleep 300) >/dev/null 2>&1 & echo $!"],
                             capture_output=True, text=True, check=True).stdout)
    (cache / "dockerd" / "pid").write_text(str(pid))
    yield pid
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_kind_down_stops_the_dockerd_kind_up_started(tmp_path, fake_dockerd):
    workdir = tmp_path / ".kind"
    kind.note_docker_started(workdir, True)
    assert kind.docker_down_if_started(workdir) is True
    wait_for(lambda: not _alive(fake_dockerd), timeout=10, what="the dockerd stopped")  # by scripts/docker.sh down
    assert not (workdir / kind.STARTED_MARK).exists()


def test_kind_down_leaves_a_dockerd_it_did_not_start(tmp_path, fake_dockerd):
    workdir = tmp_path / ".kind"
    kind.note_docker_started(workdir, False)  # docker_up found one running
    assert kind.docker_down_if_started(workdir) is False
    assert _alive(fake_dockerd)


def test_a_second_kind_up_keeps_the_record(tmp_path, fake_dockerd):
    workdir = tmp_path / ".kind"
    kind.note_docker_started(workdir, True)
    kind.note_docker_started(workdir, False)  # the second `kind up` found it running: its own
    assert kind.docker_down_if_started(workdir) is True
    wait_for(lambda: not _alive(fake_dockerd), timeout=10, what="the dockerd stopped")
