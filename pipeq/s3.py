"""Job files in an S3-compatible object store (``PIPEQ_STORAGE=s3://BUCKET[/PREFIX]``).

The client is boto3: AWS's own SDK, which reads the standard variables and files
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``,
profiles, IRSA and workload-identity web tokens), so AWS, MinIO, Ceph RGW, SeaweedFS and
versitygw all work unchanged. Requests are signed with SigV4 and, with a custom endpoint,
addressed path-style (``endpoint/bucket/key``), which every S3-compatible server takes and
which presigned URLs need there.

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
import fcntl
import functools
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from pipeq import storage
from pipeq.store import NotFound, Unavailable, summary_of
from pipeq.validate import StreamCheck

#: Size of the parts of a multipart upload (S3 wants at least 5 MiB but for the last).
PART_BYTES = 8 * 1024 * 1024
#: S3's most parts in one multipart upload.
MAX_PARTS = 10_000
#: Bytes per read when a result or an input is streamed out of the store.
READ_BYTES = 1024 * 1024
_MISSING = {"NoSuchKey", "404", "NotFound", "NoSuchUpload"}


def client(**overrides):
    """A boto3 S3 client from the standard AWS configuration, signing SigV4, path-style,
    with bounded timeouts and few retries (an unreachable store answers within seconds)."""
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        connect_timeout=overrides.pop("connect_timeout", 5),
        read_timeout=overrides.pop("read_timeout", 60),
        retries={"max_attempts": overrides.pop("max_attempts", 3), "mode": "standard"},
        max_pool_connections=32,
    )
    return boto3.session.Session().client("s3", config=config, **overrides)


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` → ("bucket", "some/key")."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3:// URL: {url!r}")
    return parts.netloc, parts.path.lstrip("/")


@contextlib.contextmanager
def errors(what: str) -> Iterator[None]:
    """Turn boto3's errors into NotFound (no such object) or Unavailable (anything else)."""
    try:
        yield
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in _MISSING:
            raise NotFound(what) from None
        message = e.response.get("Error", {}).get("Message") or code
        raise Unavailable(f"{what}: the object store answered {code or 'an error'} ({message})") from None
    except BotoCoreError as e:
        raise Unavailable(f"{what}: the object store is unreachable ({type(e).__name__})") from None


#: Threads that send the parts of the uploads streaming through this process.
_senders = ThreadPoolExecutor(8, thread_name_prefix="s3-part")


class S3Sink:
    """A large upload streaming into a multipart upload, checked as it goes (see
    :class:`pipeq.validate.StreamCheck`): nothing of it is read back. A part is sent while
    the next one arrives (at most ``IN_FLIGHT`` parts in memory besides the one filling)."""

    IN_FLIGHT = 2

    def __init__(self, s3, bucket: str, key: str):
        self.s3, self.bucket, self.key = s3, bucket, key
        with errors(f"s3://{bucket}/{key}"):
            self.upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        self.parts: list[dict] = []
        self.sending: list[Future] = []
        self.buf = bytearray()
        self.check = StreamCheck()
        self.done = False

    def write(self, piece: bytes) -> None:
        self.check.feed(piece)
        self.buf += piece
        if len(self.buf) >= PART_BYTES:
            self._flush()

    def _flush(self) -> None:
        number = len(self.parts) + len(self.sending) + 1
        self.sending.append(_senders.submit(self._send, number, bytes(self.buf)))
        self.buf.clear()
        while len(self.sending) > self.IN_FLIGHT:
            self.parts.append(self.sending.pop(0).result())

    def _send(self, number: int, body: bytes) -> dict:
        with errors(f"s3://{self.bucket}/{self.key}"):
            r = self.s3.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=body)
        return {"PartNumber": number, "ETag": r["ETag"]}

    def close(self) -> None:
        if self.done:
            return
        if self.buf or not (self.parts or self.sending):
            self._flush()
        while self.sending:
            self.parts.append(self.sending.pop(0).result())
        with errors(f"s3://{self.bucket}/{self.key}"):
            self.s3.complete_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": self.parts})
        self.done = True

    def abort(self) -> None:
        for f in self.sending:
            f.cancel()
        for f in self.sending:
            with contextlib.suppress(Exception):
                f.result()  # a part still being sent would otherwise land after the abort
        with contextlib.suppress(ClientError, BotoCoreError):
            if self.done:
                self.s3.delete_object(Bucket=self.bucket, Key=self.key)
            else:
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)

    def open(self) -> BinaryIO:
        return self.check.open()


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
        files = storage.files_in(self.workdir)
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

    def __init__(self, bucket: str, prefix: str = "", *, scratch: Path, s3=None):
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.scratch = Path(scratch)
        self.s3 = s3 or shared_client()
        self._held = None  # the lock on this worker's scratch folder, held for its life

    @classmethod
    def from_url(cls, url: str, *, scratch: Path) -> S3Store:
        bucket, prefix = parse_url(url)
        return cls(bucket, prefix, scratch=scratch)

    def key(self, job_id: str, *names: str) -> str:
        storage.job_dir(Path("/"), job_id)  # ValueError for anything but a job id
        return "/".join(p for p in (self.prefix, "jobs", job_id, *names) if p)

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

    def attempt(self, job_id: str, number: int, worker: str) -> S3Attempt:
        return S3Attempt(self, job_id, number, self._claim_scratch(storage.sanitize_filename(worker, "worker")))

    def _claim_scratch(self, name: str) -> Path:
        """This worker's scratch folder, ``<scratch>/<name>/``. A worker holds a lock on
        ``<name>.lock`` while it lives; the folders of workers whose lock is free (killed
        ones) are removed here, at the next attempt's start on the machine."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        if self._held is None:
            self._held = open(self.scratch / f"{name}.lock", "w")
            fcntl.flock(self._held, fcntl.LOCK_EX)
        for lock in self.scratch.glob("*.lock"):
            if lock.name == f"{name}.lock":
                continue
            with open(lock, "a") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # its worker is alive
                shutil.rmtree(self.scratch / lock.stem, ignore_errors=True)
                lock.unlink(missing_ok=True)
        return self.scratch / name

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
            if "InvalidRange" in str(e):  # an empty log
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
            if storage.JOB_ID_RE.match(job_id):
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


@functools.lru_cache(maxsize=4)
def _client_for(endpoint: str | None, access_key: str | None, region: str | None):
    return client()


def shared_client():
    """One client per process for objects outside the job store (inputs given by
    reference), made again when the AWS configuration in the environment changes."""
    env = os.environ.get
    return _client_for(env("AWS_ENDPOINT_URL") or env("AWS_ENDPOINT_URL_S3"), env("AWS_ACCESS_KEY_ID"), env("AWS_REGION") or env("AWS_DEFAULT_REGION"))
