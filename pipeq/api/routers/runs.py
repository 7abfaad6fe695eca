"""Submitting a pipeline run and reading its status."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import redis
from fastapi import APIRouter, Depends, HTTPException, Request, Response, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from rq.job import Job

from pipeq import jobs, queue, storage
from pipeq.api import uploads
from pipeq.api.deps import get_redis, get_settings
from pipeq.api.metrics import SUBMISSIONS
from pipeq.api.uploads import Rejected
from pipeq.settings import Settings
from pipeq.validate import InvalidInput, check_fasta, check_fastq

router = APIRouter(tags=["runs"])  # the token check, if any, is added by create_app

SAMPLE_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
_SAMPLE = re.compile(SAMPLE_PATTERN)
FIELDS = frozenset({"reads", "reference", "sample"})


class RunPipelineForm(BaseModel):
    """The multipart body of ``POST /run_pipeline``. It documents the body in the OpenAPI
    schema; the body itself is read by :mod:`pipeq.api.uploads` as it streams in."""

    reads: list[UploadFile] = Field(description="One (single-end) or two (paired-end) FASTQ files, plain or gzip.")
    reference: UploadFile = Field(description="The reference, FASTA, plain or gzip.")
    sample: str | None = Field(None, pattern=SAMPLE_PATTERN, description="Sample name, used to name the outputs.")


@router.post(
    "/run_pipeline",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=jobs.Submitted,
    responses={
        400: {"description": "The body is not valid multipart/form-data."},
        401: {"description": "A bearer token is configured and this request lacks it."},
        413: {"description": "A file, or all files together, is larger than the server accepts."},
        415: {"description": "The body is not multipart/form-data."},
        422: {"description": "A file is not what it should be (the reason names the field and the problem)."},
        503: {"description": "Redis is unreachable; nothing was kept."},
        507: {"description": "The server cannot store the uploads (disk full); nothing was kept."},
    },
    openapi_extra={
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": RunPipelineForm.model_json_schema()}}}
    },
    summary="Submit a pipeline run",
)
async def run_pipeline(
    request: Request, settings: Settings = Depends(get_settings), conn: redis.Redis = Depends(get_redis)
) -> Response:
    """Check the uploads, store them in a new job folder, and enqueue the run.

    Answers 202 at once with the `job_id`; poll `status_url`. On any rejection nothing is
    enqueued and nothing is left on disk.
    """
    job_id = uuid.uuid4().hex
    final_dir = storage.job_dir(settings.data_dir, job_id)
    incoming = final_dir.with_name(f".incoming-{job_id}")
    try:
        # the body is read on the event loop (files over 1 MB are written to disk off it);
        # checks, storage and the Redis round trip (an fsync with AOF) then run in the thread
        # pool, in one hop
        parts = await uploads.read_form(
            request,
            spool_dir=incoming / "spool",
            max_file_bytes=settings.max_upload_bytes,
            max_total_bytes=settings.max_total_upload_bytes,
            keep=FIELDS,
        )
        return await run_in_threadpool(_submit, settings, conn, job_id, parts, incoming, final_dir)
    except BaseException as e:
        # whatever went wrong (a refusal, a full disk, Redis, the client gone): nothing stays
        # (read_form closes its parts' spool files, also when it fails)
        shutil.rmtree(incoming, ignore_errors=True)  # on the loop: it exists only for large uploads
        if isinstance(e, Rejected):
            SUBMISSIONS.labels(outcome="rejected").inc()
            raise _refusal(e) from None
        if isinstance(e, OSError):
            raise _no_storage(e) from None
        raise


def _refusal(r: Rejected) -> HTTPException:
    if r.code == 422:
        return HTTPException(r.code, detail=[{"loc": ["body", r.field], "msg": r.reason, "type": "value_error"}])
    return HTTPException(r.code, detail=f"{r.field}: {r.reason}" if r.field else r.reason)


def _no_storage(e: OSError) -> HTTPException:
    return HTTPException(status.HTTP_507_INSUFFICIENT_STORAGE, detail=f"the server cannot store the uploads: {e.strerror or e}")


def _submit(settings: Settings, conn: redis.Redis, job_id: str, parts: list[uploads.Part], incoming: Path, final_dir: Path) -> Response:
    """Check, store and enqueue (in the thread pool). Raises Rejected or OSError with
    nothing left behind but ``incoming``, which the caller removes."""
    reads, reference, sample = _fields(parts)
    names = _store_and_check(settings, incoming, reads, reference)
    incoming.rename(final_dir)
    meta = {"sample": sample, "attempt": 0, "inputs": names}
    kwargs = {"reads": names["reads"], "reference": names["reference"], "sample": sample}
    try:
        queue.enqueue_run(conn, settings.queue, job_id, kwargs, meta=meta, retries=settings.retries, ttl=settings.job_ttl)
    except queue.EnqueueUncertain:
        raise  # the job may exist: its inputs stay (a folder without a job is pruned later)
    except redis.RedisError:
        shutil.rmtree(final_dir, ignore_errors=True)  # the job does not exist, nor will
        raise
    SUBMISSIONS.labels(outcome="accepted").inc()
    # the model's own JSON, as in job_status (response_model still gives the schema)
    submitted = jobs.Submitted(job_id=job_id, status_url=f"/job_status/{job_id}")
    return Response(submitted.model_dump_json(), status_code=status.HTTP_202_ACCEPTED, media_type="application/json")


def _fields(parts: list[uploads.Part]) -> tuple[list[uploads.Part], uploads.Part, str | None]:
    """reads, reference and sample from the form's parts, as FastAPI would validate them
    (422 in its format: missing fields, a file where text belongs or the other way round)."""
    reads = [p for p in parts if p.name == "reads"]
    references = [p for p in parts if p.name == "reference"]
    samples = [p for p in parts if p.name == "sample"]
    errors = [
        {"type": "missing", "loc": ["body", name], "msg": "Field required", "input": None}
        for name, found in (("reads", reads), ("reference", references))
        if not found
    ]
    if errors:
        raise RequestValidationError(errors)
    for name, found in (("reads", reads), ("reference", references)):
        if any(p.filename is None for p in found):
            raise Rejected(422, name, "expected a file upload, not a plain form field")
    if len(references) > 1:
        raise Rejected(422, "reference", f"give one reference file, not {len(references)}")
    sample = samples[-1].text() if samples else None
    if samples and samples[-1].filename is not None:
        raise Rejected(422, "sample", "expected a text field, not a file")
    if sample == "":
        sample = None  # an empty form field is an absent one, as FastAPI takes it
    if sample is not None and not _SAMPLE.match(sample):
        raise RequestValidationError(
            [{"type": "string_pattern_mismatch", "loc": ["body", "sample"], "msg": f"String should match pattern '{SAMPLE_PATTERN}'", "input": sample, "ctx": {"pattern": SAMPLE_PATTERN}}]
        )
    return reads, references[0], sample


def _store_and_check(settings: Settings, incoming: Path, reads: list[uploads.Part], reference: uploads.Part) -> dict:
    """Check every upload where it lies (in memory, or its spool file when large), then write
    them all into ``incoming/inputs``: a refused submission of small files touches no disk."""
    if not 1 <= len(reads) <= 2:
        raise Rejected(422, "reads", f"give one (single-end) or two (paired-end) reads files, not {len(reads)}")
    used: set[str] = set()
    names: dict = {"reads": []}
    checked: list[tuple[str, uploads.Part]] = []
    for field, upload, fallback, check in (
        *((f"reads[{i}]", f, f"reads_{i + 1}.fastq", check_fastq) for i, f in enumerate(reads)),
        ("reference", reference, "reference.fasta", check_fasta),
    ):
        label = f"{field.split('[')[0]}" if len(reads) == 1 or field == "reference" else field
        if problem := storage.filename_problem(upload.filename or ""):
            raise Rejected(422, label, f"{upload.filename!r}: {problem}")
        name = storage.sanitize_filename(upload.filename or "", fallback)
        while name in used:
            name = "_" + name
        used.add(name)
        with upload.open() as f:
            try:
                check(f)
            except InvalidInput as e:
                raise Rejected(422, label, f"{upload.filename or name}: {e}")
        checked.append((name, upload))
        if field == "reference":
            names["reference"] = name
        else:
            names["reads"].append(name)
    incoming.mkdir(exist_ok=True)  # it exists when a large part was spooled into it
    inputs = incoming / "inputs"
    inputs.mkdir()
    for name, upload in checked:
        if upload.path:  # spooled on the data volume: move it
            upload.path.rename(inputs / name)
        else:
            with open(inputs / name, "wb") as out:
                out.write(upload.data)
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
