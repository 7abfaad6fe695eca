"""Deterministic test data for pipeline.sh: a random reference, planted SNPs, simulated reads.

Pure standard library (seeded ``random``), so the same arguments always give byte-identical
files. The reference is uniform random sequence over a few contigs; a donor genome is the
reference with homozygous SNPs planted at well-separated positions away from the contig
ends; reads are sampled from the donor (paired-end fragments of ~``insert_size`` bp, or
single reads), on both strands, with a small substitution error rate and Phred+33
qualities, written as gzip FASTQ.

    from tests.support.simdata import make_dataset
    ds = make_dataset(tmp_path, seed=1, n_snps=10, paired=True)
    ds.reference, ds.reads, ds.snps

CLI for people and benchmarks (prints the dataset as JSON)::

    python -m tests.support.simdata OUTDIR [--seed 1] [--snps 10] [--single] [--depth 30]
        [--contigs 12000,8000] [--read-length 150] [--gzip-reference]

Helpers for bad inputs: :func:`write_not_fastq`, :func:`write_truncated_fastq`,
:func:`write_mismatched_fastq`, :func:`write_not_fasta`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = [
    "Snp",
    "Dataset",
    "make_dataset",
    "write_not_fastq",
    "write_truncated_fastq",
    "write_mismatched_fastq",
    "write_not_fasta",
]

BASES = "ACGT"
_COMPLEMENT = str.maketrans("ACGTNacgtn", "TGCANtgcan")


@dataclass(frozen=True)
class Snp:
    """A planted SNP: 1-based ``pos`` on ``contig``; the donor is homozygous ``alt``."""

    contig: str
    pos: int
    ref: str
    alt: str


@dataclass
class Dataset:
    """What :func:`make_dataset` wrote."""

    reference: Path
    reads: list[Path]
    snps: list[Snp]
    contigs: dict[str, int] = field(default_factory=dict)  # name -> length
    n_reads: int = 0  # reads written per file (pairs when paired)
    read_length: int = 150
    depth: float = 30.0  # the simulated (target) mean depth over the reference
    paired: bool = True
    seed: int = 1
    truth: Path | None = None  # TSV of the planted SNPs (contig, pos, ref, alt)

    @property
    def total_reads(self) -> int:
        """Reads over all files (what fastp reports as total_reads before filtering)."""
        return self.n_reads * len(self.reads)

    def to_json(self) -> dict:
        d = asdict(self)
        d["reference"] = str(self.reference)
        d["reads"] = [str(p) for p in self.reads]
        d["truth"] = str(self.truth) if self.truth else None
        d["total_reads"] = self.total_reads
        return d


def _revcomp(seq: str) -> str:
    return seq.translate(_COMPLEMENT)[::-1]


def _gzip_writer(path: Path, level: int = 1):
    # mtime=0 and no file name in the header: byte-identical output for identical input.
    raw = open(path, "wb")
    return raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=level, mtime=0)


def _write_text(path: Path, text: str, compress: bool) -> None:
    if compress:
        raw, gz = _gzip_writer(path)
        with raw, gz:
            gz.write(text.encode())
    else:
        path.write_text(text)


def _plant_snps(rng: random.Random, contigs: dict[str, str], n_snps: int, margin: int, spacing: int) -> list[Snp]:
    """Pick n_snps positions >= spacing apart, >= margin from contig ends, spread over contigs."""
    names = list(contigs)
    total = sum(len(s) for s in contigs.values())
    snps: list[Snp] = []
    taken: dict[str, list[int]] = {n: [] for n in names}
    attempts = 0
    while len(snps) < n_snps:
        attempts += 1
        if attempts > 100000:
            raise ValueError(f"cannot place {n_snps} SNPs {spacing} bp apart in {total} bp")
        # contig chosen proportionally to usable length
        x = rng.randrange(total)
        for name in names:
            if x < len(contigs[name]):
                break
            x -= len(contigs[name])
        length = len(contigs[name])
        if length <= 2 * margin:
            continue
        pos0 = rng.randrange(margin, length - margin)  # 0-based
        if any(abs(pos0 - p) < spacing for p in taken[name]):
            continue
        ref = contigs[name][pos0]
        alt = rng.choice([b for b in BASES if b != ref])
        taken[name].append(pos0)
        snps.append(Snp(name, pos0 + 1, ref, alt))
    snps.sort(key=lambda s: (names.index(s.contig), s.pos))
    return snps


def _quality_templates(rng: random.Random, read_length: int, n: int = 64) -> list[list[int]]:
    """Phred scores: high (~36-40) falling gently towards the 3' end, with jitter."""
    templates = []
    for _ in range(n):
        q = []
        for i in range(read_length):
            base = 39 - int(8 * (i / read_length) ** 3)
            q.append(max(2, min(41, base + rng.randint(-2, 1))))
        templates.append(q)
    return templates


class _ReadMaker:
    def __init__(self, rng: random.Random, read_length: int, error_rate: float):
        self.rng = rng
        self.read_length = read_length
        self.error_rate = error_rate
        self.templates = _quality_templates(rng, read_length)
        self._log1p = math.log(1.0 - error_rate) if 0 < error_rate < 1 else None

    def _error_positions(self, n: int) -> list[int]:
        if self._log1p is None:
            return []
        out, pos = [], -1
        while True:  # geometric skips: one random draw per error, not per base
            u = self.rng.random() or 1e-12
            pos += 1 + int(math.log(u) / self._log1p)
            if pos >= n:
                return out
            out.append(pos)

    def record(self, name: str, seq: str) -> str:
        q = list(self.rng.choice(self.templates)[: len(seq)])
        bases = list(seq)
        for i in self._error_positions(len(seq)):
            bases[i] = self.rng.choice([b for b in BASES if b != bases[i]])
            q[i] = self.rng.randint(8, 20)
        qual = "".join(chr(33 + x) for x in q)
        return f"@{name}\n{''.join(bases)}\n+\n{qual}\n"


def make_dataset(
    dirpath: str | Path,
    seed: int = 1,
    n_snps: int = 10,
    paired: bool = True,
    *,
    contig_lengths: tuple[int, ...] | list[int] = (12000, 8000),
    read_length: int = 150,
    depth: float = 30.0,
    insert_size: int = 350,
    insert_sd: int = 30,
    error_rate: float = 0.002,
    gzip_reference: bool = False,
    prefix: str = "sim",
) -> Dataset:
    """Write a reference, reads and a truth table into ``dirpath`` (created); return a :class:`Dataset`.

    Files: ``<prefix>.ref.fa`` (``.fa.gz`` with ``gzip_reference``), ``<prefix>_R1.fq.gz`` and
    ``<prefix>_R2.fq.gz`` (paired) or ``<prefix>.fq.gz`` (single), ``<prefix>.snps.tsv``.
    The number of reads gives ``depth`` x reference length in read bases.
    """
    if read_length < 20:
        raise ValueError("read_length must be >= 20")
    if paired and insert_size < read_length:
        raise ValueError("insert_size must be >= read_length for paired reads")
    out = Path(dirpath)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)

    names = [f"chr{i + 1}" for i in range(len(contig_lengths))]
    contigs = {n: "".join(rng.choice(BASES) for _ in range(length)) for n, length in zip(names, contig_lengths)}

    span = insert_size + 3 * insert_sd if paired else read_length
    margin = max(read_length, span // 2) + 10
    spacing = 60
    snps = _plant_snps(rng, contigs, n_snps, margin, spacing)
    donor = {n: list(s) for n, s in contigs.items()}
    for s in snps:
        donor[s.contig][s.pos - 1] = s.alt
    donor_seq = {n: "".join(b) for n, b in donor.items()}

    # reference FASTA, 60 columns
    fa_lines = []
    for n, s in contigs.items():
        fa_lines.append(f">{n} simulated seed={seed}\n")
        fa_lines.extend(s[i : i + 60] + "\n" for i in range(0, len(s), 60))
    ref_path = out / (f"{prefix}.ref.fa.gz" if gzip_reference else f"{prefix}.ref.fa")
    _write_text(ref_path, "".join(fa_lines), gzip_reference)

    truth = out / f"{prefix}.snps.tsv"
    truth.write_text("contig\tpos\tref\talt\n" + "".join(f"{s.contig}\t{s.pos}\t{s.ref}\t{s.alt}\n" for s in snps))

    total_len = sum(contig_lengths)
    n_reads = max(1, round(depth * total_len / (read_length * (2 if paired else 1))))
    maker = _ReadMaker(rng, read_length, error_rate)
    weights = [len(donor_seq[n]) for n in names]
    cum = [sum(weights[: i + 1]) for i in range(len(weights))]

    if paired:
        paths = [out / f"{prefix}_R1.fq.gz", out / f"{prefix}_R2.fq.gz"]
    else:
        paths = [out / f"{prefix}.fq.gz"]
    handles = [_gzip_writer(p) for p in paths]
    try:
        buf: list[list[str]] = [[] for _ in paths]
        for i in range(n_reads):
            contig = rng.choices(names, cum_weights=cum)[0]
            seq = donor_seq[contig]
            if paired:
                frag = max(read_length, min(len(seq), int(rng.gauss(insert_size, insert_sd))))
                start = rng.randrange(0, len(seq) - frag + 1)
                fragment = seq[start : start + frag]
                if rng.random() < 0.5:  # fragment from the reverse strand
                    fragment = _revcomp(fragment)
                r1 = fragment[:read_length]
                r2 = _revcomp(fragment[-read_length:])
                name = f"{prefix}.{i + 1}"
                buf[0].append(maker.record(f"{name}/1", r1))
                buf[1].append(maker.record(f"{name}/2", r2))
            else:
                start = rng.randrange(0, len(seq) - read_length + 1)
                r = seq[start : start + read_length]
                if rng.random() < 0.5:
                    r = _revcomp(r)
                buf[0].append(maker.record(f"{prefix}.{i + 1}", r))
            if len(buf[0]) >= 2000:
                for (_, gz), b in zip(handles, buf):
                    gz.write("".join(b).encode())
                    b.clear()
        for (_, gz), b in zip(handles, buf):
            gz.write("".join(b).encode())
    finally:
        for raw, gz in handles:
            gz.close()
            raw.close()

    return Dataset(
        reference=ref_path,
        reads=paths,
        snps=snps,
        contigs=dict(zip(names, contig_lengths)),
        n_reads=n_reads,
        read_length=read_length,
        depth=depth,
        paired=paired,
        seed=seed,
        truth=truth,
    )


# ---- bad inputs -------------------------------------------------------------------------


def write_not_fastq(path: str | Path, compress: bool | None = None) -> Path:
    """A file that is not FASTQ (FASTA-like text). Gzipped when ``compress`` or the name ends in .gz."""
    path = Path(path)
    compress = path.suffix == ".gz" if compress is None else compress
    _write_text(path, ">not_a_read\nACGTACGTACGT\nthis is not FASTQ\n", compress)
    return path


def write_truncated_fastq(path: str | Path, compress: bool | None = None) -> Path:
    """A FASTQ whose only record stops after the sequence line (no '+' or quality)."""
    path = Path(path)
    compress = path.suffix == ".gz" if compress is None else compress
    _write_text(path, "@r1\nACGTACGTAC\n", compress)
    return path


def write_mismatched_fastq(path: str | Path, compress: bool | None = None) -> Path:
    """A FASTQ whose first record's quality is shorter than its sequence."""
    path = Path(path)
    compress = path.suffix == ".gz" if compress is None else compress
    _write_text(path, "@r1\nACGTACGTAC\n+\nIIII\n", compress)
    return path


def write_not_fasta(path: str | Path, compress: bool | None = None) -> Path:
    """A file that is not FASTA (it is FASTQ)."""
    path = Path(path)
    compress = path.suffix == ".gz" if compress is None else compress
    _write_text(path, "@r1\nACGTACGTAC\n+\nIIIIIIIIII\n", compress)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.support.simdata", description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", type=Path)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--snps", type=int, default=10, help="planted homozygous SNPs (default 10)")
    p.add_argument("--single", action="store_true", help="single-end reads (default paired)")
    p.add_argument("--depth", type=float, default=30.0, help="mean depth (default 30)")
    p.add_argument("--contigs", default="12000,8000", help="comma-separated contig lengths (default 12000,8000)")
    p.add_argument("--read-length", type=int, default=150)
    p.add_argument("--error-rate", type=float, default=0.002)
    p.add_argument("--gzip-reference", action="store_true")
    p.add_argument("--prefix", default="sim")
    a = p.parse_args(argv)
    ds = make_dataset(
        a.outdir,
        seed=a.seed,
        n_snps=a.snps,
        paired=not a.single,
        contig_lengths=tuple(int(x) for x in a.contigs.split(",")),
        read_length=a.read_length,
        depth=a.depth,
        error_rate=a.error_rate,
        gzip_reference=a.gzip_reference,
        prefix=a.prefix,
    )
    json.dump(ds.to_json(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
