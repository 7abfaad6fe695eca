"""Real runs of pipeline.sh on simulated data: outputs, report numbers, planted SNPs, progress
lines, and every documented failure (usage 2, missing tool 3, bad input 4, failed stage 5).

Needs the pipeline's tools (`make deps`); a run on the test data takes about a second.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support import report_check
from tests.support.simdata import (
    make_dataset,
    write_mismatched_fastq,
    write_not_fasta,
    write_not_fastq,
    write_truncated_fastq,
)
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "pipeline.sh"
TOOLS = ("fastp", "minimap2", "samtools", "bcftools")
PROGRESS = re.compile(r"^PROGRESS (\d{1,3}) (\S+)(?: (.*))?$")

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in TOOLS),
        reason="pipeline tools missing (run `make deps`)",
    ),
]


def run(*args: str | Path, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(PIPELINE), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        cwd=cwd,
    )


def progress_lines(stdout: str) -> list[tuple[int, str, str]]:
    """Every stdout line must be a progress line; returns (percent, stage, text)."""
    out = []
    for line in stdout.splitlines():
        m = PROGRESS.match(line)
        assert m, f"stdout line is not a progress line: {line!r}"
        out.append((int(m.group(1)), m.group(2), m.group(3) or ""))
    return out


def last_stderr_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines, "no message on stderr"
    return lines[-1]


def vcf_sites(vcf: Path) -> set[tuple[str, int, str, str]]:
    sites = set()
    with gzip.open(vcf, "rt") as fh:  # BGZF is gzip
        for line in fh:
            if line.startswith("#"):
                continue
            chrom, pos, _id, ref, alts = line.split("\t")[:5]
            for alt in alts.split(","):
                sites.add((chrom, int(pos), ref, alt))
    return sites


def listing(d: Path) -> dict[str, tuple[int, float]]:
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime) for p in d.rglob("*")}


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("paired"), seed=7, n_snps=12, paired=True)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("single"), seed=11, n_snps=8, paired=False, gzip_reference=True)


def check_success(proc, ds, outdir: Path, sample: str):
    assert proc.returncode == 0, proc.stderr[-3000:]

    # progress: only progress lines on stdout, non-decreasing, 0 first, "100 done" last
    prog = progress_lines(proc.stdout)
    assert prog[0][0] == 0
    assert prog[-1][:2] == (100, "done")
    pcts = [p for p, _, _ in prog]
    assert pcts == sorted(pcts), pcts
    assert [s for _, s, _ in prog] == ["check", "reference", "qc", "align", "stats", "call", "report", "done"]

    files = [
        f"{sample}.bam", f"{sample}.bam.bai", f"{sample}.vcf.gz", f"{sample}.vcf.gz.tbi",
        "fastp.json", "fastp.html", "report.json", "report.html", "plots.json", "multiqc_config.yaml",
        f"{sample}.idxstats.tsv", f"{sample}.bcftools_stats.txt",
    ]
    for name in files:
        assert (outdir / name).is_file() and (outdir / name).stat().st_size > 0, name
    assert not (outdir / "work").exists(), "scratch left behind"

    report = json.loads((outdir / "report.json").read_text())
    for key in ("sample", "reads_before", "reads_after", "percent_mapped", "mean_depth", "variants"):
        assert key in report, key
    assert report["sample"] == sample
    assert report["reads_before"] == ds.total_reads
    assert 0 < report["reads_after"] <= report["reads_before"]
    assert report["percent_mapped"] > 90
    assert abs(report["mean_depth"] - ds.depth) < 0.2 * ds.depth, report["mean_depth"]
    assert report["paired"] is ds.paired

    # every planted SNP is called (homozygous alt), and there is little else
    sites = vcf_sites(outdir / f"{sample}.vcf.gz")
    planted = {(s.contig, s.pos, s.ref, s.alt) for s in ds.snps}
    assert planted <= sites, f"missed: {sorted(planted - sites)}"
    assert report["variants"] == len(sites) <= len(planted) + 2

    html = (outdir / "report.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert sample in html and "Mean depth" in html
    assert "<script src" not in html and "<link" not in html  # self-contained
    check_plots_and_multiqc_files(outdir, sample, ds, report, html)
    return report, prog


def check_plots_and_multiqc_files(outdir: Path, sample: str, ds, report: dict, html: str) -> None:
    expected = report_check.PAIRED_PLOTS if ds.paired else report_check.SINGLE_PLOTS
    # each plot drawn, both axes labelled, no src/href leaving the report
    report_check.check_plots(html, expected)
    assert report["plots"] == expected
    # the page's plots.json holds the same SVG as the report
    page = json.loads((outdir / "plots.json").read_text())["plots"]
    assert [p["id"] for p in page] == expected
    assert all(p["svg"] in html and p["title"] and p["caption"] for p in page)
    assert 0 < report["plots_seconds"] < report["elapsed_seconds"] + 5
    # MultiQC's inputs: bcftools stats with the reference, idxstats naming every contig
    stats = (outdir / f"{sample}.bcftools_stats.txt").read_text()
    assert "This file was produced by bcftools stats" in stats and " -F " in stats
    assert re.search(rf"^SN\t0\tnumber of SNPs:\t{report['snps']}$", stats, re.M), "SNP count differs from the report"
    idx = {line.split("\t")[0] for line in (outdir / f"{sample}.idxstats.tsv").read_text().splitlines()}
    assert {c["name"] for c in report["contigs"]} <= idx


def test_paired_end_run(paired, tmp_path):
    outdir = tmp_path / "out"
    inputs_before = listing(paired.reference.parent)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = run(
        "--reference", paired.reference, "--reads", paired.reads[0], "--reads", paired.reads[1],
        "--outdir", outdir, "--sample", "S1", "--threads", "2", cwd=cwd,
    )
    report, _ = check_success(proc, paired, outdir, "S1")
    assert report["percent_properly_paired"] > 90
    # writes nothing outside --outdir: the input folder (no .fai beside the reference) and cwd
    assert listing(paired.reference.parent) == inputs_before
    assert list(cwd.iterdir()) == []
    # the VCF's sample column is the sample name (read group SM)
    header = subprocess.run(["bcftools", "query", "-l", outdir / "S1.vcf.gz"], capture_output=True, text=True)
    assert header.stdout.split() == ["S1"]


def test_single_end_gzip_reference_default_sample(single, tmp_path):
    outdir = tmp_path / "nested" / "out"  # created by the pipeline
    proc = run("--reference", single.reference, "--reads", single.reads[0], f"--outdir={outdir}")
    # default sample: the reads file name without extensions (sim.fq.gz -> sim)
    check_success(proc, single, outdir, "sim")


def test_rerun_into_same_outdir(paired, tmp_path):
    outdir = tmp_path / "out"
    args = ("--reference", paired.reference, "--reads", paired.reads[0], "--reads", paired.reads[1], "--outdir", outdir)
    assert run(*args).returncode == 0
    proc = run(*args)
    check_success(proc, paired, outdir, "sim")


# ---- failures ------------------------------------------------------------------------------


def assert_fails(proc, code: int, *needles: str):
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    msg = last_stderr_line(proc)
    assert msg.startswith("pipeline.sh: error: "), msg
    for needle in needles:
        assert needle in msg, msg
    # whatever progress it printed still parses and never claims completion
    prog = progress_lines(proc.stdout)
    assert all(stage != "done" for _, stage, _ in prog)


@pytest.mark.parametrize(
    "argv, needle",
    [
        ([], "missing --reference"),
        (["--reference", "r.fa"], "missing --reads"),
        (["--reference", "r.fa", "--reads", "a.fq"], "missing --outdir"),
        (["--reference", "r.fa", "--reads", "a", "--reads", "b", "--reads", "c", "--outdir", "o"], "--reads given 3 times"),
        (["--reference", "r.fa", "--reads", "a.fq", "--outdir", "o", "--bogus"], "unknown argument: --bogus"),
        (["--reference", "r.fa", "--reads", "a.fq", "--outdir", "o", "--sample", "a/b"], "--sample must match"),
        (["--reference", "r.fa", "--reads", "a.fq", "--outdir", "o", "--threads", "0"], "--threads must be"),
        (["--reference"], "--reference needs a value"),
    ],
)
def test_usage_errors(argv, needle, tmp_path):
    proc = run(*argv, cwd=tmp_path)
    assert_fails(proc, 2, needle)
    assert list(tmp_path.iterdir()) == []


def test_help():
    proc = run("--help")
    assert proc.returncode == 0
    assert "usage: pipeline.sh" in proc.stdout


def test_missing_reference(paired, tmp_path):
    missing = tmp_path / "nope.fa"
    proc = run("--reference", missing, "--reads", paired.reads[0], "--outdir", tmp_path / "out")
    assert_fails(proc, 4, "reference not found", str(missing))


@pytest.mark.parametrize(
    "writer, name, needle",
    [
        (write_not_fastq, "bad.fq", "not FASTQ"),
        (write_not_fastq, "bad.fq.gz", "not FASTQ"),
        (write_truncated_fastq, "trunc.fq", "no complete record"),
        (write_mismatched_fastq, "mismatch.fq.gz", "quality length"),
    ],
)
def test_reads_not_fastq(paired, tmp_path, writer, name, needle):
    bad = writer(tmp_path / name)
    proc = run("--reference", paired.reference, "--reads", bad, "--outdir", tmp_path / "out")
    assert_fails(proc, 4, needle, str(bad))
    assert not (tmp_path / "out").exists(), "an input error must be caught before any work"


def test_second_reads_bad(paired, tmp_path):
    bad = write_not_fastq(tmp_path / "r2.fq")
    proc = run("--reference", paired.reference, "--reads", paired.reads[0], "--reads", bad, "--outdir", tmp_path / "o")
    assert_fails(proc, 4, "not FASTQ", str(bad))


def test_reads_empty_or_corrupt_gzip(paired, tmp_path):
    empty = tmp_path / "empty.fq"
    empty.touch()
    proc = run("--reference", paired.reference, "--reads", empty, "--outdir", tmp_path / "o")
    assert_fails(proc, 4, "empty")
    corrupt = tmp_path / "corrupt.fq.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00garbage-not-deflate" * 4)
    proc = run("--reference", paired.reference, "--reads", corrupt, "--outdir", tmp_path / "o")
    assert_fails(proc, 4, str(corrupt))


def test_reads_truncated(paired, tmp_path):
    """An upload cut short: fastp alone would silently use the part it could read."""
    data = paired.reads[0].read_bytes()
    cut = tmp_path / "cut_R1.fq.gz"
    cut.write_bytes(data[: len(data) // 2])
    proc = run("--reference", paired.reference, "--reads", cut, "--outdir", tmp_path / "o")
    assert_fails(proc, 4, "truncated or corrupt gzip", str(cut))
    partial = tmp_path / "partial.fq"
    lines = gzip.decompress(data).decode().splitlines(keepends=True)
    partial.write_text("".join(lines[:4001]))  # 1000 records and the header of the next
    proc = run("--reference", paired.reference, "--reads", partial, "--outdir", tmp_path / "o")
    assert_fails(proc, 4, "not a multiple of 4")


def test_paired_files_differ_in_length(paired, tmp_path):
    lines = gzip.decompress(paired.reads[1].read_bytes()).decode().splitlines(keepends=True)
    short = tmp_path / "short_R2.fq"
    short.write_text("".join(lines[:400]))
    proc = run("--reference", paired.reference, "--reads", paired.reads[0], "--reads", short, "--outdir", tmp_path / "o")
    assert_fails(proc, 4, f"paired reads files differ in length: {paired.n_reads} records")


def test_reference_not_fasta(paired, tmp_path):
    bad = write_not_fasta(tmp_path / "ref.fa.gz")
    proc = run("--reference", bad, "--reads", paired.reads[0], "--outdir", tmp_path / "o")
    assert_fails(proc, 4, "reference is not FASTA")


def test_same_file_twice(paired, tmp_path):
    r = paired.reads[0]
    proc = run("--reference", paired.reference, "--reads", r, "--reads", r, "--outdir", tmp_path / "o")
    assert_fails(proc, 4, "same file")


def path_without(tmp_path: Path, *tools: str) -> str:
    """A PATH of one folder of symlinks to every command on the current PATH but ``tools``."""
    d = tmp_path / "bin"
    d.mkdir()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            if entry.name in tools or (d / entry.name).exists() or os.path.islink(d / entry.name):
                continue
            if entry.is_file() and os.access(entry.path, os.X_OK):
                (d / entry.name).symlink_to(entry.path)
    return str(d)


def test_missing_tool(paired, tmp_path):
    env = {**os.environ, "PATH": path_without(tmp_path, "minimap2", "bcftools")}
    proc = run(
        "--reference", paired.reference, "--reads", paired.reads[0], "--outdir", tmp_path / "out", env=env,
    )
    assert_fails(proc, 3, "missing tool(s): minimap2 bcftools")


def test_failing_stage(paired, tmp_path):
    """A tool that fails mid-run: exit 5, naming the stage, and stdout stops at that stage."""
    fake = tmp_path / "fake"
    fake.mkdir()
    tool = fake / "minimap2"
    tool.write_text("#!/bin/sh\necho 'minimap2: simulated crash' >&2\nexit 1\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    proc = run(
        "--reference", paired.reference, "--reads", paired.reads[0], "--reads", paired.reads[1],
        "--outdir", tmp_path / "out", env=env,
    )
    assert_fails(proc, 5, "stage 'align' (minimap2 -ax sr | samtools sort) failed with exit 1")
    assert "simulated crash" in proc.stderr
    assert progress_lines(proc.stdout)[-1][1] == "align"
    assert not (tmp_path / "out" / "report.json").exists()


def test_simdata_is_deterministic(tmp_path):
    a = make_dataset(tmp_path / "a", seed=3, n_snps=5, contig_lengths=(3000,), depth=5)
    b = make_dataset(tmp_path / "b", seed=3, n_snps=5, contig_lengths=(3000,), depth=5)
    c = make_dataset(tmp_path / "c", seed=4, n_snps=5, contig_lengths=(3000,), depth=5)
    assert a.snps == b.snps != c.snps
    for x, y in zip(a.reads + [a.reference], b.reads + [b.reference]):
        assert x.read_bytes() == y.read_bytes()
    assert len({s.pos for s in a.snps}) == 5
    ref = "".join(a.reference.read_text().splitlines()[1:])
    assert all(ref[s.pos - 1] == s.ref != s.alt for s in a.snps)


def test_sigterm_to_the_group_stops_everything(paired, tmp_path):
    """The worker's timeout/stop: TERM to the process group ends the run, exit 143, no survivors."""
    fake = tmp_path / "fake"
    fake.mkdir()
    tool = fake / "minimap2"
    tool.write_text("#!/bin/sh\nexec sleep 60\n")
    tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    args = ["--reference", paired.reference, "--reads", paired.reads[0], "--outdir", tmp_path / "out"]
    proc = subprocess.Popen(
        [str(PIPELINE), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, env=env, start_new_session=True,
    )
    try:
        for line in proc.stdout:
            if line.startswith("PROGRESS") and line.split()[2] == "align":
                break
        # the stage is really running: the stand-in minimap2 has become its `sleep 60`
        wait_for(lambda: any(m.endswith("(sleep)") for m in live_group_members(proc.pid)), timeout=10,
                 what="the align stage's stand-in minimap2 to run")
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 143
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:
        wait_for(lambda: not live_group_members(proc.pid), timeout=5, what="the pipeline's group to be gone")
    except AssertionError:
        raise AssertionError(f"processes of the pipeline's group survived SIGTERM: {live_group_members(proc.pid)}") from None


def live_group_members(pgid: int) -> list[str]:
    """Processes of group ``pgid`` that are not zombies (a container's init may not reap them)."""
    out = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat_file.read_text()
        except OSError:
            continue
        comm_end = text.rindex(")")
        state, _ppid, pgrp = text[comm_end + 2 :].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            out.append(text[: comm_end + 1])
    return out


# ---- fastp.html offline, and what pipeline.sh needs beside it ------------------------------

PLOTLY = ROOT / "build" / "vendor" / "plotly.min.js"


@pytest.mark.skipif(not PLOTLY.is_file(), reason="no pinned plotly in build/vendor (scripts/plotly.sh; make deps runs it)")
def test_fastp_html_loads_plotly_from_beside_it(paired, tmp_path):
    outdir = tmp_path / "out"
    proc = run("--reference", paired.reference, "--reads", paired.reads[0], "--reads", paired.reads[1], "--outdir", outdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = (outdir / "fastp.html").read_text()
    scripts = re.findall(r"<script[^>]*\bsrc=['\"]([^'\"]+)", page)
    assert scripts == ["plotly.min.js"], scripts
    assert "document.write" not in page
    assert (outdir / "plotly.min.js").read_bytes() == PLOTLY.read_bytes()
    report = json.loads((outdir / "report.json").read_text())
    assert report["fastp_html_offline"] is True and report["files"]["plotly"] == "plotly.min.js"


def copy_pipeline(to: Path, with_report: bool = True) -> Path:
    """pipeline.sh elsewhere, as a pool that mounts its own copy would have it (no build/vendor)."""
    to.mkdir()
    shutil.copy2(PIPELINE, to / "pipeline.sh")
    if with_report:
        shutil.copytree(ROOT / "pipeline_report", to / "pipeline_report", ignore=shutil.ignore_patterns("__pycache__"))
    return to / "pipeline.sh"


def test_without_plotly_fastp_html_is_left_as_fastp_made_it(paired, tmp_path):
    script = copy_pipeline(tmp_path / "bin")
    outdir = tmp_path / "out"
    proc = subprocess.run([str(script), "--reference", str(paired.reference), "--reads", str(paired.reads[0]),
                           "--outdir", str(outdir)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no local copy (scripts/plotly.sh makes one)" in proc.stderr
    assert not (outdir / "plotly.min.js").exists()
    assert json.loads((outdir / "report.json").read_text())["fastp_html_offline"] is False
    assert "load plotly from the internet" in (outdir / "report.html").read_text()
    report_check.check_plots((outdir / "report.html").read_text(), report_check.SINGLE_PLOTS)


def test_missing_report_helpers_is_a_missing_tool(paired, tmp_path):
    script = copy_pipeline(tmp_path / "bin", with_report=False)
    proc = subprocess.run([str(script), "--reference", str(paired.reference), "--reads", str(paired.reads[0]),
                           "--outdir", str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert_fails(proc, 3, "pipeline_report/", "beside pipeline.sh")
    assert not (tmp_path / "out").exists()
