"""One definition of a valid reference: the API's upload check and pipeline.sh's own check
accept and refuse the same FASTA files (an upload the API takes must not fail in the
pipeline with exit 4), and spell the definition with the same constants."""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeq.inputs import checks as validate

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "pipeline.sh"
READS = b"".join(b"@r%d\nACGTACGTAC\n+\nIIIIIIIIII\n" % i for i in range(20))
SEQ = b"ACGTTGCAAC" * 6 + b"\n"

GOOD = {
    "plain": b">chr1 a test\n" + SEQ * 3 + b">chr2\n" + SEQ,
    "soft-masked": b">c\n" + SEQ.lower() + SEQ,
    "IUPAC ambiguity codes and U": b">c\nACGTURYSWKMBDHVN\nacgturyswkmbdhvn\n",
    "CRLF": (b">c\n" + SEQ * 2).replace(b"\n", b"\r\n"),
    "gzip": gzip.compress(b">c\n" + SEQ * 3),
    "blank lines": b">c1\n" + SEQ + b"\n>c2\n\n" + SEQ + b"\n",
    "no final newline": b">c\nACGTACGT",
}
BAD = {
    "dot in sequence": b">c\nACGT.ACGT\n",
    "gap": b">c\nACGT--ACGT\n",
    "stop": b">c\nACGTACGT*\n",
    "digit": b">c\n" + SEQ + b"ACGT1ACGT\n",
    "protein": b">sp|P69905|HBA_HUMAN\nMVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHF\n",
    "space in sequence": b">c\nACGT ACGT\n",
    "carriage return inside a line": b">c\nACGT\rACGT\n",
    "header without a name": b">\n" + SEQ,
    "header without bases": b">c1\n>c2\n" + SEQ,
    "last header without bases": b">c1\n" + SEQ + b">c2\n",
    "no header": SEQ,
    "FASTQ": READS,
    "truncated gzip": gzip.compress(b">c\n" + SEQ * 50)[:-12],
    "bad base on line 400": b">c\n" + SEQ * 398 + b"ACGTX\n",
}

pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("fastp", "minimap2", "samtools", "bcftools")),
    reason="pipeline tools missing (run `make deps`)",
)


def script_verdict(tmp_path: Path, name: str, data: bytes) -> tuple[bool, str]:
    ref, reads = tmp_path / f"{name}.fa", tmp_path / "reads.fq"
    ref.write_bytes(data)
    reads.write_bytes(READS)
    proc = subprocess.run([PIPELINE, "--check-only", "--reference", ref, "--reads", reads], capture_output=True, text=True, timeout=60)
    assert proc.returncode in (0, 4), proc.stderr
    return proc.returncode == 0, (proc.stderr.strip().splitlines() or [""])[-1]


def api_verdict(client, name: str, data: bytes) -> tuple[bool, str]:
    r = client.post("/run_pipeline", files=[("reads", ("reads.fq", READS)), ("reference", (f"{name}.fa", data))])
    assert r.status_code in (202, 422), r.text
    return r.status_code == 202, r.text


@pytest.mark.parametrize("name", [*GOOD, *BAD])
def test_api_and_pipeline_agree(client, tmp_path, name):
    data = GOOD.get(name, BAD.get(name))
    api_ok, api_why = api_verdict(client, name.replace(" ", "_"), data)
    script_ok, script_why = script_verdict(tmp_path, name.replace(" ", "_"), data)
    assert (api_ok, script_ok) == ((name in GOOD),) * 2, (api_why, script_why)


def test_one_definition():
    """pipeline.sh spells the reference alphabet and the lines it parses as pipeq/inputs/checks.py does."""
    text = PIPELINE.read_text()
    constants = dict(re.findall(r"\b(REFERENCE_BASES|FASTA_LINES_CHECKED|MAX_LINE)=(\w+)", text))
    assert constants == {
        "REFERENCE_BASES": validate.REFERENCE_BASES.decode(),
        "FASTA_LINES_CHECKED": str(validate.FASTA_LINES_CHECKED),
        "MAX_LINE": str(validate.MAX_LINE),
    }
