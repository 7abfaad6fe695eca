"""A warm parent for ``pipeq dev``'s local workers (its only user): imports the worker once,
then forks one per request.

``pipeq dev`` scales its local pool from zero when a burst arrives. A fresh ``python -m
pipeq worker`` spends about 0.6 s of CPU importing RQ, redis-py and pydantic before it takes
a job; ten of them at once on a 2-core machine delay the pool's full strength by seconds.
This process pays the imports once; a fork from it is a worker ready in milliseconds.

Protocol (used by :class:`ForkServer`): the parent writes one worker name per line to our
stdin; for each we fork a worker (a session leader, so its pipeline and it can be signalled
as a group) and answer ``<name> <pid>`` on the reply descriptor given as argv[1]. First of
all, once the imports are done, we say ``ready`` there. We reap our
children and report ``exit <pid> <code>`` on the same descriptor. We exit when stdin closes;
the workers we started keep running until they are stopped (as Popen'ed workers would).
SIGTERM is the one exception: ``pipeq dev`` is gone (the kernel sends it when it dies, see
``pipeq.lifeline``), so we kill our workers (their guards end their pipelines) and exit.

Nothing here opens a Redis connection or starts a thread before forking: each worker makes
its own after the fork.

Why not the standard library's ``multiprocessing`` forkserver with
``set_forkserver_preload``: a worker from it is ready in 22-58 ms against 2-12 ms here
(docs/benchmarks.md, issue 21), which changes no fleet's makespan, but it ignores a preload
that fails to import (every worker then pays the imports itself, ~1.8 s here, without a
word), and ``pipeq dev`` would still need what this module does beside it: workers that lead
their own session, and their exits reported to a supervisor that did not fork them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import pipeq.worker.main  # noqa: F401 — the point of this process: the imports, paid once
from pipeq.lifeline import die_with_parent
from pipeq.settings import get_settings


def _child(name: str, reply_fd: int) -> None:
    os.close(reply_fd)
    os.setsid()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the worker installs its own
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.environ["PIPEQ_WORKER_NAME"] = name
    get_settings.cache_clear()
    code = 1
    try:
        from pipeq.worker import run_worker

        run_worker()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(reply_fd: int) -> int:
    def reply(line: str) -> None:
        # one short write: atomic on a pipe, so the SIGCHLD handler may interleave lines safely
        os.write(reply_fd, (line + "\n").encode())

    children: set[int] = set()

    def reap(signum, frame):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)
            reply(f"exit {pid} {os.waitstatus_to_exitcode(status)}")

    def orphaned(signum, frame):
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os._exit(143)

    signal.signal(signal.SIGCHLD, reap)
    signal.signal(signal.SIGTERM, orphaned)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for `pipeq dev`, which stops us
    reply("ready")
    for line in sys.stdin:
        name = line.strip()
        if not name:
            continue
        # SIGCHLD held until the pid is in the set: a child that ends at once is reaped after
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        pid = os.fork()
        if pid == 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            _child(name, reply_fd)
        children.add(pid)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        reply(f"{name} {pid}")
    return 0


@dataclass
class ForkedWorker:
    """The part of ``subprocess.Popen`` the supervisor uses, for a worker the server forked."""

    pid: int
    server: "ForkServer"
    returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.exit_code(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


@dataclass
class ForkServer:
    """Starts the fork server with ``env`` and asks it for workers."""

    env: dict[str, str]
    proc: subprocess.Popen | None = None
    _exits: dict[int, int] = field(default_factory=dict)
    _replies: dict[str, int] = field(default_factory=dict)
    _closed: bool = False  # the server's reply pipe has closed: it is gone
    _ready: bool = False  # the server has said that its imports are done
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> "ForkServer":
        r, w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeq.dev_forkserver", str(w)],
            env=self.env, stdin=subprocess.PIPE, pass_fds=[w], start_new_session=True, text=True,
            preexec_fn=die_with_parent(),
        )
        os.close(w)
        threading.Thread(target=self._read, args=(os.fdopen(r, "r"),), name="forkserver-replies", daemon=True).start()
        return self

    def _read(self, f) -> None:
        for line in f:
            if line.split() == ["ready"]:  # one word: every other reply has two or three
                with self._cond:
                    self._ready = True
                continue
            a, b, *rest = line.split()
            with self._cond:
                if a == "exit":
                    self._exits[int(b)] = int(rest[0])
                else:
                    self._replies[a] = int(b)
                self._cond.notify_all()
        with self._cond:  # the server is gone: so is every way to learn of an exit but kill(0)
            self._closed = True
            self._cond.notify_all()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        """The server has imported the worker: a spawn from now on costs the fork alone."""
        with self._cond:
            return self._ready

    def spawn(self, name: str, timeout: float = 10.0) -> ForkedWorker:
        self.proc.stdin.write(name + "\n")
        self.proc.stdin.flush()
        with self._cond:
            if not self._cond.wait_for(lambda: name in self._replies or self._closed, timeout):
                raise RuntimeError("the worker fork server did not answer")
            if name not in self._replies:
                raise RuntimeError("the worker fork server exited")
            return ForkedWorker(self._replies.pop(name), self)

    def exit_code(self, pid: int) -> int | None:
        with self._cond:
            if pid in self._exits:
                return self._exits.pop(pid)
        if self.alive():
            return None
        try:  # the server died: its orphans are reaped by someone else now
            os.kill(pid, 0)
            return None
        except ProcessLookupError:
            return -1

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    code = serve(int(sys.argv[1]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # not the interpreter's teardown of the worker's imports: pipeq dev waits for it
