"""Object storage on real nodes (issue 16): the chart with ``storage.type=s3`` on a cluster
with two worker nodes, an S3-compatible server in the cluster (tests/support/kind_s3.py).
There is no data volume, so nothing pins the pool's workers to one node: its two workers run
on different nodes, and real pipeline.sh runs submitted at once are done on both."""

from __future__ import annotations

import gzip

import httpx
import pytest

from tests.support import kind_s3
from tests.support.simdata import make_dataset
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.kind, pytest.mark.timeout(600, func_only=True)]

FINAL = ("finished", "failed", "canceled", "stopped")
RUNS = 4


def test_no_data_volume_and_runs_on_both_worker_nodes_publish_into_the_bucket(kind_s3_release, tmp_path):
    cluster = kind_s3_release
    ns = kind_s3.NAMESPACE
    # job files live in the bucket: the one PVC left is Redis's own append-only file
    pvcs = cluster.kubectl("get", "pvc", "-n", ns, "-o", "name").split()
    assert pvcs == [f"persistentvolumeclaim/redis-data-{kind_s3.RELEASE}-redis-0"], pvcs
    workers = cluster.pods(f"pipeq.dev/pool={kind_s3.POOL}", namespace=ns)
    for pod in workers:
        assert not [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v], pod["spec"]["volumes"]
    node_of = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in workers}
    worker_nodes = cluster.worker_nodes()
    assert len(worker_nodes) == 2 and sorted(node_of.values()) == sorted(worker_nodes), node_of

    client = httpx.Client(base_url=cluster.forward(f"svc/{kind_s3.RELEASE}-api", 80, namespace=ns), timeout=60,
                          headers=cluster.api_headers(namespace=ns, release=kind_s3.RELEASE))
    datasets, job_ids = [], []
    for i in range(RUNS):
        ds = make_dataset(tmp_path / f"d{i}", seed=20 + i, n_snps=4)
        files = [("reads", (p.name, p.read_bytes())) for p in ds.reads] + \
                [("reference", (ds.reference.name, ds.reference.read_bytes()))]
        r = client.post("/run_pipeline", files=files, data={"sample": f"S{i}"})
        assert r.status_code == 202, r.text
        datasets.append(ds)
        job_ids.append(r.json()["job_id"])

    def ended():
        statuses = [client.get(f"/job_status/{j}").json() for j in job_ids]
        return all(s["status"] in FINAL for s in statuses) and statuses

    statuses = wait_for(ended, timeout=420, interval=1, what=f"{RUNS} runs to end")
    assert [s["status"] for s in statuses] == ["finished"] * RUNS, statuses
    ran_on = {node_of.get(s["worker"]) for s in statuses}
    print(f"\n{RUNS} runs on object storage, by node: "
          + ", ".join(f"{node_of.get(s['worker'])}: {s['job_id'][:8]}" for s in statuses))
    assert ran_on == set(worker_nodes), (ran_on, [s["worker"] for s in statuses], node_of)

    bucket = kind_s3.s3_client(cluster)
    for i, (job_id, ds) in enumerate(zip(job_ids, datasets)):
        vcf = client.get(f"/jobs/{job_id}/files/S{i}.vcf.gz")  # streamed from the bucket by the API
        assert vcf.status_code == 200, vcf.text
        calls = {tuple(line.split("\t")[:2]) for line in gzip.decompress(vcf.content).decode().splitlines()
                 if not line.startswith("#")}
        assert {(s.contig, str(s.pos)) for s in ds.snps} <= calls
        keys = {o["Key"] for o in bucket.list_objects_v2(Bucket=kind_s3.BUCKET, Prefix=f"pipeq/jobs/{job_id}/")
                .get("Contents", [])}
        assert f"pipeq/jobs/{job_id}/output.json" in keys, keys
