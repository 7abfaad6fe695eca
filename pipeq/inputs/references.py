"""Inputs named by URL (``s3://bucket/key``, ``https://host/path``) instead of uploaded.

Only URLs whose scheme and host an entry of ``PIPEQ_REFERENCE_HOSTS`` allows are fetched,
by the API (a ranged read of the head, to check it before the 202) and by the worker (the
whole object, into scratch): a user cannot make pipeq read the cluster's internal
addresses (SSRF) or a bucket its credentials reach but the user should not. An entry is
``scheme://host[:port]``, and ``*.`` before a host allows its subdomains; in the job store's
own bucket, where presigned uploads land, ``<PREFIX>/uploads/<upload_id>/<name>`` is always
allowed (whose upload it is, the API checks: a user may name their own only), and nothing
else under the store's prefix ever is, even in a bucket the allow-list names: another job's
inputs and results are another user's data. Redirects are not followed (a redirect could
point anywhere).

A host allowed only by a ``*.`` entry is reached at public addresses alone: its name is
resolved, internal addresses (private, loopback, link-local such as the cloud's metadata
service, ...) are refused, and the connection goes to an address that was checked, so a
subdomain whose DNS names an internal address, or changes to one after the check, reaches
nothing inside. Name an internal server exactly (``http://data.lab:8080``) to allow it.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from pipeq.storage import names
from pipeq.settings import Settings
from pipeq.storage.base import NotFound, Unavailable

#: Bytes read from the head of a referenced object to check it before the 202.
HEAD_RANGE = 1024 * 1024
TIMEOUT = 10.0
SCHEMES = ("s3", "https", "http")
_CONTENT_RANGE = re.compile(r"bytes \d+-\d+/(\d+)")
#: A presigned upload's key below the job store's prefix (see S3Store.upload_key).
_UPLOAD_KEY = re.compile(r"^uploads/([0-9a-f]{32})/[^/]+$")


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
    if (inside := _in_store(url, settings)) is not None:
        if _UPLOAD_KEY.match(inside):
            return None  # a presigned upload (POST /uploads) into the job store
        return "the job store's own files cannot be named, but presigned uploads (POST /uploads)"
    if _entry_for(parts.scheme, host, settings) is not None:
        return None
    return f"the host {parts.scheme}://{host} is not allowed (PIPEQ_REFERENCE_HOSTS)"


def _in_store(url: str, settings: Settings) -> str | None:
    """The key of ``url`` below the job store's prefix when it is in the job store, else None."""
    if not settings.storage.startswith("s3://"):
        return None
    parts, own = urlsplit(url), urlsplit(settings.storage)
    if parts.scheme != "s3" or (parts.hostname or "").lower() != own.hostname or parts.port is not None:
        return None
    key, prefix = parts.path.lstrip("/"), own.path.strip("/")
    if not prefix:
        return key
    return key[len(prefix) + 1:] if key.startswith(prefix + "/") else None


def upload_of(url: str, settings: Settings) -> str | None:
    """The upload id when ``url`` names a presigned upload in the job store, else None."""
    inside = _in_store(url, settings)
    m = _UPLOAD_KEY.match(inside) if inside is not None else None
    return m.group(1) if m else None


def public_only(url: str, settings: Settings) -> bool:
    """Whether ``url`` (allowed) may be read from public addresses only: an http(s) host that
    only a ``*.`` entry allows, not one named exactly."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return False
    host = (parts.hostname or "").lower() + (f":{parts.port}" if parts.port else "")
    entry = _entry_for(parts.scheme, host, settings)
    return entry is None or entry.startswith("*.")


def _entry_for(scheme: str, host: str, settings: Settings) -> str | None:
    """The allow-list pattern that lets ``scheme://host`` in, the exact one first."""
    patterns = [e.partition("://")[2] for e in allow_list(settings) if e.partition("://")[0] == scheme]
    if host in patterns:
        return host
    return next((p for p in patterns if p.startswith("*.") and host.endswith(p[1:])), None)


def allow_list(settings: Settings) -> list[str]:
    return [e.strip().lower().rstrip("/") for e in settings.reference_hosts.split(",") if e.strip()]


def name_of(url: str, fallback: str) -> str:
    """A file name for the object: the URL's last path segment, made safe."""
    return names.sanitize_filename(unquote(urlsplit(url).path.rsplit("/", 1)[-1]), fallback)


def head(url: str, nbytes: int = HEAD_RANGE, *, public: bool = True) -> Head:
    """A ranged read of the first ``nbytes`` of the object. Raises Refused (missing,
    forbidden, unreachable, an internal address where ``public`` (see :func:`public_only`);
    the message names the URL's problem)."""
    if url.startswith("s3://"):
        return _s3_head(url, nbytes)
    return _http_head(url, nbytes, public)


def fetch(url: str, out: BinaryIO, *, public: bool = True) -> None:
    """Copy the whole object into ``out`` (from public addresses only, with ``public``).
    Raises Unavailable when it cannot be read."""
    try:
        if url.startswith("s3://"):
            from pipeq.storage.s3 import client as s3

            bucket, key = s3.parse_url(url)
            with s3.errors(url):
                s3.shared_client().download_fileobj(bucket, key, out)
            return
        with _open(urllib.request.Request(url), public) as r:
            while chunk := r.read(1024 * 1024):
                out.write(chunk)
    except (Refused, NotFound) as e:
        raise Unavailable(f"{url}: {e}") from None


def _s3_head(url: str, nbytes: int) -> Head:
    from pipeq.storage.s3 import client as s3

    bucket, key = s3.parse_url(url)
    try:
        with s3.errors(url):
            got = s3.shared_client().get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{nbytes - 1}")
            data = got["Body"].read()
    except NotFound:
        raise Refused("no such object") from None
    except Unavailable as e:
        if e.code == "InvalidRange":  # an empty object
            return Head(b"", 0)
        raise Refused(str(e).split(": ", 1)[-1]) from None
    return Head(data, _length(got.get("ContentRange"), len(data)))


def _http_head(url: str, nbytes: int, public: bool) -> Head:
    request = urllib.request.Request(url, headers={"Range": f"bytes=0-{nbytes - 1}"})
    try:
        with _open(request, public) as r:
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


def is_public(address: str) -> bool:
    """Whether an IP address is a public one (not private, loopback, link-local, reserved...)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _public_connection(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, **_):
    """socket.create_connection to the first public address of the host; internal ones are
    never connected to."""
    host, port = address
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise OSError(f"cannot resolve {host}: {e.strerror}") from None
    public = [i for i in infos if is_public(i[4][0])]
    if not public:
        raise Refused(f"{host} resolves to an internal address ({infos[0][4][0]}), and only an entry "
                      "that names the host exactly may reach one (PIPEQ_REFERENCE_HOSTS)")
    error: OSError | None = None
    for family, type_, proto, _, sockaddr in public:
        sock = socket.socket(family, type_, proto)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as e:
            sock.close()
            error = e
    raise error


@functools.cache
def _public_class(http_class: type) -> type:
    """``http_class`` (HTTPConnection, HTTPSConnection) connecting to public addresses only."""
    class Connection(http_class):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self._create_connection = _public_connection

    return Connection


class _PublicOnly:
    """A urllib handler whose connections reach public addresses only."""

    def do_open(self, http_class, req, **kwargs):
        return super().do_open(_public_class(http_class), req, **kwargs)


class _PublicHTTP(_PublicOnly, urllib.request.HTTPHandler):
    pass


class _PublicHTTPS(_PublicOnly, urllib.request.HTTPSHandler):
    pass


_opener = urllib.request.build_opener(_NoRedirects)
_public_opener = urllib.request.build_opener(_NoRedirects, _PublicHTTP, _PublicHTTPS)


def _open(request: urllib.request.Request, public: bool):
    try:
        return (_public_opener if public else _opener).open(request, timeout=TIMEOUT)
    except Refused:
        raise
    except urllib.error.HTTPError as e:
        if e.code == 416:
            raise
        raise Refused(f"the server answered {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise Refused(f"unreachable ({reason})") from None
