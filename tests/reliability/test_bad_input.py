"""A corpus of bad uploads and download tricks: each a 4xx with a reason, nothing enqueued,
nothing on disk; nothing outside a job's own output folder can be downloaded."""

from __future__ import annotations

import gzip
import os
import uuid

import pytest
from rq.job import Job

from pipeq import queue

pytestmark = pytest.mark.reliability

FQ = b"".join(b"@r%d\nACGTACGT\n+\nIIIIIIII\n" % i for i in range(20))
FA = b">c\n" + b"ACGT" * 20 + b"\n"

CORPUS = {
    "binary named .fastq": ([("x.fastq", os.urandom(2000).replace(b"@", b"A"))], ("r.fa", FA), 422),
    "truncated gzip": ([("x.fq.gz", gzip.compress(FQ)[:-20])], ("r.fa", FA), 422),
    "quality/sequence mismatch": ([("x.fq", b"@r\nACGTACGT\n+\nIIII\n")], ("r.fa", FA), 422),
    "FASTA as reads": ([("x.fq", FA)], ("r.fa", FA), 422),
    "FASTQ as reference": ([("x.fq", FQ)], ("r.fa", FQ), 422),
    "empty reads": ([("x.fq", b"")], ("r.fa", FA), 422),
    "empty reference": ([("x.fq", FQ)], ("r.fa", b""), 422),
    "huge header line": ([("x.fq", b"@" + b"h" * 100_000 + b"\nACGT\n+\nIIII\n")], ("r.fa", FA), 422),
    "NUL bytes in content": ([("x.fq", FQ[:30] + b"\0" + FQ[30:])], ("r.fa", FA), 422),
    "too many reads files": ([("a.fq", FQ)] * 5, ("r.fa", FA), 422),
    "gzip of binary": ([("x.fq.gz", gzip.compress(os.urandom(5000)))], ("r.fa", FA), 422),
    "gzip bomb header": ([("x.fq.gz", gzip.compress(b"@" + b"A" * 20_000_000))], ("r.fa", FA), 422),
    "too large": ([("x.fq", FQ * 1000)], ("r.fa", FA), 413),
}


@pytest.fixture
def settings(settings):
    settings.max_upload_bytes = 200_000
    return settings


@pytest.mark.parametrize("case", list(CORPUS))
def test_bad_upload_gets_4xx_reason_and_leaves_nothing(client, settings, conn, case):
    reads, ref, code = CORPUS[case]
    r = client.post("/run_pipeline", files=[("reads", f) for f in reads] + [("reference", ref)])
    assert r.status_code == code, (case, r.text)
    detail = r.json()["detail"]
    reason = detail if isinstance(detail, str) else detail[0]["msg"]
    assert len(reason) > 10
    assert queue.get_queue(conn, settings.queue).count == 0 and conn.keys(Job.key_for("*")) == []
    assert list((settings.data_dir / "jobs").iterdir()) == []


@pytest.mark.parametrize("name", ["../../etc/passwd", "ＮＦＫＣ\u202eqf.exe", "/abs/path.fq", "\u202e.fq", ".."])
def test_tricky_names_are_refused(client, settings, conn, name):
    r = client.post("/run_pipeline", files=[("reads", (name, FQ)), ("reference", ("r.fa", FA))])
    assert r.status_code == 422, (name, r.text)
    assert "file name" in r.json()["detail"][0]["msg"]
    assert conn.keys(Job.key_for("*")) == [] and list((settings.data_dir / "jobs").iterdir()) == []


@pytest.mark.parametrize("name", ["ＮＦＫＣ.fq", "naïve ☃.fq", "CON", "read 1 (copy).fq"])
def test_odd_but_harmless_names_are_stored_safely(client, settings, name):
    r = client.post("/run_pipeline", files=[("reads", (name, FQ)), ("reference", ("r.fa", FA))])
    assert r.status_code == 202, r.text
    for p in (settings.data_dir / "jobs" / r.json()["job_id"] / "inputs").iterdir():
        assert p.name.isascii() and not p.name.startswith(".")


def test_unnamed_file_is_refused(client, settings):
    r = client.post("/run_pipeline", files=[("reads", ("", FQ)), ("reference", ("r.fa", FA))])
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["body", "reads"]
    assert list((settings.data_dir / "jobs").iterdir()) == []


def test_downloads_stay_in_the_jobs_output(client, settings, tmp_path):
    ids = []
    for _ in range(2):
        r = client.post("/run_pipeline", files=[("reads", ("r.fq", FQ)), ("reference", ("r.fa", FA))])
        ids.append(r.json()["job_id"])
    a, b = ids
    out = settings.data_dir / "jobs" / a / "output"
    out.mkdir()
    (out / "ok.txt").write_text("fine")
    (tmp_path / "secret").write_text("secret")
    os.symlink(tmp_path / "secret", out / "evil")  # as a malicious pipeline could
    os.symlink("../inputs/r.fq", out / "relative")
    assert client.get(f"/jobs/{a}/files/ok.txt").text == "fine"
    for name in ("evil", "relative", "..%2Finputs%2Fr.fq", "%2e%2e%2fpipeline.log", "%2Fetc%2Fpasswd", "..", "%00"):
        r = client.get(f"/jobs/{a}/files/{name}")
        assert 400 <= r.status_code < 500, (name, r.status_code)
        assert b"secret" not in r.content
    assert client.get(f"/jobs/{b}/files/ok.txt").status_code == 404  # not through another job's id
    assert client.get(f"/jobs/{uuid.uuid4().hex}/files/ok.txt").status_code == 404
    assert client.get("/jobs/..%2F..%2Fetc/files/passwd").status_code == 404


def test_job_ids_are_unguessable(client):
    ids = {client.post("/run_pipeline", files=[("reads", ("r.fq", FQ)), ("reference", ("r.fa", FA))]).json()["job_id"] for _ in range(5)}
    assert len(ids) == 5
    for i in ids:
        assert len(i) == 32 and uuid.UUID(i).version == 4  # 122 random bits
