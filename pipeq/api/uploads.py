"""Reading the multipart/form-data body of a submission as it streams in.

A submission is almost all file bytes. Starlette's parser (python-multipart) calls back into
Python for every piece of every part and copies each file into a spooled temporary file, in
``/tmp`` when it is large, from where it would be copied again into the job's folder. This
parser looks only for the boundary (``bytes.find``, which skips ahead by the boundary's
length) and keeps each file part as the chunks it arrived in: up to ``SPOOL_BYTES`` in
memory, beyond that in a sink that ``spool`` gives (see :mod:`pipeq.storage.base`): a file in the
job's staging folder on the data volume, or a multipart upload into object storage, so the
bytes go where they will stay as they arrive.

It reads what a browser, curl, httpx or requests send (RFC 7578): ``Content-Disposition:
form-data; name=...; filename=...`` with quoted or bare values, backslash escapes in quotes,
and ``filename*=UTF-8''...``. Limits are enforced while the body streams in, so an oversized
upload is refused without being read to its end.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from typing import BinaryIO
from urllib.parse import unquote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from pipeq.storage import Sink

SPOOL_BYTES = 1 << 20  # a file part larger than this goes to its sink
SINK_BATCH = 1 << 20  # bytes handed to a sink per trip to the thread pool
MAX_PARTS = 32
MAX_HEADER_BYTES = 16 * 1024  # the headers of one part, or a preamble before the first part
MAX_FIELD_BYTES = 64 * 1024  # the value of a plain (non-file) field
CRLF = b"\r\n"


class Rejected(Exception):
    """The submission is refused: HTTP status, the field it concerns ("" for the body as a
    whole) and the reason, for the user."""

    def __init__(self, code: int, field: str, reason: str):
        super().__init__(reason)
        self.code, self.field, self.reason = code, field, reason


class Part:
    """One part of the form: a plain field (``filename`` is None) or a file."""

    __slots__ = ("name", "filename", "size", "sink", "stored_name", "_chunks", "_pending")

    def __init__(self, name: str, filename: str | None):
        self.name, self.filename = name, filename
        self.size = 0
        self.sink: Sink | None = None  # where the part went once it outgrew memory
        self.stored_name: str | None = None  # the name the caller's spool gave it
        self._chunks: list[bytes] = []
        self._pending = 0  # bytes in _chunks not yet handed to the sink

    @property
    def data(self) -> bytes:
        """The content of a part kept in memory."""
        if len(self._chunks) > 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0] if self._chunks else b""

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")

    def open(self) -> BinaryIO:
        """The content, as a binary file open for reading at its start (for a part in a
        sink: what its sink keeps for the checks)."""
        return self.sink.open() if self.sink else io.BytesIO(self.data)


def boundary_of(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` content type; Rejected otherwise."""
    kind, params = _header_options(content_type.encode("latin-1"))
    if kind != "multipart/form-data":
        raise Rejected(415, "", f"the body must be multipart/form-data (uploads) or application/json (inputs by URL), not {kind or 'empty'!r}")
    boundary = params.get("boundary", "")
    if not 1 <= len(boundary) <= 70:
        raise Rejected(400, "", "the multipart/form-data content type has no valid boundary")
    return boundary.encode("latin-1")


Spool = Callable[[Part], Sink]


async def read_form(request: Request, *, spool: Spool, max_file_bytes: int, max_total_bytes: int, keep: frozenset[str]) -> list[Part]:
    """The parts of the request's multipart body, in order; only parts named in ``keep`` hold
    their content (the others are read past and counted). Raises Rejected (400 for a body
    that is not well-formed multipart, 413 over a limit, 415 for another content type).

    A file part that outgrows memory goes to ``spool(part)`` (called off the event loop),
    and is closed at its end. The caller owns what the sinks hold: it discards them when
    the submission fails, whatever happened.
    """
    delim = b"\r\n--" + boundary_of(request.headers.get("content-type", ""))
    return await _parse(request.stream().__aiter__(), delim, [], spool, max_file_bytes, max_total_bytes, keep)


async def _parse(chunks, delim: bytes, parts: list[Part], spool: Spool, max_file_bytes: int, max_total_bytes: int, keep: frozenset[str]) -> list[Part]:
    buf = bytearray(CRLF)  # the body starts with "--boundary": now it looks like every later one
    total = 0

    async def fill() -> None:
        while True:
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                raise Rejected(400, "", "the body ends before the closing boundary of the form (was the upload cut short?)") from None
            if chunk:
                buf.extend(chunk)
                return

    preamble = 0  # bytes before the first boundary, which RFC 2046 says to ignore
    while (i := buf.find(delim)) < 0:
        cut = max(0, len(buf) - len(delim))
        preamble += cut
        if preamble > MAX_HEADER_BYTES:
            raise Rejected(400, "", "the body does not start with the boundary of its content type")
        del buf[:cut]
        await fill()
    del buf[: i + len(delim)]
    while True:
        while len(buf) < 2:
            await fill()
        if buf[:2] == b"--":
            return parts  # the closing boundary; an epilogue after it is ignored
        while (end := buf.find(b"\r\n\r\n")) < 0 and len(buf) <= MAX_HEADER_BYTES:
            await fill()
        if not 0 <= end <= MAX_HEADER_BYTES:
            raise Rejected(400, "", "the headers of a part are too long")
        if buf[:2] != CRLF:
            raise Rejected(400, "", "a boundary line of the body has bytes after the boundary")
        part = _part(bytes(buf[2:end]))
        del buf[: end + 4]
        if len(parts) == MAX_PARTS:
            raise Rejected(400, "", f"the form has more than {MAX_PARTS} parts")
        parts.append(part)
        wanted = part.name in keep
        limit = max_file_bytes if part.filename is not None else MAX_FIELD_BYTES
        while True:
            i = buf.find(delim)
            n = i if i >= 0 else len(buf) - len(delim) + 1  # a boundary may straddle two chunks
            if n > 0:
                part.size += n
                total += n
                if part.size > limit:
                    what = "bytes per file" if part.filename is not None else "bytes in a form field"
                    raise Rejected(413, part.name, f"more than the {limit} accepted {what}")
                if total > max_total_bytes:
                    raise Rejected(413, "files", f"more than the {max_total_bytes} accepted bytes in all")
                if wanted:
                    with memoryview(buf) as view:
                        piece = bytes(view[:n])
                    await _keep(part, piece, spool)
                del buf[:n]
            if i >= 0:
                del buf[: len(delim)]
                break
            await fill()
        if part.sink is not None:
            await run_in_threadpool(_finish, part)


async def _keep(part: Part, piece: bytes, spool: Spool) -> None:
    part._chunks.append(piece)
    if part.sink is None and part.size > SPOOL_BYTES and part.filename is not None:
        # outgrew memory: from now on the part goes to its sink (written off the event loop,
        # a megabyte per trip: one per network chunk cost a second of CPU per GB)
        part.sink = await run_in_threadpool(_spool, spool, part)
    elif part.sink is not None:
        part._pending += len(piece)
        if part._pending >= SINK_BATCH:
            await run_in_threadpool(_drain, part)


def _spool(spool: Spool, part: Part) -> Sink:
    part.sink = spool(part)
    _drain(part)
    return part.sink


def _drain(part: Part) -> None:
    for chunk in part._chunks:
        part.sink.write(chunk)
    part._chunks, part._pending = [], 0


def _finish(part: Part) -> None:
    _drain(part)
    part.sink.close()


def _part(raw: bytes) -> Part:
    """A part from its header block (the lines between the boundary and the blank line)."""
    disposition = None
    for line in raw.split(CRLF):
        key, sep, value = line.partition(b":")
        if not sep:
            raise Rejected(400, "", "a part has a header line without ':'")
        if key.strip().lower() == b"content-disposition":
            disposition = value
    if disposition is None:
        raise Rejected(400, "", "a part has no Content-Disposition header")
    kind, params = _header_options(disposition)
    if kind != "form-data" or "name" not in params:
        raise Rejected(400, "", "a part's Content-Disposition must be form-data with a name")
    filename = params.get("filename")
    if "filename*" in params:  # RFC 5987: charset'language'percent-encoded
        charset, _, rest = params["filename*"].partition("'")
        try:
            filename = unquote(rest.partition("'")[2], encoding=charset or "utf-8", errors="strict")
        except (LookupError, UnicodeDecodeError):
            raise Rejected(400, "", "a part's filename* cannot be decoded") from None
    return Part(params["name"], filename)


# one parameter of a header: ; key=value, the value a token or a quoted string with \-escapes
_PARAM = re.compile(rb';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)', re.S)
_ESCAPE = re.compile(rb"\\(.)", re.S)


def _header_options(value: bytes) -> tuple[str, dict[str, str]]:
    """``form-data; name="a"; filename="b"`` → ("form-data", {"name": "a", "filename": "b"}).
    Values are UTF-8 (what browsers send), or Latin-1 when they are not valid UTF-8."""
    main, _, rest = value.partition(b";")
    params = {}
    for key, raw in _PARAM.findall(b";" + rest):
        raw = raw.strip()
        if raw[:1] == b'"' and raw[-1:] == b'"' and len(raw) >= 2:
            raw = _ESCAPE.sub(rb"\1", raw[1:-1])
        params[key.decode("latin-1").lower()] = _decode(raw)
    return main.strip().decode("latin-1").lower(), params


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
