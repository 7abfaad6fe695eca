"""pipeq's own Redis keys, all named here (RQ's keys come from RQ's objects and constants:
``Queue.key``, the registries' ``.key``, ``Job.key_for``, ``Worker.redis_workers_keys``).

Every key starts with ``pipeq:``. A feature that adds keys adds them at the end of this
module, under a comment naming the feature.
"""

from __future__ import annotations

#: Sorted set of every job, scored by enqueue time, for ``GET /jobs``.
JOBS_INDEX = "pipeq:jobs"
#: Pub/sub channel on which every enqueue names its queue, in the enqueue's transaction: the
#: operator's scalers wake on it instead of waiting for their next poll (a signal, not a
#: source of truth: a subscriber that misses one still sees the job at that poll).
ENQUEUED_CHANNEL = "pipeq:enqueued"
#: Prefix of the mark of a submission given up after its enqueue went unanswered
#: (``pipeq.queue.enqueue_run``).
ABANDONED_PREFIX = "pipeq:abandoned:"
#: Hash of the pipeline durations every worker observed (``pipeq.metrics_store``).
PIPELINE_SECONDS = "pipeq:metrics:pipeline_seconds"


#: Per owner (a principal's id), the sorted set of that owner's jobs, scored as JOBS_INDEX
#: (``GET /jobs`` of a user). A job without an owner is ``anonymous``'s.
OWNER_INDEX_PREFIX = "pipeq:jobs:owner:"


def owner_index(owner: str | None) -> str:
    """The key of the sorted set of ``owner``'s jobs (None: ``anonymous``)."""
    return OWNER_INDEX_PREFIX + (owner or "anonymous")


def abandoned(job_id: str) -> str:
    """The mark that the submission of ``job_id`` was given up (its enqueue can no longer happen)."""
    return ABANDONED_PREFIX + job_id


def stop(job_id: str) -> str:
    """The request that ``job_id`` stop, which also reaches the attempt after a dead worker's."""
    return f"pipeq:stop:{job_id}"


def cleaning(queue_name: str) -> str:
    """The lock held by whoever cleans up ``queue_name``'s registries (``pipeq.queue.cleaning``)."""
    return f"pipeq:cleaning:{queue_name}"


def published(job_id: str) -> str:
    """Which attempt (its lease entry) published ``job_id``'s results (``pipeq.worker.lease``)."""
    return f"pipeq:published:{job_id}"


def upload(upload_id: str) -> str:
    """The record of an unfinished presigned upload (``pipeq.api.routers.presigned``)."""
    return f"pipeq:upload:{upload_id}"


# Quotas and fair share (issue 22: pipeq.quotas, pipeq.fairshare). An owner is the job's
# meta["owner"] (a principal's id); these prefixes are followed by it.
#: set of the owner's active job ids (backlogged, queued or running), pruned of ended ones
ACTIVE_PREFIX = "pipeq:active:"
#: sorted set of the owner's admitted job ids by admission time, kept for the last minute
SUBMITTED_PREFIX = "pipeq:submitted:"
#: per queue: sorted set of the owner's job ids waiting for their turn, by arrival sequence
BACKLOG_PREFIX = "pipeq:backlog:{queue}:"
#: per queue: set of the owners that have a backlog
BACKLOGGED = "pipeq:backlogged:{queue}"
#: per queue: set of the owner's job ids moved from the backlog into the queue, not ended
DISPATCHED_PREFIX = "pipeq:dispatched:{queue}:"
#: per queue: hash owner → fair-share weight (recorded at each enqueue)
WEIGHTS = "pipeq:weights:{queue}"
#: per queue: the arrival counter that orders the backlogs
ARRIVALS = "pipeq:arrivals:{queue}"
#: per queue: hash job id → "arrival|owner" of the jobs the feed put into the queue
FED = "pipeq:fed:{queue}"


# Sign-in and ownership (issue 22: pipeq.auth.web, pipeq.api.owners)
#: a browser session (by the hash of its cookie): the principal's tokens, server-side
SESSION_PREFIX = "pipeq:session:"
#: a sign-in under way (by its OIDC state): the PKCE verifier and where to go after
LOGIN_PREFIX = "pipeq:login:"
#: who started a presigned upload (by upload id), kept for as long as a submission may name it
UPLOAD_OWNER_PREFIX = "pipeq:upload-owner:"
