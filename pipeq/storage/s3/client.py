"""The S3 client of the job store and of inputs given by ``s3://`` URL, and its errors.

The client is boto3: AWS's own SDK, which reads the standard variables and files
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``,
profiles, IRSA and workload-identity web tokens), so AWS, MinIO, Ceph RGW, SeaweedFS and
versitygw all work unchanged. Requests are signed with SigV4 and, with a custom endpoint,
addressed path-style (``endpoint/bucket/key``), which every S3-compatible server takes and
which presigned URLs need there.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from pipeq.storage.base import NotFound, Unavailable

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
        code = str(e.response.get("Error", {}).get("Code", "")) or str(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in _MISSING:
            raise NotFound(what, code=code) from None
        message = e.response.get("Error", {}).get("Message") or code
        raise Unavailable(f"{what}: the object store answered {code or 'an error'} ({message})", code=code or None) from None
    except BotoCoreError as e:
        raise Unavailable(f"{what}: the object store is unreachable ({type(e).__name__})", code="unreachable") from None


@functools.lru_cache(maxsize=4)
def _client_for(endpoint: str | None, access_key: str | None, region: str | None):
    return client()


def shared_client():
    """One client per process for objects outside the job store (inputs given by
    reference), made again when the AWS configuration in the environment changes."""
    env = os.environ.get
    return _client_for(env("AWS_ENDPOINT_URL") or env("AWS_ENDPOINT_URL_S3"), env("AWS_ACCESS_KEY_ID"), env("AWS_REGION") or env("AWS_DEFAULT_REGION"))
