"""The jobs collection: list, cancel or stop, the log, and result downloads."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import redis
from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.responses import FileResponse, PlainTextResponse, StreamingResponse
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation

from pipeq import jobs, keys, queue
from pipeq.api.deps import get_redis, get_settings, get_store
from pipeq.api.routers.runs import job_or_404, status_of
from pipeq.auth import Principal, current_principal
from pipeq.settings import Settings
from pipeq.storage import NotFound, Store

router = APIRouter(prefix="/jobs", tags=["jobs"])  # create_app adds the principal (401 without one) to every route

LOG_TAIL_BYTES = 256 * 1024


@router.get(
    "",
    response_model=jobs.JobList,
    responses={403: {"description": "`owner` names someone else and the caller is no admin."}},
    summary="Recent jobs of the caller (an admin's: everyone's), newest first",
)
def list_jobs(
    limit: int = Query(20, ge=1, le=200),
    offset: int = Query(0, ge=0, le=1_000_000),
    owner: str | None = Query(None, max_length=1024, description="Only this owner's jobs (a principal id, as jobs show it); for admins."),
    conn: redis.Redis = Depends(get_redis),
    settings: Settings = Depends(get_settings),
    principal: Principal = Depends(current_principal),
) -> jobs.JobList:
    if owner is not None and owner != principal.id and not principal.admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="only admins may list another user's jobs")
    if owner is None and not principal.admin:
        owner = principal.id
    index = keys.JOBS_INDEX if owner is None else keys.owner_index(owner)
    ids = [i.decode() for i in conn.zrevrange(index, offset, offset + limit - 1)]
    total = conn.zcard(index)
    found = [j for j in queue.fetch_jobs(conn, ids) if j is not None]
    if len(found) < len(ids):
        # jobs expire from Redis on their own; drop them from the index as we notice
        gone = set(ids) - {j.id for j in found}
        conn.zrem(index, *gone)
        total -= len(gone)
    return jobs.JobList(
        jobs=[jobs.to_status(j, with_result=False) for j in found], total=total, limit=limit, offset=offset
    )


@router.delete(
    "/{job_id}",
    response_model=jobs.JobStatus,
    responses={404: {"description": "No such job (or it is another user's)."}, 409: {"description": "The job has already ended."}},
    summary="Cancel a queued job, or stop a running one",
)
def cancel_job(
    job_id: str, conn: redis.Redis = Depends(get_redis), settings: Settings = Depends(get_settings),
    principal: Principal = Depends(current_principal),
) -> jobs.JobStatus:
    """A queued job is canceled; a running job is stopped (its pipeline's processes are killed).

    Stopping is asynchronous: the answer may still say `started`; poll until `stopped`. A job
    whose worker has died is stopped too: its next attempt ends at once as `stopped`.
    """
    job, position = job_or_404(conn, job_id, principal)
    current = jobs.to_status(job, position=position, with_result=False)
    if current.status in jobs.FINAL:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"the job has already ended ({current.status})")
    # a worker may take the job between that read and the cancel: then it is stopped instead
    if current.status != "queued" or not queue.cancel_queued(conn, job):
        queue.request_stop(conn, job_id, settings.job_ttl)
        try:
            send_stop_job_command(conn, job_id, serializer=queue.SERIALIZER)
        except InvalidJobOperation:
            # Taken off the queue, but its worker not recorded on it yet (that comes as the
            # attempt starts): the attempt reads the stop mark just recorded, and ends at once.
            pass
    return status_of(conn, job_id, principal)


@router.get(
    "/{job_id}/log",
    response_class=PlainTextResponse,
    responses={404: {"description": "No such job (or it is another user's)."}},
    summary="The pipeline's output so far (the last 256 KiB)",
)
def job_log(job_id: str, conn: redis.Redis = Depends(get_redis), store: Store = Depends(get_store),
            principal: Principal = Depends(current_principal)) -> str:
    """With object storage the log of a running job is as fresh as its last upload (every
    PIPEQ_LOG_UPLOAD_INTERVAL seconds)."""
    job_or_404(conn, job_id, principal)
    return store.log_tail(job_id, LOG_TAIL_BYTES).decode(errors="replace")


@router.get(
    "/{job_id}/files/{name}",
    response_class=FileResponse,
    responses={404: {"description": "No such job (or it is another user's), or no such result file."}, 503: {"description": "The object store is unreachable."}},
    summary="Download one result file",
)
def job_file(job_id: str, name: str, conn: redis.Redis = Depends(get_redis), store: Store = Depends(get_store),
             principal: Principal = Depends(current_principal)):
    """Only the job's published results can be reached, by its owner or an admin. The file
    comes through the API on either backend (from object storage it is streamed, never
    redirected to the store), so the bearer token guards it as it does every route, and
    clients need no access to the store."""
    job_or_404(conn, job_id, principal)
    try:
        found, size = store.output(job_id, name)
    except (NotFound, ValueError):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no result file {name!r} for job {job_id}") from None
    # .js: fastp.html loads plotly.min.js from beside it (pipeline.sh), as a script
    media = {"html": "text/html", "json": "application/json", "js": "text/javascript"}.get(name.rsplit(".", 1)[1] if "." in name else "", "application/octet-stream")
    filename = name if media == "application/octet-stream" else None
    if isinstance(found, Path):
        return FileResponse(found, media_type=media, filename=filename)
    headers = {"Content-Length": str(size)} if size is not None else {}
    if filename:
        headers["Content-Disposition"] = f"attachment; filename*=utf-8''{quote(filename)}"
    return StreamingResponse(found, media_type=media, headers=headers)
