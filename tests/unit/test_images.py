"""What can be checked of the two images without a Docker engine: hadolint, the user,
the entrypoints and paths they set, and the package they install."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipeq.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {"control-plane": ROOT / "Dockerfile", "worker": ROOT / "worker_image" / "Dockerfile",
          "redis": ROOT / "redis_image" / "Dockerfile"}


def final_stage(path: Path) -> list[str]:
    """The instructions of the last stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    last_from = max(i for i, l in enumerate(lines) if l.upper().startswith("FROM "))
    return lines[last_from:]


def instr(stage: list[str], name: str) -> list[str]:
    return [l.split(None, 1)[1] for l in stage if l.split(None, 1)[0].upper() == name]


@pytest.mark.parametrize("image", list(IMAGES))
def test_hadolint_is_clean(image):
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    r = subprocess.run([hadolint, str(IMAGES[image])], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("image", list(IMAGES))
def test_runs_as_non_root_on_the_debian_base(image):
    stage = final_stage(IMAGES[image])
    # the base scripts/docker.sh can make without a registry (debootstrap)
    assert instr(stage, "FROM")[0] == "debian:bookworm-slim"
    (user,) = instr(stage, "USER")
    assert user.split(":")[0] == "10001"
    assert not any("build-essential" in l or "gcc" in l for l in stage), "no build tools in the final layer"


@pytest.mark.parametrize("image, command", [("control-plane", "api"), ("worker", "worker")])
def test_entrypoint_is_the_pipeq_command(image, command):
    stage = final_stage(IMAGES[image])
    # tini as PID 1 reaps what pipelines leave behind and passes signals on
    assert instr(stage, "ENTRYPOINT") == ['["tini", "--", "pipeq"]']
    assert instr(stage, "CMD") == [f'["{command}"]']
    with pytest.raises(SystemExit) as e:
        cli_main([command, "--help"])
    assert e.value.code == 0


def test_worker_image_has_pipeline_and_tools_where_settings_look():
    stage = " ".join(final_stage(IMAGES["worker"]))
    assert "COPY pipeline.sh /opt/pipeq/pipeline.sh" in stage
    assert "PIPEQ_PIPELINE=/opt/pipeq/pipeline.sh" in stage
    # pipeline.sh refuses to run without its report's helpers beside it; plotly is where it looks
    assert "COPY pipeline_report /opt/pipeq/pipeline_report" in stage
    assert "COPY build/vendor/ /opt/pipeq/vendor/" in stage
    assert '"$HERE/vendor/plotly.min.js"' in (ROOT / "pipeline.sh").read_text()
    for tool in ("fastp", "minimap2", "samtools", "bcftools", "tabix"):
        assert re.search(rf"\b{tool}=\S+", stage), f"{tool} is not installed at a pinned version"
    deps = (ROOT / "scripts" / "deps.sh").read_text()
    for tool in ("fastp", "minimap2", "samtools", "bcftools", "tabix"):
        assert tool in deps, f"scripts/deps.sh does not install {tool}: dev and image would differ"


def test_package_builds_with_console_script_and_web_page(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("pipeq-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "pipeq = pipeq.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
    assert "pipeq/worker/guard.py" in names


def test_multiqc_stays_out_of_the_product():
    """MultiQC is a test and user tool (scripts/multiqc-venv.sh), never a product dependency."""
    for f in ("requirements.txt", "Dockerfile", "worker_image/Dockerfile", "pyproject.toml"):
        assert "multiqc" not in (ROOT / f).read_text().lower(), f
