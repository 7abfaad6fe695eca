"""pipeq's one retry rule for transient Redis and storage errors (with tenacity).

What is transient (:func:`transient`): an error after which the same request may succeed,
and after which Redis may or may not have done what was asked (so whatever is retried must
be safe to ask again):

- Redis: a connection refused or reset, a reply that did not come in time, a server still
  loading its data after a restart (``BusyLoadingError``, a ``ConnectionError``), a
  replica's ``READONLY`` during a failover, a cluster's ``TRYAGAIN``;
- the job store: :class:`pipeq.storage.Unavailable` whose ``.transient`` says so (its
  ``code``: unreachable, SlowDown, 503, ...). A refusal (a denied request, a missing bucket)
  is not retried.

How long to retry is the caller's to say, by a deadline: where a lease holds, the lease's
expiry by its last confirmed renewal (:meth:`pipeq.worker.lease.Lease.retrying`); else a
number of attempts. Between attempts the wait doubles from :data:`FIRST_WAIT` to
:data:`MOST_WAIT`, and never runs past the deadline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis
import tenacity

log = logging.getLogger("pipeq.retry")

#: Redis errors after which the same command may succeed.
REDIS_TRANSIENT: tuple[type[BaseException], ...] = (
    redis.ConnectionError,  # BusyLoadingError is one
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
)
FIRST_WAIT = 0.1
MOST_WAIT = 1.0


def transient(error: BaseException) -> bool:
    """Whether ``error`` is a transient Redis or storage error (see the module's docstring)."""
    if isinstance(error, REDIS_TRANSIENT):
        return True
    # imported here: pipeq.storage imports the settings, which import pipeq.queue, which uses this
    from pipeq.storage.base import Unavailable

    return isinstance(error, Unavailable) and error.transient


def backoff(first: float = FIRST_WAIT, most: float = MOST_WAIT) -> tenacity.wait.wait_base:
    """The wait before each retry: ``first``, doubling up to ``most``."""
    return tenacity.wait_exponential(multiplier=first, max=most)


def until(deadline: Callable[[], float], *, given_up: Callable[[], bool] | None = None,
          also: tuple[type[BaseException], ...] = (),
          on_retry: Callable[[tenacity.RetryCallState], None] | None = None) -> tenacity.Retrying:
    """Retry transient errors (and ``also``) until ``deadline()`` (a ``time.time()``, read
    anew at each failure: a lease's expiry moves as it is renewed) or ``given_up()``; then
    the last error is raised. Use as ``until(...)(call, *args)`` or ``for attempt in ...``."""
    wait = backoff()

    def stop(state: tenacity.RetryCallState) -> bool:
        return (given_up is not None and given_up()) or time.time() >= deadline()

    def capped(state: tenacity.RetryCallState) -> float:
        return max(0.0, min(wait(state), deadline() - time.time()))

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(lambda e: transient(e) or isinstance(e, also)),
        stop=stop, wait=capped, reraise=True, before_sleep=on_retry or _log_retry, sleep=time.sleep,
    )


def attempts(n: int, *, on_retry: Callable[[tenacity.RetryCallState], None] | None = None) -> tenacity.Retrying:
    """Retry transient errors for at most ``n`` attempts in all; then the last error is raised."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(transient), stop=tenacity.stop_after_attempt(n),
        wait=backoff(), reraise=True, before_sleep=on_retry or _log_retry, sleep=time.sleep,
    )


def _log_retry(state: tenacity.RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    log.warning("transient error, try %d again in %.1f s: %s", state.attempt_number + 1,
                state.next_action.sleep if state.next_action else 0.0, error)
