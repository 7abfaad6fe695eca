"""The warm fork server of `pipeq dev`: workers in milliseconds that behave like fresh ones."""

from __future__ import annotations

import signal
import time

from tests.conftest import settings_env, wait_for


def test_forked_workers_register_run_and_stop_warm(settings, conn):
    from pipeq.worker.forkserver import ForkServer

    server = ForkServer(settings_env(settings)).start()
    workers = {}
    try:
        wait_for(server.alive, what="the fork server")
        time.sleep(1.0)  # its imports are done: what is measured next is the fork alone
        t0 = time.monotonic()
        workers = {name: server.spawn(name) for name in ("fs-a", "fs-b")}
        wait_for(lambda: all(conn.exists(f"rq:worker:{n}") for n in workers), timeout=10, what="both workers registered")
        ready = time.monotonic() - t0
        print(f"\ntwo forked workers registered in Redis {ready * 1000:.0f} ms after the request")
        assert len({w.pid for w in workers.values()}) == 2 and all(w.poll() is None for w in workers.values())
        # SIGTERM is a warm shutdown: an idle worker exits 0 and deregisters
        workers["fs-a"].send_signal(signal.SIGTERM)
        assert workers["fs-a"].wait(timeout=10) == 0
        wait_for(lambda: not conn.sismember("rq:workers", "rq:worker:fs-a"), timeout=10, what="fs-a deregistered")
        assert workers["fs-b"].poll() is None
        workers["fs-b"].send_signal(signal.SIGKILL)
        assert workers["fs-b"].wait(timeout=10) == -signal.SIGKILL
    finally:
        for w in workers.values():
            w.send_signal(signal.SIGKILL)
        server.stop()
    assert not server.alive()
