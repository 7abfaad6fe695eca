"""Rendering the chart: one place for the helm flags, used by `make manifests` and the tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "pipeq"
KUBE_VERSION = "1.36.0"


def helm_bin() -> str:
    out = subprocess.run([str(ROOT / "tools" / "build.sh")], capture_output=True, text=True, check=True).stdout
    return str(Path(out.strip()) / "helm")


def render(*sets: str, namespace: str = "pipeq", release: str = "pipeq") -> str:
    """``helm template`` of the chart (CRDs included, test hooks left out)."""
    cmd = [helm_bin(), "template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION,
           "--include-crds", "--skip-tests", "--no-hooks"]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def render_manifests(outdir: Path) -> None:
    """manifests/pipeq.yaml: the chart with default values, for `kubectl apply -f manifests/`."""
    outdir.mkdir(parents=True, exist_ok=True)
    header = "# Rendered from helm/pipeq with default values by `make manifests`; do not edit.\n"
    (outdir / "pipeq.yaml").write_text(header + render())


if __name__ == "__main__":
    if sys.argv[1:2] == ["render"]:
        render_manifests(ROOT / sys.argv[2])
