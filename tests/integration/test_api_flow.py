"""A run submitted over REST is done by a real worker running the real pipeline.sh."""

from __future__ import annotations

import gzip

import pytest

from tests.conftest import wait_for


def submit(client, dataset, sample="S1", **extra):
    files = [("reads", (p.name, p.read_bytes())) for p in dataset.reads]
    files.append(("reference", (dataset.reference.name, dataset.reference.read_bytes())))
    return client.post("/run_pipeline", files=files, data={"sample": sample, **extra})


def final_status(client, job_id, timeout=60):
    return wait_for(
        lambda: (s := client.get(f"/job_status/{job_id}").json())["status"] in ("finished", "failed", "canceled", "stopped") and s,
        timeout=timeout,
        what=f"job {job_id} to end",
    )


def test_submit_run_and_download(client, dataset, workers, settings):
    r = submit(client, dataset)
    assert r.status_code == 202, r.text
    body = r.json()
    job_id = body["job_id"]
    assert body["status_url"] == f"/job_status/{job_id}"
    first = client.get(body["status_url"]).json()
    assert first["status"] == "queued" and first["position"] == 0 and first["sample"] == "S1"

    workers.start()
    seen_stages = set()

    def finished():
        s = client.get(f"/job_status/{job_id}").json()
        if s["stage"]:
            seen_stages.add(s["stage"])
        return s["status"] in ("finished", "failed") and s

    s = wait_for(finished, timeout=90, what="the job to finish")
    assert s["status"] == "finished", s
    assert s["progress"] == 100 and s["attempt"] == 1
    assert s["worker"] in workers.procs, s  # the name the worker registered with
    assert first["worker"] is None
    assert s["started_at"] and s["ended_at"] and s["enqueued_at"] <= s["started_at"] <= s["ended_at"]
    files = s["result"]["files"]
    assert "S1.vcf.gz" in files and "S1.bam" in files and "report.json" in files
    summary = s["result"]["summary"]
    assert summary["reads_before"] == dataset.total_reads
    assert summary["percent_mapped"] > 90

    vcf = client.get(f"/jobs/{job_id}/files/S1.vcf.gz")
    assert vcf.status_code == 200
    calls = {
        (f[0], int(f[1]), f[3], f[4])
        for f in (line.split("\t") for line in gzip.decompress(vcf.content).decode().splitlines() if not line.startswith("#"))
    }
    for snp in dataset.snps:
        assert (snp.contig, snp.pos, snp.ref, snp.alt) in calls, f"planted SNP {snp} not called"

    log = client.get(f"/jobs/{job_id}/log").text
    assert "PROGRESS 100 done" in log
    listing = client.get("/jobs").json()
    assert listing["total"] == 1 and listing["jobs"][0]["job_id"] == job_id
    assert client.get(f"/jobs/{job_id}/files/..%2Fpipeline.log").status_code == 404
    assert client.get("/job_status/" + "0" * 32).status_code == 404
