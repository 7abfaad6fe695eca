"""``pipeq dev``: the whole of pipeq on one machine, without a cluster.

It owns an embedded redis-server (data in ``<data_dir>/redis``), the API process and a pool
of local worker processes that it scales with the same policy as the operator
(``pipeq.scaling``). Scale-down asks idle workers only to stop (SIGTERM, a warm shutdown).
Ctrl-C stops everything, in order: the workers first (an idle one at once; a running job's
attempt is ended, its pipeline killed, and the job given back to the queue, one retry
spent as for a lost worker, so that the next start runs it again), then the API, Redis last,
while the workers still need it. A terminal sends Ctrl-C's SIGINT to its whole foreground
group, so every child runs in a session of its own, where only ``pipeq dev`` reaches it, and
is tied to ``pipeq dev``'s life (``pipeq.lifeline``): nothing outlives a ``pipeq dev`` that
is killed outright.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import redis

from pipeq import queue, scaling
from pipeq.lifeline import die_with_parent
from pipeq.redis_server import RedisServer
from pipeq.settings import get_settings
from pipeq.signals import Signals
from pipeq.dev_forkserver import ForkedWorker, ForkServer

log = logging.getLogger("pipeq.dev")
SHUTDOWN_GRACE = 10.0


@dataclass
class LocalWorker:
    name: str
    proc: subprocess.Popen | ForkedWorker
    stopping: bool = False


class Supervisor:
    """Keeps the local worker processes at the count the scaling policy asks for."""

    def __init__(self, settings, env: dict[str, str]):
        self.settings = settings
        self.env = env
        self.conn = queue.connect(settings.redis_url)
        self.workers: dict[str, LocalWorker] = {}
        self.names = (f"local-{os.getpid()}-{i}" for i in itertools.count(1))
        self.lower_since: float | None = None
        self.redis_ok = True
        self.forkserver: ForkServer | None = None

    def warm_up(self) -> None:
        """Start the fork server now, so that the first scale-up from zero does not wait for
        its imports either."""
        try:
            self.forkserver = ForkServer(self.env).start()
        except OSError as e:
            log.warning("fork server not started (%s): workers will start as new processes", e)

    def spawn(self) -> None:
        """Start a worker: forked from the warm fork server (milliseconds), or, should that
        fail, as a fresh process (about 0.6 s of imports)."""
        name = next(self.names)
        try:
            if self.forkserver is None or not self.forkserver.alive():
                self.forkserver = ForkServer(self.env).start()
            proc = self.forkserver.spawn(name)
        except (OSError, RuntimeError) as e:
            log.warning("fork server unavailable (%s): starting worker %s as a new process", e, name)
            env = dict(self.env, PIPEQ_WORKER_NAME=name)
            proc = subprocess.Popen([sys.executable, "-m", "pipeq", "worker"], env=env, start_new_session=True,
                                    preexec_fn=die_with_parent(signal.SIGKILL))  # its guard ends its pipeline
        self.workers[name] = LocalWorker(name, proc)

    def step(self, now: float | None = None) -> scaling.Decision | None:
        """One poll: read the queue, reap lost jobs, decide, and start or stop workers."""
        now = time.time() if now is None else now
        for name, w in list(self.workers.items()):
            if w.proc.poll() is not None:
                del self.workers[name]
        alive = [w for w in self.workers.values() if not w.stopping]
        try:
            stats = queue.queue_stats(self.conn, self.settings.queue)
            if stats.expired:
                queue.reap_abandoned(self.conn, self.settings.queue)
            if not self.redis_ok:
                log.info("Redis is reachable again")
            self.redis_ok = True
        except redis.RedisError as e:
            if self.redis_ok:
                log.warning("Redis unreachable (%s): holding %d workers", e, len(alive))
            self.redis_ok = False
            return None
        s = self.settings
        decision = scaling.decide(
            queued=stats.queued,
            running=stats.running,
            busy=len(stats.busy),
            current=len(alive),
            min_replicas=s.min_workers,
            max_replicas=s.max_workers,
            jobs_per_worker=s.jobs_per_worker,
            scale_down_delay=s.scale_down_delay,
            paused=False,
            now=now,
            lower_since=self.lower_since,
        )
        self.lower_since = decision.lower_since
        if decision.desired > len(alive):
            for _ in range(decision.desired - len(alive)):
                self.spawn()
            log.info("workers %d→%d: %s", len(alive), decision.desired, decision.reason)
        elif decision.desired < len(alive):
            idle = [w for w in alive if w.name not in stats.busy]
            for w in idle[: len(alive) - decision.desired]:
                w.stopping = True
                w.proc.send_signal(signal.SIGTERM)
            log.info("workers %d→%d: %s", len(alive), decision.desired, decision.reason)
        return decision

    def stop_all(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop every worker now: SIGINT, which a pipeq worker takes for a stop at once (an
        idle one exits; a running attempt ends, its pipeline killed, and its job goes back
        to the queue while Redis is still up); SIGKILL for any left after ``grace``."""
        for w in self.workers.values():
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + grace
        for w in self.workers.values():
            try:
                w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(w.proc.pid, signal.SIGKILL)
                w.proc.wait()
        self.workers.clear()
        if self.forkserver is not None:
            self.forkserver.stop()
            self.forkserver = None


def run_dev(embedded_redis: bool = True) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = get_settings()
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    server = None
    env = dict(os.environ, PIPEQ_DATA_DIR=str(data_dir))
    if embedded_redis:
        server = RedisServer(data_dir / "redis", own_session=True).start()
        env["PIPEQ_REDIS_URL"] = server.url
    os.environ.update(env)
    get_settings.cache_clear()
    settings = get_settings()

    stop = {"now": False}

    def on_signal(signum, frame):
        # not wake.set(): an Event's lock may be held by the very code this handler interrupts
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    api = subprocess.Popen([sys.executable, "-m", "pipeq", "api"], env=env, start_new_session=True, preexec_fn=die_with_parent())
    sup = Supervisor(settings, env)
    sup.warm_up()
    print(
        f"pipeq dev: API and web page on http://{settings.host}:{settings.port}  "
        f"(Redis {settings.redis_url}, data in {data_dir}, workers {settings.min_workers}..{settings.max_workers}); "
        "Ctrl-C stops everything",
        flush=True,
    )
    # an enqueue wakes the loop at once; the poll is the fallback (and notices a stop)
    wake, signals = threading.Event(), Signals()
    signals.watch(settings.redis_url, settings.queue, wake)
    try:
        while not stop["now"]:
            if api.poll() is not None:
                log.error("the API exited with code %s", api.returncode)
                return 1
            wake.clear()
            sup.step()
            wake.wait(settings.poll_interval)
    finally:
        # workers first, then the API, Redis last: each still has what it needs as it stops
        signals.unwatch(settings.redis_url, settings.queue, wake)
        sup.stop_all()
        log.info("workers stopped")
        api.terminate()
        try:
            api.wait(timeout=5)
        except subprocess.TimeoutExpired:
            api.kill()
            api.wait()
        log.info("API stopped")
        if server:
            server.stop()
        print("pipeq dev: stopped", flush=True)
    return 0
