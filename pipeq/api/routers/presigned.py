"""Uploads that bypass the API: presigned multipart uploads straight into object storage.

``POST /uploads`` creates an S3 multipart upload of one file under ``<prefix>/uploads/<id>/``
and returns one presigned PUT URL per part; the client PUTs the parts to the store, then
``POST /uploads/{id}/complete`` with each part's ETag finishes it and returns the file's
``s3://`` reference, which a JSON submission names (and checks, as any reference). The
bytes never pass through the API. Only with ``PIPEQ_STORAGE=s3://...``.

An upload belongs to who started it: only they (or an admin) may complete it, and only they
may name its reference in a submission (pipeq.api.owners keeps its owner for as long as a
job may name it).
"""

from __future__ import annotations

import functools
import json
import uuid

import redis
from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, Field

from pipeq import keys
from pipeq.storage import names
from pipeq.api import owners
from pipeq.api.deps import get_redis, get_settings, get_store
from pipeq.auth import Principal, current_principal
from pipeq.settings import Settings
from pipeq.storage import NotFound, Store, Unavailable

router = APIRouter(prefix="/uploads", tags=["uploads"])  # create_app adds the principal (401 without one) to every route

#: How long the presigned part URLs, and an unfinished upload's record, last.
EXPIRES_SECONDS = 6 * 3600
#: S3's codes for parts that do not make up the file (a 422, not a 503).
PARTS_REFUSED = frozenset({"InvalidPart", "InvalidPartOrder", "EntityTooSmall"})


class UploadsInfo(BaseModel):
    enabled: bool = Field(description="Whether this server takes presigned uploads (it keeps job files in object storage).")
    threshold_bytes: int = Field(description="The web page uploads files larger than this through `POST /uploads`.")


class NewUpload(BaseModel):
    filename: str = Field(min_length=1, max_length=255, description="The file's name (it names the object).")
    size: int = Field(ge=1, description="The file's size in bytes.")


class PartURL(BaseModel):
    part_number: int
    url: str = Field(description="PUT this part's bytes here (no other headers needed); keep the answer's ETag header.")


class Upload(BaseModel):
    upload_id: str
    part_size: int = Field(description="Bytes of every part but the last.")
    parts: list[PartURL]
    expires_in: int = Field(description="Seconds the part URLs are valid.")


class DonePart(BaseModel):
    part_number: int = Field(ge=1, le=10_000)
    etag: str = Field(min_length=1, max_length=200)


class Complete(BaseModel):
    parts: list[DonePart] = Field(min_length=1, max_length=10_000)


class Uploaded(BaseModel):
    reference: str = Field(description="The `s3://` URL to name in a JSON submission to `POST /run_pipeline`.")
    size: int


def _s3_store(store: Store):
    from pipeq.storage.s3.store import S3Store

    if not isinstance(store, S3Store):
        raise HTTPException(status.HTTP_409_CONFLICT, detail="presigned uploads need object storage (PIPEQ_STORAGE=s3://...); upload through POST /run_pipeline")
    return store


@router.get("/info", response_model=UploadsInfo, summary="Whether presigned uploads are on, and above which size the page uses them")
async def uploads_info(settings: Settings = Depends(get_settings), store: Store = Depends(get_store)) -> UploadsInfo:
    return UploadsInfo(enabled=settings.storage != "file", threshold_bytes=settings.presigned_upload_bytes)


@router.post(
    "",
    response_model=Upload,
    status_code=status.HTTP_201_CREATED,
    responses={400: {"description": "The body is not JSON."}, 409: {"description": "This server keeps job files on a volume, not in object storage."}, 413: {"description": "The file is larger than the server accepts."}, 422: {"description": "A bad file name."}, 503: {"description": "The object store or Redis is unreachable."}},
    summary="Start a presigned multipart upload of one file",
)
def start_upload(given: NewUpload, settings: Settings = Depends(get_settings), store: Store = Depends(get_store), conn: redis.Redis = Depends(get_redis),
                 principal: Principal = Depends(current_principal)) -> Upload:
    s3 = _s3_store(store)
    if given.size > settings.max_upload_bytes:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=f"{given.filename}: {given.size} bytes, more than the {settings.max_upload_bytes} accepted bytes per file")
    if problem := names.filename_problem(given.filename):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=[{"loc": ["body", "filename"], "msg": f"{given.filename!r}: {problem}", "type": "value_error"}])
    upload_id = uuid.uuid4().hex
    key = s3.upload_key(upload_id, names.sanitize_filename(given.filename, "upload"))
    s3_upload, part_size, urls = s3.start_upload(key, given.size, EXPIRES_SECONDS, signer=_signer(settings))
    # its owner first: a record without one is never there for a submission to name
    owners.record_upload(conn, upload_id, principal, EXPIRES_SECONDS + settings.job_ttl)
    conn.set(keys.upload(upload_id), json.dumps({"key": key, "s3_upload": s3_upload, "size": given.size, "owner": principal.id}), ex=EXPIRES_SECONDS)
    return Upload(upload_id=upload_id, part_size=part_size, parts=[PartURL(part_number=i, url=u) for i, u in enumerate(urls, 1)], expires_in=EXPIRES_SECONDS)


@router.post(
    "/{upload_id}/complete",
    response_model=Uploaded,
    responses={400: {"description": "The body is not JSON."}, 404: {"description": "No such upload (or it expired, or it is another user's)."}, 409: {"description": "This server keeps job files on a volume, not in object storage."}, 413: {"description": "The parts add up to more than the server accepts."}, 422: {"description": "The parts do not make up the file (a missing part or a wrong ETag)."}},
    summary="Finish a presigned upload; returns the reference to submit",
)
def complete_upload(upload_id: str, given: Complete, settings: Settings = Depends(get_settings), store: Store = Depends(get_store), conn: redis.Redis = Depends(get_redis),
                    principal: Principal = Depends(current_principal)) -> Uploaded:
    """A plain ``def``: its Redis and S3 calls block, so FastAPI runs it in the thread pool
    (as an ``async def`` it made them on the event loop, stalling every other request)."""
    s3 = _s3_store(store)
    raw = conn.get(keys.upload(upload_id)) if names.JOB_ID_RE.match(upload_id) else None
    up = json.loads(raw) if raw is not None else None
    if up is None or not principal.owns(up.get("owner")):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no upload {upload_id!r} (it may have expired)")
    try:
        size = s3.complete_upload(up["key"], up["s3_upload"], [(p.part_number, p.etag) for p in given.parts])
    except NotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"upload {upload_id} is no longer open") from None
    except Unavailable as e:
        if e.code in PARTS_REFUSED:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=[{"loc": ["body", "parts"], "msg": f"the parts do not make up the file: {e}", "type": "value_error"}]) from None
        raise
    conn.delete(keys.upload(upload_id))
    if size > settings.max_upload_bytes:
        s3.abort_upload(up["key"], up["s3_upload"])
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=f"{size} bytes, more than the {settings.max_upload_bytes} accepted bytes per file")
    return Uploaded(reference=f"s3://{s3.bucket}/{up['key']}", size=size)


def _signer(settings: Settings):
    """A client that signs for the endpoint uploaders reach (PIPEQ_S3_PUBLIC_ENDPOINT), or None."""
    return _signer_for(settings.s3_public_endpoint) if settings.s3_public_endpoint else None


@functools.lru_cache(maxsize=2)
def _signer_for(endpoint: str):
    from pipeq.storage.s3 import client as s3

    return s3.client(endpoint_url=endpoint)
