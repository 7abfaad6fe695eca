"""The end-to-end test body, shared by the test control plane run (tests/cluster/test_e2e.py)
and the kind suite (tests/kind/test_kind.py): only HTTP to the API and kubectl."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Callable

import httpx

from tests.support.waiting import wait_for

FINAL = ("finished", "failed", "canceled", "stopped")


def wait(predicate, timeout: float, what: str, interval: float = 0.5):
    return wait_for(predicate, timeout=timeout, interval=interval, what=what)


def run_end_to_end(api: str, kubectl: Callable[..., str], namespace: str, pool: str, data_dir: Path,
                   *, headers: dict | None = None, scale_down_timeout: float = 120, ready_timeout: float = 120) -> dict:
    """Submit a real run, follow it to `finished`, download the VCF, and see the pool scale
    up and back down in `kubectl get/describe workerpool`. Returns what it saw."""
    from tests.support.simdata import make_dataset

    ds = make_dataset(data_dir, seed=5, n_snps=6)
    client = httpx.Client(base_url=api, headers=headers or {}, timeout=30)
    wait(lambda: _ok(client, "/readyz"), ready_timeout, "the API to be ready")
    files = [("reads", (p.name, p.read_bytes())) for p in ds.reads] + [("reference", (ds.reference.name, ds.reference.read_bytes()))]
    r = client.post("/run_pipeline", files=files, data={"sample": "E2E"})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]

    saw_desired = wait(lambda: int(_wp(kubectl, namespace, pool, "{.status.desired}") or 0) >= 1, 60, "the pool to want a worker")
    status = wait(lambda: (s := client.get(f"/job_status/{job_id}").json())["status"] in FINAL and s, 300, "the job to end")
    assert status["status"] == "finished", status
    vcf = client.get(f"/jobs/{job_id}/files/E2E.vcf.gz")
    assert vcf.status_code == 200
    calls = {tuple(line.split("\t")[:2]) for line in gzip.decompress(vcf.content).decode().splitlines() if not line.startswith("#")}
    assert {(s.contig, str(s.pos)) for s in ds.snps} <= calls

    table = kubectl("get", "workerpools", "-n", namespace)
    for column in ("QUEUE", "QUEUED", "RUNNING", "DESIRED", "READY", "MIN", "MAX"):
        assert column in table, table
    wait(lambda: _wp(kubectl, namespace, pool, "{.status.desired}") == "0", scale_down_timeout, "the pool to scale back to zero")
    described = kubectl("describe", "workerpool", pool, "-n", namespace)
    assert "scaled 0→1" in described and "→0" in described, described
    return {"job_id": job_id, "table": table, "described": described, "saw_desired": saw_desired}


def _ok(client, path) -> bool:
    try:
        return client.get(path).status_code == 200
    except httpx.HTTPError:
        return False


def _wp(kubectl, namespace, pool, jsonpath) -> str:
    return kubectl("get", "workerpool", pool, "-n", namespace, "-o", f"jsonpath={jsonpath}").strip()
