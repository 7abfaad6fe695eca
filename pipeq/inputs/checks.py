"""Content checks of uploaded reads (FASTQ) and references (FASTA), plain or gzip.

The checks look at the content, not the name: the format is told by the first byte, a gzip
stream must be complete (its end and CRC are checked, so a truncated upload is refused), and
the first records must parse — for FASTQ, sequence and quality lengths must agree.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import deflate  # libdeflate: whole-buffer inflate that runs without the GIL
from isal import isal_zlib  # ISA-L: streaming inflate at about twice zlib's speed

#: How many records of each file are parsed (the whole gzip stream is still checked). A wrong
#: file (a FASTA given as reads, FASTQ as the reference, a text or binary file) shows
#: in its first record; 50 costs a quarter of what 200 did (the API parses these on every
#: submission, 40 us for a 50 KB FASTQ.gz), and pipeline.sh checks the first 10 and the
#: line count of the whole file again before any tool runs.
RECORDS_CHECKED = 50
#: How many lines of a reference are parsed (pipeline.sh's check_fasta reads as many).
FASTA_LINES_CHECKED = RECORDS_CHECKED * 10
MAX_LINE = 64 * 1024
_SEQ = re.compile(rb"^[A-Za-z*.\-]*$")  # reads: IUPAC letters, gaps and stops
#: The letters of a reference's sequence: the IUPAC nucleotide codes, either case (soft-masked
#: repeats are lower case). Gaps ('-', '.') and stops ('*') belong to alignments and proteins,
#: not to a reference the aligner indexes. pipeline.sh's check_fasta uses the same set (its
#: REFERENCE_BASES); a test keeps the two equal and runs both on one corpus.
REFERENCE_BASES = b"ACGTURYSWKMBDHVN"
_REF_SEQ = re.compile(rb"^[" + REFERENCE_BASES + REFERENCE_BASES.lower() + rb"]*$")
_QUAL = re.compile(rb"^[!-~]*$")
GZIP_MAGIC = b"\x1f\x8b"
NL = b"\n"
CHUNK = 1 << 20


HEAD_BYTES = 4 * 1024 * 1024
HEAD_WINDOW = 32 * 1024  # first guess of the bytes that hold the lines looked at (grows by 4x)
#: gzip files up to this size (compressed, and decompressed as their trailer says) are
#: inflated in one libdeflate call; larger ones, and anything that call refuses, are streamed
#: through ISA-L, which also names the problem. As large as the head kept from a stream, so a
#: check holds no more memory either way.
WHOLE_INFLATE_MAX = HEAD_BYTES

#: The streaming inflater: a module with zlib's ``decompressobj`` and ``error``. ISA-L
#: (python-isal) checks the members' CRC-32 and length as zlib does, at about twice its speed,
#: but holds the GIL while it inflates (zlib does not); the benchmarks set ``zlib`` here to
#: compare the two in one run.
INFLATER = isal_zlib


class InvalidInput(ValueError):
    """The file is not what it should be; the message says why, for the user."""


Source = Path | BinaryIO  # a file name, or a binary file open for reading (read from its start)


def check_fastq(source: Source) -> int:
    """Check that ``source`` holds FASTQ reads; return the number of records checked."""
    lines, more = _head_lines(source)
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
_REF_BYTES = REFERENCE_BASES + REFERENCE_BASES.lower() + b"\n"


def _fastq_records_ok(lines: list[bytes]) -> bool:
    """The record checks of :func:`check_fastq` on whole columns at C speed (no Python loop
    over records): True when every record passes (then the loop, which finds the first bad
    record and says why, is skipped). Only for heads of whole records; anything else takes
    the loop."""
    n = len(lines) // 4
    if n == 0 or (n < RECORDS_CHECKED and len(lines) % 4):
        return False
    n = min(n, RECORDS_CHECKED)
    heads, seqs, pluses, quals = lines[0 : 4 * n : 4], lines[1 : 4 * n : 4], lines[2 : 4 * n : 4], lines[3 : 4 * n : 4]
    return (
        # lines hold no newline, so "\n@" occurs once per line that starts with "@"
        (NL + NL.join(heads)).count(b"\n@") == n
        and min(map(len, heads)) >= 2
        and (NL + NL.join(pluses)).count(b"\n+") == n
        and min(map(len, seqs)) >= 1
        and list(map(len, seqs)) == list(map(len, quals))
        and not NL.join(seqs).translate(None, _SEQ_BYTES)
        and not NL.join(quals).translate(None, _QUAL_BYTES)
    )


# Patterns that begin with a literal, so that the regex engine scans for it at C speed
# (a pattern that begins with "^" in MULTILINE mode is tried at every position).
_FASTA_HEADER_LINE = re.compile(rb"\n>[^\n]*")
_FASTA_NO_BASES = re.compile(rb"\n>[^\n]*\n>")  # a header right after a header


def _fasta_sequences_ok(lines: list[bytes], more: bool) -> int | None:
    """The checks of :func:`check_fasta`'s loop on the whole text at C speed: the number of
    sequences when all pass, None when the loop must run to say what is wrong (or when there
    are blank lines, which only the loop handles)."""
    text = NL + NL.join(lines)  # every header line now begins with "\n>"
    if lines[0][:1] != b">" or not all(lines) or b">" in lines:
        return None  # not FASTA, a blank line, or a header without a name
    bases, headers = _FASTA_HEADER_LINE.subn(b"", text)
    if bases.translate(None, _REF_BYTES):
        return None
    if _FASTA_NO_BASES.search(text) or (not more and lines[-1][:1] == b">"):
        return None  # a sequence with no bases
    return headers


def check_fasta(source: Source) -> int:
    """Check that ``source`` holds a FASTA reference; return the number of sequences seen."""
    lines, more = _head_lines(source, want=FASTA_LINES_CHECKED)
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
        elif line and not _REF_SEQ.match(line):
            raise InvalidInput(f"line {n}: the sequence has characters that are not IUPAC nucleotide codes ({REFERENCE_BASES.decode()})")
        else:
            bases += len(line)
    if not bases and not more:
        raise InvalidInput(f"sequence {sequences} has no bases")
    return sequences


def _head_lines(source: Source, want: int = RECORDS_CHECKED * 4) -> tuple[list[bytes], bool]:
    """The first lines of the (decompressed) file, and whether more follows them.

    A gzip stream is checked whole. Raises InvalidInput for binary data, over-long lines and
    damaged or truncated gzip.
    """
    if isinstance(source, Path):
        with open(source, "rb") as f:  # opened once: an open costs more than reading 50 KB
            data, more = _read_head(f)
    else:
        source.seek(0)
        data, more = _read_head(source)
    if b"\0" in data:
        raise InvalidInput("the file holds binary data, not text")
    # Only the first ``want`` lines are looked at: split only a window that holds them (a
    # split copies whatever is left after its last cut into one more object), grown by 4x
    # until it holds them or the whole head
    full, end = data, HEAD_WINDOW
    while True:
        data = full if end >= len(full) else bytes(memoryview(full)[:end])
        lines = data.split(NL, want)
        if len(lines) > want or data is full:
            break
        end *= 4
    if len(lines) > want:
        rest = lines.pop()  # everything after line ``want`` (in the window)
        if more:
            cut = len(full) - full.rfind(NL) - 1  # the line cut by our read limit
            if cut > MAX_LINE:
                raise InvalidInput(f"line {full.count(NL) + 1} is longer than {MAX_LINE} characters")
        else:
            more = bool(rest) or data is not full
    elif more:
        if len(lines[-1]) > MAX_LINE:
            raise InvalidInput(f"line {len(lines)} is longer than {MAX_LINE} characters")
        lines.pop()  # possibly cut by our read limit
    elif lines and lines[-1] == b"":
        lines.pop()
    if len(data) > MAX_LINE and lines and max(map(len, lines)) > MAX_LINE:  # (no line is longer than the data)
        for i, line in enumerate(lines):
            if len(line) > MAX_LINE:
                raise InvalidInput(f"line {i + 1} is longer than {MAX_LINE} characters")
    if b"\r" not in data:
        return lines, more
    return [line.rstrip(b"\r") for line in lines], more


def _read_head(f: BinaryIO) -> tuple[bytes, bool]:
    magic = f.read(2)
    f.seek(0)
    if magic == GZIP_MAGIC:
        return _gunzip_head(f)
    data = f.read(HEAD_BYTES)
    return data, bool(f.read(1))


def _gunzip_head(f: BinaryIO) -> tuple[bytes | bytearray, bool]:
    """Decompress the whole gzip file (all members) to check it; keep its first HEAD_BYTES."""
    whole = _gunzip_whole(f)
    if whole is not None:  # all of it is the head (WHOLE_INFLATE_MAX); a bytearray does as bytes
        return whole, False
    f.seek(0)
    return _gunzip_stream(f)


def _gunzip_whole(f: BinaryIO) -> bytearray | None:
    """The content of a small single-member gzip file, inflated by libdeflate in one call,
    or None when the file is not that (large, several members, damaged, truncated).

    libdeflate runs without the GIL: under load the API's other threads go on meanwhile
    (zlib does too, at half the speed; ISA-L holds the GIL, see INFLATER). The content is
    accepted only when its CRC-32 and length match the trailer at the end of the file and no
    second member header follows, so a damaged, truncated or multi-member file always goes
    on to :func:`_gunzip_stream`.
    """
    f.seek(0, 2)
    size = f.tell()
    if not 18 <= size <= WHOLE_INFLATE_MAX:
        return None
    f.seek(0)
    raw = f.read()
    start = _gzip_header_end(raw)
    crc, length = struct.unpack_from("<II", raw, size - 8)
    if start is None or start > size - 8 or not 0 < length <= WHOLE_INFLATE_MAX:
        return None
    if raw.find(b"\x1f\x8b\x08", start) >= 0:
        return None  # maybe a second member (or those bytes by chance): the stream decides
    try:
        out = deflate.deflate_decompress(memoryview(raw)[start : size - 8], length)
    except deflate.DeflateError:
        return None
    if len(out) != length or deflate.crc32(out) != crc:
        return None
    return out


_FEXTRA, _FNAME, _FCOMMENT, _FHCRC = 4, 8, 16, 2


def _gzip_header_end(raw: bytes) -> int | None:
    """Where the deflate data of the gzip member at the start of ``raw`` begins (RFC 1952),
    or None for a header this fast path does not take."""
    if raw[:3] != b"\x1f\x8b\x08" or raw[3] & 0xE0:
        return None
    flags, pos = raw[3], 10
    if flags & _FEXTRA:
        if len(raw) < pos + 2:
            return None
        pos += 2 + int.from_bytes(raw[pos : pos + 2], "little")
    for flag in (_FNAME, _FCOMMENT):
        if flags & flag:
            end = raw.find(b"\0", pos)
            if end < 0:
                return None
            pos = end + 1
    if flags & _FHCRC:
        pos += 2
    return pos


def _gunzip_stream(f: BinaryIO) -> tuple[bytes, bool]:
    """:func:`_gunzip_head` for any gzip file: a chunk at a time, all members."""
    seen = StreamCheck()
    while chunk := f.read(CHUNK):
        seen.feed(chunk)
    return seen.head()


class StreamCheck:
    """The whole-stream part of the checks for a file seen once, as it streams in (an upload
    stored in object storage, never read back): feed it the file's bytes in order, then
    :meth:`open` gives what the record checks read.

    Gzip is inflated as it arrives (all members, in bounded steps, so a decompression bomb
    costs time, not memory) and must end whole; the first HEAD_BYTES of the content, and
    whether more follows, are kept.
    """

    def __init__(self):
        self._kept: list[bytes] = []  # the head, in pieces (HEAD_BYTES + 1 at most)
        self._room = HEAD_BYTES + 1  # one byte past the head tells that more follows
        self._start = b""  # the first bytes, until the gzip magic can be told
        self._gzip: bool | None = None
        self._d = None  # the decompressor of the member under way (None between members)
        self._error: InvalidInput | None = None

    def feed(self, chunk: bytes) -> None:
        if self._error is not None:
            return
        if self._gzip is None:
            self._start += chunk
            if len(self._start) < 2:
                return
            self._gzip, chunk, self._start = self._start[:2] == GZIP_MAGIC, self._start, b""
        if not self._gzip:
            self._keep(chunk)
            return
        try:
            while chunk:
                if self._d is None:
                    self._d = INFLATER.decompressobj(wbits=31)
                self._keep(self._d.decompress(chunk, 4 * CHUNK))
                if self._d.eof:
                    chunk, self._d = self._d.unused_data, None
                else:
                    chunk = self._d.unconsumed_tail
        except (zlib.error, isal_zlib.error) as e:
            self._error = InvalidInput(f"the gzip data is damaged ({e})")

    def _keep(self, out: bytes) -> None:
        if self._room > 0 and out:
            self._kept.append(out if len(out) <= self._room else out[: self._room])
            self._room -= len(self._kept[-1])

    def head(self, whole: bool = True) -> tuple[bytes, bool]:
        """The first HEAD_BYTES of the content and whether more follows; InvalidInput for
        damaged gzip, or truncated gzip when the bytes fed are the ``whole`` file (else they
        are its first bytes only, and more follows them)."""
        if self._gzip is None:
            self._keep(self._start)  # under two bytes in all: not gzip
        if self._error is not None:
            raise self._error
        if self._d is not None and whole:
            raise InvalidInput("the gzip file is truncated")
        data = self._kept[0] if len(self._kept) == 1 else b"".join(self._kept)
        if self._room > 0 and whole:
            return data, False
        if self._room > 0:  # the head of a prefix: its last line may be cut
            return data, True
        return data[:HEAD_BYTES], True

    def open(self, whole: bool = True) -> BinaryIO:
        """The head as a plain file for :func:`check_fastq` / :func:`check_fasta` (which find
        the same lines in it as in the whole file)."""
        data, more = self.head(whole)
        return _FollowedBy(data) if more else io.BytesIO(data)


class _FollowedBy(io.BytesIO):
    """A head of which more follows: a read past its end gets a byte (what the checks ask to
    tell whether a file goes on past what they read)."""

    def read(self, n: int | None = -1) -> bytes:
        return super().read(n) or (b"\n" if n else b"")


def head_of(prefix: bytes, whole: bool) -> BinaryIO:
    """What the record checks read of a file of which only ``prefix`` was read (the ranged
    read of a reference), ``whole`` when it is all of the file."""
    seen = StreamCheck()
    seen.feed(prefix)
    return seen.open(whole)
