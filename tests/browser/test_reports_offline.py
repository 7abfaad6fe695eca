"""A finished run's results open with every request outside the API blocked (a network
without internet, where genomic data usually is): report.html's plots, fastp.html's plotly
charts (from the copy beside it) and the plots on the job's page. Each request that leaves
the API is aborted and counted, as is every request that fails: both must be zero.

Once without a token (plain links) and once behind one (the page fetches the files with the
token and opens them as blobs)."""

from __future__ import annotations

import os
import subprocess

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import SHOTS, TOKEN, shot, start_dev, stop_dev
from tests.conftest import ROOT, wait_for
from tests.support import report_check
from tests.support.simdata import make_dataset

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (ROOT / "build" / "vendor" / "plotly.min.js").is_file(),
                       reason="no pinned plotly in build/vendor (scripts/plotly.sh; make deps runs it)"),
]

PLOTLY_DRAWN = "() => !!window.Plotly && document.querySelectorAll('.js-plotly-plot .main-svg').length >= 3"


def finished_job(base: str, tmp_path, headers: dict | None = None) -> str:
    ds = make_dataset(tmp_path / "sim", seed=31, n_snps=6, depth=40, contig_lengths=(30000, 20000))
    files = [("reads", (p.name, p.read_bytes())) for p in ds.reads]
    files.append(("reference", (ds.reference.name, ds.reference.read_bytes())))
    with httpx.Client(base_url=base, headers=headers or {}, timeout=30) as client:
        job_id = client.post("/run_pipeline", files=files, data={"sample": "S9"}).json()["job_id"]
        status = wait_for(lambda: (s := client.get(f"/job_status/{job_id}").json())["status"]
                          in ("finished", "failed") and s, timeout=90, what="the job to end")
    assert status["status"] == "finished", status
    assert {"report.html", "fastp.html", "plotly.min.js", "plots.json"} <= set(status["result"]["files"])
    return job_id


def section_shot(locator, name: str) -> None:
    """Like conftest.shot, of one element: kept in docs/screenshots only with PIPEQ_SCREENSHOTS=1."""
    if os.environ.get("PIPEQ_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        locator.screenshot(path=str(SHOTS / f"{name}.png"))
    else:
        locator.screenshot()


def offline_context(browser, base: str, **options):
    """A context whose requests reach only the API: the others are aborted and listed."""
    context = browser.new_context(**options)
    blocked, failed = [], []

    def gate(route):
        if route.request.url.startswith(base.rstrip("/") + "/") or route.request.url.startswith("blob:"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", gate)
    context.on("requestfailed", lambda r: failed.append(r.url))
    return context, blocked, failed


def check_the_block_works(page, blocked, failed):
    """The gate is real: a request to the internet is stopped and counted (then forgotten)."""
    page.evaluate("() => fetch('https://cdn.plot.ly/plotly-1.2.0.min.js').catch(() => null)")
    wait_for(lambda: blocked and failed, timeout=10, what="the blocked request to be counted")
    blocked.clear()
    failed.clear()


def test_report_fastp_and_job_page_offline(browser, tmp_path):
    proc, base = start_dev(tmp_path, PIPEQ_MIN_WORKERS=1, PIPEQ_MAX_WORKERS=1)
    try:
        job_id = finished_job(base, tmp_path)
        context, blocked, failed = offline_context(browser, base, viewport={"width": 1200, "height": 860})
        page = context.new_page()
        page.goto(f"{base}/#/jobs/{job_id}")
        check_the_block_works(page, blocked, failed)

        # the job's page: the same plots under the summary, every image decoded
        expect(page.locator("#job-plots figure")).to_have_count(len(report_check.PAIRED_PLOTS))
        page.wait_for_function("() => [...document.querySelectorAll('#job-plots img')]"
                               ".every((i) => i.complete && i.naturalWidth > 0)")
        assert [f.get_attribute("id") for f in page.locator("#job-plots figure").all()] == \
            [f"job-{p}" for p in report_check.PAIRED_PLOTS]
        page.set_viewport_size({"width": 390, "height": 844})
        # narrow: the page itself does not scroll sideways, a plot keeps a readable width
        assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
        assert page.locator("#job-plots img").first.bounding_box()["width"] >= 500
        shot(page, "9-job-plots-narrow")
        page.set_viewport_size({"width": 1200, "height": 860})

        # report.html straight from the files route: inline SVG, nothing fetched
        page.goto(f"{base}/jobs/{job_id}/files/report.html")
        report_check.check_plots(page.content(), report_check.PAIRED_PLOTS)
        expect(page.locator("#plots svg.plot")).to_have_count(len(report_check.PAIRED_PLOTS))
        page.set_viewport_size({"width": 900, "height": 860})
        section_shot(page.locator("#plots"), "9-report-plots")

        # fastp.html: its charts drawn by the plotly copy beside it
        page.goto(f"{base}/jobs/{job_id}/files/fastp.html")
        page.wait_for_function(PLOTLY_DRAWN, timeout=20_000)
        assert blocked == [] and failed == [], f"blocked {blocked}, failed {failed}"
        context.close()
    finally:
        stop_dev(proc)


def test_behind_a_token_the_blobs_get_their_scripts(browser, tmp_path):
    proc, base = start_dev(tmp_path, PIPEQ_MIN_WORKERS=1, PIPEQ_MAX_WORKERS=1, PIPEQ_API_TOKEN=TOKEN)
    try:
        job_id = finished_job(base, tmp_path, headers={"Authorization": f"Bearer {TOKEN}"})
        context, blocked, failed = offline_context(browser, base, viewport={"width": 1200, "height": 860})
        page = context.new_page()
        page.goto(f"{base}/#/jobs/{job_id}")
        dialog = page.get_by_role("dialog")
        dialog.get_by_label("Token").fill(TOKEN)
        dialog.get_by_role("button", name="Use token").click()
        check_the_block_works(page, blocked, failed)
        expect(page.locator("#job-plots figure")).to_have_count(len(report_check.PAIRED_PLOTS))

        with page.expect_popup() as pop:
            page.get_by_role("link", name="fastp.html", exact=True).click()
        fastp = pop.value
        fastp.wait_for_function(PLOTLY_DRAWN, timeout=20_000)
        assert fastp.url.startswith("blob:")

        with page.expect_popup() as pop:
            page.get_by_role("link", name="Open the report").click()
        report = pop.value
        expect(report.locator("#plots svg.plot")).to_have_count(len(report_check.PAIRED_PLOTS))
        assert blocked == [] and failed == [], f"blocked {blocked}, failed {failed}"
        context.close()
    finally:
        stop_dev(proc)


def test_a_draft_assembly_of_500_contigs_from_a_folder(browser, tmp_path):
    """report.html opened from the job's folder itself (file://, as after a download) with
    every other request blocked; the depth plot of 500 contigs names the longest 20 and pools
    the rest."""
    lengths = [1_000 + (i * 7919) % 9_000 for i in range(500)]  # 1-10 kb, in no order
    ds = make_dataset(tmp_path / "sim", seed=41, n_snps=20, depth=8, paired=False, contig_lengths=lengths)
    out = tmp_path / "out"
    proc = subprocess.run([str(ROOT / "pipeline.sh"), "--reference", str(ds.reference), "--reads", str(ds.reads[0]),
                           "--outdir", str(out), "--sample", "draft"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    html = (out / "report.html").read_text()
    report_check.check_plots(html, report_check.SINGLE_PLOTS)
    assert "The other 480 contigs" in html

    context, blocked, failed = offline_context(browser, "file://", viewport={"width": 900, "height": 860})
    page = context.new_page()
    page.goto((out / "report.html").as_uri())
    depth = page.locator("#fig-depth")
    expect(depth.locator("text", has_text="480 others")).to_have_count(1)
    section_shot(depth, "9-report-depth-500-contigs")
    page.goto((out / "fastp.html").as_uri())
    page.wait_for_function(PLOTLY_DRAWN, timeout=20_000)
    assert blocked == [] and failed == [], f"blocked {blocked}, failed {failed}"
    context.close()
