"""The job as users see it: the pydantic models of the API and how RQ's job becomes them."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

import redis
from pydantic import BaseModel, Field
from rq import Queue
from rq.job import Job
from rq.results import Result

from pipeq.queue import PipeqJob

Status = Literal["queued", "started", "finished", "failed", "canceled", "stopped"]
FINAL = {"finished", "failed", "canceled", "stopped"}


class JobError(BaseModel):
    reason: str = Field(description="Why the job failed: `pipeline failed`, `timeout`, `stopped`, `worker lost`, `storage error`...")
    message: str = Field(description="A sentence for people.")
    exit_code: int | None = Field(None, description="The pipeline's exit code, when it ran.")
    stderr_tail: str = Field("", description="The last lines the pipeline wrote to stderr.")


class JobResult(BaseModel):
    files: list[str] = Field(description="Names of the result files; download each from `/jobs/{job_id}/files/{name}`.")
    summary: dict[str, Any] = Field(description="The numbers of the pipeline's report.json (reads, % mapped, depth, variants).")


class JobStatus(BaseModel):
    job_id: str
    status: Status = Field(description="queued → started → finished | failed; or canceled (while queued) / stopped (while running).")
    stage: str | None = Field(None, description="The pipeline stage running now (from its PROGRESS lines).")
    progress: int | None = Field(None, ge=0, le=100, description="Percent done, as the pipeline reports it.")
    position: int | None = Field(
        None,
        description="Place in the queue while queued (0 = next); null when the job is more than 1000 places "
        "from both ends of a longer queue (counting further would cost Redis time in proportion to the queue).",
    )
    sample: str | None = None
    owner: str = Field("anonymous", description="Who submitted the job: a principal id (`anonymous`, `admin`, or `oidc:<issuer>|<subject>`).")
    owner_name: str | None = Field(None, description="The owner's name, as the identity provider gave it when the job was submitted.")
    queue: str | None = Field(None, description="The queue the job is on.")
    attempt: int = Field(0, description="How many times a worker started the job (more than 1 after a worker was lost).")
    worker: str | None = Field(
        None, description="The worker that runs (or ran) the job's latest attempt; on Kubernetes, its pod's name.")
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    result: JobResult | None = Field(None, description="When finished.")
    error: JobError | None = Field(None, description="When failed or stopped.")


class Submitted(BaseModel):
    job_id: str
    status_url: str = Field(description="Poll this for the job's status.")


class OverQuota(BaseModel):
    detail: str = Field(description="A sentence for people.")
    limit: Literal["active_jobs", "submissions_per_minute"] = Field(description="The limit the submission is over.")
    allowed: int = Field(description="The limit's value for this user.")
    current: int = Field(description="The user's use of it now.")


class JobList(BaseModel):
    jobs: list[JobStatus]
    total: int = Field(description="Jobs kept in all (they expire after PIPEQ_JOB_TTL).")
    limit: int
    offset: int


def _utc(dt: datetime | None) -> datetime | None:
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt


def _status(job: Job) -> Status:
    s = job.get_status(refresh=False)
    value = s.value if hasattr(s, "value") else str(s)
    if value in ("deferred", "scheduled"):
        return "queued"
    return value  # type: ignore[return-value]


def _error(job: Job, status: str) -> JobError | None:
    if status not in ("failed", "stopped"):
        return None
    err = job.meta.get("error")
    if err:
        return JobError(**err)
    if status == "stopped":
        return JobError(reason="stopped", message="stopped on request")
    latest = job.latest_result()
    exc = (latest.exc_string if latest else None) or ""
    if "AbandonedJobError" in exc:
        return JobError(reason="worker lost", message=f"the worker running the job died {job.meta.get('attempt', 0)} time(s); no retries left")
    last = exc.strip().splitlines()[-1] if exc.strip() else "unknown error"
    return JobError(reason="worker error", message=last[:500])


def to_status(job: Job, *, position: int | None = None, with_result: bool = True) -> JobStatus:
    """The user's view of an RQ job. ``with_result`` reads the result (one more round trip)."""
    status = _status(job)
    meta = job.meta or {}
    if status == "failed" and (meta.get("error") or {}).get("reason") == "stopped":
        status = "stopped"  # stopped while its worker was dead: the attempt after ended it
    result = None
    if status == "finished" and with_result:
        value = job.return_value()
        if isinstance(value, dict):
            result = JobResult(files=value.get("files", []), summary=value.get("summary", {}))
    return JobStatus(
        job_id=job.id,
        status=status,
        stage=meta.get("stage"),
        progress=meta.get("progress"),
        position=position if status == "queued" else None,
        sample=meta.get("sample"),
        owner=meta.get("owner") or "anonymous",
        owner_name=meta.get("owner_name") or meta.get("owner") or "anonymous",
        queue=job.origin,
        attempt=int(meta.get("attempt") or 0),
        worker=job.worker_name if status != "queued" else None,
        enqueued_at=_utc(job.enqueued_at),
        started_at=_utc(job.started_at) if status != "queued" else None,
        ended_at=_utc(job.ended_at) if status in FINAL else None,
        result=result,
        error=_error(job, status),
    )


#: How far from each end of its queue a queued job's position is looked for. LPOS scans the
#: list: unbounded, a status poll of a job at the tail of a queue of 100 000 would block
#: Redis for milliseconds; two bounded scans cost at most 2 × POSITION_SCAN comparisons.
POSITION_SCAN = 1000


# A job's hash, and what its status needs besides: its place in the queue while queued (two
# scans bounded by POSITION_SCAN, from the head and from the tail), its latest result once
# finished. One round trip where RQ makes two or three (HGETALL, then HGET status, then
# XREVRANGE of the results).
_STATUS = """
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return false end
local status, origin
for i = 1, #h, 2 do
  if h[i] == 'status' then status = h[i + 1] elseif h[i] == 'origin' then origin = h[i + 1] end
end
local extra = false
if status == 'queued' and origin then
  local q = ARGV[3] .. origin
  extra = redis.call('LPOS', q, ARGV[1], 'MAXLEN', ARGV[2])
  if not extra then extra = redis.call('LPOS', q, ARGV[1], 'RANK', -1, 'MAXLEN', ARGV[2]) end
elseif status == 'finished' then
  extra = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
end
return {h, extra}
"""


def fetch_for_status(conn: redis.Redis, job_id: str) -> tuple[Job, int | None] | None:
    """The job (its latest result loaded when finished) and its queue position, in one
    round trip (two for a job in its owner's backlog: its place in the order the fair share
    will serve, ``fairshare.position``); None when there is no such job. The position is
    None unless the job is backlogged or queued within POSITION_SCAN places of either end
    of its queue."""
    got = conn.eval(_STATUS, 2, Job.key_for(job_id), Result.get_key(job_id), job_id, POSITION_SCAN,
                    Queue.redis_queue_namespace_prefix)
    if not got:
        return None
    raw, extra = got
    job = PipeqJob(job_id, connection=conn)
    job.restore(dict(zip(raw[::2], raw[1::2])))
    position = None
    if isinstance(extra, int):
        position = extra
    elif extra is None and _status(job) == "queued" and job.origin:
        from pipeq import fairshare, quotas

        position = fairshare.position(conn, job.origin, job_id, quotas.Owner.of(job.meta).id)
    elif extra:  # [[result_id, [field, value, ...]]]
        result_id, fields = extra[0]
        job._cached_result = Result.restore(
            job_id, result_id.decode(), dict(zip(fields[::2], fields[1::2])), connection=conn, serializer=job.serializer
        )
    return job, position
