"""The worker process: an RQ ``SimpleWorker`` with a short, renewed lease on its job.

Why a SimpleWorker: the pipeline is already a separate process group (see ``task.py``), so
a forked work horse would only add latency. What pipeq adds to RQ:

- a lease: while a job runs, a thread renews the job's entry in the started registry every
  ``lease_seconds / 3`` with a TTL of ``lease_seconds``. If the worker dies, the entry expires
  within ``lease_seconds`` and the next clean-up (workers every ``maintenance_interval``, the
  operator and ``pipeq dev`` on every poll) requeues the job. If the thread finds the entry
  gone, another worker has taken the job over: this worker kills its pipeline and exits at
  once without publishing anything (fencing).
- a busy mark (``pipeq_job`` in the worker's hash) that scaling reads to spare busy workers.
- stop requests (``DELETE /jobs/{id}``) end the pipeline's process group.
- SIGTERM is a warm shutdown: the current job finishes, then the worker exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time

import redis
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.utils import now

from pipeq.queue import BUSY_FIELD, cleaning, connect, reap_abandoned
from pipeq.settings import Settings, get_settings
from pipeq.store import Unavailable
from pipeq.worker import task

log = logging.getLogger("pipeq.worker")

# Renew the lease only if it is still ours and has not run out (an expired lease may be
# taken over by a clean-up at any moment); answer 0 otherwise.
_RENEW = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  return 1
end
return 0
"""


PRUNE_INTERVAL = 600.0


class PipeqWorker(SimpleWorker):
    lease_seconds = 15
    # the first prune waits one interval: a fresh worker (scale-up) takes jobs at once
    # instead of scanning every job folder first
    _last_pruned = 0.0

    @property
    def dequeue_timeout(self) -> int:
        # RQ blocks in BLPOP for minutes by default and runs its maintenance only between
        # waits; a short wait keeps the clean-up that requeues lost jobs on time.
        return max(1, int(self.maintenance_interval))

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return self.lease_seconds

    def execute_job(self, job: Job, queue: Queue):
        execution = self.prepare_execution(job)
        member = execution.composite_key
        registry_key = job.started_job_registry.key
        renew = self.connection.register_script(_RENEW)
        lost = threading.Event()
        done = threading.Event()

        def held() -> bool:
            try:
                score = self.connection.zscore(registry_key, member)
            except redis.RedisError:
                return False
            return score is not None and score > time.time()

        def keep_lease():
            while not done.wait(self.lease_seconds / 3):
                try:
                    with self.connection.pipeline() as p:
                        renew(keys=[registry_key, execution.key], args=[member, time.time() + self.lease_seconds, self.lease_seconds * 2, time.time()], client=p)
                        p.expire(self.key, self.lease_seconds * 4)
                        ok = p.execute()[0]
                except redis.RedisError as e:
                    log.warning("lease of job %s not renewed: %s", job.id, e)
                    continue
                if not ok and not done.is_set():
                    log.error("lease of job %s was taken over; killing its pipeline and exiting", job.id)
                    lost.set()
                    task.control.stop.set()
                    os._exit(75)
                # Busy workers requeue lost jobs too: idle ones only clean up between waits,
                # and when every worker is busy there is no idle one.
                try:
                    reap_abandoned(self.connection, queue.name)
                except redis.RedisError:
                    pass

        task.control.lease_held = held
        self.connection.hset(self.key, BUSY_FIELD, job.id)
        keeper = threading.Thread(target=keep_lease, name="lease", daemon=True)
        keeper.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            done.set()
            keeper.join(timeout=1)
            task.control.lease_held = lambda: True
            try:
                self.connection.hdel(self.key, BUSY_FIELD)
            except redis.RedisError:
                pass
        self.set_state("idle")

    def clean_registries(self):
        # RQ's maintenance under the same lock as every other clean-up (see queue.cleaning)
        with contextlib.ExitStack() as held:
            if all([held.enter_context(cleaning(self.connection, q.name)) for q in self.queues]):
                super().clean_registries()
                return
        self.last_cleaned_at = now()  # another process is cleaning: try again next interval

    def run_maintenance_tasks(self):
        super().run_maintenance_tasks()
        if not self._last_pruned:
            self._last_pruned = time.monotonic()
        elif time.monotonic() - self._last_pruned > PRUNE_INTERVAL:
            self._last_pruned = time.monotonic()
            settings = get_settings()
            try:
                removed = task.store_of(settings).prune(lambda job_id: self.connection.exists(Job.key_for(job_id)), settings.job_ttl)
            except Unavailable as e:
                log.warning("expired job files not pruned: %s", e)
                removed = []
            if removed:
                log.info("removed %d expired job folders", len(removed))

    def kill_horse(self, sig=signal.SIGTERM):
        """RQ calls this for a stop request of the current job: end its pipeline."""
        task.control.stop.set()


class _QuietMaintenance(logging.Filter):
    """Drop RQ's line per registry clean-up: pipeq runs it every few seconds, not every 10 minutes."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (msg.startswith("Worker %s: cleaning") or "cleaning registries" in msg or "cleaning group registries" in msg)


def worker_name(settings: Settings) -> str:
    """The RQ worker name: PIPEQ_WORKER_NAME, else the pod name (HOSTNAME), else host-pid."""
    return settings.worker_name or os.environ.get("HOSTNAME") or f"{socket.gethostname()}-{os.getpid()}"


def run_worker(settings: Settings | None = None, *, burst: bool = False) -> bool:
    """Run a worker on ``settings.queue`` until SIGTERM (or, with ``burst``, until the queue is empty)."""
    settings = settings or get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("rq.worker").addFilter(_QuietMaintenance())
    conn = connect(settings.redis_url, timeout=max(10.0, settings.lease_seconds))
    name = worker_name(settings)
    _forget_stale_registration(conn, name)
    PipeqWorker.lease_seconds = settings.lease_seconds
    worker = PipeqWorker(
        [settings.queue],
        connection=conn,
        name=name,
        maintenance_interval=settings.maintenance_interval,
    )
    return worker.work(burst=burst, with_scheduler=False, logging_level="INFO")


def _forget_stale_registration(conn: redis.Redis, name: str) -> None:
    """A pod restarted under the same name finds its old registration: drop it.

    RQ refuses to start a worker whose name is registered and alive. Pod names are unique
    while the pod lives, so a registration under our name is ours from before a restart.
    """
    key = f"rq:worker:{name}"
    if conn.exists(key):
        conn.delete(key)
        conn.srem("rq:workers", key)
