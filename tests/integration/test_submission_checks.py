"""Bad submissions get a 4xx with a reason and leave nothing behind; Redis down gives 503."""

from __future__ import annotations

import gzip
import shutil

import pytest
from fastapi.testclient import TestClient
from rq.job import Job

from pipeq import queue
from pipeq.api.app import create_app
from pipeq.settings import Settings

FASTQ = b"".join(b"@r%d\nACGTACGTAC\n+\nIIIIIIIIII\n" % i for i in range(50))
FASTA = b">chr1\n" + b"ACGT" * 100 + b"\n"


def post(client, reads, reference=("ref.fa", FASTA), **data):
    files = [("reads", r) for r in reads] + ([("reference", reference)] if reference else [])
    return client.post("/run_pipeline", files=files, data=data)


def nothing_left(settings, conn):
    jobs_dir = settings.data_dir / "jobs"
    leftovers = list(jobs_dir.iterdir()) if jobs_dir.exists() else []
    assert leftovers == [], leftovers
    assert queue.get_queue(conn, settings.queue).count == 0
    assert conn.keys(Job.key_for("*")) == []


@pytest.mark.parametrize(
    "reads, reference, field, reason",
    [
        ([("r.fq", b"\x00\x01binary" * 10)], ("ref.fa", FASTA), "reads", "binary"),
        ([("r.fq.gz", gzip.compress(FASTQ)[:-8])], ("ref.fa", FASTA), "reads", "truncated"),
        ([("r.fq", b"@r\nACGT\n+\nII\n")], ("ref.fa", FASTA), "reads", "2 characters for 4 bases"),
        ([("r.fq", FASTA)], ("ref.fa", FASTA), "reads", "looks like FASTA"),
        ([("r.fq", b"")], ("ref.fa", FASTA), "reads", "empty"),
        ([("r1.fq", FASTQ), ("r2.fq", b"junk\n")], ("ref.fa", FASTA), "reads[1]", "must start with '@'"),
        ([("r.fq", FASTQ)], ("ref.fa", FASTQ), "reference", "looks like FASTQ"),
        ([("r.fq", FASTQ)] * 3, ("ref.fa", FASTA), "reads", "not 3"),
    ],
)
def test_bad_files_refused_with_reason(client, settings, conn, reads, reference, field, reason):
    r = post(client, reads, reference)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", field]
    assert reason in detail["msg"]
    nothing_left(settings, conn)


def test_missing_fields_and_bad_sample(client, settings, conn):
    assert post(client, [("r.fq", FASTQ)], reference=None).status_code == 422
    r = post(client, [("r.fq", FASTQ)], sample="../etc")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "sample"]
    nothing_left(settings, conn)


def test_too_large_is_413(client, settings, conn):
    settings.max_upload_bytes = 1000
    r = post(client, [("r.fq", FASTQ)])
    assert r.status_code == 413 and "more than the 1000 accepted" in r.json()["detail"]
    nothing_left(settings, conn)


def test_stored_names_are_sanitized(client, settings, conn):
    r = post(client, [("évil name.fq", FASTQ), ("évil name.fq", FASTQ)], reference=("ref (1).fa", FASTA))
    assert r.status_code == 202, r.text
    inputs = settings.data_dir / "jobs" / r.json()["job_id"] / "inputs"
    assert sorted(p.name for p in inputs.iterdir()) == ["_evil_name.fq", "evil_name.fq", "ref_1_.fa"]


@pytest.mark.parametrize("name", ["../../evil.fq", "/etc/passwd", "a\\b.fq", "..", "x\u202eqf.exe"])
def test_path_and_control_characters_in_names_are_refused(client, settings, conn, name):
    r = post(client, [(name, FASTQ)])
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "reads"] and "file name" in r.json()["detail"][0]["msg"]
    nothing_left(settings, conn)


def test_redis_unreachable_is_503_and_leaves_nothing(tmp_path):
    from pipeq.redis_server import free_port

    s = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", data_dir=tmp_path / "data")
    with TestClient(create_app(s)) as client:
        r = post(client, [("r.fq", FASTQ)])
        assert r.status_code == 503 and "Redis is unreachable" in r.json()["detail"]
        assert list((s.data_dir / "jobs").iterdir()) == []
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200
        assert client.get("/job_status/" + "a" * 32).status_code == 503


def test_declared_size_over_the_limit_is_refused_before_reading(settings, make_client, conn):
    settings.max_total_upload_bytes = 10
    with make_client() as small:
        r = small.post("/run_pipeline", content=b"x" * 100_000, headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and "more than the" in r.json()["detail"]
    nothing_left(settings, conn)


def test_bearer_token_guards_every_route_but_probes(settings, make_client, conn):
    settings.api_token = "s3cret"
    with make_client() as c:
        for method, path in (("get", "/jobs"), ("get", "/job_status/" + "a" * 32), ("get", "/metrics"), ("post", "/run_pipeline"), ("delete", "/jobs/" + "a" * 32)):
            r = getattr(c, method)(path)
            assert r.status_code == 401, (method, path, r.status_code)
            assert getattr(c, method)(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/jobs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200


def test_large_uploads_are_spooled_on_the_data_volume_and_moved_into_place(client, settings, conn, monkeypatch):
    from pipeq.api import uploads

    monkeypatch.setattr(uploads, "SPOOL_BYTES", 1000)  # every file here outgrows memory
    big = gzip.compress(FASTQ * 20)
    r = post(client, [("r.fq.gz", big)], reference=("ref.fa", FASTA * 10))
    assert r.status_code == 202, r.text
    job = settings.data_dir / "jobs" / r.json()["job_id"]
    assert (job / "inputs" / "r.fq.gz").read_bytes() == big
    assert sorted(p.name for p in (job / "inputs").iterdir()) == ["r.fq.gz", "ref.fa"]  # no spool left
    conn.flushdb()
    for p in list((settings.data_dir / "jobs").iterdir()):
        shutil.rmtree(p)
    r = post(client, [("r.fq.gz", big[:-8])], reference=("ref.fa", FASTA * 10))  # truncated gzip
    assert r.status_code == 422 and "truncated" in r.json()["detail"][0]["msg"]
    nothing_left(settings, conn)


def test_other_content_types_are_415(client, settings, conn):
    r = client.post("/run_pipeline", content=b"reads=r.fq", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"] and "application/json" in r.json()["detail"]
    nothing_left(settings, conn)
