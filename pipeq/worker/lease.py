"""A worker's lease on the job it runs, and the fence that guards the job's results.

The lease is the attempt's entry (``<job_id>:<execution_id>``) in RQ's started registry of
the job's queue, scored by the time it runs out. RQ adds it when the attempt starts;
:meth:`Lease.acquire` keeps renewing it every ``seconds / 3`` to ``now + seconds``. A worker
that dies stops renewing; once the score is past, a clean-up (``queue.reap_abandoned`` under
``queue.cleaning``, or RQ's maintenance) requeues the job, and the next attempt has a new
entry. So an attempt owns its job exactly while its own entry is in the registry with a
score in the future.

Contract:

- **Decided by what Redis says.** The lease is lost only when Redis answers that the entry
  is gone or has run out (:attr:`lost` is set then). A transient error (a reset connection, a
  reply that does not come) is retried, for as long as the lease lasts by the last renewal
  Redis confirmed (:attr:`expires_at`); an attempt that cannot reach Redis before then
  cannot prove it still owns the job, and counts the lease as lost.
- **Check and publish are one step.** :meth:`publish` gives the store :meth:`claim`, one
  script that checks the entry and records the publication (``pipeq:published:<job_id>`` =
  this attempt's entry); the store makes the results the job's (a rename, or one PUT of a
  manifest) only after it said yes. An attempt whose lease is gone can no longer record one.
  An attempt that finds a record but no results yet (its predecessor was moving them, or
  died doing so) waits up to a lease for them (:meth:`publication`) before it runs the
  pipeline again.
- **A lost lease ends the attempt, nothing else.** The attempt stops its pipeline and
  raises :class:`LeaseLost`; the worker leaves the job's RQ state to the attempt that owns
  it now, or to the reaper that will requeue it (no failure is recorded, no retry is spent).
- :meth:`release` stops the renewals; RQ removes the entry when it records the job's end.

The lease talks to Redis over a client of its own with a short socket timeout (a fraction
of the lease), so that a reply that never comes is retried well before the lease runs out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from rq.job import Job

from pipeq import keys, retry
from pipeq.queue import PipeqJob

log = logging.getLogger("pipeq.lease")


T = TypeVar("T")

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

# Record the publication if the lease is ours and live, or if this attempt recorded it
# already (a retry after a reply that was lost, the lease perhaps run out since); 0 otherwise.
_CLAIM = """
if redis.call('GET', KEYS[2]) == ARGV[1] then return 1 end
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[3])
  return 1
end
return 0
"""


class LeaseLost(Exception):
    """Redis says another attempt owns the job now (or this one could not prove it owns it)."""


class LeasedJob(PipeqJob):
    """RQ's job as a pipeq worker runs it: with its lease and a stop request of its own."""

    lease: Lease | None = None
    stop: threading.Event | None = None


def lease_client(conn: redis.Redis, seconds: float) -> redis.Redis:
    """A client of ``conn``'s Redis whose replies time out after a fifth of the lease."""
    timeout = max(0.5, seconds / 5)
    pool = conn.connection_pool
    kwargs = dict(pool.connection_kwargs, socket_timeout=timeout, socket_connect_timeout=timeout)
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


class Lease:
    """The lease of one attempt (see the module's docstring for the contract).

    ``client`` is a :func:`lease_client`; ``started_at`` is when RQ added the entry (its
    first expiry is ``started_at + seconds``); ``keep`` runs after each renewal, in the
    renewal thread (the worker reaps abandoned jobs there).
    """

    def __init__(self, client: redis.Redis, job: Job, execution_key: str, member: str, *,
                 seconds: float, published_ttl: int, started_at: float, keep: Callable[[], None] | None = None):
        self.client, self.job_id, self.seconds = client, job.id, seconds
        self.registry_key = job.started_job_registry.key
        self.execution_key, self.member = execution_key, member
        self.published_key = keys.published(job.id)
        self.published_ttl = published_ttl
        self.expires_at = started_at + seconds
        self.lost = threading.Event()
        self.retries = 0  # transient errors retried, for the logs and the tests
        self._keep = keep
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._renew = client.register_script(_RENEW)
        self._claim = client.register_script(_CLAIM)

    # -- the lease ---------------------------------------------------------------------

    def acquire(self) -> None:
        """Start renewing the entry RQ made for this attempt, every ``seconds / 3``."""
        self._thread = threading.Thread(target=self._renewals, name=f"lease-{self.job_id}", daemon=True)
        self._thread.start()

    def renew(self) -> bool:
        """Push the expiry to ``now + seconds``; False (and :attr:`lost`) if Redis says the
        entry is gone or ran out. Transient errors raise: the next renewal tries again."""
        now = time.time()
        ok = self._renew(keys=[self.registry_key, self.execution_key],
                         args=[self.member, now + self.seconds, int(self.seconds * 2), now])
        if ok:
            self.expires_at = now + self.seconds
        else:
            self._lose("the lease ran out or another attempt took the job over")
        return bool(ok)

    def held(self) -> bool:
        """Whether Redis says the entry is ours and live, retrying transient errors within the lease."""
        try:
            score = self.retrying(self.client.zscore, self.registry_key, self.member)
        except LeaseLost:
            return False
        if score is None or score <= time.time():
            self._lose("the lease is gone from the started registry")
            return False
        return True

    def release(self) -> None:
        """Stop the renewals (the entry itself goes when RQ records the end of the job)."""
        self._done.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1)

    # -- the fence ---------------------------------------------------------------------

    def claim(self) -> bool:
        """Check that the lease is this attempt's and live, and record that it publishes
        the job's results, in one step; False (and :attr:`lost`) when Redis says it is not.
        The store calls this just before the step that makes its results the job's."""
        ok = self.retrying(self._claim, keys=[self.registry_key, self.published_key],
                           args=[self.member, time.time(), self.published_ttl])
        if not ok:
            self._lose("the lease ran out or another attempt took the job over: its results are not published")
        return bool(ok)

    def publish(self, attempt) -> bool:
        """Have ``attempt`` (a ``pipeq.storage.base.Attempt``) make its results the job's, with
        :meth:`claim` as the check it runs just before the step that counts; False if the
        lease said no (then nothing is published)."""
        return attempt.publish(self.claim)

    def publication(self) -> str | None:
        """The lease entry of the attempt that recorded a publication of this job, if any."""
        value = self.retrying(self.client.get, self.published_key)
        return value.decode() if isinstance(value, bytes) else value

    # -- Redis calls of the attempt ----------------------------------------------------

    def retrying(self, call: Callable[..., T], *args, **kwargs) -> T:
        """``call()``, retrying transient Redis errors (``pipeq.retry``) while the lease
        lasts by its last confirmed renewal; LeaseLost once it has run out (or was lost)."""
        return self.retrying_also((), call, *args, **kwargs)

    def retrying_also(self, also: tuple[type[BaseException], ...], call: Callable[..., T], *args, **kwargs) -> T:
        """:meth:`retrying`, retrying the errors ``also`` too (a check that is not true yet)."""
        if self.lost.is_set():
            raise LeaseLost(self.job_id)
        try:
            return retry.until(lambda: self.expires_at, given_up=self.lost.is_set, also=also,
                               on_retry=self._retried)(call, *args, **kwargs)
        except (*retry.REDIS_TRANSIENT, *also) as e:
            self._lose(f"Redis unreachable until the lease ran out ({e})")
            raise LeaseLost(self.job_id) from e

    def _retried(self, state) -> None:
        self.retries += 1
        log.warning("job %s: transient Redis error, retrying within the lease (%.1f s left): %s",
                    self.job_id, self.expires_at - time.time(), state.outcome.exception())

    def _lose(self, why: str) -> None:
        if not self.lost.is_set() and not self._done.is_set():
            log.error("job %s: lease lost: %s", self.job_id, why)
        self.lost.set()

    def _renewals(self) -> None:
        # Renewals keep to a clock of their own, one every ``seconds / 3`` from the last that
        # Redis confirmed, whatever the work after each takes (``keep`` reaps, which may be
        # slow on a loaded machine): so the lease never has less than about 2/3 of its length
        # left, and a Redis restart shorter than that never costs the attempt its lease.
        period = self.seconds / 3
        wait = period
        while not self._done.wait(wait):
            try:
                if not self.renew():
                    return
            except retry.REDIS_TRANSIENT as e:
                self.retries += 1
                log.warning("job %s: lease not renewed (%s); %.1f s left", self.job_id, e, self.expires_at - time.time())
                wait = min(period, 0.5)  # try again soon: the lease is running out
                continue
            renewed = time.monotonic()
            if self._keep is not None:
                try:
                    self._keep()
                except redis.RedisError:
                    pass
            wait = max(0.0, period - (time.monotonic() - renewed))
