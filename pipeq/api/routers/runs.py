"""Submitting a pipeline run and reading its status."""

from __future__ import annotations

import re
import uuid

import redis
from fastapi import APIRouter, Depends, HTTPException, Request, Response, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from rq.job import Job

from pipeq import jobs, queue
from pipeq.api import owners, uploads
from pipeq.quotas import QuotaExceeded
from pipeq.api.deps import get_redis, get_settings, get_store
from pipeq.api.metrics import SUBMISSIONS
from pipeq.api.uploads import Rejected
from pipeq.auth import Principal, current_principal
from pipeq.inputs import references
from pipeq.inputs.checks import InvalidInput, check_fasta, check_fastq, head_of
from pipeq.settings import Settings
from pipeq.storage import Staging, Store, Unavailable
from pipeq.storage import names as safe_names

router = APIRouter(tags=["runs"])  # create_app adds the principal (401 without one) to every route

SAMPLE_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
_SAMPLE = re.compile(SAMPLE_PATTERN)
FIELDS = frozenset({"reads", "reference", "sample"})


class RunPipelineForm(BaseModel):
    """The multipart body of ``POST /run_pipeline``. It documents the body in the OpenAPI
    schema; the body itself is read by :mod:`pipeq.api.uploads` as it streams in."""

    reads: list[UploadFile] = Field(description="One (single-end) or two (paired-end) FASTQ files, plain or gzip.")
    reference: UploadFile = Field(description="The reference, FASTA, plain or gzip.")
    sample: str | None = Field(None, pattern=SAMPLE_PATTERN, description="Sample name, used to name the outputs.")


class RunPipelineReferences(BaseModel):
    """The JSON body of ``POST /run_pipeline``: inputs named by URL instead of uploaded.
    Each is checked by a ranged read of its head before the 202; only the schemes and hosts
    of ``PIPEQ_REFERENCE_HOSTS`` (and the store's own bucket) are fetched."""

    reads: list[str] = Field(min_length=1, max_length=2, description="One or two `s3://` or `https://` URLs of FASTQ files, plain or gzip.")
    reference: str = Field(description="The `s3://` or `https://` URL of the reference, FASTA, plain or gzip.")
    sample: str | None = Field(None, pattern=SAMPLE_PATTERN, description="Sample name, used to name the outputs.")


@router.post(
    "/run_pipeline",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=jobs.Submitted,
    responses={
        400: {"description": "The body is not valid multipart/form-data."},
        401: {"description": "Identity is configured (a token or OIDC) and this request has no valid bearer token."},
        403: {"description": "The user is not in a group allowed to use pipeq."},
        413: {"description": "A file, or all files together, is larger than the server accepts."},
        415: {"description": "The body is not multipart/form-data."},
        422: {"description": "A file is not what it should be (the reason names the field and the problem)."},
        429: {"model": jobs.OverQuota, "description": "Over the user's quota (active jobs or submissions per minute); "
              "`Retry-After` says when to try again. Nothing was kept."},
        503: {"description": "Redis or the object store is unreachable; nothing was kept."},
        507: {"description": "The server cannot store the uploads (disk full); nothing was kept."},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": RunPipelineForm.model_json_schema()},
                "application/json": {"schema": RunPipelineReferences.model_json_schema()},
            },
        }
    },
    summary="Submit a pipeline run",
)
async def run_pipeline(
    request: Request,
    settings: Settings = Depends(get_settings),
    conn: redis.Redis = Depends(get_redis),
    store: Store = Depends(get_store),
    principal: Principal = Depends(current_principal),
) -> Response:
    """Check the uploads, store them as a new job's inputs, and enqueue the run, owned by
    the caller.

    Answers 202 at once with the `job_id`; poll `status_url`. On any rejection nothing is
    enqueued and nothing is left in storage. A JSON submission may name presigned uploads
    of the caller's own only, and no file of the job store but those.
    """
    job_id = uuid.uuid4().hex
    request.state.job_id = job_id  # for the audit line
    if request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
        return await _run_references(request, settings, conn, job_id, principal)
    staging = store.staging(job_id)
    namer = _Namer()
    try:
        # the body is read on the event loop (files over 1 MB go to their place in storage
        # off it, as they arrive); checks, storage and the Redis round trip (an fsync with
        # AOF) then run in the thread pool, in one hop
        parts = await uploads.read_form(
            request,
            spool=lambda part: staging.sink(namer(part)),
            max_file_bytes=settings.max_upload_bytes,
            max_total_bytes=settings.max_total_upload_bytes,
            keep=FIELDS,
        )
        return await run_in_threadpool(_submit, settings, conn, job_id, parts, staging, namer, principal)
    except BaseException as e:
        # whatever went wrong (a refusal, a full disk, the store, Redis, the client gone):
        # nothing stays, but for an enqueue that may have happened: then the job's inputs
        # stay (inputs without a job are pruned later)
        if not isinstance(e, queue.EnqueueUncertain):
            await run_in_threadpool(staging.discard)
        if isinstance(e, QuotaExceeded):
            return _over_quota(e)
        if isinstance(e, Rejected):
            SUBMISSIONS.labels(outcome="rejected").inc()
            raise _refusal(e) from None
        if isinstance(e, Unavailable):
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"the object store is unreachable, try again shortly ({e})") from None
        if isinstance(e, OSError):
            raise _no_storage(e) from None
        raise


async def _run_references(request: Request, settings: Settings, conn: redis.Redis, job_id: str, principal: Principal) -> Response:
    body = await request.body()
    if len(body) > uploads.MAX_FIELD_BYTES:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=f"a JSON body of more than {uploads.MAX_FIELD_BYTES} bytes")
    try:
        given = RunPipelineReferences.model_validate_json(body)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False, include_input=False)]) from None
    try:
        return await run_in_threadpool(_submit_references, settings, conn, job_id, given, principal)
    except QuotaExceeded as e:
        return _over_quota(e)
    except Rejected as e:
        SUBMISSIONS.labels(outcome="rejected").inc()
        raise _refusal(e) from None


def _submit_references(settings: Settings, conn: redis.Redis, job_id: str, given: RunPipelineReferences, principal: Principal) -> Response:
    """Check each referenced input (the caller's own presigned upload, or allowed by
    PIPEQ_REFERENCE_HOSTS) by a ranged read of its head, then enqueue the run; the worker
    fetches them. Nothing is stored at submission."""
    names: dict = {"reads": []}
    sources: dict[str, str] = {}
    used: set[str] = set()
    total = 0
    for field, url, fallback, check in (
        *((f"reads[{i}]", u, f"reads_{i + 1}.fastq", check_fastq) for i, u in enumerate(given.reads)),
        ("reference", given.reference, "reference.fasta", check_fasta),
    ):
        label = f"{field.split('[')[0]}" if len(given.reads) == 1 or field == "reference" else field
        if why := references.allowed(url, settings):
            raise Rejected(422, label, f"{url}: {why}")
        if (upload_id := references.upload_of(url, settings)) is not None and not owners.owns_upload(conn, upload_id, principal):
            # the same answer for another user's upload as for none: nothing to learn from it
            raise Rejected(422, label, f"{url}: no presigned upload of yours (POST /uploads) is at this URL")
        try:
            head = references.head(url, public=references.public_only(url, settings))
        except references.Refused as e:
            raise Rejected(422, label, f"{url}: {e}") from None
        if head.length > settings.max_upload_bytes:
            raise Rejected(413, label, f"{url}: {head.length} bytes, more than the {settings.max_upload_bytes} accepted bytes per file")
        total += head.length
        if total > settings.max_total_upload_bytes:
            raise Rejected(413, "files", f"more than the {settings.max_total_upload_bytes} accepted bytes in all")
        try:
            check(head_of(head.data, whole=len(head.data) >= head.length))
        except InvalidInput as e:
            raise Rejected(422, label, f"{url}: {e}") from None
        name = unique(references.name_of(url, fallback), used)
        sources[name] = url
        if field == "reference":
            names["reference"] = name
        else:
            names["reads"].append(name)
    meta = {"sample": given.sample, "attempt": 0, "inputs": names, **owners.meta_of(principal)}
    kwargs = {"reads": names["reads"], "reference": names["reference"], "sample": given.sample, "sources": sources}
    return _enqueue(settings, conn, job_id, kwargs, meta)


def _refusal(r: Rejected) -> HTTPException:
    if r.code == 422:
        return HTTPException(r.code, detail=[{"loc": ["body", r.field], "msg": r.reason, "type": "value_error"}])
    return HTTPException(r.code, detail=f"{r.field}: {r.reason}" if r.field else r.reason)


def _over_quota(e: QuotaExceeded) -> Response:
    """429 with Retry-After, naming the limit and the use (the submission left nothing)."""
    SUBMISSIONS.labels(outcome="over_quota").inc()
    body = jobs.OverQuota(detail=str(e), limit=e.limit, allowed=e.allowed, current=e.current)
    return JSONResponse(body.model_dump(), status_code=status.HTTP_429_TOO_MANY_REQUESTS, headers={"Retry-After": str(e.retry_after)})


def _no_storage(e: OSError) -> HTTPException:
    return HTTPException(status.HTTP_507_INSUFFICIENT_STORAGE, detail=f"the server cannot store the uploads: {e.strerror or e}")


def _submit(settings: Settings, conn: redis.Redis, job_id: str, parts: list[uploads.Part], staging: Staging, namer: _Namer, principal: Principal) -> Response:
    """Check, store and enqueue (in the thread pool). Raises Rejected, Unavailable, OSError
    or RedisError; the caller then discards ``staging``."""
    reads, reference, sample = _fields(parts)
    names = _store_and_check(staging, namer, reads, reference)
    staging.commit()
    meta = {"sample": sample, "attempt": 0, "inputs": names, **owners.meta_of(principal)}
    kwargs = {"reads": names["reads"], "reference": names["reference"], "sample": sample}
    return _enqueue(settings, conn, job_id, kwargs, meta)


def _enqueue(settings: Settings, conn: redis.Redis, job_id: str, kwargs: dict, meta: dict) -> Response:
    queue.enqueue_run(conn, settings.queue, job_id, kwargs, meta=meta, retries=settings.retries, ttl=settings.job_ttl, settings=settings)
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


class _Namer:
    """The stored name of each file of one submission: its sanitized file name, made unique
    with leading underscores; given once per part, when it is spooled or checked."""

    def __init__(self):
        self.used: set[str] = set()
        self.reads = 0

    def __call__(self, part: uploads.Part) -> str:
        if part.stored_name is None:
            if part.name == "reads":
                self.reads += 1
            fallback = f"reads_{self.reads}.fastq" if part.name == "reads" else "reference.fasta"
            part.stored_name = unique(safe_names.sanitize_filename(part.filename or "", fallback), self.used)
        return part.stored_name


def unique(name: str, used: set[str]) -> str:
    """``name``, with leading underscores until it is not in ``used``; added to it."""
    while name in used:
        name = "_" + name
    used.add(name)
    return name


def _store_and_check(staging: Staging, namer: _Namer, reads: list[uploads.Part], reference: uploads.Part) -> dict:
    """Check every upload where it lies (in memory, or in its sink when large), then store
    the small ones: a refused submission of small files touches no storage."""
    if not 1 <= len(reads) <= 2:
        raise Rejected(422, "reads", f"give one (single-end) or two (paired-end) reads files, not {len(reads)}")
    names: dict = {"reads": []}
    checked: list[tuple[str, uploads.Part]] = []
    for field, upload, check in (
        *((f"reads[{i}]", f, check_fastq) for i, f in enumerate(reads)),
        ("reference", reference, check_fasta),
    ):
        label = f"{field.split('[')[0]}" if len(reads) == 1 or field == "reference" else field
        if problem := safe_names.filename_problem(upload.filename or ""):
            raise Rejected(422, label, f"{upload.filename!r}: {problem}")
        name = namer(upload)
        try:
            with upload.open() as f:
                check(f)
        except InvalidInput as e:
            raise Rejected(422, label, f"{upload.filename or name}: {e}")
        checked.append((name, upload))
        if field == "reference":
            names["reference"] = name
        else:
            names["reads"].append(name)
    for name, upload in checked:
        if upload.sink is None:  # a large one is in storage already
            staging.put(name, upload.data)
    return names


@router.get(
    "/job_status/{job_id}",
    response_model=jobs.JobStatus,
    responses={404: {"description": "No such job (or it expired, or it is another user's)."}},
    summary="A job's state, progress, result or error",
)
def job_status(job_id: str, conn: redis.Redis = Depends(get_redis), principal: Principal = Depends(current_principal)) -> Response:
    # JSON straight from the model: returned as a model, FastAPI would dump it, validate it
    # again against response_model and serialise it (the OpenAPI schema still comes from
    # response_model)
    return Response(status_of(conn, job_id, principal).model_dump_json(), media_type="application/json")


def job_or_404(conn: redis.Redis, job_id: str, principal: Principal) -> tuple[Job, int | None]:
    """The job and its queue position (see ``jobs.fetch_for_status``); 404 if there is none,
    or if it is not the principal's and the principal is no admin: to anyone else another
    user's job does not exist (the same answer, so a guessed id tells nothing)."""
    found = jobs.fetch_for_status(conn, job_id) if safe_names.JOB_ID_RE.match(job_id) else None
    if found is None or not principal.owns((found[0].meta or {}).get("owner")):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no job {job_id!r}")
    return found


def status_of(conn: redis.Redis, job_id: str, principal: Principal) -> jobs.JobStatus:
    job, position = job_or_404(conn, job_id, principal)
    return jobs.to_status(job, position=position)
