"""The worker process: an RQ ``SimpleWorker`` with a short, renewed lease on its job.

Why a SimpleWorker: the pipeline is already a separate process group (see ``task.py``), so
a forked work horse would only add latency. What pipeq adds to RQ:

- a lease (``lease.py``): while a job runs, a thread renews the attempt's entry in the started
  registry every ``lease_seconds / 3``. If the worker dies, the entry runs out within
  ``lease_seconds`` and the next clean-up (workers every ``maintenance_interval``, the
  operator and ``pipeq dev`` on every poll) requeues the job. The results are published only
  by the attempt that holds the lease, in one step with the check; an attempt whose lease is
  lost stops its pipeline and leaves the job alone (no failure recorded, no retry spent).
- Redis errors that may be transient are retried within the lease, in RQ's bookkeeping of
  the job's end too: a reset connection does not turn a finished job into a failed one.
- a busy mark (``pipeq_job`` in the worker's hash) that scaling reads to spare busy workers,
  set again with each renewal of the lease, which also keeps the hash from expiring mid-job.
- stop requests (``DELETE /jobs/{id}``) end the pipeline's process group.
- SIGTERM is a warm shutdown: the current job finishes, then the worker exits.
- SIGINT (``pipeq dev`` on a Ctrl-C) is a stop now: a running attempt ends, its pipeline
  killed, and the job goes back to the queue (a retry spent, as for a lost worker).
- the fair share's feed (``pipeq.fairshare``): after each dequeue, at each job's end (which
  also frees the owner's quota slot) and with each maintenance, the worker moves the next
  fair job from the owners' backlogs into the queue.
- jobs are JSON and only pipeq's task runs (``refusal.py``): any other job is failed as
  ``refused job`` before anything it names is imported, and the worker takes the next one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable

import redis
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.utils import now, utcformat
from rq.worker import WorkerStatus

from pipeq import fairshare, quotas, retry
from pipeq.queue import BUSY_FIELD, SERIALIZER, cleaning, connect, reap_abandoned
from pipeq.settings import Settings, get_settings
from pipeq.storage import Unavailable
from pipeq.worker import refusal, task
from pipeq.worker.lease import Lease, LeasedJob, LeaseLost, lease_client
from pipeq.worker.starting import hold_stop_signals

log = logging.getLogger("pipeq.worker")

PRUNE_INTERVAL = 600.0


class PipeqWorker(SimpleWorker):
    lease_seconds = 15
    job_class = LeasedJob
    # RQ backs off up to 60 s between reconnection attempts of an idle worker: a short
    # Redis blip would stall dispatch for a minute. Try again every 2 s at most.
    max_connection_wait_time = 2.0
    _running: LeasedJob | None = None
    #: set by a SIGTERM or SIGINT that came before RQ's handlers were in
    stop_before_ready: threading.Event | None = None
    _leases: redis.Redis | None = None
    # the first prune waits one interval: a fresh worker (scale-up) takes jobs at once
    # instead of scanning every job folder first
    _last_pruned = 0.0

    def __init__(self, *args, **kwargs):
        # pipeq's jobs are JSON, whatever a caller asks (see queue.PipeqJob)
        super().__init__(*args, **dict(kwargs, serializer=SERIALIZER))

    @property
    def dequeue_timeout(self) -> int:
        # RQ blocks in BLPOP for minutes by default and runs its maintenance only between
        # waits; a short wait keeps the clean-up that requeues lost jobs on time.
        return max(1, int(self.maintenance_interval))

    @property
    def connection_timeout(self) -> int:
        # RQ sets the socket timeout to the longest BLPOP plus 10 s; a reply that never
        # comes (a cut link) then stalls an idle worker that long. 2 s past the BLPOP will do.
        return self.dequeue_timeout + 2

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return self.lease_seconds

    def execute_job(self, job: LeasedJob, queue: Queue):
        why = refusal.refusal(job)
        if why is not None:
            self._refuse(job.id, queue, why)
            return
        started_at = time.time()
        # the stop request of this attempt only: a stop that comes at any moment stays
        job.stop, self._running = threading.Event(), job
        execution = self._prepare(job)
        job.lease = Lease(
            self._lease_client(), job, execution.key, execution.composite_key,
            seconds=self.lease_seconds, published_ttl=_positive(job.get_result_ttl(self.default_result_ttl)),
            started_at=started_at,
            keep=lambda: self._keep(job, queue),
        )
        job.lease.acquire()
        try:
            with contextlib.suppress(redis.RedisError):  # the busy mark only spares the worker
                self._mark_busy(job)
            self.perform_job(job, queue, execution)
        finally:
            job.lease.release()
            with contextlib.suppress(redis.RedisError):
                self.connection.hdel(self.key, BUSY_FIELD)
            self._running = None
            with contextlib.suppress(redis.RedisError):  # both heal: the prunes, the next feed
                self._ended(job, queue)
        self.set_state("idle")

    def _ended(self, job: LeasedJob, queue: Queue) -> None:
        """After an attempt: free the owner's quota slot if the job has ended (not after a
        lost lease, nor when it was requeued), and feed the queue from the backlogs."""
        fairshare.ended(self.connection, queue.name, job.id, quotas.Owner.of(job.meta).id)

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        # A job hash RQ cannot even read (a planted one) raises out of RQ's dequeue, and RQ's
        # work loop then quits: fail that job instead, and take the next one.
        while True:
            try:
                result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
                break
            except redis.RedisError:
                raise
            except Exception as e:
                if getattr(e, "job_id", None) is None or getattr(e, "queue", None) is None:
                    raise
                self._refuse(e.job_id, e.queue, f"the job cannot be read ({type(e).__name__}: {e})"[:500])
        if result is not None:
            # the queue is one shorter: the next fair job takes the place (for the next worker)
            with contextlib.suppress(redis.RedisError):
                fairshare.feed(self.connection, result[1].name)
        return result

    def _refuse(self, job_id: str, queue: Queue, why: str) -> None:
        """Fail ``job_id`` as a refused job without running or importing anything of it
        (see refusal.py): its status, error and end written as RQ would, no retry spent."""
        log.error("job %s refused: %s", job_id, why)
        error = {"reason": refusal.REASON, "message": why, "exit_code": None, "stderr_tail": ""}
        ttl = get_settings().job_ttl
        key = Job.key_for(job_id)
        with self.connection.pipeline() as p:
            p.lrem(queue.intermediate_queue_key, 1, job_id)
            p.hset(key, mapping={"status": JobStatus.FAILED.value, "meta": SERIALIZER.dumps({"error": error}),
                                 "ended_at": utcformat(now()), "retries_left": 0, "worker_name": self.name})
            p.expire(key, ttl)
            p.zadd(FailedJobRegistry(queue.name, connection=self.connection).key, {job_id: time.time() + ttl})
            try:
                p.execute()
            except redis.ResponseError as e:  # not even a hash: out of the queue is all there is to do
                log.error("job %s: its refusal not recorded: %s", job_id, e)

    def _keep(self, job: LeasedJob, queue: Queue) -> None:
        """After each renewal of the lease: keep the busy mark, and requeue lost jobs (idle
        workers only clean up between waits, and when every worker is busy there is no idle
        one)."""
        self._mark_busy(job)
        reap_abandoned(self.connection, queue.name)
        fairshare.feed(self.connection, queue.name)

    def _mark_busy(self, job: LeasedJob) -> None:
        """Say in the worker's hash which job it runs, and keep the hash. RQ sets the hash's
        expiry to the heartbeat TTL (here the lease) when a job starts, and a SimpleWorker
        sends no heartbeat until the job ends: left alone, the hash and its busy mark would
        vanish one lease into every longer job, and scaling would take the worker for idle.
        A dead worker's mark counts for nothing once its lease runs out (queue.queue_stats)."""
        with self.connection.pipeline(transaction=False) as p:
            p.hset(self.key, BUSY_FIELD, job.id)
            p.expire(self.key, int(self.worker_ttl + 60))
            p.execute()

    def handle_job_success(self, job: LeasedJob, queue: Queue, started_job_registry, execution):
        """RQ's bookkeeping of a finished job, retried within the lease until Redis has it:
        a reset connection must not turn a published result into a failure to retry."""
        self._settle(job, execution, lambda: super(PipeqWorker, self).handle_job_success(job, queue, started_job_registry, execution))

    def handle_job_failure(self, job: LeasedJob, queue: Queue, started_job_registry=None, exc_string="", execution=None):
        """RQ's bookkeeping of a failed attempt, retried within the lease until Redis has it;
        none at all for an attempt whose lease was lost: the job is another attempt's now."""
        if job.lease is not None and job.lease.lost.is_set():
            self._forget(job, execution)
            return
        self._settle(job, execution, lambda: super(PipeqWorker, self).handle_job_failure(job, queue, started_job_registry, exc_string, execution))

    def _settle(self, job: LeasedJob, execution, record: Callable[[], None]) -> None:
        # RQ removes the attempt's entry from the started registry in the same transaction
        # as the rest: while it is there, the end of the job is not recorded yet (RQ logs a
        # failed transaction and returns, so the entry is what tells).
        lease = job.lease
        if lease is None:
            record()
            return

        def recorded() -> None:
            with contextlib.suppress(*retry.REDIS_TRANSIENT):
                record()
            if self.connection.zscore(lease.registry_key, lease.member) is not None:
                raise _NotRecorded(job.id)

        try:
            lease.retrying_also((_NotRecorded,), recorded)
        except LeaseLost:
            log.error("job %s: its end could not be recorded before the lease ran out; "
                      "the next attempt takes it over (and reuses published results)", job.id)
            return
        lease.release()

    def _forget(self, job: LeasedJob, execution) -> None:
        """Drop this worker's record of an attempt whose lease was lost, and nothing else:
        its entry in the started registry, if still there, is the reaper's to requeue."""
        log.warning("job %s: attempt ended, leaving the job to its next attempt: its lease was lost", job.id)
        if execution is not None:
            self.executions.pop(execution.id, None)

    def _prepare(self, job: LeasedJob):
        """RQ's record of the attempt (its lease entry among it), retrying transient errors
        for up to a lease. A try whose reply was lost may have made an entry: it is removed
        before the next try, or it would expire and have the job requeued while it runs."""
        deadline = time.time() + self.lease_seconds
        for attempt in retry.until(lambda: deadline):
            with attempt:
                for stale in list(self.executions.values()) if attempt.retry_state.attempt_number > 1 else ():
                    with self.connection.pipeline() as p:
                        self.cleanup_execution(job, pipeline=p, execution=stale)
                        p.execute()
                execution = self.prepare_execution(job)
        return execution

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int):
        # only a heartbeat of the job: RQ's bookkeeping that follows retries within the lease
        try:
            super().handle_execution_ended(job, queue, heartbeat_ttl)
        except retry.REDIS_TRANSIENT:
            job.ended_at = job.ended_at or now()

    def handle_exception(self, job: Job, *exc_info):
        if exc_info and exc_info[0] is SystemExit:
            # a cold shutdown (SIGINT, or a second SIGTERM) ended the attempt, its
            # pipeline killed: no error of the job's, no traceback; RQ retries it next
            self.log.warning("job %s: attempt ended by the worker's cold shutdown; the job is given back", job.id)
            return
        super().handle_exception(job, *exc_info)

    def _lease_client(self) -> redis.Redis:
        if self._leases is None:
            self._leases = lease_client(self.connection, self.lease_seconds)
        return self._leases

    # RQ's work loop quits on a Redis error in a heartbeat (after each job), its state,
    # maintenance or suspension check: the dequeue that follows meets the same error and
    # waits it out instead.
    def set_state(self, state, pipeline=None):
        try:
            super().set_state(state, pipeline)
        except retry.REDIS_TRANSIENT as e:
            log.warning("worker state %s not recorded: %s", state, e)

    def heartbeat(self, timeout=None, pipeline=None):
        try:
            super().heartbeat(timeout, pipeline)
        except retry.REDIS_TRANSIENT as e:
            log.warning("worker heartbeat not sent: %s", e)

    def check_for_suspension(self, burst: bool) -> None:
        try:
            super().check_for_suspension(burst)
        except retry.REDIS_TRANSIENT as e:
            log.warning("suspension not checked: %s", e)

    def clean_registries(self):
        # RQ's maintenance under the same lock as every other clean-up (see queue.cleaning)
        with contextlib.ExitStack() as held:
            if all([held.enter_context(cleaning(self.connection, q.name)) for q in self.queues]):
                super().clean_registries()
                return
        self.last_cleaned_at = now()  # another process is cleaning: try again next interval

    def run_maintenance_tasks(self):
        try:
            super().run_maintenance_tasks()
            for q in self.queues:  # a feed missed (a worker killed between its dequeue and its feed)
                fairshare.feed(self.connection, q.name)
        except retry.REDIS_TRANSIENT as e:
            log.warning("registry clean-up put off: %s", e)
            return
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

    def _install_signal_handlers(self):
        super()._install_signal_handlers()
        signal.signal(signal.SIGINT, self._stop_now)
        if self.stop_before_ready is not None and self.stop_before_ready.is_set():
            # a signal came while the worker started (see starting.hold_stop_signals):
            # stop now, as RQ does for a stop while idle, before taking any job
            self.log.info("Worker %s: stop requested while starting", self.name)
            self._stop_requested = True

    def _stop_now(self, signum, frame):
        """SIGINT: RQ's cold shutdown at once, not after a warm one (a SystemExit that ends
        the running attempt; its pipeline goes with it, see ``task._run``); idle, a clean stop."""
        if self.get_state() != WorkerStatus.BUSY:
            self.request_stop(signum, frame)
            return
        self.log.warning("Worker %s: stopping now, the running job goes back to the queue", self.name)
        self._stop_requested = True  # RQ records the attempt's end, then leaves its loop
        raise SystemExit()

    def kill_horse(self, sig=signal.SIGTERM):
        """RQ calls this for a stop request of the current job: end its pipeline."""
        job = self._running
        if job is not None and job.stop is not None:
            job.stop.set()


class _NotRecorded(Exception):
    """RQ's record of a job's end is not in Redis yet (its attempt's entry is still there)."""


def _positive(ttl: int | None) -> int:
    """A TTL for Redis' EXPIRE: RQ's "never" (-1) and "not kept" (0) become a week."""
    return ttl if ttl and ttl > 0 else 7 * 24 * 3600


class _QuietMaintenance(logging.Filter):
    """Drop RQ's line per registry clean-up: pipeq runs it every few seconds, not every 10 minutes."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (msg.startswith("Worker %s: cleaning") or "cleaning registries" in msg or "cleaning group registries" in msg)


def worker_name(settings: Settings) -> str:
    """The RQ worker name: PIPEQ_WORKER_NAME, else the pod name (HOSTNAME), else host-pid."""
    return settings.worker_name or os.environ.get("HOSTNAME") or f"{socket.gethostname()}-{os.getpid()}"


def run_worker(settings: Settings | None = None, *, burst: bool = False, stop: threading.Event | None = None) -> bool:
    """Run a worker on ``settings.queue`` until SIGTERM (or, with ``burst``, until the queue
    is empty); returns whether it did any job (RQ's answer). ``stop``: the event of
    ``starting.hold_stop_signals`` if the caller held the signals from before its imports;
    a signal while the worker starts is a stop too, and a clean one."""
    stop = stop or hold_stop_signals()
    settings = settings or get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("rq.worker").addFilter(_QuietMaintenance())
    # RQ raises the socket timeout to its longest wait for a job (see connection_timeout)
    conn = connect(settings.redis_url, timeout=2.0)
    name = worker_name(settings)
    _forget_stale_registration(conn, name)
    PipeqWorker.lease_seconds = settings.lease_seconds
    worker = PipeqWorker(
        [settings.queue],
        connection=conn,
        name=name,
        maintenance_interval=settings.maintenance_interval,
    )
    worker.stop_before_ready = stop
    return worker.work(burst=burst, with_scheduler=False, logging_level="INFO")


def _forget_stale_registration(conn: redis.Redis, name: str) -> None:
    """A pod restarted under the same name finds its old registration: record its death.

    RQ refuses to start a worker whose name is registered and alive. Pod names are unique
    while the pod lives, so a registration under our name is ours from before a restart.
    """
    stale = PipeqWorker.find_by_key(PipeqWorker.redis_worker_namespace_prefix + name, connection=conn)
    if stale is not None:
        stale.register_death()
