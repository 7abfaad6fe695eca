"""The warm fork server of `pipeq dev`: workers in milliseconds that behave like fresh ones."""

from __future__ import annotations

import signal
import time

from rq import Worker

from tests.conftest import settings_env, wait_for


def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (its SigCgt mask in /proc)."""
    with open(f"/proc/{pid}/status") as f:
        caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return bool(caught >> (sig - 1) & 1)


def test_forked_workers_register_run_and_stop_warm(settings, conn):
    from pipeq.dev_forkserver import ForkServer

    server = ForkServer(settings_env(settings)).start()
    workers = {}
    try:
        # its imports done (it says so after them): what is measured next is the fork alone
        wait_for(server.ready, timeout=30, what="the fork server's imports")
        t0 = time.monotonic()
        workers = {name: server.spawn(name) for name in ("fs-a", "fs-b")}
        wait_for(lambda: all(conn.exists(Worker.redis_worker_namespace_prefix + n) for n in workers), timeout=10, what="both workers registered")
        ready = time.monotonic() - t0
        print(f"\ntwo forked workers registered in Redis {ready * 1000:.0f} ms after the request")
        assert len({w.pid for w in workers.values()}) == 2 and all(w.poll() is None for w in workers.values())
        # SIGTERM is a warm shutdown: an idle worker exits 0 and deregisters (RQ registers a
        # worker in Redis before it installs its signal handlers)
        wait_for(lambda: _catches(workers["fs-a"].pid, signal.SIGTERM), timeout=10, what="fs-a's SIGTERM handler")
        workers["fs-a"].send_signal(signal.SIGTERM)
        assert workers["fs-a"].wait(timeout=10) == 0
        wait_for(lambda: not conn.sismember(Worker.redis_workers_keys, Worker.redis_worker_namespace_prefix + "fs-a"), timeout=10, what="fs-a deregistered")
        assert workers["fs-b"].poll() is None
        workers["fs-b"].send_signal(signal.SIGKILL)
        assert workers["fs-b"].wait(timeout=10) == -signal.SIGKILL
    finally:
        for w in workers.values():
            w.send_signal(signal.SIGKILL)
        server.stop()
    assert not server.alive()
