"""pipeq.api.uploads reads what Starlette's parser reads, however the body is cut into
chunks, and refuses what is not multipart/form-data with a 4xx and a reason."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import os

import httpx
import pytest
from starlette.formparsers import MultiPartParser
from starlette.requests import Request

from pipeq.api import uploads
from pipeq.api.uploads import Rejected
from pipeq.storage.files import FileSink

FASTQ = b"".join(b"@r%d\nACGTACGTAC\n+\nIIIIIIIIII\n" % i for i in range(50))
KEEP = frozenset({"reads", "reference", "sample", "other"})


def run_async(coro):
    """asyncio.run in a thread of its own: the browser tests' sync Playwright leaves an event
    loop running in the main thread, where asyncio.run refuses to start."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def encode(files, data=None) -> tuple[bytes, str]:
    """A body and content type exactly as httpx sends them."""
    req = httpx.Request("POST", "http://x/run_pipeline", files=files, data=data)
    return req.read(), req.headers["content-type"]


def request(body: bytes, content_type: str, chunk: int) -> tuple[Request, list[int]]:
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
    served = []

    async def receive():
        i = len(served)
        served.append(i)
        if i < len(pieces):
            return {"type": "http.request", "body": pieces[i], "more_body": i + 1 < len(pieces)}
        return {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-type", content_type.encode())]}
    return Request(scope, receive), served


def spool_in(folder):
    """A spool like the data folder's: each large part in a file named after it."""
    return lambda part: FileSink(folder / part.filename)


def ours(body, content_type, chunk, tmp_path, **limits):
    async def run():
        req, _ = request(body, content_type, chunk)
        parts = await uploads.read_form(
            req,
            spool=spool_in(tmp_path / "spool"),
            max_file_bytes=limits.get("max_file_bytes", 1 << 30),
            max_total_bytes=limits.get("max_total_bytes", 1 << 30),
            keep=KEEP,
        )
        out = []
        for p in parts:
            with p.open() as f:
                out.append((p.name, p.filename, f.read()))
        return out

    return run_async(run())


def starlettes(body, content_type):
    async def run():
        req, _ = request(body, content_type, 65536)
        form = await MultiPartParser(req.headers, req.stream()).parse()
        out = []
        for name, value in form.multi_items():
            if isinstance(value, str):
                out.append((name, None, value.encode()))
            else:
                out.append((name, value.filename, await value.read()))
        return out

    return run_async(run())


BODIES = {
    "a run": ([("reads", ("r1.fq.gz", gzip.compress(FASTQ))), ("reads", ("r2.fq", FASTQ)), ("reference", ("ref.fa", b">c\nACGT\n"))], {"sample": "S1"}),
    "names": ([("reads", ('a "quoted" name.fq', b"x")), ("reads", ("naïve ☃.fq", b"y")), ("reference", ("a\\b;c=d.fa", b"z"))], None),
    "empty file and field": ([("reads", ("e.fq", b"")), ("reference", ("r.fa", b"\r\n--"))], {"sample": ""}),
    "boundary-like content": ([("reads", ("r.fq", b"\r\n--\r\n-" * 5000 + os.urandom(70_000)))], {"other": "x" * 1000}),
    "binary": ([("reads", ("r.bin", bytes(range(256)) * 600))], None),
}


@pytest.mark.parametrize("chunk", [1, 7, 4096, 65536])
@pytest.mark.parametrize("case", list(BODIES))
def test_reads_what_starlette_reads(tmp_path, case, chunk):
    files, data = BODIES[case]
    body, ctype = encode(files, data)
    if chunk == 1 and len(body) > 20_000:
        body, ctype = encode([(n, (f, c[:3000])) for n, (f, c) in files], data)
    assert ours(body, ctype, chunk, tmp_path) == starlettes(body, ctype)


def test_rfc5987_filename_and_preamble(tmp_path):
    body = (
        b"a preamble, ignored\r\n--XyZ\r\n"
        b"Content-Disposition: form-data; name=\"reads\"; filename=\"fallback.fq\"; filename*=UTF-8''%E2%82%AC%20r.fq\r\n"
        b"Content-Type: application/gzip\r\n\r\n"
        b"@r\nA\n+\nI\n\r\n--XyZ--\r\nan epilogue, ignored"
    )
    assert ours(body, 'multipart/form-data; boundary="XyZ"', 5, tmp_path) == [("reads", "€ r.fq", b"@r\nA\n+\nI\n")]


def test_large_parts_spool_to_disk_and_small_ones_stay_in_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(uploads, "SPOOL_BYTES", 10_000)
    big, small = os.urandom(50_000), b"@r\nA\n+\nI\n"
    body, ctype = encode([("reads", ("big.fq", big)), ("reference", ("small.fa", small))])

    async def run():
        req, _ = request(body, ctype, 4096)
        parts = await uploads.read_form(req, spool=spool_in(tmp_path / "spool"), max_file_bytes=1 << 20, max_total_bytes=1 << 20, keep=KEEP)
        return parts

    parts = run_async(run())
    assert parts[0].sink is not None and parts[0].sink.path == tmp_path / "spool" / "big.fq"
    assert parts[0].sink.path.read_bytes() == big and parts[0].size == len(big)
    assert parts[1].sink is None and parts[1].data == small
    assert os.listdir(tmp_path / "spool") == ["big.fq"]


def test_parts_not_asked_for_are_read_past(tmp_path):
    body, ctype = encode([("junk", ("j.bin", b"j" * 5000)), ("reads", ("r.fq", FASTQ))])
    got = ours(body, ctype, 1000, tmp_path)
    assert got == [("junk", "j.bin", b""), ("reads", "r.fq", FASTQ)]


def refusal(body, ctype, tmp_path, chunk=4096, **limits) -> Rejected:
    with pytest.raises(Rejected) as e:
        ours(body, ctype, chunk, tmp_path, **limits)
    return e.value


def test_not_multipart_is_415_and_a_bad_boundary_400(tmp_path):
    assert refusal(b'{"reads": 1}', "application/json", tmp_path).code == 415
    assert refusal(b"", "", tmp_path).code == 415
    r = refusal(b"--x\r\n", "multipart/form-data", tmp_path)
    assert r.code == 400 and "boundary" in r.reason


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"", "ends before the closing boundary"),
        (b"no boundary here at all " * 1000, "does not start with the boundary"),
        (b"--B\r\nContent-Disposition: form-data; name=\"reads\"\r\n\r\nabc", "ends before the closing boundary"),
        (b"--B\r\nContent-Disposition: form-data; name=\"reads\"\r\n\r\nabc\r\n--B", "ends before the closing boundary"),
        (b"--B\r\nno colon\r\n\r\nabc\r\n--B--", "without ':'"),
        (b"--B\r\nContent-Type: text/plain\r\n\r\nabc\r\n--B--", "no Content-Disposition"),
        (b"--B\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\nabc\r\n--B--", "form-data with a name"),
        (b"--Bjunk\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nabc\r\n--B--", "bytes after the boundary"),
        (b"--B\r\nX: " + b"h" * 20_000 + b"\r\n\r\n", "too long"),
        (b"".join(b"--B\r\nContent-Disposition: form-data; name=\"f%d\"\r\n\r\nv\r\n" % i for i in range(40)) + b"--B--", "more than 32 parts"),
    ],
)
def test_malformed_bodies_are_400_with_a_reason(tmp_path, body, reason):
    r = refusal(body, "multipart/form-data; boundary=B", tmp_path)
    assert r.code == 400 and reason in r.reason


def test_limits_refuse_while_streaming_without_reading_the_rest(tmp_path):
    body, ctype = encode([("reads", ("r.fq", b"A" * 200_000)), ("reference", ("r.fa", b">c\nA\n"))])

    async def run(**limits):
        req, served = request(body, ctype, 1000)
        with pytest.raises(Rejected) as e:
            await uploads.read_form(req, spool=spool_in(tmp_path / "spool"), keep=KEEP, **limits)
        return e.value, len(served)

    r, served = run_async(run(max_file_bytes=10_000, max_total_bytes=1 << 20))
    assert (r.code, r.field) == (413, "reads") and "more than the 10000 accepted bytes per file" in r.reason
    assert served < 20  # of 200 chunks
    r, _ = run_async(run(max_file_bytes=1 << 20, max_total_bytes=50_000))
    assert (r.code, r.field) == (413, "files")
    field_body, ctype2 = encode([("reads", ("r.fq", b"@r\n"))], {"sample": "s" * 100_000})
    r = refusal(field_body, ctype2, tmp_path)
    assert r.code == 413 and "form field" in r.reason
