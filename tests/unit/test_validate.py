"""Content checks of reads and references: what is accepted, and the reason for what is not."""

from __future__ import annotations

import gzip
import io
import os
import re

import pytest

from pipeq.inputs.checks import InvalidInput, check_fasta, check_fastq

FASTQ = b"".join(b"@read%d/1\nACGTNACGTA\n+\nIIIII#####\n" % i for i in range(500))
FASTA = b">chr1 test\n" + b"ACGT" * 50 + b"\nACG\n>chr2\nNNNNACGT\n"


def gzipped(data: bytes, **kwargs) -> bytes:
    """gzip with a fixed mtime: the same bytes, so the same test ids, in every process (xdist
    workers must collect the same tests)."""
    return gzip.compress(data, mtime=0, **kwargs)


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("data", [FASTQ, gzipped(FASTQ), gzipped(FASTQ[:400]) + gzipped(FASTQ[400:])])
def test_fastq_accepted_plain_gzip_and_multimember(tmp_path, data):
    assert check_fastq(write(tmp_path, "r.fq", data)) > 0


def test_crlf_fastq_accepted(tmp_path):
    assert check_fastq(write(tmp_path, "r.fq", FASTQ.replace(b"\n", b"\r\n"))) > 0


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (gzipped(b""), "empty"),
        (os.urandom(64) + b"\0" + os.urandom(64), "binary"),
        (FASTA, "looks like FASTA"),
        (b"hello world\n", "first line must start with '@'"),
        (b"@r1\nACGT\n+\nIII\n", "3 characters for 4 bases"),
        (b"@r1\nAC GT\n+\nIIIII\n", "not bases"),
        (b"@r1\nACGT\n-\nIIII\n", "must start with '+'"),
        (b"@r1\nACGT\n+\nII\x7fI\n", "Phred+33"),
        (b"@r1\nACGT\n+\n", "incomplete"),
        (b"@" + b"x" * 70_000 + b"\nACGT\n+\nIIII\n", "longer than"),
        (gzipped(FASTQ)[:-12], "truncated"),
        (gzipped(FASTQ)[:30] + b"garbage" * 20, "damaged"),
    ],
)
def test_bad_fastq_refused_with_reason(tmp_path, data, reason):
    with pytest.raises(InvalidInput, match=re.escape(reason)):
        check_fastq(write(tmp_path, "r.fq", data))


def test_fastq_checks_only_the_head_but_the_whole_gzip(tmp_path):
    big = FASTQ * 40 + b"@bad\nACGT\n+\nI\n"  # the bad record is past what is parsed
    assert check_fastq(write(tmp_path, "r.fq", big)) > 0
    with pytest.raises(InvalidInput, match="truncated"):
        check_fastq(write(tmp_path, "r.fq.gz", gzipped(big)[:-100]))


@pytest.mark.parametrize("data", [FASTA, gzipped(FASTA), b">c\nacgtnRYKM\n"])
def test_fasta_accepted(tmp_path, data):
    assert check_fasta(write(tmp_path, "ref.fa", data)) >= 1


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (FASTQ, "looks like FASTQ"),
        (b"ACGT\n", "must start with '>'"),
        (b">\nACGT\n", "must name the sequence"),
        (b">c1\n>c2\nACGT\n", "no bases"),
        (b">c1\nACGT\n>c2\n", "no bases"),
        (b">c1\nAC1GT\n", "not IUPAC nucleotide codes"),
        (b">c1\nACGT.ACGT\n", "not IUPAC nucleotide codes"),
        (gzipped(FASTA)[:-5], "truncated"),
    ],
)
def test_bad_fasta_refused_with_reason(tmp_path, data, reason):
    with pytest.raises(InvalidInput, match=re.escape(reason)):
        check_fasta(write(tmp_path, "ref.fa", data))


def test_decompression_bomb_costs_no_memory(tmp_path):
    import resource

    bomb = gzipped(b"@r\n" + b"A" * (200 * 1024 * 1024), compresslevel=9)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InvalidInput, match="longer than"):
        check_fastq(write(tmp_path, "bomb.fq.gz", bomb))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB


def _verdict(check, data):
    try:
        return check(io.BytesIO(data))
    except InvalidInput as e:
        return f"refused: {e}"


@pytest.mark.parametrize("fmt", ["fastq", "fasta"])
def test_fast_paths_agree_with_the_record_loop(monkeypatch, fmt):
    """The column-at-a-time checks (C speed) must never accept what the record-by-record loop
    refuses, nor count differently: 3 000 random mutations of valid files, both ways."""
    import random

    from pipeq.inputs import checks as validate

    rng = random.Random(8)
    base = b"".join(FASTQ.splitlines(keepends=True)[: 4 * 70]) if fmt == "fastq" else b">c1 x\nACGTACGTAC\nGGTT\n>c2\nNNAC\n>c3 y\nacgt\n"
    check = check_fastq if fmt == "fastq" else check_fasta
    junk = [b"", b" ", b"\n", b"@", b">", b"+", b"#", b"1", b"\x7f", b"\r", b"\n\n", b">\n", b"@\n", b"A"]
    for _ in range(3000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data))
            if rng.random() < 0.5:
                del data[at : at + rng.randint(1, 3)]
            else:
                data[at:at] = rng.choice(junk)
        data = bytes(data)
        fast = _verdict(check, data)
        with monkeypatch.context() as m:
            m.setattr(validate, "_fastq_records_ok", lambda lines: False)
            m.setattr(validate, "_fasta_sequences_ok", lambda lines, more: None)
            slow = _verdict(check, data)
        assert fast == slow, data


def _gzip_named(data: bytes, name: str) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename=name, mode="wb", fileobj=buf, mtime=0) as g:
        g.write(data)
    return buf.getvalue()


@pytest.mark.parametrize(
    "data, whole",
    [
        (gzipped(FASTQ), True),
        (_gzip_named(FASTQ, "reads_1.fastq"), True),  # FNAME in the header
        (gzipped(FASTQ[:400]) + gzipped(FASTQ[400:]), False),  # two members
        (gzipped(FASTQ) * 2, False),  # two equal members: the one-call inflate would see the first only
        (gzipped(FASTQ) + b"\0" * 16, False),  # padding after the member
        (gzipped(FASTQ)[:-3], False),  # truncated
        (gzipped(b""), False),  # no content
    ],
)
def test_one_call_inflate_takes_only_whole_single_members(data, whole):
    """libdeflate's one call is used for a lone, complete member; everything else streams
    through zlib, and both give the same content (or the same refusal)."""
    from pipeq.inputs import checks as validate

    got = validate._gunzip_whole(io.BytesIO(data))
    if whole:
        assert got is not None and bytes(got) == gzip.decompress(data)
    else:  # equal members have equal trailers: the one call must not pass for the whole file
        assert got is None
    try:
        head = validate._gunzip_head(io.BytesIO(data))
        streamed = validate._gunzip_stream(io.BytesIO(data))
        assert (bytes(head[0]), head[1]) == (bytes(streamed[0]), streamed[1])
    except InvalidInput as e:
        with pytest.raises(InvalidInput, match=re.escape(str(e))):
            validate._gunzip_stream(io.BytesIO(data))


@pytest.mark.parametrize(
    "data",
    [
        FASTQ * 40,  # ~1 MB: the window holds the 800 lines
        (FASTQ * 40).replace(b"\n", b"\r\n"),
        b"@r\n" + b"A" * 70_000 + b"\n+\n" + b"I" * 70_000 + b"\n" + FASTQ * 10,  # long lines: the window grows
        FASTQ[:4000] + b"@long\n" + b"A" * 70_000 + b"\n" + FASTQ * 10,  # a long line after the lines looked at
        b"@r\nACGT\n" * 3000 + b"A" * (5 * 1024 * 1024),  # past HEAD_BYTES, its last line cut by the limit
        b"@r\nACGT\n" * 3000 + b"A" * 50_000,
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_head_window_changes_nothing(monkeypatch, data, gz):
    """Splitting a window of the head gives the lines, flag and refusals of splitting it all."""
    from pipeq.inputs import checks as validate

    blob = gzipped(data) if gz else data

    def run():
        try:
            return validate._head_lines(io.BytesIO(blob))
        except InvalidInput as e:
            return f"refused: {e}"

    windowed = run()
    monkeypatch.setattr(validate, "HEAD_WINDOW", 1 << 40)
    assert windowed == run()


def _bad_crc(gz: bytes) -> bytes:
    return gz[:-8] + bytes([gz[-8] ^ 0xFF]) + gz[-7:]


def _bad_length(gz: bytes) -> bytes:
    return gz[:-4] + bytes([gz[-4] ^ 0x01]) + gz[-3:]


_BIG = FASTQ * 400  # ~14 MB of content: past the one-call inflate, it streams in several chunks


@pytest.mark.parametrize(
    "data, refusal",
    [
        (gzip.compress(FASTQ), None),
        (gzip.compress(_BIG, 1), None),
        (gzip.compress(FASTQ[:400]) + gzip.compress(FASTQ[400:]), None),  # two members: read whole
        (gzip.compress(_BIG[:5_000_000], 1) + gzip.compress(_BIG[5_000_000:], 1), None),
        (gzip.compress(FASTQ)[:-3], "truncated"),
        (gzip.compress(_BIG, 1)[:-100], "truncated"),
        (gzip.compress(FASTQ) + gzip.compress(FASTQ)[:-5], "truncated"),  # the second member cut
        (_bad_crc(gzip.compress(FASTQ)), "damaged"),
        (_bad_crc(gzip.compress(_BIG, 1)), "damaged"),
        (gzip.compress(FASTQ) + _bad_crc(gzip.compress(FASTQ)), "damaged"),  # the second member's CRC
        (_bad_length(gzip.compress(FASTQ)), "damaged"),
        (gzip.compress(FASTQ) + b"\0" * 16, "damaged"),  # what follows the member is no member
        (gzip.compress(FASTQ)[:30] + b"garbage" * 20, "damaged"),
    ],
)
@pytest.mark.parametrize("inflater", ["isal", "zlib"])
def test_streaming_inflate_refuses_the_same_with_isal_and_zlib(monkeypatch, data, refusal, inflater):
    """The streaming check (uploads to object storage, files past the one-call inflate) gives
    the content Python's gzip module does, or the same refusal, through ISA-L as through zlib:
    a truncated file, a bad CRC or length, damage in any member (and, stricter than the
    gzip module, bytes after the last member that are no member)."""
    import zlib

    from isal import isal_zlib

    from pipeq.inputs import checks

    monkeypatch.setattr(checks, "INFLATER", isal_zlib if inflater == "isal" else zlib)
    seen = checks.StreamCheck()
    for i in range(0, len(data), 100_000):  # in pieces, as an upload arrives
        seen.feed(data[i : i + 100_000])
    if refusal is None:
        head, more = seen.head()
        content = gzip.decompress(data)
        assert head == content[: checks.HEAD_BYTES] and more == (len(content) > checks.HEAD_BYTES)
        assert check_fastq(io.BytesIO(data)) > 0
    else:
        with pytest.raises(InvalidInput, match=refusal):
            seen.head()
        with pytest.raises(InvalidInput, match=refusal):
            check_fastq(io.BytesIO(data))
