"""Queue access shared by the API, the workers, the operator and ``pipeq dev``.

Everything that touches RQ's keys directly lives here, so that the rest of pipeq speaks
in jobs and queues, not in Redis keys.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis
from rq import Queue, Retry, Worker, worker_registration
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from pipeq import keys, retry
from pipeq.keys import BACKLOG_PREFIX, BACKLOGGED, ENQUEUED_CHANNEL, JOBS_INDEX

#: The queue of the API, the workers and a WorkerPool that name none.
DEFAULT_QUEUE = "pipeline_tasks"
#: How long a clean-up may hold the queue's cleaning lock (see ``cleaning``).
CLEAN_LOCK_SECONDS = 10
#: The field a pipeq worker sets in its RQ worker hash while it runs a job (value: job_id).
BUSY_FIELD = "pipeq_job"
#: The task the workers run, the only function a pipeq worker runs (``pipeq.worker.refusal``).
TASK = "pipeq.worker.task.run_pipeline"
#: How pipeq's jobs are written to Redis: JSON, so that what a client writes there is data,
#: never code (RQ's default, pickle, runs what it loads). Every Queue, Job, registry and
#: worker of pipeq's is made with it, through the helpers below.
SERIALIZER = JSONSerializer
#: How long the mark of a submission given up after its enqueue went unanswered (see
#: ``enqueue_run``) is kept: far longer than any stall during which the transaction could arrive.
ABANDONED_TTL = 86400



class EnqueueUncertain(redis.RedisError):
    """The enqueue got no answer and Redis could not say afterwards whether it happened: the
    job may exist (then it runs), or may not (its folder is then pruned as an orphan)."""


def connect(url: str, *, timeout: float = 5.0) -> redis.Redis:
    """A Redis client for ``url`` with bounded timeouts (never hangs a request forever)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )


class NotPipeqTask(Exception):
    """A job names another function than pipeq's task (or an instance): it is not run, and
    what it names is not imported. ``func_name`` is what it names."""

    def __init__(self, func_name):
        super().__init__(f"the job names {func_name!r}; pipeq runs only {TASK}")
        self.func_name = func_name


class PipeqJob(Job):
    """RQ's job as pipeq reads and writes it: always JSON (whatever serializer RQ passes),
    the function it runs is pipeq's task or nothing, and it has no callbacks or webhooks.
    pipeq sets none of these; a job planted in Redis with one must not make a worker or a
    clean-up (RQ's runs a failure callback) import, call or POST anything it names."""

    def __init__(self, id: str | None = None, connection: redis.Redis | None = None, serializer=None):
        super().__init__(id, connection=connection, serializer=SERIALIZER)

    @property
    def func(self):
        if self.func_name != TASK or self.instance is not None:
            raise NotPipeqTask(self.func_name)
        return Job.func.fget(self)

    success_callback = failure_callback = stopped_callback = property(lambda self: None)

    def send_webhooks(self, status, *, exc_string: str | None = None) -> None:
        return None


def get_queue(conn: redis.Redis, name: str) -> Queue:
    """RQ's queue ``name``, reading and writing pipeq's jobs (JSON, see PipeqJob)."""
    return Queue(name, connection=conn, job_class=PipeqJob, serializer=SERIALIZER)


def fetch_job(conn: redis.Redis, job_id: str) -> PipeqJob:
    """The job ``job_id`` (NoSuchJobError when there is none)."""
    return PipeqJob.fetch(job_id, connection=conn)


def fetch_jobs(conn: redis.Redis, job_ids: list[str]) -> list[PipeqJob | None]:
    """The jobs ``job_ids`` in one round trip (None for each that is gone)."""
    return PipeqJob.fetch_many(job_ids, connection=conn)


def started_registry(conn: redis.Redis, queue_name: str) -> StartedJobRegistry:
    """The started registry (the running jobs' leases) of ``queue_name``."""
    return StartedJobRegistry(queue_name, connection=conn, job_class=PipeqJob, serializer=SERIALIZER)


def enqueue_run(
    conn: redis.Redis,
    queue_name: str,
    job_id: str,
    kwargs: dict,
    *,
    meta: dict,
    retries: int,
    ttl: int,
    settings=None,
) -> Job:
    """Enqueue one pipeline run under ``job_id``.

    The job has no RQ timeout (-1): the worker enforces the pool's pipeline timeout itself,
    so that one job can run on pools with different timeouts. ``retries`` extra attempts are
    granted for a job whose worker died; the task forfeits them when the pipeline itself fails.

    The owner (``meta["owner"]``, see ``quotas.Owner``) is checked against its quotas in the
    same transaction that admits the job: over one, QuotaExceeded and nothing is stored. With
    the fair share on, the job goes to its owner's backlog, which feeds the queue
    (``pipeq.fairshare``). ``settings``: the quotas and weights (default: the process's).

    Raises RedisError only when the job surely does not exist and never will, and
    EnqueueUncertain when that cannot be told. An error after the transaction was sent is
    ambiguous (a reply that timed out may follow a transaction Redis ran, or will run once it
    resumes): then the submission is given up in Redis, atomically, unless the job exists,
    and the transaction, which watches that mark, can no longer happen after it.
    """
    from pipeq import fairshare, quotas

    if settings is None:
        from pipeq.settings import get_settings

        settings = get_settings()
    owner = quotas.Owner.of(meta)
    limits = quotas.limits_for(owner.groups, owner.admin, settings)
    q = (_Backlogging if settings.fair_share else Queue)(queue_name, connection=conn, job_class=PipeqJob, serializer=SERIALIZER)
    # One transaction: the job, its place in the queue (or backlog) and in the index, its
    # owner's quota use (RQ alone makes two round trips, each an fsync with appendfsync
    # always), after a WATCH of the abandoned mark and of the owner's use when it is capped.
    sent = False
    try:
        with conn.pipeline() as p:
            while True:
                # if this fails, nothing of the job was sent
                p.watch(keys.abandoned(job_id), *(quotas.watched(owner.id) if limits else ()))
                now = time.time()
                if limits and not quotas.check(p, owner.id, limits, now):
                    continue  # it pruned ended jobs: read the use again
                p.multi()
                job = q.enqueue_call(
                    TASK,
                    kwargs=kwargs,
                    job_id=job_id,
                    timeout=-1,
                    result_ttl=ttl,
                    failure_ttl=ttl,
                    meta=meta,
                    # a lost job goes back to the head of the queue: it waited its turn once already
                    retry=Retry(max=retries, enqueue_at_front=True) if retries else None,
                    pipeline=p,
                )
                if settings.fair_share:
                    fairshare.enqueue(p, queue_name, job_id, owner.id, fairshare.weight_for(owner.groups, settings))
                quotas.admit(p, owner.id, job_id, now, ttl)
                p.zadd(JOBS_INDEX, {job_id: now})
                p.zremrangebyscore(JOBS_INDEX, 0, now - ttl)
                mine = keys.owner_index(owner.id)
                p.zadd(mine, {job_id: now})
                p.zremrangebyscore(mine, 0, now - ttl)
                p.expire(mine, ttl)  # an owner who stops submitting leaves no index behind
                p.publish(ENQUEUED_CHANNEL, queue_name)
                sent = True
                try:
                    p.execute()
                except redis.WatchError:
                    if limits:  # another admission of this owner came first: check again
                        sent = False
                        continue
                    raise
                return job
    except redis.RedisError as e:
        # checked once out of the block: leaving it after a failed EXEC sends UNWATCH, whose
        # TimeoutError from a stalled Redis would otherwise stand in for the check's answer
        if not sent or not _exists_or_abandon(conn, job_id, e):
            raise
    return job


class _Backlogging(Queue):
    """The queue as ``enqueue_run`` uses it with the fair share on: RQ saves the job as
    queued, and ``fairshare.enqueue`` puts its id into the owner's backlog instead of the list."""

    def push_job_id(self, job_id: str, pipeline=None, at_front: bool = False):
        if at_front:  # not from enqueue_run; kept for completeness
            super().push_job_id(job_id, pipeline=pipeline, at_front=at_front)


# The job exists (1), or the submission is marked abandoned, which aborts its transaction
# if it is still on its way (0).
_ABANDON = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
redis.call('SET', KEYS[2], 1, 'EX', ARGV[1])
return 0
"""


def _exists_or_abandon(conn: redis.Redis, job_id: str, error: redis.RedisError, tries: int = 3) -> bool:
    """After an unanswered enqueue of ``job_id``: True if the job exists, False if it does not
    and now cannot; EnqueueUncertain if Redis does not answer ``tries`` times."""
    try:
        return bool(retry.attempts(tries)(conn.eval, _ABANDON, 2, Job.key_for(job_id), keys.abandoned(job_id), ABANDONED_TTL))
    except redis.RedisError:
        raise EnqueueUncertain(f"Redis did not confirm the job or its absence ({type(error).__name__}: {error})") from error


@dataclass
class QueueStats:
    """What scaling needs to know about one queue, read in one round trip."""

    #: every waiting job: the queue's and the owners' backlogs (see ``backlogged``)
    queued: int
    running: int
    expired: int = 0
    #: how many of ``queued`` wait in the fair share's backlogs
    backlogged: int = 0
    #: busy worker name → job_id
    busy: dict[str, str] = field(default_factory=dict)


# One round trip: queue length, live and expired entries of the started registry, the
# backlogs' sizes (the owners in KEYS[4], each backlog ARGV[3] .. owner), and the job each
# registered worker of the queue is running. A worker counts as busy only while its
# job's lease is live: a killed worker's hash (and its busy mark) outlives it by a few
# leases, its lease does not. Registry members are "<job_id>:<execution_id>".
_STATS = """
local now = tonumber(ARGV[1])
local queued = redis.call('LLEN', KEYS[1])
local live = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf')
local expired = redis.call('ZCOUNT', KEYS[2], '-inf', now)
local leased = {}
for _, member in ipairs(live) do
  leased[string.match(member, '^([^:]+)')] = true
end
local busy = {}
for _, wkey in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local job = redis.call('HGET', wkey, ARGV[2])
  if job and leased[job] then
    table.insert(busy, wkey)
    table.insert(busy, job)
  end
end
local backlogged = 0
for _, o in ipairs(redis.call('SMEMBERS', KEYS[4])) do backlogged = backlogged + redis.call('ZCARD', ARGV[3] .. o) end
return {queued, #live, expired, busy, backlogged}
"""

WORKER_PREFIX = Worker.redis_worker_namespace_prefix


def _keys(queue_name: str) -> list[str]:
    """The queue's list, its started registry (the leases) and its set of workers."""
    return [
        Queue.redis_queue_namespace_prefix + queue_name,
        StartedJobRegistry.key_template.format(queue_name),
        worker_registration.WORKERS_BY_QUEUE_KEY % queue_name,
    ]


def queue_stats(conn: redis.Redis, queue_name: str) -> QueueStats:
    """Queued jobs (the queue's and the backlogs', whoever's), running jobs (live leases),
    expired leases and busy workers of a queue."""
    listed, running, expired, busy, backlogged = conn.eval(
        _STATS, 4, *_keys(queue_name), BACKLOGGED.format(queue=queue_name),
        time.time(), BUSY_FIELD, BACKLOG_PREFIX.format(queue=queue_name))
    pairs = dict(zip(busy[::2], busy[1::2]))
    return QueueStats(
        queued=waiting(int(listed), int(backlogged)),
        running=int(running),
        expired=int(expired),
        busy={_text(k)[len(WORKER_PREFIX):]: _text(v) for k, v in pairs.items()},
        backlogged=int(backlogged),
    )


def waiting(listed: int, backlogged: int) -> int:
    """The jobs scaling counts as queued: those in the RQ queue and those in the backlogs
    (a backlogged job needs a worker as much as a listed one)."""
    return max(0, listed) + max(0, backlogged)


def cancel_queued(conn: redis.Redis, job: Job) -> bool:
    """Cancel ``job`` (RQ's cancel) if it still waits in its queue or its owner's backlog, in
    one transaction with that check: True when canceled (its quota slot freed), False when it
    waits in neither (a worker has taken it, perhaps since the caller read it as queued: stop
    it instead)."""
    from pipeq import fairshare, quotas

    q = get_queue(conn, job.origin)
    owner = quotas.Owner.of(job.meta).id
    backlog = fairshare.backlog_key(job.origin, owner)

    def cancel(p: redis.client.Pipeline) -> bool:
        listed = p.lpos(q.key, job.id) is not None
        if not listed and not fairshare.backlogged(p, job.origin, job.id, owner):
            return False
        p.multi()
        if not listed:
            fairshare.withdraw(p, job.origin, job.id, owner)
        job.cancel(pipeline=p)
        quotas.release(p, owner, job.id)
        return True

    # a dequeue changes the queue (and the job, when the worker marks it started), a feed
    # the backlog: then the check and the cancel are tried again (redis-py's WATCH loop)
    return conn.transaction(cancel, q.key, job.key, backlog, value_from_callable=True)


def request_stop(conn: redis.Redis, job_id: str, ttl: int) -> None:
    """Record that ``job_id`` must stop. RQ's stop command reaches only a live worker; this
    mark also reaches the next attempt of a job whose worker died (see ``stop_requested``)."""
    conn.set(keys.stop(job_id), 1, ex=ttl)


def stop_requested(conn: redis.Redis, job_id: str) -> bool:
    return bool(conn.exists(keys.stop(job_id)))


@contextlib.contextmanager
def cleaning(conn: redis.Redis, queue_name: str) -> Iterator[bool]:
    """Hold the right to clean up ``queue_name``'s registries, if no one else does: yields
    True then, else False. RQ's clean-up reads the expired entries and requeues them in a
    later transaction, so two clean-ups at once requeue a job twice and two workers run it
    as one attempt. Every clean-up (``reap_abandoned`` in workers, the operator and ``pipeq
    dev``; RQ's maintenance in pipeq workers) runs under this lock. It expires after
    ``CLEAN_LOCK_SECONDS``, so a holder killed mid-way delays reaping by that much at most
    (RQ's own maintenance lock lasts 15 minutes)."""
    lock = conn.lock(keys.cleaning(queue_name), timeout=CLEAN_LOCK_SECONDS, blocking=False)
    held = lock.acquire()
    try:
        yield bool(held)
    finally:
        if held:
            with contextlib.suppress(redis.exceptions.LockError):
                lock.release()


def reap_abandoned(conn: redis.Redis, queue_name: str) -> int:
    """Requeue (or fail, when out of retries) the jobs whose worker stopped renewing the lease.

    A running job's lease is its entry in RQ's started registry; pipeq workers renew it every
    few seconds, so an expired entry means the worker died. RQ's own clean-up does the work:
    retry while ``retries_left``, else move to failed as abandoned, under :func:`cleaning`
    (when another clean-up is under way, this one leaves it the work). Returns how many
    expired entries there were.
    """
    now = time.time()
    key = _keys(queue_name)[1]
    expired = conn.zcount(key, "-inf", now)
    if expired:
        with cleaning(conn, queue_name) as mine:
            if mine:
                started_registry(conn, queue_name).cleanup(now)
    return int(expired)


def running_job_ids(conn: redis.Redis, queue_name: str) -> list[str]:
    """Ids of the jobs holding a live lease on the queue."""
    entries = conn.zrangebyscore(_keys(queue_name)[1], f"({time.time()}", "+inf")
    return [_text(e).split(":", 1)[0] for e in entries]


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
