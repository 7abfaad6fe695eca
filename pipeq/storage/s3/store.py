"""The object-storage backend: job files in an S3-compatible object store (``PIPEQ_STORAGE=s3://BUCKET[/PREFIX]``).

Layout under ``<PREFIX>/jobs/<job_id>/``:

- ``inputs/<name>``: the checked uploads (large ones streamed in as a multipart upload);
- ``pipeline.log``: the pipeline's output, all attempts (uploaded every few seconds);
- ``attempts/<n>/<file>``: the results of attempt ``n``, uploaded when the pipeline ends;
- ``output.json``: the publish, ``{"attempt": n, "files": [...], "summary": {...}}``. One PUT
  of one small object is atomic, so a job's results are either all there or not published:
  a worker killed while uploading ``attempts/<n>/`` leaves no ``output.json``, and the next
  attempt runs again and publishes its own folder, once.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from botocore.exceptions import BotoCoreError, ClientError

from pipeq.storage.base import NotFound, Unavailable, summary_of
from pipeq.storage.names import JOB_ID_RE, check_job_id, files_in
from pipeq.storage.s3.client import READ_BYTES, errors, parse_url, shared_client
from pipeq.storage.s3.sink import MAX_PARTS, PART_BYTES, S3Sink


class S3Staging:
    """A submission's inputs written straight to ``jobs/<id>/inputs/``; discard deletes them."""

    def __init__(self, store: S3Store, job_id: str):
        self.store, self.job_id = store, job_id
        self.sinks: list[S3Sink] = []
        self.keys: list[str] = []

    def sink(self, name: str) -> S3Sink:
        s = S3Sink(self.store.s3, self.store.bucket, self.store.key(self.job_id, "inputs", name))
        self.sinks.append(s)
        return s

    def put(self, name: str, data: bytes) -> None:
        key = self.store.key(self.job_id, "inputs", name)
        self.keys.append(key)
        with errors(f"s3://{self.store.bucket}/{key}"):
            self.store.s3.put_object(Bucket=self.store.bucket, Key=key, Body=data)

    def commit(self) -> None:
        pass  # the objects are where the job looks for them

    def discard(self) -> None:
        for s in self.sinks:
            s.abort()
        if self.keys:
            with contextlib.suppress(ClientError, BotoCoreError):
                self.store.s3.delete_objects(Bucket=self.store.bucket, Delete={"Objects": [{"Key": k} for k in self.keys], "Quiet": True})


class S3Attempt:
    """An attempt in local scratch (``<scratch>/<worker>/``, wiped at its start and end):
    the inputs downloaded into ``inputs/``, results in ``work/``, the log in ``pipeline.log``
    (the stored log first, so that it keeps every attempt's output)."""

    def __init__(self, store: S3Store, job_id: str, number: int, scratch: Path):
        self.store, self.job_id, self.number = store, job_id, number
        self.scratch = scratch
        shutil.rmtree(scratch, ignore_errors=True)  # a killed attempt's leftovers, if any
        self.inputs = scratch / "inputs"
        self.workdir = scratch / "work"
        self.inputs.mkdir(parents=True)
        self.workdir.mkdir()
        self._lock = threading.Lock()
        self._synced = -1
        log_path = scratch / "pipeline.log"
        with open(log_path, "wb") as f:
            with contextlib.suppress(NotFound):
                store.download(store.key(job_id, "pipeline.log"), f)
        self.log = open(log_path, "ab", buffering=0)

    def fetch(self, names: list[str]) -> None:
        for name in names:
            with open(self.inputs / name, "wb") as f:
                self.store.download(self.store.key(self.job_id, "inputs", name), f)

    def publish(self, claim: Callable[[], bool]) -> bool:
        files = files_in(self.workdir)
        folder = f"attempts/{self.number}"
        for name in files:
            with open(self.workdir / name, "rb") as f, errors(f"publishing {name}"):
                self.store.s3.upload_fileobj(f, self.store.bucket, self.store.key(self.job_id, folder, name))
        if not claim():
            return False
        manifest = {"attempt": self.number, "folder": folder, "files": files, "summary": summary_of(self.workdir / "report.json")}
        self.store.write(self.store.key(self.job_id, "output.json"), json.dumps(manifest).encode())
        with contextlib.suppress(Unavailable):  # what killed attempts left: the prune takes it otherwise
            self.store.clear(self.store.key(self.job_id, "attempts") + "/", keep=self.store.key(self.job_id, folder) + "/")
        return True

    def sync_log(self) -> None:
        path = self.scratch / "pipeline.log"
        with self._lock:
            size = path.stat().st_size
            if size == self._synced:
                return
            with open(path, "rb") as f, errors("uploading the log"):
                self.store.s3.put_object(Bucket=self.store.bucket, Key=self.store.key(self.job_id, "pipeline.log"), Body=f.read(size))
            self._synced = size

    def close(self) -> None:
        try:
            self.sync_log()
        finally:
            self.log.close()
            shutil.rmtree(self.scratch, ignore_errors=True)


class S3Store:
    """Job files under ``s3://bucket/prefix/jobs/<job_id>/`` (see the module's docstring)."""

    uses_scratch = True

    def __init__(self, bucket: str, prefix: str = "", *, s3=None):
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.s3 = s3 or shared_client()

    @classmethod
    def from_url(cls, url: str) -> S3Store:
        bucket, prefix = parse_url(url)
        return cls(bucket, prefix)

    def key(self, job_id: str, *names: str) -> str:
        """The key of ``names`` in a job's folder; ValueError for anything but a job id."""
        return "/".join(p for p in (self.prefix, "jobs", check_job_id(job_id), *names) if p)

    # -- primitives ---------------------------------------------------------------------------

    def read(self, key: str, range_: str | None = None) -> bytes:
        with errors(f"s3://{self.bucket}/{key}"):
            extra = {"Range": range_} if range_ else {}
            return self.s3.get_object(Bucket=self.bucket, Key=key, **extra)["Body"].read()

    def write(self, key: str, data: bytes) -> None:
        with errors(f"s3://{self.bucket}/{key}"):
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)

    def download(self, key: str, out: BinaryIO) -> None:
        with errors(f"s3://{self.bucket}/{key}"):
            self.s3.download_fileobj(self.bucket, key, out)

    def keys_under(self, prefix: str) -> Iterator[dict]:
        with errors(f"listing s3://{self.bucket}/{prefix}"):
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                yield from page.get("Contents", [])

    def delete_prefix(self, prefix: str) -> None:
        self._delete_keys([o["Key"] for o in self.keys_under(prefix)])

    def clear(self, prefix: str, keep: str) -> None:
        """Delete the objects and abort the multipart uploads under ``prefix``, but those under ``keep``."""
        self._delete_keys([o["Key"] for o in self.keys_under(prefix) if not o["Key"].startswith(keep)])
        with errors(f"listing multipart uploads under {prefix}"):
            for up in self.s3.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix).get("Uploads", []):
                if not up["Key"].startswith(keep):
                    self.s3.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])

    def _delete_keys(self, keys: list[str]) -> None:
        """Delete ``keys`` (listed in full first: deleting while paging would skip some),
        1000 to a request, S3's most."""
        for i in range(0, len(keys), 1000):
            self._delete([{"Key": k} for k in keys[i : i + 1000]])

    def _delete(self, batch: list[dict]) -> None:
        with errors(f"deleting from s3://{self.bucket}"):
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    # -- uploads that bypass the API (POST /uploads) -------------------------------------------

    def upload_key(self, upload_id: str, name: str) -> str:
        return "/".join(p for p in (self.prefix, "uploads", upload_id, name) if p)

    def start_upload(self, key: str, size: int, expires: int, signer=None) -> tuple[str, int, list[str]]:
        """Create a multipart upload of ``size`` bytes at ``key``; return its S3 upload id,
        the part size and one presigned PUT URL per part (signed by ``signer``, a client for
        the endpoint that the uploader reaches, by default this store's)."""
        part = max(PART_BYTES, -(-size // MAX_PARTS))
        part = -(-part // (1024 * 1024)) * 1024 * 1024  # whole MiB
        count = max(1, -(-size // part))
        with errors(f"s3://{self.bucket}/{key}"):
            upload_id = self.s3.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
            signer = signer or self.s3
            urls = [
                signer.generate_presigned_url(
                    "upload_part",
                    Params={"Bucket": self.bucket, "Key": key, "UploadId": upload_id, "PartNumber": n},
                    ExpiresIn=expires,
                )
                for n in range(1, count + 1)
            ]
        return upload_id, part, urls

    def complete_upload(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> int:
        """Finish a multipart upload from its parts' (number, ETag); return the object's size."""
        with errors(f"s3://{self.bucket}/{key}"):
            self.s3.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in sorted(parts)]},
            )
            return int(self.s3.head_object(Bucket=self.bucket, Key=key)["ContentLength"])

    def abort_upload(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(ClientError, BotoCoreError):
            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        with contextlib.suppress(ClientError, BotoCoreError):
            self.s3.delete_object(Bucket=self.bucket, Key=key)

    # -- the Store interface ------------------------------------------------------------------

    def staging(self, job_id: str) -> S3Staging:
        self.key(job_id)
        return S3Staging(self, job_id)

    def attempt(self, job_id: str, number: int, scratch: Path | None) -> S3Attempt:
        if scratch is None:
            raise ValueError("an attempt on object storage needs a scratch folder")
        return S3Attempt(self, job_id, number, scratch)

    def published(self, job_id: str) -> dict | None:
        try:
            manifest = json.loads(self.read(self.key(job_id, "output.json")))
        except NotFound:
            return None
        return {"files": manifest["files"], "summary": manifest.get("summary", {})}

    def log_tail(self, job_id: str, nbytes: int) -> bytes:
        try:
            return self.read(self.key(job_id, "pipeline.log"), f"bytes=-{nbytes}")
        except NotFound:
            return b""
        except Unavailable as e:
            if e.code == "InvalidRange":  # an empty log
                return b""
            raise

    def output(self, job_id: str, name: str) -> tuple[Iterator[bytes], int | None]:
        try:
            manifest = json.loads(self.read(self.key(job_id, "output.json")))
        except NotFound:
            raise NotFound(name) from None
        if name not in manifest.get("files", []):
            raise NotFound(name)
        key = self.key(job_id, manifest["folder"], name)
        with errors(f"s3://{self.bucket}/{key}"):
            got = self.s3.get_object(Bucket=self.bucket, Key=key)
        body = got["Body"]

        def chunks() -> Iterator[bytes]:
            with contextlib.closing(body):
                yield from body.iter_chunks(READ_BYTES)

        return chunks(), got.get("ContentLength")

    def remove(self, job_id: str) -> None:
        self.delete_prefix(self.key(job_id) + "/")

    def prune(self, job_exists: Callable[[str], bool], older_than: float, uploads_older_than: float = 86400.0) -> list[str]:
        """Delete the objects of jobs that expired from Redis (their newest object older
        than ``older_than``) and presigned uploads as old, and abort multipart uploads left
        unfinished (by a crash, or an uploader gone) for ``uploads_older_than``."""
        root = "/".join(p for p in (self.prefix, "jobs") if p) + "/"
        now, newest = time.time(), {}
        for obj in self.keys_under(root):
            job_id = obj["Key"][len(root):].split("/", 1)[0]
            if JOB_ID_RE.match(job_id):
                newest[job_id] = max(newest.get(job_id, 0.0), obj["LastModified"].timestamp())
        uploads = "/".join(p for p in (self.prefix, "uploads") if p) + "/"
        self._delete_keys([o["Key"] for o in self.keys_under(uploads) if now - o["LastModified"].timestamp() > older_than])
        removed = []
        for job_id, changed in newest.items():
            if now - changed > older_than and not job_exists(job_id):
                self.remove(job_id)
                removed.append(job_id)
        with errors("listing multipart uploads"):
            for page in self.s3.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self.prefix):
                for up in page.get("Uploads", []):
                    if now - up["Initiated"].timestamp() > uploads_older_than:
                        with contextlib.suppress(ClientError):
                            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
        return removed


