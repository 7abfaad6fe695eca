"""Inputs named by URL (``s3://bucket/key``, ``https://host/path``) instead of uploaded.

Only URLs whose scheme and host an entry of ``PIPEQ_REFERENCE_HOSTS`` allows are fetched,
by the API (a ranged read of the head, to check it before the 202) and by the worker (the
whole object, into scratch): a user cannot make pipeq read the cluster's internal
addresses (SSRF) or a bucket its credentials reach but the user should not. An entry is
``scheme://host[:port]``, and ``*.`` before a host allows its subdomains; in the job store's
own bucket, where presigned uploads land, ``<PREFIX>/uploads/`` is always allowed. Redirects are
not followed (a redirect could point anywhere).
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from pipeq import storage
from pipeq.settings import Settings
from pipeq.store import NotFound, Unavailable

#: Bytes read from the head of a referenced object to check it before the 202.
HEAD_RANGE = 1024 * 1024
TIMEOUT = 10.0
SCHEMES = ("s3", "https", "http")
_CONTENT_RANGE = re.compile(r"bytes \d+-\d+/(\d+)")


class Refused(Exception):
    """The URL is not one pipeq may or can read; the message says why, for the user."""


@dataclass
class Head:
    """The first bytes of a referenced object, and its whole length."""

    data: bytes
    length: int


def allowed(url: str, settings: Settings) -> str | None:
    """Why ``url`` may not be fetched, or None when it may."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in SCHEMES or not parts.hostname:
        return "a reference must be an s3:// or https:// URL"
    if parts.username or parts.password:
        return "a reference must not carry credentials"
    if not parts.path.strip("/") or parts.path.endswith("/"):
        return "a reference must name an object, not a folder"
    host = parts.hostname.lower() + (f":{port}" if port else "")
    if parts.scheme == "s3" and settings.storage.startswith("s3://"):
        own = urlsplit(settings.storage)
        uploads = "/".join(p for p in (own.path.strip("/"), "uploads") if p) + "/"
        if host == own.hostname and parts.path.lstrip("/").startswith(uploads):
            return None  # a presigned upload (POST /uploads) into the job store
    for entry in allow_list(settings):
        scheme, _, pattern = entry.partition("://")
        if scheme != parts.scheme:
            continue
        if pattern == host or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return None
    return f"the host {parts.scheme}://{host} is not allowed (PIPEQ_REFERENCE_HOSTS)"


def allow_list(settings: Settings) -> list[str]:
    return [e.strip().lower().rstrip("/") for e in settings.reference_hosts.split(",") if e.strip()]


def name_of(url: str, fallback: str) -> str:
    """A file name for the object: the URL's last path segment, made safe."""
    return storage.sanitize_filename(unquote(urlsplit(url).path.rsplit("/", 1)[-1]), fallback)


def head(url: str, nbytes: int = HEAD_RANGE) -> Head:
    """A ranged read of the first ``nbytes`` of the object. Raises Refused (missing,
    forbidden, unreachable; the message names the URL's problem)."""
    if url.startswith("s3://"):
        return _s3_head(url, nbytes)
    return _http_head(url, nbytes)


def fetch(url: str, out: BinaryIO) -> None:
    """Copy the whole object into ``out``. Raises Unavailable when it cannot be read."""
    try:
        if url.startswith("s3://"):
            from pipeq import s3

            bucket, key = s3.parse_url(url)
            with s3.errors(url):
                s3.shared_client().download_fileobj(bucket, key, out)
            return
        with _open(urllib.request.Request(url)) as r:
            while chunk := r.read(1024 * 1024):
                out.write(chunk)
    except (Refused, NotFound) as e:
        raise Unavailable(f"{url}: {e}") from None


def _s3_head(url: str, nbytes: int) -> Head:
    from pipeq import s3

    bucket, key = s3.parse_url(url)
    try:
        with s3.errors(url):
            got = s3.shared_client().get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{nbytes - 1}")
            data = got["Body"].read()
    except NotFound:
        raise Refused("no such object") from None
    except Unavailable as e:
        if "InvalidRange" in str(e):  # an empty object
            return Head(b"", 0)
        raise Refused(str(e).split(": ", 1)[-1]) from None
    return Head(data, _length(got.get("ContentRange"), len(data)))


def _http_head(url: str, nbytes: int) -> Head:
    request = urllib.request.Request(url, headers={"Range": f"bytes=0-{nbytes - 1}"})
    try:
        with _open(request) as r:
            data = r.read(nbytes)
            if r.status == 206:
                return Head(data, _length(r.headers.get("Content-Range"), len(data)))
            length = r.headers.get("Content-Length")
            return Head(data, int(length) if length and length.isdigit() else len(data))
    except urllib.error.HTTPError as e:
        if e.code == 416:
            return Head(b"", 0)
        raise


def _length(content_range: str | None, fallback: int) -> int:
    m = _CONTENT_RANGE.match(content_range or "")
    return int(m.group(1)) if m else fallback


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise Refused(f"it redirects ({code}) elsewhere; give the final URL")


_opener = urllib.request.build_opener(_NoRedirects)


def _open(request: urllib.request.Request):
    try:
        return _opener.open(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        if e.code == 416:
            raise
        raise Refused(f"the server answered {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise Refused(f"unreachable ({reason})") from None
