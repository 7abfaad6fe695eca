"""Content checks of uploaded reads (FASTQ) and references (FASTA), plain or gzip.

The checks look at the content, not the name: the format is told by the first byte, a gzip
stream must be complete (its end and CRC are checked, so a truncated upload is refused), and
the first records must parse — for FASTQ, sequence and quality lengths must agree.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import BinaryIO

#: How many records of each file are parsed (the whole gzip stream is still checked).
RECORDS_CHECKED = 200
MAX_LINE = 64 * 1024
_SEQ = re.compile(rb"^[A-Za-z*.\-]*$")  # IUPAC letters, gaps and stops
_QUAL = re.compile(rb"^[!-~]*$")
GZIP_MAGIC = b"\x1f\x8b"
NL = b"\n"
CHUNK = 1 << 20


HEAD_BYTES = 4 * 1024 * 1024


class InvalidInput(ValueError):
    """The file is not what it should be; the message says why, for the user."""


def check_fastq(path: Path) -> int:
    """Check that ``path`` holds FASTQ reads; return the number of records checked."""
    lines, more = _head_lines(path)
    if not lines:
        raise InvalidInput("the file is empty")
    first = lines[0][:1]
    if first == b">":
        raise InvalidInput("this looks like FASTA; reads must be FASTQ (records start with '@')")
    if first != b"@":
        raise InvalidInput("not a FASTQ file: the first line must start with '@'")
    if _fastq_records_ok(lines):
        return min(len(lines) // 4, RECORDS_CHECKED)
    records = 0
    for i in range(0, len(lines), 4):
        rec = lines[i : i + 4]
        n = i // 4 + 1
        if len(rec) < 4:
            if records and more:
                break  # cut at the end of what we read, not at the end of the file
            raise InvalidInput(f"record {n} is incomplete: a FASTQ record has 4 lines")
        head, seq, plus, qual = rec
        if not head.startswith(b"@") or len(head) < 2:
            raise InvalidInput(f"record {n}: the header line must start with '@' and name the read")
        if not _SEQ.match(seq) or not seq:
            raise InvalidInput(f"record {n}: the sequence line has characters that are not bases")
        if not plus.startswith(b"+"):
            raise InvalidInput(f"record {n}: the third line must start with '+'")
        if len(qual) != len(seq):
            raise InvalidInput(f"record {n}: the quality line has {len(qual)} characters for {len(seq)} bases")
        if not _QUAL.match(qual):
            raise InvalidInput(f"record {n}: the quality line has characters outside Phred+33")
        records += 1
        if records >= RECORDS_CHECKED:
            break
    return records


# the bytes _SEQ and _QUAL allow, plus the newline that joins lines: translate() deleting
# them leaves nothing exactly when every line matches
_SEQ_BYTES = bytes(range(ord("A"), ord("Z") + 1)) + bytes(range(ord("a"), ord("z") + 1)) + b"*.-\n"
_QUAL_BYTES = bytes(range(ord("!"), ord("~") + 1)) + b"\n"


def _fastq_records_ok(lines: list[bytes]) -> bool:
    """The record checks of :func:`check_fastq` on whole columns at C speed: True when every
    record passes (then the loop, which finds the first bad record and says why, is skipped).
    Only for heads of whole records; anything else takes the loop."""
    n = len(lines) // 4
    if n == 0 or (n < RECORDS_CHECKED and len(lines) % 4):
        return False
    n = min(n, RECORDS_CHECKED)
    lines = lines[: 4 * n]
    heads, seqs, pluses, quals = lines[0::4], lines[1::4], lines[2::4], lines[3::4]
    return (
        all(h[:1] == b"@" for h in heads)
        and min(map(len, heads)) >= 2
        and all(p[:1] == b"+" for p in pluses)
        and min(map(len, seqs)) >= 1
        and list(map(len, seqs)) == list(map(len, quals))
        and not b"\n".join(seqs).translate(None, _SEQ_BYTES)
        and not b"\n".join(quals).translate(None, _QUAL_BYTES)
    )


def _fasta_sequences_ok(lines: list[bytes], more: bool) -> int | None:
    """The checks of :func:`check_fasta`'s loop, a column at a time: the number of sequences
    when all pass, None when the loop must run to say what is wrong."""
    heads = [i for i, line in enumerate(lines) if line[:1] == b">"]
    if not heads or heads[0] != 0 or min(len(lines[i]) for i in heads) < 2:
        return None
    if b"\n".join(line for line in lines if line[:1] != b">").translate(None, _SEQ_BYTES):
        return None
    ends = heads[1:] + [len(lines)]
    for start, end in zip(heads, ends):
        if not any(lines[start + 1 : end]) and not (more and end == len(lines)):
            return None  # a sequence with no bases
    return len(heads)


def check_fasta(path: Path) -> int:
    """Check that ``path`` holds a FASTA reference; return the number of sequences seen."""
    lines, more = _head_lines(path, want=RECORDS_CHECKED * 10)
    if not lines:
        raise InvalidInput("the file is empty")
    if lines[0][:1] == b"@":
        raise InvalidInput("this looks like FASTQ; the reference must be FASTA (records start with '>')")
    if lines[0][:1] != b">":
        raise InvalidInput("not a FASTA file: the first line must start with '>'")
    fast = _fasta_sequences_ok(lines, more)
    if fast is not None:
        return fast
    sequences, bases = 0, 0
    for n, line in enumerate(lines, 1):
        if line.startswith(b">"):
            if sequences and not bases:
                raise InvalidInput(f"sequence {sequences} has no bases")
            if len(line) < 2:
                raise InvalidInput(f"line {n}: a FASTA header must name the sequence")
            sequences, bases = sequences + 1, 0
        elif line and not _SEQ.match(line):
            raise InvalidInput(f"line {n}: the sequence has characters that are not bases")
        else:
            bases += len(line)
    if not bases and not more:
        raise InvalidInput(f"sequence {sequences} has no bases")
    return sequences


def _head_lines(path: Path, want: int = RECORDS_CHECKED * 4) -> tuple[list[bytes], bool]:
    """The first lines of the (decompressed) file, and whether more follows them.

    A gzip stream is checked whole. Raises InvalidInput for binary data, over-long lines and
    damaged or truncated gzip.
    """
    with open(path, "rb") as f:  # opened once: an open costs more than reading 50 KB
        magic = f.read(2)
        f.seek(0)
        if magic == GZIP_MAGIC:
            data, more = _gunzip_head(f)
        else:
            data = f.read(HEAD_BYTES)
            more = bool(f.read(1))
    if b"\0" in data:
        raise InvalidInput("the file holds binary data, not text")
    # Only the first ``want`` lines are looked at: split no further (the rest stays in one piece).
    lines = data.split(b"\n", want)
    if len(lines) > want:
        rest = lines.pop()  # everything after line ``want``
        if more:
            cut = rest[rest.rfind(b"\n") + 1 :]  # the line cut by our read limit
            if len(cut) > MAX_LINE:
                raise InvalidInput(f"line {data.count(NL) + 1} is longer than {MAX_LINE} characters")
        else:
            more = bool(rest)
    elif more:
        if len(lines[-1]) > MAX_LINE:
            raise InvalidInput(f"line {len(lines)} is longer than {MAX_LINE} characters")
        lines.pop()  # possibly cut by our read limit
    elif lines and lines[-1] == b"":
        lines.pop()
    if lines and max(map(len, lines)) > MAX_LINE:
        for i, line in enumerate(lines):
            if len(line) > MAX_LINE:
                raise InvalidInput(f"line {i + 1} is longer than {MAX_LINE} characters")
    if b"\r" not in data:
        return lines, more
    return [line.rstrip(b"\r") for line in lines], more


def _gunzip_head(f: BinaryIO) -> tuple[bytes, bool]:
    """Decompress the whole gzip file (all members) to check it; keep its first HEAD_BYTES.

    Output is produced in bounded steps, so a decompression bomb costs time, not memory.
    """
    head = bytearray()
    more = False
    d = zlib.decompressobj(wbits=31)
    pending = False  # inside a member that has not ended yet
    try:
        while chunk := f.read(CHUNK):
            buf = chunk
            while buf:
                pending = True
                out = d.decompress(buf, 4 * CHUNK)
                room = HEAD_BYTES - len(head)
                head += out[:room]
                more = more or len(out) > room
                if d.eof:
                    buf = d.unused_data
                    d = zlib.decompressobj(wbits=31)
                    pending = False
                else:
                    buf = d.unconsumed_tail
    except zlib.error as e:
        raise InvalidInput(f"the gzip data is damaged ({e})") from None
    if pending:
        raise InvalidInput("the gzip file is truncated")
    return bytes(head), more
