"""What can be checked of the images without a Docker engine: hadolint, the user, the
entrypoints and paths they set, and the package they install. The API's and the worker's are
the targets ``api`` and ``worker`` of the root Dockerfile, over one build stage."""

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
DOCKERFILES = {"pipeq": ROOT / "Dockerfile", "redis": ROOT / "redis_image" / "Dockerfile"}
#: image -> (Dockerfile, target stage; None for the last)
IMAGES = {"control-plane": (DOCKERFILES["pipeq"], "api"), "worker": (DOCKERFILES["pipeq"], "worker"),
          "redis": (DOCKERFILES["redis"], None)}


def _lines(path: Path) -> list[str]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]


def final_stage(image: str) -> list[str]:
    """The instructions of the stage that makes ``image`` (its target, or the last stage),
    continuation lines joined."""
    path, target = IMAGES[image]
    lines = _lines(path)
    starts = [i for i, l in enumerate(lines) if l.upper().startswith("FROM ")]
    if target is None:
        begin = starts[-1]
    else:
        (begin,) = [i for i in starts if lines[i].split()[-2:] == ["AS", target]]
    end = min([i for i in starts if i > begin], default=len(lines))
    return lines[begin:end]


def test_both_pipeq_images_share_one_build_stage():
    lines = _lines(DOCKERFILES["pipeq"])
    copies = {image: instr(final_stage(image), "COPY") for image in ("control-plane", "worker")}
    froms = [l for l in lines if l.upper().startswith("FROM ")]
    assert froms[0] == "FROM debian:bookworm-slim AS build"
    # the API's stage adds the Kubernetes client's bytecode on top of the shared one
    assert "FROM build AS build-api" in froms
    assert "--from=build-api /opt/pipeq /opt/pipeq" in copies["control-plane"]
    assert "--from=build /opt/pipeq /opt/pipeq" in copies["worker"]
    assert not (ROOT / "worker_image").exists()


def instr(stage: list[str], name: str) -> list[str]:
    return [l.split(None, 1)[1] for l in stage if l.split(None, 1)[0].upper() == name]


@pytest.mark.parametrize("dockerfile", list(DOCKERFILES))
def test_hadolint_is_clean(dockerfile):
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    r = subprocess.run([hadolint, str(DOCKERFILES[dockerfile])], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("image", list(IMAGES))
def test_runs_as_non_root_on_the_debian_base(image):
    stage = final_stage(image)
    # the base scripts/docker.sh can make without a registry (debootstrap)
    assert instr(stage, "FROM")[0].split()[0] == "debian:bookworm-slim"
    (user,) = instr(stage, "USER")
    assert user.split(":")[0] == "10001"
    assert not any("build-essential" in l or "gcc" in l for l in stage), "no build tools in the final layer"


@pytest.mark.parametrize("image, command", [("control-plane", "api"), ("worker", "worker")])
def test_entrypoint_is_the_pipeq_command(image, command):
    stage = final_stage(image)
    # tini as PID 1 reaps what pipelines leave behind and passes signals on
    assert instr(stage, "ENTRYPOINT") == ['["tini", "--", "pipeq"]']
    assert instr(stage, "CMD") == [f'["{command}"]']
    with pytest.raises(SystemExit) as e:
        cli_main([command, "--help"])
    assert e.value.code == 0


def test_worker_image_has_pipeline_and_tools_where_settings_look():
    stage = " ".join(final_stage("worker"))
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
    for f in ("requirements.txt", "Dockerfile", "pyproject.toml"):
        assert "multiqc" not in (ROOT / f).read_text().lower(), f
