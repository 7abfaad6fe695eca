"""Baseline task, run by a plain ``rq worker``: call pipeline.sh with subprocess."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

PIPELINE = os.environ.get("BASELINE_PIPELINE", str(Path(__file__).resolve().parents[2] / "pipeline.sh"))


def run_pipeline(reads: list[str], reference: str, outdir: str, sample: str | None = None) -> dict:
    cmd = [PIPELINE, "--reference", reference, "--outdir", outdir]
    for r in reads:
        cmd += ["--reads", r]
    if sample:
        cmd += ["--sample", sample]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pipeline.sh exited with {proc.returncode}: {proc.stderr[-2000:]}")
    return {"files": sorted(os.listdir(outdir))}
