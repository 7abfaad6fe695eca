"""The web page with object storage: files over the threshold go straight from the browser
to the store (presigned part URLs), and the run names them; the API never sees the bytes."""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import start_dev, stop_dev
from tests.support import pipelines
from tests.support.simdata import make_dataset


@pytest.fixture
def s3_dev(tmp_path, s3_server):
    bucket = f"page-{uuid.uuid4().hex[:12]}"
    s3_server.make_bucket(bucket)
    # what docs/deploy.md asks of a bucket the page uploads to: PUT from the page, ETag exposed
    s3_server.client().put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [
        {"AllowedOrigins": ["*"], "AllowedMethods": ["PUT"], "AllowedHeaders": ["*"], "ExposeHeaders": ["ETag"]}]})
    quick = pipelines.write(tmp_path, "quick.sh", pipelines.SLEEPY)
    proc, base = start_dev(tmp_path, PIPEQ_MIN_WORKERS=1, PIPEQ_MAX_WORKERS=1, PIPEQ_PIPELINE=quick, PIPEQ_TEST_SLEEP=0,
                           PIPEQ_STORAGE=f"s3://{bucket}/pipeq", PIPEQ_PRESIGNED_UPLOAD_BYTES=1000,
                           PIPEQ_SCRATCH_DIR=tmp_path / "scratch", **s3_server.env())
    yield base, s3_server.url
    stop_dev(proc)


def test_large_files_go_straight_to_the_store(page, s3_dev, tmp_path):
    base, store = s3_dev
    ds = make_dataset(tmp_path / "sim", seed=4, n_snps=2)
    sent = []
    page.on("request", lambda r: sent.append((r.method, r.url, r.headers.get("content-type", ""))))
    page.goto(base + "/")
    page.get_by_label("Reads").set_input_files([str(p) for p in ds.reads])
    page.get_by_label("Reference").set_input_files(str(ds.reference))
    page.get_by_role("button", name="Submit run").click()
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f]{32}$"), timeout=30_000)
    expect(page.locator("#job-status")).to_have_text("finished", timeout=60_000)
    puts = [u for m, u, _ in sent if m == "PUT" and u.startswith(store)]
    assert len(puts) == 3, sent  # one part per file, to the store
    runs = [(m, t) for m, u, t in sent if u == base + "/run_pipeline"]
    assert runs == [("POST", "application/json")], runs  # the run names the uploads
