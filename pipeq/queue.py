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

#: The queue of the API, the workers and a WorkerPool that name none.
DEFAULT_QUEUE = "pipeline_tasks"
#: Pub/sub channel on which every enqueue names its queue, in the enqueue's transaction: the
#: operator's scalers wake on it instead of waiting for their next poll (a signal, not a
#: source of truth: a subscriber that misses one still sees the job at that poll).
ENQUEUED_CHANNEL = "pipeq:enqueued"
#: How long a clean-up may hold the queue's cleaning lock (see ``cleaning``).
CLEAN_LOCK_SECONDS = 10
#: The field a pipeq worker sets in its RQ worker hash while it runs a job (value: job_id).
BUSY_FIELD = "pipeq_job"
#: Sorted set of every job, scored by enqueue time, for ``GET /jobs``.
JOBS_INDEX = "pipeq:jobs"
#: The task the workers run.
TASK = "pipeq.worker.task.run_pipeline"
#: Marks a submission given up after its enqueue went unanswered (see ``enqueue_run``); kept
#: far longer than any stall during which the unanswered transaction could still arrive.
ABANDONED_PREFIX = "pipeq:abandoned:"
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


def get_queue(conn: redis.Redis, name: str) -> Queue:
    return Queue(name, connection=conn)


def enqueue_run(
    conn: redis.Redis,
    queue_name: str,
    job_id: str,
    kwargs: dict,
    *,
    meta: dict,
    retries: int,
    ttl: int,
) -> Job:
    """Enqueue one pipeline run under ``job_id``.

    The job has no RQ timeout (-1): the worker enforces the pool's pipeline timeout itself,
    so that one job can run on pools with different timeouts. ``retries`` extra attempts are
    granted for a job whose worker died; the task forfeits them when the pipeline itself fails.

    Raises RedisError only when the job surely does not exist and never will, and
    EnqueueUncertain when that cannot be told. An error after the transaction was sent is
    ambiguous (a reply that timed out may follow a transaction Redis ran, or will run once it
    resumes): then the submission is given up in Redis, atomically, unless the job exists,
    and the transaction, which watches that mark, can no longer happen after it.
    """
    q = get_queue(conn, queue_name)
    now = time.time()
    sent = False
    # One transaction: the job, its place in the queue and in the index (RQ alone makes two
    # round trips, each an fsync with appendfsync always), after a WATCH of the abandoned mark.
    try:
        with conn.pipeline() as p:
            p.watch(ABANDONED_PREFIX + job_id)  # if this fails, nothing of the job was sent
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
            p.zadd(JOBS_INDEX, {job_id: now})
            p.zremrangebyscore(JOBS_INDEX, 0, now - ttl)
            p.publish(ENQUEUED_CHANNEL, queue_name)
            sent = True
            p.execute()
    except redis.RedisError as e:
        # checked once out of the block: leaving it after a failed EXEC sends UNWATCH, whose
        # TimeoutError from a stalled Redis would otherwise stand in for the check's answer
        if not sent or not _exists_or_abandon(conn, job_id, e):
            raise
    return job


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
    for _ in range(tries):
        try:
            return bool(conn.eval(_ABANDON, 2, Job.key_for(job_id), ABANDONED_PREFIX + job_id, ABANDONED_TTL))
        except redis.RedisError:
            continue
    raise EnqueueUncertain(f"Redis did not confirm the job or its absence ({type(error).__name__}: {error})") from error


@dataclass
class QueueStats:
    """What scaling needs to know about one queue, read in one round trip."""

    queued: int
    running: int
    expired: int = 0
    #: busy worker name → job_id
    busy: dict[str, str] = field(default_factory=dict)


# One round trip: queue length, live and expired entries of the started registry, and the
# job each registered worker of the queue is running. A worker counts as busy only while its
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
return {queued, #live, expired, busy}
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
    """Queued jobs, running jobs (live leases), expired leases and busy workers of a queue."""
    queued, running, expired, busy = conn.eval(_STATS, 3, *_keys(queue_name), time.time(), BUSY_FIELD)
    pairs = dict(zip(busy[::2], busy[1::2]))
    return QueueStats(
        queued=int(queued),
        running=int(running),
        expired=int(expired),
        busy={_text(k)[len(WORKER_PREFIX):]: _text(v) for k, v in pairs.items()},
    )


def cancel_queued(conn: redis.Redis, job: Job, tries: int = 20) -> bool:
    """Cancel ``job`` (RQ's cancel) if it still waits in its queue, in one transaction with
    that check: True when canceled, False when it is not in the queue (a worker has taken it,
    perhaps since the caller read it as queued: stop it instead; also after ``tries``
    transactions that lost to a change of the queue, then the stop ends it when it is taken)."""
    q = get_queue(conn, job.origin)
    with conn.pipeline() as p:
        for _ in range(tries):
            try:
                # a dequeue changes the queue (and the job, when the worker marks it started)
                p.watch(q.key, job.key)
                if p.lpos(q.key, job.id) is None:
                    return False
                p.multi()
                job.cancel(pipeline=p)
                p.execute()
                return True
            except redis.WatchError:
                continue
    return False


def request_stop(conn: redis.Redis, job_id: str, ttl: int) -> None:
    """Record that ``job_id`` must stop. RQ's stop command reaches only a live worker; this
    mark also reaches the next attempt of a job whose worker died (see ``stop_requested``)."""
    conn.set(f"pipeq:stop:{job_id}", 1, ex=ttl)


def stop_requested(conn: redis.Redis, job_id: str) -> bool:
    return bool(conn.exists(f"pipeq:stop:{job_id}"))


@contextlib.contextmanager
def cleaning(conn: redis.Redis, queue_name: str) -> Iterator[bool]:
    """Hold the right to clean up ``queue_name``'s registries, if no one else does: yields
    True then, else False. RQ's clean-up reads the expired entries and requeues them in a
    later transaction, so two clean-ups at once requeue a job twice and two workers run it
    as one attempt. Every clean-up (``reap_abandoned`` in workers, the operator and ``pipeq
    dev``; RQ's maintenance in pipeq workers) runs under this lock. It expires after
    ``CLEAN_LOCK_SECONDS``, so a holder killed mid-way delays reaping by that much at most
    (RQ's own maintenance lock lasts 15 minutes)."""
    lock = conn.lock(f"pipeq:cleaning:{queue_name}", timeout=CLEAN_LOCK_SECONDS, blocking=False)
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
                StartedJobRegistry(queue_name, connection=conn).cleanup(now)
    return int(expired)


def running_job_ids(conn: redis.Redis, queue_name: str) -> list[str]:
    """Ids of the jobs holding a live lease on the queue."""
    entries = conn.zrangebyscore(_keys(queue_name)[1], f"({time.time()}", "+inf")
    return [_text(e).split(":", 1)[0] for e in entries]


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
