"""Submitting a pipeline run and reading its status."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Annotated

import redis
from fastapi import APIRouter, Depends, File, Form, HTTPException, Response, UploadFile, status
from rq.job import Job

from pipeq import jobs, queue, storage
from pipeq.api.deps import get_redis, get_settings, require_token
from pipeq.api.metrics import SUBMISSIONS
from pipeq.settings import Settings
from pipeq.validate import InvalidInput, check_fasta, check_fastq

router = APIRouter(dependencies=[Depends(require_token)], tags=["runs"])

SAMPLE_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
COPY_CHUNK = 1 << 20


class Rejected(Exception):
    """An upload is refused: (HTTP status, field, reason)."""

    def __init__(self, code: int, field: str, reason: str):
        super().__init__(reason)
        self.code, self.field, self.reason = code, field, reason


@router.post(
    "/run_pipeline",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=jobs.Submitted,
    responses={
        400: {"description": "The body is not valid multipart/form-data."},
        401: {"description": "A bearer token is configured and this request lacks it."},
        413: {"description": "A file, or all files together, is larger than the server accepts."},
        422: {"description": "A file is not what it should be (the reason names the field and the problem)."},
        503: {"description": "Redis is unreachable; nothing was kept."},
        507: {"description": "The server cannot store the uploads (disk full); nothing was kept."},
    },
    summary="Submit a pipeline run",
)
def run_pipeline(
    reads: Annotated[list[UploadFile], File(description="One (single-end) or two (paired-end) FASTQ files, plain or gzip.")],
    reference: Annotated[UploadFile, File(description="The reference, FASTA, plain or gzip.")],
    sample: Annotated[str | None, Form(pattern=SAMPLE_PATTERN, description="Sample name, used to name the outputs.")] = None,
    settings: Settings = Depends(get_settings),
    conn: redis.Redis = Depends(get_redis),
) -> Response:
    """Check the uploads, store them in a new job folder, and enqueue the run.

    Answers 202 at once with the `job_id`; poll `status_url`. On any rejection nothing is
    enqueued and nothing is left on disk.
    """
    # A plain function: FastAPI runs it in its thread pool, so the checks, the disk and the
    # Redis round trip (an fsync with AOF) never block the event loop, in one thread hop.
    job_id = uuid.uuid4().hex
    final_dir = storage.job_dir(settings.data_dir, job_id)
    incoming = final_dir.with_name(f".incoming-{job_id}")
    try:
        names = _store_and_check(settings, incoming, reads, reference)
        incoming.rename(final_dir)
    except Rejected as r:
        shutil.rmtree(incoming, ignore_errors=True)
        SUBMISSIONS.labels(outcome="rejected").inc()
        raise HTTPException(r.code, detail=[{"loc": ["body", r.field], "msg": r.reason, "type": "value_error"}] if r.code == 422 else f"{r.field}: {r.reason}")
    except OSError as e:
        shutil.rmtree(incoming, ignore_errors=True)
        raise HTTPException(status.HTTP_507_INSUFFICIENT_STORAGE, detail=f"the server cannot store the uploads: {e.strerror or e}")

    meta = {"sample": sample, "attempt": 0, "inputs": names}
    kwargs = {"reads": names["reads"], "reference": names["reference"], "sample": sample}
    try:
        queue.enqueue_run(conn, settings.queue, job_id, kwargs, meta=meta, retries=settings.retries, ttl=settings.job_ttl)
    except redis.RedisError:
        shutil.rmtree(final_dir, ignore_errors=True)
        raise
    SUBMISSIONS.labels(outcome="accepted").inc()
    # the model's own JSON, as in job_status (response_model still gives the schema)
    submitted = jobs.Submitted(job_id=job_id, status_url=f"/job_status/{job_id}")
    return Response(submitted.model_dump_json(), status_code=status.HTTP_202_ACCEPTED, media_type="application/json")


def _store_and_check(settings: Settings, incoming: Path, reads: list[UploadFile], reference: UploadFile) -> dict:
    """Check every upload where it lies (in memory, or Starlette's spool file when large),
    then write them all into ``incoming/inputs``: a refused submission touches no disk."""
    if not 1 <= len(reads) <= 2:
        raise Rejected(422, "reads", f"give one (single-end) or two (paired-end) reads files, not {len(reads)}")
    total = sum((f.size or 0) for f in [*reads, reference])
    if total > settings.max_total_upload_bytes:
        raise Rejected(413, "files", f"{total} bytes in all, more than the {settings.max_total_upload_bytes} accepted")
    used: set[str] = set()
    names: dict = {"reads": []}
    checked: list[tuple[str, UploadFile]] = []
    for field, upload, fallback, check in (
        *((f"reads[{i}]", f, f"reads_{i + 1}.fastq", check_fastq) for i, f in enumerate(reads)),
        ("reference", reference, "reference.fasta", check_fasta),
    ):
        label = f"{field.split('[')[0]}" if len(reads) == 1 or field == "reference" else field
        if (upload.size or 0) > settings.max_upload_bytes:
            raise Rejected(413, label, f"{upload.size} bytes, more than the {settings.max_upload_bytes} accepted per file")
        if problem := storage.filename_problem(upload.filename or ""):
            raise Rejected(422, label, f"{upload.filename!r}: {problem}")
        name = storage.sanitize_filename(upload.filename or "", fallback)
        while name in used:
            name = "_" + name
        used.add(name)
        try:
            check(upload.file)
        except InvalidInput as e:
            raise Rejected(422, label, f"{upload.filename or name}: {e}")
        checked.append((name, upload))
        if field == "reference":
            names["reference"] = name
        else:
            names["reads"].append(name)
    incoming.mkdir()
    inputs = incoming / "inputs"
    inputs.mkdir()
    for name, upload in checked:
        upload.file.seek(0)
        with open(inputs / name, "wb") as out:
            shutil.copyfileobj(upload.file, out, COPY_CHUNK)
    return names


@router.get(
    "/job_status/{job_id}",
    response_model=jobs.JobStatus,
    responses={404: {"description": "No such job (or it expired)."}},
    summary="A job's state, progress, result or error",
)
def job_status(job_id: str, conn: redis.Redis = Depends(get_redis)) -> Response:
    # JSON straight from the model: returned as a model, FastAPI would dump it, validate it
    # again against response_model and serialise it (the OpenAPI schema still comes from
    # response_model)
    return Response(status_of(conn, job_id).model_dump_json(), media_type="application/json")


def job_or_404(conn: redis.Redis, job_id: str) -> tuple[Job, int | None]:
    """The job and its queue position (see ``jobs.fetch_for_status``); 404 if there is none."""
    found = jobs.fetch_for_status(conn, job_id) if storage.JOB_ID_RE.match(job_id) else None
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no job {job_id!r}")
    return found


def status_of(conn: redis.Redis, job_id: str) -> jobs.JobStatus:
    job, position = job_or_404(conn, job_id)
    return jobs.to_status(job, position=position)
