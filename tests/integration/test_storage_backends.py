"""The same submissions on both storage backends (the data folder, and a real S3 server):
uploads small and streamed, a real pipeline.sh run, its log and results; refusals that
leave nothing behind; an unreachable store."""

from __future__ import annotations

import gzip
import io
import os
import signal

import pytest
from rq.job import Job

from pipeq import queue
from pipeq.storage import files as data_folder
from pipeq.storage.s3 import client as s3
from pipeq.storage.s3.sink import S3Sink
from pipeq.api import uploads
from pipeq.storage import open_store
from tests.conftest import wait_for
from tests.support import pipelines

FINAL = ("finished", "failed", "canceled", "stopped")


@pytest.fixture
def client(backend, make_client):
    with make_client(backend) as c:
        yield c


def stored(settings) -> list[str]:
    """Everything the store holds: files under the data folder's jobs/, or the bucket's
    objects and unfinished multipart uploads."""
    if settings.storage == "file":
        root = data_folder.jobs_root(settings.data_dir)
        return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.is_dir() else []
    bucket, _ = s3.parse_url(settings.storage)
    c = s3.client()
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=bucket).get("Contents", [])]
    ups = [f"upload:{u['Key']}" for u in c.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    return sorted(keys + ups)


def files_of(dataset, big: bytes | None = None):
    files = [("reads", (p.name, p.read_bytes())) for p in dataset.reads]
    if big is not None:
        files[0] = ("reads", ("big_R1.fq", big))
    files.append(("reference", (dataset.reference.name, dataset.reference.read_bytes())))
    return files


def final(client, job_id, timeout=90):
    return wait_for(lambda: (s := client.get(f"/job_status/{job_id}").json())["status"] in FINAL and s, timeout=timeout, what=f"job {job_id} to end")


@pytest.fixture
def small_spool(monkeypatch):
    """Files over 64 KiB go to their sink as they stream in (the test data is small)."""
    monkeypatch.setattr(uploads, "SPOOL_BYTES", 64 * 1024)


def test_uploads_run_and_results(client, backend, dataset, workers, small_spool):
    # one reads file streamed into the store (plain FASTQ, over the spool size), one small
    big = gzip.decompress(dataset.reads[0].read_bytes())
    assert len(big) > uploads.SPOOL_BYTES
    r = client.post("/run_pipeline", files=files_of(dataset, big), data={"sample": "S1"})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert any("big_R1.fq" in k for k in stored(backend))
    workers.start()
    s = final(client, job_id)
    assert s["status"] == "finished", s
    assert s["result"]["summary"]["reads_before"] == dataset.total_reads
    files = s["result"]["files"]
    assert "S1.vcf.gz" in files and "report.json" in files
    vcf = client.get(f"/jobs/{job_id}/files/S1.vcf.gz")
    assert vcf.status_code == 200 and vcf.headers["content-type"] == "application/octet-stream"
    calls = {(f[0], int(f[1])) for f in (line.split("\t") for line in gzip.decompress(vcf.content).decode().splitlines() if not line.startswith("#"))}
    assert all((snp.contig, snp.pos) in calls for snp in dataset.snps)
    report = client.get(f"/jobs/{job_id}/files/report.json")
    assert report.status_code == 200 and report.json()["reads_before"] == dataset.total_reads
    assert "PROGRESS 100 done" in client.get(f"/jobs/{job_id}/log").text
    for bad in ("..%2Fpipeline.log", "pipeline.log", "nothing.txt"):
        assert client.get(f"/jobs/{job_id}/files/{bad}").status_code == 404, bad
    if backend.storage != "file":
        # the worker's scratch is gone once the attempt ends
        assert wait_for(lambda: not any(backend.scratch_dir.rglob("*.fq")), timeout=10, what="scratch to be freed")


def test_refusals_leave_nothing(client, make_client, backend, dataset, conn, small_spool):
    big = gzip.decompress(dataset.reads[0].read_bytes())
    truncated = gzip.compress(big)[:-100]  # a gzip cut short, streamed: checked as it arrives
    cases = [
        (422, files_of(dataset, truncated), "truncated"),
        (422, files_of(dataset, b"@r1\nACGT\n+\nII\n" + big), "quality line"),
    ]
    for code, files, why in cases:
        r = client.post("/run_pipeline", files=files)
        assert r.status_code == code and why in r.text, r.text
        assert stored(backend) == []
    backend_limit = make_client(backend.model_copy(update={"max_upload_bytes": 200 * 1024}))
    with backend_limit as c:
        r = c.post("/run_pipeline", files=files_of(dataset, big))
        assert r.status_code == 413, r.text
    assert stored(backend) == []
    assert queue.get_queue(conn, backend.queue).count == 0


def test_store_unreachable_at_submission_is_503_and_keeps_nothing(s3_server, settings, make_client, dataset, conn, monkeypatch, tmp_path):
    bucket = "unreachable"
    s3_server.make_bucket(bucket)
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    settings.storage = f"s3://{bucket}"
    with make_client() as c:
        r = c.post("/run_pipeline", files=files_of(dataset))
        assert r.status_code == 503 and "object store" in r.json()["detail"], r.text
        assert c.get("/healthz").status_code == 200
    assert queue.get_queue(conn, settings.queue).count == 0
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.url)
    assert s3.client().list_objects_v2(Bucket=bucket).get("Contents", []) == []


def test_store_unreachable_during_a_job_spends_one_retry_per_outage_and_a_retry_finds_the_inputs(client, backend, dataset, workers, tmp_path):
    """An outage that outlasts a step's retries (PIPEQ_STORAGE_RETRY_SECONDS, 0 here) spends
    one of the job's retries, not all of them (it used to fail the job at once): the job is
    tried 1 + PIPEQ_RETRIES times, then fails as a storage error."""
    if backend.storage == "file":
        pytest.skip("the data folder's faults are tests/reliability/test_storage_faults.py")
    backend.pipeline = pipelines.write(tmp_path, "pipe.sh", pipelines.SLEEPY)
    job_id = client.post("/run_pipeline", files=files_of(dataset)).json()["job_id"]
    workers.start("cut-off", AWS_ENDPOINT_URL=f"http://127.0.0.1:{_closed_port()}", PIPEQ_STORAGE_RETRY_SECONDS=0)
    s = final(client, job_id, timeout=60)
    assert s["status"] == "failed" and s["error"]["reason"] == "storage error", s
    assert "object store" in s["error"]["message"]
    assert s["attempt"] == 1 + backend.retries, s
    workers.stop()
    # the inputs are still there: the job run again (RQ's requeue, `rq requeue`) finishes
    queue.fetch_job(client.app.state.redis, job_id).requeue()
    workers.start("reconnected", PIPEQ_TEST_SLEEP=0)
    s = final(client, job_id, timeout=60)
    assert s["status"] == "finished" and s["result"]["files"] == ["report.json", "result.txt"], s


def test_worker_killed_while_uploading_results_publishes_once(client, backend, dataset, workers, tmp_path):
    if backend.storage == "file":
        pytest.skip("publishing into the data folder is one rename")
    big_output = pipelines.HEADER + """
echo "PROGRESS 10 work"
echo "start $$ $(date +%s.%N) $outdir" >> "$PIPEQ_TEST_TRACE"
head -c 200000000 /dev/zero > "$outdir/a-big.bin"
echo '{"variants": 1}' > "$outdir/report.json"
echo "end $$ $(date +%s.%N) $outdir" >> "$PIPEQ_TEST_TRACE"
"""
    backend.pipeline = pipelines.write(tmp_path, "pipe.sh", big_output)
    backend.retries = 2
    trace = tmp_path / "trace"
    job_id = client.post("/run_pipeline", files=files_of(dataset)).json()["job_id"]
    first = workers.start("first", PIPEQ_TEST_TRACE=trace)
    bucket, _ = s3.parse_url(backend.storage)
    c = s3.client()

    def uploading():
        ups = c.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return [u for u in ups if "/attempts/1/" in u["Key"]]

    wait_for(uploading, timeout=60, interval=0.02, what="attempt 1 to upload its results")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    workers.start("second", PIPEQ_TEST_TRACE=trace)
    s = final(client, job_id, timeout=90)
    assert s["status"] == "finished" and s["attempt"] == 2, s
    assert s["result"]["files"] == ["a-big.bin", "report.json"]
    got = client.get(f"/jobs/{job_id}/files/a-big.bin")
    assert got.status_code == 200 and len(got.content) == 200_000_000
    store = open_store(backend)
    manifest = store.published(job_id)
    assert manifest == {"files": ["a-big.bin", "report.json"], "summary": {"variants": 1}}
    assert len([line for line in trace.read_text().splitlines() if line.startswith("end")]) == 2
    # the killed worker's scratch (its 200 MB result) went when the next attempt started,
    # and what it had uploaded went once attempt 2 published
    assert not (backend.scratch_dir / "first").exists()
    assert not [k for k in stored(backend) if "/attempts/1/" in k], stored(backend)
    assert [k for k in stored(backend) if "/attempts/2/" in k]


def _closed_port() -> int:
    from tests.support.servers import free_port

    return free_port()


def test_s3_sink_streams_parts_and_checks_as_it_goes(s3_server, monkeypatch):
    """A multipart upload of several parts, checked while it streams, is the file it was."""
    s3_server.make_bucket("sink")
    from pipeq.storage.s3 import sink

    monkeypatch.setattr(sink, "PART_BYTES", 5 * 1024 * 1024)
    record = b"@r\n" + b"ACGT" * 25 + b"\n+\n" + b"I" * 100 + b"\n"
    member = gzip.compress(record * 30_000, compresslevel=0)  # stored, not deflated: 7 MB
    sink = S3Sink(s3_server.client(), "sink", "x/reads.fq.gz")
    big = member * 2  # two gzip members, over three parts
    view = io.BytesIO(big)
    while piece := view.read(65536):
        sink.write(piece)
    sink.close()
    assert len(sink.parts) >= 2
    assert s3_server.client().get_object(Bucket="sink", Key="x/reads.fq.gz")["Body"].read() == big
    from pipeq.inputs.checks import check_fastq

    assert check_fastq(sink.open()) == 50


@pytest.fixture
def referenced(backend, s3_server, dataset, monkeypatch, tmp_path):
    """The dataset in a bucket of its own, on a local HTTP server and on a local HTTPS server
    (its CA trusted through SSL_CERT_FILE), all allowed, and on an HTTPS server of a CA nobody
    trusts; the AWS variables set on either backend (the workers fetch s3:// references with
    them)."""
    import uuid

    from tests.support.httpfiles import FileServer, make_ca

    bucket = f"refs-{uuid.uuid4().hex[:12]}"
    s3_server.make_bucket(bucket)
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    c = s3_server.client()
    for p in (*dataset.reads, dataset.reference):
        c.upload_file(str(p), bucket, f"lab/{p.name}")
    ca, tls = make_ca(tmp_path / "ca")
    _, untrusted_tls = make_ca(tmp_path / "other-ca")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the API here and the workers it starts
    root = dataset.reference.parent
    with FileServer(root) as http, FileServer(root, tls=tls) as https, FileServer(root, tls=untrusted_tls) as untrusted:
        backend.reference_hosts = f"s3://{bucket}, {http.url}, {https.url}, {untrusted.url}"
        yield {"s3": f"s3://{bucket}/lab", "http": http.url, "https": https.url, "untrusted": untrusted.url,
               "bucket": bucket}


def test_inputs_by_reference_run(client, backend, dataset, referenced, workers):
    body = {
        # one from each kind of place: a bucket, an HTTPS server (TLS verified), plain HTTP
        "reads": [f"{referenced['s3']}/{dataset.reads[0].name}", f"{referenced['https']}/{dataset.reads[1].name}"],
        "reference": f"{referenced['http']}/{dataset.reference.name}",
        "sample": "S2",
    }
    r = client.post("/run_pipeline", json=body)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert stored(backend) == []  # nothing is copied at submission
    workers.start()
    s = final(client, job_id)
    assert s["status"] == "finished", s
    assert s["result"]["summary"]["reads_before"] == dataset.total_reads
    assert "S2.vcf.gz" in s["result"]["files"]


def test_bad_references_are_4xx_naming_the_url_and_leave_nothing(client, backend, dataset, referenced, conn):
    reads = [f"{referenced['s3']}/{p.name}" for p in dataset.reads]
    reference = f"{referenced['s3']}/{dataset.reference.name}"
    cases = [
        ({"reads": [f"{referenced['s3']}/missing.fq.gz"], "reference": reference}, "missing.fq.gz: no such object"),
        ({"reads": [reference], "reference": reference}, "looks like FASTA"),
        ({"reads": reads, "reference": reads[0]}, "looks like FASTQ"),
        ({"reads": reads, "reference": "s3://other-bucket/ref.fa"}, "s3://other-bucket is not allowed"),
        ({"reads": reads, "reference": "http://169.254.169.254/latest/meta-data/ref.fa"}, "http://169.254.169.254 is not allowed"),
        ({"reads": reads, "reference": f"{referenced['http']}/redirect/ref.fa"}, "redirects"),
        ({"reads": reads, "reference": f"{referenced['http']}/missing.fa"}, "answered 404"),
        ({"reads": reads, "reference": f"{referenced['untrusted']}/{dataset.reference.name}"}, "CERTIFICATE_VERIFY_FAILED"),
        ({"reads": reads, "reference": "file:///etc/passwd"}, "s3:// or https://"),
        # allowed by a wildcard, but its address is internal: never connected to
        ({"reads": reads, "reference": "http://127.0.0.2:9/ref.fa"}, "resolves to an internal address"),
    ]
    backend.reference_hosts += ", http://*.0.0.2:9"
    for body, why in cases:
        r = client.post("/run_pipeline", json=body)
        assert r.status_code == 422, (body, r.text)
        msg = r.json()["detail"][0]["msg"]
        assert why in msg, (why, msg)
        assert body["reference"] in msg or any(u in msg for u in body["reads"]), msg
    r = client.post("/run_pipeline", json={"reads": reads})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "reference"], r.text
    backend.max_upload_bytes = 1000
    r = client.post("/run_pipeline", json={"reads": reads, "reference": reference})
    assert r.status_code == 413 and "accepted bytes per file" in r.text, r.text
    assert stored(backend) == []
    assert queue.get_queue(conn, backend.queue).count == 0


def test_presigned_upload_then_a_submission_naming_it(client, backend, dataset, workers):
    import httpx

    info = client.get("/uploads/info").json()
    if backend.storage == "file":
        assert info["enabled"] is False
        r = client.post("/uploads", json={"filename": "r.fq.gz", "size": 10})
        assert r.status_code == 409 and "object storage" in r.text
        return
    assert info["enabled"] is True
    refs = []
    for p in (*dataset.reads, dataset.reference):
        data = p.read_bytes()
        up = client.post("/uploads", json={"filename": p.name, "size": len(data)})
        assert up.status_code == 201, up.text
        up = up.json()
        etags = []
        for part in up["parts"]:
            n = part["part_number"]
            piece = data[(n - 1) * up["part_size"] : n * up["part_size"]]
            put = httpx.put(part["url"], content=piece)  # straight to the store, no credentials
            assert put.status_code == 200, put.text
            etags.append({"part_number": n, "etag": put.headers["etag"]})
        done = client.post(f"/uploads/{up['upload_id']}/complete", json={"parts": etags})
        assert done.status_code == 200, done.text
        assert done.json()["size"] == len(data)
        refs.append(done.json()["reference"])
    r = client.post("/run_pipeline", json={"reads": refs[:2], "reference": refs[2], "sample": "P1"})
    assert r.status_code == 202, r.text
    workers.start()
    s = final(client, r.json()["job_id"])
    assert s["status"] == "finished" and s["result"]["summary"]["reads_before"] == dataset.total_reads, s
    # the store's bucket outside uploads/ is not a reference (another job's inputs, say)
    job_input = refs[0].replace("/uploads/", "/jobs/")
    r = client.post("/run_pipeline", json={"reads": [job_input], "reference": refs[2]})
    assert r.status_code == 422 and "job store's own files" in r.text
    # bad completions
    assert client.post("/uploads/" + "0" * 32 + "/complete", json={"parts": [{"part_number": 1, "etag": "x"}]}).status_code == 404
    up = client.post("/uploads", json={"filename": "x.fq", "size": 5}).json()
    bad = client.post(f"/uploads/{up['upload_id']}/complete", json={"parts": [{"part_number": 1, "etag": '"nope"'}]})
    assert bad.status_code == 422, bad.text
    too_big = client.post("/uploads", json={"filename": "x.fq", "size": backend.max_upload_bytes + 1})
    assert too_big.status_code == 413
    # uploaders that reach the store at another address get URLs signed for that address
    backend.s3_public_endpoint = "http://store.example.org:9000"
    up = client.post("/uploads", json={"filename": "x.fq", "size": 20 * 1024 * 1024}).json()
    assert len(up["parts"]) == 3 and all(p["url"].startswith("http://store.example.org:9000/") for p in up["parts"])
    assert "X-Amz-Signature=" in up["parts"][0]["url"] and "X-Amz-Algorithm=AWS4-HMAC-SHA256" in up["parts"][0]["url"]


def test_completing_a_presigned_upload_leaves_the_event_loop_free(client, backend, monkeypatch):
    """The completion's Redis (and S3) calls block: made on the event loop (it was an
    ``async def``), one slow completion stalled every other request. Here its Redis read is
    held; /healthz must answer meanwhile."""
    import threading

    if backend.storage == "file":
        pytest.skip("presigned uploads need object storage")
    up = client.post("/uploads", json={"filename": "x.fq", "size": 5}).json()
    conn = client.app.state.redis
    entered, release = threading.Event(), threading.Event()
    real_get = conn.get

    def held_get(key):
        if b"upload" in (key if isinstance(key, bytes) else key.encode()):
            entered.set()
            release.wait(timeout=15)
        return real_get(key)

    monkeypatch.setattr(conn, "get", held_get)
    done = {}
    completing = threading.Thread(target=lambda: done.update(r=client.post(f"/uploads/{up['upload_id']}/complete",
                                                                            json={"parts": [{"part_number": 1, "etag": '"x"'}]})))
    completing.start()
    try:
        wait_for(entered.is_set, timeout=10, what="the completion to read its record")
        probe = {}
        prober = threading.Thread(target=lambda: probe.update(r=client.get("/healthz")))
        prober.start()
        prober.join(timeout=5)
        assert "r" in probe and probe["r"].status_code == 200, "the event loop was blocked by the completion"
    finally:
        release.set()
        completing.join(timeout=20)
    assert done["r"].status_code == 422, done["r"].text  # and the completion itself still answers


def test_the_log_of_a_running_job_is_there_while_it_runs(client, backend, dataset, workers, tmp_path):
    backend.pipeline = pipelines.write(tmp_path, "pipe.sh", pipelines.SLEEPY)
    backend.log_upload_interval = 0.5
    job_id = client.post("/run_pipeline", files=files_of(dataset)).json()["job_id"]
    workers.start(PIPEQ_TEST_SLEEP=8)
    wait_for(lambda: "PROGRESS 10 work started" in client.get(f"/jobs/{job_id}/log").text, timeout=30, what="the running job's log")
    assert client.get(f"/job_status/{job_id}").json()["status"] == "started"
    assert final(client, job_id)["status"] == "finished"
    assert "PROGRESS 100 done" in client.get(f"/jobs/{job_id}/log").text


def test_prune_removes_what_expired_and_keeps_the_rest(client, backend, dataset, conn):
    store = client.app.state.store
    kept = client.post("/run_pipeline", files=files_of(dataset)).json()["job_id"]
    gone = client.post("/run_pipeline", files=files_of(dataset)).json()["job_id"]
    conn.delete(Job.key_for(gone))  # its record expired from Redis
    before = stored(backend)
    assert any(gone in k for k in before) and any(kept in k for k in before)
    assert store.prune(lambda job_id: conn.exists(Job.key_for(job_id)), older_than=-1) == [gone]
    after = stored(backend)
    assert not any(gone in k for k in after) and any(kept in k for k in after)


def test_store_refusing_a_job_fails_it_at_once_as_a_storage_error(settings, make_client, dataset, workers, tmp_path, monkeypatch, conn):
    """A store that answers but refuses (here: the job's bucket deleted under it, NoSuchBucket)
    is no outage: the job fails at once, its retries forfeited."""
    from tests.support.s3server import own_job_store

    with own_job_store(tmp_path / "own-s3", settings, monkeypatch) as server:
        settings.pipeline = pipelines.write(tmp_path, "pipe.sh", pipelines.SLEEPY)
        with make_client() as client:
            job_id = client.post("/run_pipeline", files=files_of(dataset)).json()["job_id"]
            (tmp_path / "own-s3" / "data" / "jobs").rename(tmp_path / "elsewhere")  # the bucket's folder: gone
            workers.start("w1", PIPEQ_TEST_SLEEP=0)
            s = final(client, job_id, timeout=60)
            assert s["status"] == "failed" and s["error"]["reason"] == "storage error", s
            assert s["attempt"] == 1, s
            assert queue.fetch_job(conn, job_id).retries_left == 0


def test_public_only_connections_speak_verified_tls(referenced, dataset, monkeypatch):
    """The connection that checks addresses is the one TLS runs over: with loopback counted as
    public here, a wildcard-allowed HTTPS host is read, and the untrusted one still refused."""
    from pipeq.inputs import references

    monkeypatch.setattr(references, "is_public", lambda address: True)
    head = references.head(f"{referenced['https']}/{dataset.reference.name}", 64, public=True)
    assert head.data.startswith(b">") and head.length == dataset.reference.stat().st_size
    with pytest.raises(references.Refused, match="CERTIFICATE_VERIFY_FAILED"):
        references.head(f"{referenced['untrusted']}/{dataset.reference.name}", 64, public=True)


def test_a_stale_attempt_ending_leaves_the_next_attempts_files(backend):
    """An attempt whose lease ran out (its worker lost Redis for a while) ends after the next
    attempt started: its clean-up must free its own files only. It removed the job's whole
    work folder, and the live attempt failed to publish ("No such file or directory")."""
    import uuid

    from pipeq.worker import scratch

    store = open_store(backend)
    job_id = uuid.uuid4().hex

    def folder(worker):  # each worker's own scratch, as the worker claims it
        return scratch.claim(backend.scratch_dir, worker) if store.uses_scratch else None
    stale = store.attempt(job_id, 1, folder("w1"))
    live = store.attempt(job_id, 2, folder("w2"))
    (live.workdir / "report.json").write_text('{"variants": 1}')
    stale.close()
    assert live.publish(lambda: True)
    assert store.published(job_id) == {"files": ["report.json"], "summary": {"variants": 1}}
    live.close()
