"""The chart checked by tools no one here wrote: kubeconform v0.8.0 (strict, against the
schemas of the Kubernetes in tools/, the chart's CRD and the Prometheus Operator's CRDs) and
kube-score v1.20.0, on every value set the tests render (tests/support/chart.VALUE_SETS),
hooks and test pods included. Both are built from the Go module proxy (tools/kubeconform,
tools/kube-score: `tools/gobuild.sh NAME`). A kube-score finding passes only when
docs/deploy.md lists it under "Accepted findings" with its reason; kubeconform must find
nothing."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.support import chart, kubeschemas

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_MD = ROOT / "docs" / "deploy.md"
RELEASE = "pipeq"


def tool(name: str) -> str:
    out = subprocess.run([str(ROOT / "tools" / "gobuild.sh"), name], capture_output=True, text=True, timeout=1800, check=True)
    return str(Path(out.stdout.strip()) / name)


@pytest.fixture(scope="module")
def schemas(tmp_path_factory):
    crds = kubeschemas.crd_schemas(tmp_path_factory.mktemp("crd-schemas"))
    return [kubeschemas.schema_location(kubeschemas.kubernetes_schemas()), kubeschemas.schema_location(crds)]


def accepted() -> set[tuple[str, str, str]]:
    """(check id, finding, object) rows of docs/deploy.md's accepted kube-score findings; an
    object is Kind/name with the release's prefix taken off, or * for any."""
    text = DEPLOY_MD.read_text()
    section = text.split("### Accepted findings", 1)[1].split("\n## ", 1)[0]
    rows = set()
    for line in section.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] == "kube-score":
            for obj in cells[3].split(","):
                rows.add((cells[1], cells[2], obj.strip().strip("`")))
    return rows


def short(kind: str, name: str) -> str:
    return f"{kind}/{re.sub(rf'^{RELEASE}-', '', name)}"


def kube_score_findings(rendered: str) -> set[tuple[str, str, str]]:
    r = subprocess.run([tool("kube-score"), "score", "--output-format", "json", "-"], input=rendered,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 1), r.stderr  # 1: findings (checked below)
    found = set()
    for obj in json.loads(r.stdout):
        for c in obj["checks"]:
            if c["skipped"] or c["grade"] >= 10:  # 10: OK
                continue
            for comment in c["comments"] or [{"summary": c["check"]["name"]}]:
                summary = re.sub(r"^\([^)]*\) ", "", comment["summary"])  # "(api) CPU limit..." → any container
                found.add((c["check"]["id"], summary, short(obj["type_meta"]["kind"], obj["object_meta"]["name"])))
    return found


@pytest.mark.parametrize("name", list(chart.VALUE_SETS))
def test_kubeconform_strict_finds_nothing(name, schemas):
    rendered = chart.render(*chart.VALUE_SETS[name], release=RELEASE, hooks=True)
    cmd = [tool("kubeconform"), "-strict", "-summary", "-output", "json"]
    for loc in schemas:
        cmd += ["-schema-location", loc]
    r = subprocess.run(cmd + ["-"], input=rendered, capture_output=True, text=True, timeout=120)
    report = json.loads(r.stdout)
    assert r.returncode == 0 and not report["resources"], json.dumps(report, indent=1)[:4000]
    summary = report["summary"]
    # every object was checked against a schema: none skipped for want of one
    assert summary["valid"] == rendered.count("\nkind: ") + rendered.startswith("kind: ") and summary["skipped"] == 0, summary


@pytest.mark.parametrize("name", list(chart.VALUE_SETS))
def test_kube_score_finds_only_what_docs_accept(name):
    ok = accepted()
    found = kube_score_findings(chart.render(*chart.VALUE_SETS[name], release=RELEASE, hooks=True))
    left = sorted(f for f in found if f not in ok and (f[0], f[1], "*") not in ok)
    assert not left, "kube-score findings neither fixed nor accepted in docs/deploy.md:\n" + "\n".join(map(str, left))


def test_the_linters_catch_what_they_should(schemas):
    """The checks can fail: an unknown field in a pod spec and in the WorkerPool, and a
    container without resources, are found."""
    rendered = chart.render(release=RELEASE)
    bad = rendered.replace("  jobsPerWorker: 1\n", "  jobsPerWorker: 1\n  jobsPerWorkr: 2\n", 1)
    bad = bad.replace("      automountServiceAccountToken: false\n", "      automountServiceAccountToken: false\n      bogus: 1\n", 1)
    cmd = [tool("kubeconform"), "-strict", "-output", "json"]
    for loc in schemas:
        cmd += ["-schema-location", loc]
    r = subprocess.run(cmd + ["-"], input=bad, capture_output=True, text=True, timeout=120)
    msgs = " ".join(res["msg"] for res in json.loads(r.stdout)["resources"])
    assert r.returncode == 1 and "'jobsPerWorkr' not allowed" in msgs and "'bogus' not allowed" in msgs, msgs
    stripped = re.sub(r"\n          resources:\n            limits:.*?(?=\n          securityContext)", "", rendered, count=1, flags=re.S)
    assert stripped != rendered
    assert any(f[0] == "container-resources" and "Memory limit" in f[1] for f in kube_score_findings(stripped))
