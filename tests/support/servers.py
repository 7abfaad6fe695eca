"""Test servers as child processes: each on free loopback ports, waited for until it answers,
stopped at the end with nothing left behind, its output in a log file.

    proc = Process("versitygw", [exe, "--port", f"127.0.0.1:{port}", ...], tmp / "versitygw.log").start()
    proc.wait_until(lambda: port_open(port), "its port", timeout=30)
    ...
    proc.stop()       # SIGTERM to its process group, SIGKILL after the grace

Used by the S3 server (s3server.py), toxiproxy (toxiproxy.py), the control plane
(cluster.py) and the operator of the cluster tests (tests/cluster/test_operator.py). The tests' redis-server is pipeq's own (pipeq/redis_server.py: pipeq dev
embeds it), which cannot import from tests/.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

from pipeq.redis_server import free_port  # noqa: F401  (re-exported: one free_port for the tests)

SETPRIV = shutil.which("setpriv")


class ServerError(RuntimeError):
    """A test server exited or did not answer in time (the message ends with its log's tail)."""


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Process:
    """One server process in its own process group, its output appended to ``log``.

    ``start`` may be called again after ``stop`` (a restart on the same ports)."""

    def __init__(self, name: str, argv: list[str], log: Path, *, env: dict[str, str] | None = None, cwd: Path | None = None):
        self.name, self.argv, self.log = name, argv, Path(log)
        self.env, self.cwd = env, cwd
        self.popen: subprocess.Popen | None = None

    def start(self) -> Process:
        prefix = [SETPRIV, "--pdeathsig", "KILL", "--"] if SETPRIV else []
        with open(self.log, "ab") as out:
            out.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(self.argv)}\n".encode())
            out.flush()
            # own session: a signal to the group reaches everything it started; pdeathsig:
            # if the test process dies hard, the kernel kills this one too.
            self.popen = subprocess.Popen(prefix + self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True, env=self.env, cwd=self.cwd)
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_until(self, ready: Callable[[], object], what: str, timeout: float, interval: float = 0.05) -> None:
        """Poll ``ready`` until it returns something truthy (an exception counts as not yet).
        ServerError naming ``what`` if the process exits first or ``timeout`` passes; on any
        failure (Ctrl-C too) the process is stopped, as its caller gets no handle to stop."""
        try:
            self._wait_until(ready, what, timeout, interval)
        except BaseException:
            self.stop()
            raise

    def _wait_until(self, ready, what, timeout, interval) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServerError(f"{self.name} exited ({self.popen.returncode}) before {what}:\n{self.tail()}")
            try:
                if ready():
                    return
            except Exception as e:  # not up yet
                last = e
            time.sleep(interval)
        raise ServerError(f"{self.name}: no {what} after {timeout:g}s (last: {last!r}):\n{self.tail()}")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the process group, SIGKILL after ``grace`` seconds; waited for."""
        p = self.popen
        if p is None:
            return
        if p.poll() is None:
            _signal_group(p.pid, signal.SIGTERM)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(p.pid, signal.SIGKILL)
                p.wait(10)
        # anything it left in its group goes too
        _signal_group(p.pid, signal.SIGKILL)

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
