"""Per-user quotas: active jobs (backlogged, queued or running) and submissions per minute.

Contract:

- The owner of a job is ``meta["owner"]`` (``"anonymous"`` without one); its groups
  ``meta["owner_groups"]``, ``meta["owner_admin"]`` exempts it (:func:`limits_for`).
- :func:`check` runs inside ``queue.enqueue_run``'s transaction, after a WATCH of the owner's
  keys (:func:`watched`): it reads the use, raises :class:`QuotaExceeded` over a limit, and
  :func:`admit` records the job in the same MULTI as the job itself. Two API processes that
  both read the last free slot cannot both commit: the second one's EXEC fails on the WATCH
  and it reads again. So the check and the admission are one step.
- The active set is self-healing: an owner's set holds job ids, and members whose job has
  ended in any way (finished, failed, canceled, stopped, lost and failed by the reaper) or
  expired are pruned (:func:`prune`) whenever the owner is at its cap, and on ``usage``.
  The worker and the cancel remove a job at its end (:func:`release`) so that the count is
  right before that.
- Submissions per minute: a sliding window of admissions (refused ones do not count).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis
from rq.job import Job

from pipeq.keys import ACTIVE_PREFIX, SUBMITTED_PREFIX

ANONYMOUS = "anonymous"
WINDOW = 60
#: Retry-After of a refusal for active jobs: when a slot frees depends on running pipelines
ACTIVE_RETRY_AFTER = 30
#: RQ statuses of a job that still takes a slot
ACTIVE_STATUSES = ("queued", "started", "deferred", "scheduled")


class QuotaExceeded(Exception):
    """A submission over the owner's quota; nothing of it was stored.

    ``limit`` is ``"active_jobs"`` or ``"submissions_per_minute"``, ``allowed`` the limit,
    ``current`` the use now, ``retry_after`` seconds after which trying again may succeed."""

    code = "quota_exceeded"

    def __init__(self, limit: str, allowed: int, current: int, retry_after: int):
        self.limit, self.allowed, self.current, self.retry_after = limit, allowed, current, max(1, int(retry_after))
        what = "active jobs" if limit == "active_jobs" else "submissions in the last minute"
        super().__init__(f"quota exceeded: {current} {what}, {allowed} allowed; try again in {self.retry_after} s")


@dataclass(frozen=True)
class Owner:
    """Who a job belongs to, from its meta (set by the API from the principal: pipeq.api.owners.meta_of)."""

    id: str
    groups: tuple[str, ...] = ()
    admin: bool = False

    @classmethod
    def of(cls, meta: dict | None) -> "Owner":
        meta = meta or {}
        return cls(str(meta.get("owner") or ANONYMOUS), tuple(meta.get("owner_groups") or ()), bool(meta.get("owner_admin")))


@dataclass(frozen=True)
class Limits:
    active_jobs: int | None = None
    submissions_per_minute: int | None = None

    def __bool__(self) -> bool:
        return self.active_jobs is not None or self.submissions_per_minute is not None


def limits_for(groups, admin: bool, settings) -> Limits:
    """The limits of a user in ``groups``: none for an admin; else, per limit, the most
    generous among the groups of PIPEQ_QUOTA_GROUPS that set it (null = none), else the default."""
    if admin:
        return Limits()
    chosen = {}
    for name in ("active_jobs", "submissions_per_minute"):
        overrides = [getattr(o, name) for g, o in settings.quota_groups.items() if g in groups and name in o.model_fields_set]
        if overrides:
            chosen[name] = None if None in overrides else max(overrides)
        else:
            chosen[name] = getattr(settings, f"quota_{name}")
    return Limits(**chosen)


def active_key(owner: str) -> str:
    return ACTIVE_PREFIX + owner


def submitted_key(owner: str) -> str:
    return SUBMITTED_PREFIX + owner


def watched(owner: str) -> list[str]:
    """The keys ``enqueue_run`` WATCHes while it checks and admits a job of ``owner``."""
    return [active_key(owner), submitted_key(owner)]


# The owner's use in one round trip: active jobs, admissions in the window, and the
# admission whose leaving the window frees one (when at the per-minute limit ARGV[2]).
_USE = """
local active = redis.call('SCARD', KEYS[1])
local recent = redis.call('ZCOUNT', KEYS[2], ARGV[1], '+inf')
local limit = tonumber(ARGV[2])
local oldest = false
if limit >= 0 and recent >= limit and recent > 0 then
  oldest = redis.call('ZRANGEBYSCORE', KEYS[2], ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', recent - math.max(limit, 1), 1)[2]
end
return {active, recent, oldest}
"""


def check(p: redis.client.Pipeline, owner: str, limits: Limits, now: float) -> bool:
    """Read ``owner``'s use on ``p`` (watching, before MULTI) and raise QuotaExceeded if one
    more job is over ``limits``. Returns False after it pruned ended jobs from the active
    set (that touched a watched key: the caller watches and checks again), else True."""
    per_minute = limits.submissions_per_minute
    active, recent, oldest = p.eval(_USE, 2, active_key(owner), submitted_key(owner), now - WINDOW,
                                    -1 if per_minute is None else per_minute)
    if limits.active_jobs is not None and active >= limits.active_jobs:
        if prune(p, owner):
            return False
        raise QuotaExceeded("active_jobs", limits.active_jobs, active, ACTIVE_RETRY_AFTER)
    if per_minute is not None and recent >= per_minute:
        frees = float(oldest) + WINDOW if oldest is not None else now + WINDOW
        raise QuotaExceeded("submissions_per_minute", per_minute, recent, frees - now + 1)
    return True


def admit(p: redis.client.Pipeline, owner: str, job_id: str, now: float, ttl: int) -> None:
    """Record the admission of ``job_id`` (queued on ``p``, inside the enqueue's MULTI)."""
    p.sadd(active_key(owner), job_id)
    p.expire(active_key(owner), ttl)  # an owner who never comes back leaves nothing
    p.zadd(submitted_key(owner), {job_id: now})
    p.zremrangebyscore(submitted_key(owner), "-inf", now - WINDOW)
    p.expire(submitted_key(owner), WINDOW * 2)


def release(conn, owner: str, job_id: str) -> None:
    """``job_id`` has ended (or is canceled in the caller's MULTI, when ``conn`` is one): it
    no longer takes a slot."""
    conn.srem(active_key(owner), job_id)


# Remove from the set KEYS[1] the job ids whose job (ARGV[1] .. id) is gone or has ended;
# returns how many went.
_PRUNE = """
local removed = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local s = redis.call('HGET', ARGV[1] .. id, 'status')
  if not (s == 'queued' or s == 'started' or s == 'deferred' or s == 'scheduled') then
    redis.call('SREM', KEYS[1], id)
    removed = removed + 1
  end
end
return removed
"""


def prune(conn, owner: str) -> int:
    """Drop the ended and expired jobs from ``owner``'s active set (one script); how many."""
    return int(conn.eval(_PRUNE, 1, active_key(owner), Job.redis_job_namespace_prefix))


def usage(conn: redis.Redis, owner: str, groups, settings, *, admin: bool = False) -> dict:
    """What ``GET /me`` shows: the owner's use now and its limits (None: no limit)."""
    prune(conn, owner)
    now = time.time()
    with conn.pipeline(transaction=False) as p:
        p.scard(active_key(owner))
        p.zcount(submitted_key(owner), now - WINDOW, "+inf")
        active, recent = p.execute()
    limits = limits_for(tuple(groups or ()), admin, settings)
    return {
        "active_jobs": int(active),
        "submissions_last_minute": int(recent),
        "limits": {"active_jobs": limits.active_jobs, "submissions_per_minute": limits.submissions_per_minute},
    }
