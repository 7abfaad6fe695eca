"""What the report's plots cost (issue 24): seconds added per job and bytes added to
report.html, on the bowtie2 lambda example (Debian package bowtie2-examples) and on a
simulated 2 M-read run (10 Mb, 2 x 1 M reads of 150 bp, 30x).

    python -m bench.report_plots [--repeat 5] [--threads 2] [--out bench/out/report_plots]

Each data set goes once through pipeline.sh (wall and CPU seconds of the whole run, the
baseline of the same run); then the plot step alone (pipeline_report.plots: samtools depth |
awk, the SVG, plots.json) runs ``--repeat`` times on the finished outputs: its best and
median wall seconds and its CPU seconds, as a share of the run. Bytes: the plots' section of
report.html. Goals: <= 0.5 s on lambda, <= 2 % of the run on the large one, <= 150 KB.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline_report import plots  # noqa: E402
from tests.support.simdata import make_dataset  # noqa: E402

LAMBDA = Path("/usr/share/doc/bowtie2/examples")


def cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def run_pipeline(ref: Path, reads: list[Path], outdir: Path, sample: str, threads: int) -> tuple[float, float]:
    args = [str(ROOT / "pipeline.sh"), "--reference", str(ref), *[a for r in reads for a in ("--reads", str(r))],
            "--outdir", str(outdir), "--sample", sample, "--threads", str(threads)]
    c0, t0 = cpu(), time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True)
    wall, used = time.monotonic() - t0, cpu() - c0
    if proc.returncode:
        sys.exit(f"pipeline.sh failed on {sample}: {proc.stderr[-2000:]}")
    return wall, used


def plot_step(outdir: Path, ref: Path, scratch: Path) -> tuple[float, float, int]:
    """The plot step as pipeline.sh runs it, on finished outputs: wall, CPU seconds, HTML bytes."""
    report = json.loads((outdir / "report.json").read_text())
    sample = report["sample"]
    fai = scratch / "ref.fai"
    if not fai.exists():  # as pipeline.sh makes it: from the reference, decompressed
        plain = scratch / "ref.fa"
        with open(plain, "wb") as fh:
            subprocess.run(["gzip", "-cdf", str(ref)], stdout=fh, check=True)
        subprocess.run(["samtools", "faidx", str(plain), "--fai-idx", str(fai)], check=True)
    query = subprocess.run(["bcftools", "query", "-f", "%QUAL\t%TYPE\t[%DP]\n", str(outdir / f"{sample}.vcf.gz")],
                           capture_output=True, text=True, check=True).stdout
    variants = [{"qual": None if q == "." else float(q), "type": t, "dp": d}
                for q, t, d in (line.split("\t") for line in query.splitlines())]
    fastp = json.loads((outdir / "fastp.json").read_text())
    c0, t0 = cpu(), time.monotonic()
    figs = plots.build(sample=sample, fastp=fastp, stats_path=str(outdir / f"{sample}.stats.txt"),
                       bam=str(outdir / f"{sample}.bam"),
                       contigs=[(n, int(n_)) for n, n_ in (line.split("\t")[:2] for line in fai.read_text().splitlines())],
                       work=str(scratch), mean_depth=report["mean_depth"],
                       mean_depths={c["name"]: c["mean_depth"] for c in report["contigs"]},
                       covered_bases=sum(c["covered_bases"] for c in report["contigs"]), paired=report["paired"],
                       variants=variants)
    html = plots.section_html(figs)
    plots.write_json(figs, str(scratch / "plots.json"))
    return time.monotonic() - t0, cpu() - c0, len(html.encode())


def measure(name: str, ref: Path, reads: list[Path], out: Path, threads: int, repeat: int) -> dict:
    outdir = out / name
    wall, used = run_pipeline(ref, reads, outdir, name, threads)
    scratch = out / f"{name}-scratch"
    scratch.mkdir(exist_ok=True)
    steps = [plot_step(outdir, ref, scratch) for _ in range(repeat)]
    report = json.loads((outdir / "report.json").read_text())
    html = (outdir / "report.html").read_text()
    section = re.search(r'<section id="plots">.*?</section>', html, re.S)
    walls = sorted(s[0] for s in steps)
    return {
        "name": name, "reads": report["reads_before"], "reference_bp": report["reference_length"],
        "run_wall": wall, "run_cpu": used, "in_run_plots": report["plots_seconds"],
        "plots_best": walls[0], "plots_median": statistics.median(walls), "plots_cpu": min(s[1] for s in steps),
        "bytes": len(section.group(0).encode()) if section else 0, "report_bytes": len(html.encode()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "report_plots")
    ap.add_argument("--skip-large", action="store_true", help="lambda only (seconds, not minutes)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not (LAMBDA / "reference" / "lambda_virus.fa.gz").is_file():
        sys.exit("the lambda example is missing: PIPEQ_EXTRA_DEBS=bowtie2-examples scripts/deps.sh (make bench-report does)")
    rows = [measure("lambda", LAMBDA / "reference" / "lambda_virus.fa.gz",
                    [LAMBDA / "reads" / "reads_1.fq.gz", LAMBDA / "reads" / "reads_2.fq.gz"], args.out, args.threads, args.repeat)]
    if not args.skip_large:
        big = args.out / "data-2M"
        if not (big / "sim_R2.fq.gz").is_file():
            print("simulating 2 x 1 M reads over 10 Mb (a few minutes, once)", file=sys.stderr)
            make_dataset(big, seed=5, n_snps=40, paired=True, depth=30, contig_lengths=(4_000_000, 3_000_000, 2_000_000, 1_000_000))
        rows.append(measure("sim-2M", big / "sim.ref.fa", [big / "sim_R1.fq.gz", big / "sim_R2.fq.gz"], args.out,
                            args.threads, min(args.repeat, 3)))
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("| run | reads | reference | pipeline wall s | pipeline CPU s | plots wall s best / median | plots CPU s | "
          "share of the run (wall / CPU) | plots in report.html | report.html |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['reads']:,} | {r['reference_bp']:,} bp | {r['run_wall']:.1f} | {r['run_cpu']:.1f} | "
              f"{r['plots_best']:.3f} / {r['plots_median']:.3f} | {r['plots_cpu']:.3f} | "
              f"{100 * r['plots_best'] / r['run_wall']:.1f} % / {100 * r['plots_cpu'] / r['run_cpu']:.1f} % | "
              f"{r['bytes'] / 1000:.1f} KB | {r['report_bytes'] / 1000:.1f} KB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
