"""MultiQC (pinned, in its own venv from scripts/multiqc-venv.sh, never in pipeq's) over the
folders of two finished runs, laid out as the data folder holds jobs (jobs/<id>/output/):
each sample is one row, with its fastp, samtools and bcftools sections.

The first run builds the venv (a minute or two, once; cached in ~/.cache/pipeq)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.simdata import make_dataset

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = {"S1", "other.S-2"}  # a dot and a dash: names MultiQC's own cleaning must leave whole

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(any(shutil.which(t) is None for t in ("fastp", "minimap2", "samtools", "bcftools")),
                       reason="pipeline tools missing (run `make deps`)"),
]


@pytest.fixture(scope="module")
def multiqc() -> Path:
    venv = subprocess.run([str(ROOT / "scripts" / "multiqc-venv.sh")], capture_output=True, text=True, timeout=840)
    assert venv.returncode == 0, venv.stderr[-2000:]
    return Path(venv.stdout.strip()) / "bin" / "multiqc"


def test_two_jobs_one_row_each_with_every_section(multiqc, tmp_path):
    paired = make_dataset(tmp_path / "paired", seed=21, n_snps=6, paired=True)
    single = make_dataset(tmp_path / "single", seed=22, n_snps=5, paired=False)
    jobs = tmp_path / "data" / "jobs"
    for job_id, ds, sample in (("a" * 32, paired, "S1"), ("b" * 32, single, "other.S-2")):
        reads = [a for r in ds.reads for a in ("--reads", str(r))]
        proc = subprocess.run([str(ROOT / "pipeline.sh"), "--reference", str(ds.reference), *reads, "--sample", sample,
                               "--outdir", str(jobs / job_id / "output")], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]

    # as docs/pipeline.md says: any job's config, every job's output folder
    out = tmp_path / "multiqc"
    proc = subprocess.run([str(multiqc), "--no-ansi", "-f", "-c", str(jobs / ("a" * 32) / "output" / "multiqc_config.yaml"),
                           "-o", str(out), *sorted(str(p) for p in jobs.glob("*/output"))],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "multiqc_data" / "multiqc_data.json").read_text())

    sources = data["report_data_sources"]
    found = {(module, section): set(samples) for module, sections in sources.items() for section, samples in sections.items()}
    for module, section in (("fastp", "all_sections"), ("Samtools", "stats"), ("Samtools", "flagstat"),
                            ("Samtools", "idxstats"), ("Bcftools", "stats")):
        assert found.get((module, section)) == SAMPLES, f"{module}/{section}: {found.get((module, section))}"
    # one row per sample: no other name anywhere (e.g. 'S1.stats' or 'S1 fastp report')
    names = set().union(*found.values(), *(set(rows) for rows in data["report_general_stats_data"].values()))
    assert names == SAMPLES, names
    assert (out / "multiqc_report.html").is_file()
