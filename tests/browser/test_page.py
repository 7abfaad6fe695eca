"""A person's use of the web page, in headless chromium: submit real files, watch the
stage and progress, reach finished, download the VCF; see why a bad file is refused;
cancel a queued job; find jobs in the list; reload a job's shared URL."""

from __future__ import annotations

import gzip
import re

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import shot
from tests.support.simdata import make_dataset, write_not_fastq

pytestmark = pytest.mark.browser


def test_submit_watch_and_download(page, dev, tmp_path):
    ds = make_dataset(tmp_path / "sim", seed=3, n_snps=6, depth=60, contig_lengths=(60000, 40000))
    page.goto(dev + "/")
    expect(page.get_by_role("heading", name="New pipeline run")).to_be_visible()
    page.get_by_label("Reads").set_input_files([str(p) for p in ds.reads])
    page.get_by_label("Reference").set_input_files(str(ds.reference))
    page.get_by_label("Sample name").fill("S7")
    expect(page.locator("#reads-chosen li")).to_have_count(2)
    shot(page, "1-run-form")
    # a slow uplink, so the upload's progress can be seen
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 1_500_000})
    page.get_by_role("button", name="Submit run").click()
    expect(page.locator("#upload-text")).to_contain_text("Uploading", timeout=5_000)
    expect(page.get_by_role("button", name="Submit run")).to_be_disabled()
    shot(page, "1-uploading")
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f]{32}$"))
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    job_id = page.url.rsplit("/", 1)[1]
    stages = set()
    status = page.locator("#job-status")
    for _ in range(600):
        if page.locator("#job-stage").is_visible():
            stages.add(page.locator("#job-stage").inner_text())
            if len(stages) == 2:
                shot(page, "2-running")
        if status.inner_text() in ("finished", "failed"):
            break
        page.wait_for_timeout(100)
    expect(status).to_have_text("finished", timeout=60_000)
    assert len(stages) >= 2, f"saw only {stages}: the page should show the stage changing"
    expect(page.locator("#job-summary")).to_contain_text("Variants")
    expect(page.locator("#job-summary")).to_contain_text("% mapped")
    shot(page, "3-finished")
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "3-finished-narrow")
    page.set_viewport_size({"width": 1200, "height": 860})

    with page.expect_download() as dl:
        page.get_by_role("link", name="S7.vcf.gz", exact=True).click()
    body = gzip.decompress(open(dl.value.path(), "rb").read()).decode()
    assert all(f"\t{s.pos}\t" in body for s in ds.snps)
    assert page.get_by_role("link", name="Open the report").get_attribute("href").endswith("/report.html")

    # the URL is shareable: a fresh page on it shows the same finished job
    page.goto(f"{dev}/#/jobs/{job_id}")
    page.reload()
    expect(page.locator("#job-status")).to_have_text("finished")

    page.get_by_role("link", name="Jobs").click()
    row = page.locator(f"tr[data-id='{job_id}']")
    expect(row).to_contain_text("S7")
    expect(row).to_contain_text("finished")
    shot(page, "5-jobs")


def test_bad_file_shows_the_reason_next_to_the_field(page, dev, tmp_path):
    ds = make_dataset(tmp_path / "sim", seed=4, n_snps=2)
    bad = write_not_fastq(tmp_path / "not_reads.fq")
    page.goto(dev + "/")
    page.get_by_label("Reads").set_input_files(str(bad))
    page.get_by_label("Reference").set_input_files(str(ds.reference))
    page.get_by_role("button", name="Submit run").click()
    err = page.locator("#reads-error")
    expect(err).to_contain_text("not_reads.fq")
    expect(page.get_by_label("Reads")).to_have_attribute("aria-invalid", "true")
    assert page.url.endswith("/")  # stayed on the form
    shot(page, "4-rejected")
    # the page checks what it can before uploading
    page.get_by_label("Reads").set_input_files([])
    page.get_by_role("button", name="Submit run").click()
    expect(err).to_contain_text("Choose one reads file")


def test_cancel_a_queued_job(page, slow_dev, tmp_path):
    ds = make_dataset(tmp_path / "sim", seed=5, n_snps=2)
    files = [("reads", (p.name, p.read_bytes())) for p in ds.reads] + [("reference", (ds.reference.name, ds.reference.read_bytes()))]
    first = httpx.post(slow_dev + "/run_pipeline", files=files).json()["job_id"]
    queued = httpx.post(slow_dev + "/run_pipeline", files=files).json()["job_id"]
    page.goto(f"{slow_dev}/#/jobs/{queued}")
    expect(page.locator("#job-status")).to_have_text("queued")
    expect(page.locator("#job-position")).to_contain_text("Next in the queue")
    shot(page, "2-queued")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#job-status")).to_have_text("canceled", timeout=10_000)
    expect(page.get_by_role("button", name="Cancel")).to_be_hidden()
    # and the running one can be stopped from the list
    page.goto(f"{slow_dev}/#/jobs")
    row = page.locator(f"tr[data-id='{first}']")
    expect(row).to_contain_text("started", timeout=10_000)
    row.get_by_role("button", name="Stop").click()
    expect(row).to_contain_text("stopped", timeout=20_000)
    page.goto(f"{slow_dev}/#/jobs/{first}")
    expect(page.locator("#job-error-reason")).to_have_text("stopped")
    shot(page, "6-stopped")


def test_token_asked_once_and_failure_explained(page, failing_dev, tmp_path):
    """With PIPEQ_API_TOKEN set the page asks for the token once (at the first 401) and sends
    it from then on; a failed run shows its reason, the tail of stderr and the whole log."""
    from tests.browser.conftest import TOKEN

    ds = make_dataset(tmp_path / "sim", seed=6, n_snps=2)
    asked = []
    page.on("request", lambda r: asked.append(r.headers.get("authorization")) if "/job_status/" in r.url else None)
    page.goto(failing_dev + "/")
    page.get_by_label("Reads").set_input_files([str(p) for p in ds.reads])
    page.get_by_label("Reference").set_input_files(str(ds.reference))
    page.get_by_label("Sample name").fill("boom")
    page.get_by_role("button", name="Submit run").click()

    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    shot(page, "7-token")
    dialog.get_by_label("Token").fill(TOKEN)
    dialog.get_by_role("button", name="Use token").click()
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f]{32}$"))

    expect(page.locator("#job-status")).to_have_text("failed", timeout=30_000)
    expect(page.locator("#job-error-tail")).to_contain_text("something went wrong in stage two")
    expect(page.locator("#job-error-message")).to_contain_text("code 5")
    page.get_by_role("button", name="Show the full log").click()
    expect(page.locator("#job-log")).to_contain_text("PROGRESS 10 work")
    shot(page, "8-failed")
    assert asked and all(h == f"Bearer {TOKEN}" for h in asked)

    # the jobs list works with the stored token: no second question
    page.get_by_role("link", name="Jobs").click()
    expect(page.locator("#jobs-body tr")).to_have_count(1)
    expect(page.locator("#jobs-body")).to_contain_text("failed")
    expect(dialog).to_be_hidden()

    # a finished job's files download behind the token too (a plain link would get a 401)
    page.get_by_role("link", name="New run").click()
    page.get_by_label("Reads").set_input_files([str(p) for p in ds.reads])
    page.get_by_label("Reference").set_input_files(str(ds.reference))
    page.get_by_role("button", name="Submit run").click()
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f]{32}$"))
    expect(page.locator("#job-status")).to_have_text("finished", timeout=30_000)
    with page.expect_download() as dl:
        page.get_by_role("link", name="result.txt", exact=True).click()
    assert open(dl.value.path()).read() == "result\n"
    assert dl.value.suggested_filename == "result.txt"
    expect(dialog).to_be_hidden()


def test_drop_files_on_the_form(page, dev):
    """Dropped files go where they belong: FASTA names to the reference, the rest to reads."""
    page.goto(dev + "/")
    page.evaluate("""() => {
      const dt = new DataTransfer();
      for (const name of ["s_R1.fq.gz", "s_R2.fq.gz", "genome.fa"]) dt.items.add(new File(["x"], name));
      const form = document.getElementById("run-form");
      form.dispatchEvent(new DragEvent("dragover", { dataTransfer: dt, bubbles: true, cancelable: true }));
      form.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
    }""")
    expect(page.locator("#reads-chosen li")).to_have_count(2)
    assert page.eval_on_selector("#reads", "el => [...el.files].map(f => f.name)") == ["s_R1.fq.gz", "s_R2.fq.gz"]
    assert page.eval_on_selector("#reference", "el => [...el.files].map(f => f.name)") == ["genome.fa"]
