"""Signing in through the identity provider's own login page (Keycloak, its real form), in
headless chromium against `pipeq dev` with OIDC: submit a run, follow it, download a result
and open the report with plain clicks (the session is an HttpOnly cookie: no token in any URL,
none in the page); a second user does not see the run; signing out ends the session."""

from __future__ import annotations

import gzip
import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import start_dev, stop_dev
from tests.support.keycloak import ADMIN_GROUP, AUDIENCE, USER_GROUPS
from tests.support.simdata import make_dataset

pytestmark = pytest.mark.browser
TOKEN_WORDS = ("access_token", "refresh_token", "id_token", "id_token_hint")


@pytest.fixture
def oidc_dev(tmp_path, keycloak):
    proc, base = start_dev(tmp_path, PIPEQ_MIN_WORKERS=1, PIPEQ_MAX_WORKERS=1, PIPEQ_OIDC_ISSUER=keycloak.issuer,
                           PIPEQ_OIDC_AUDIENCE=AUDIENCE, PIPEQ_ADMIN_GROUPS=ADMIN_GROUP, PIPEQ_USER_GROUPS=USER_GROUPS,
                           PIPEQ_OIDC_WEB_CLIENT_ID="pipeq-web")
    yield base
    stop_dev(proc)


def sign_in(page, base, keycloak, user, path="/#/jobs"):
    page.goto(base + path)
    # the page sends an unsigned-in visitor to Keycloak's own login form
    page.wait_for_url(re.compile(re.escape(keycloak.issuer) + r"/protocol/openid-connect/auth\?"))
    page.locator("#username").fill(user)
    page.locator("#password").fill(f"{user}-pw")
    page.locator("#kc-login").click()
    page.wait_for_url(base + path)
    expect(page.locator("#whoami-name")).to_have_text(user)


def test_sign_in_submit_follow_download_and_sign_out(browser, oidc_dev, keycloak, tmp_path):
    base = oidc_dev
    ds = make_dataset(tmp_path / "sim", seed=5, n_snps=4)
    alice_ctx = browser.new_context(accept_downloads=True)
    page = alice_ctx.new_page()
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    sign_in(page, base, keycloak, "alice")
    cookie = next(c for c in alice_ctx.cookies() if c["name"] == "pipeq_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert page.evaluate("document.cookie").find("pipeq_session") == -1  # the page's script cannot read it

    page.get_by_role("link", name="New run").click()
    page.get_by_label("Reads").set_input_files([str(p) for p in ds.reads])
    page.get_by_label("Reference").set_input_files(str(ds.reference))
    page.get_by_label("Sample name").fill("A1")
    page.get_by_role("button", name="Submit run").click()
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f]{32}$"))
    job_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#job-status")).to_have_text("finished", timeout=120_000)

    with page.expect_download() as dl:
        page.get_by_role("link", name="A1.vcf.gz", exact=True).click()
    assert gzip.decompress(open(dl.value.path(), "rb").read()).startswith(b"##fileformat=VCF")
    with page.expect_popup() as popup:
        page.get_by_role("link", name="Open the report").click()
    report = popup.value
    report.wait_for_load_state()
    assert report.url == f"{base}/jobs/{job_id}/files/report.html"  # the file itself, not a blob
    expect(report.locator("body")).not_to_be_empty()
    report.close()
    log = alice_ctx.request.get(f"{base}/jobs/{job_id}/log")  # the log, on the same cookie
    assert log.status == 200 and "PROGRESS 100" in log.text()

    # bob (alice's lab group) signs in elsewhere: her run is not in his list, nor at its URL
    bob_ctx = browser.new_context()
    bob = bob_ctx.new_page()
    bob.on("request", lambda r: urls.append(r.url))
    sign_in(bob, base, keycloak, "bob")
    expect(bob.locator("#jobs-empty")).to_be_visible()
    expect(bob.locator(f"tr[data-id='{job_id}']")).to_have_count(0)
    assert bob_ctx.request.get(f"{base}/job_status/{job_id}").status == 404
    assert bob_ctx.request.get(f"{base}/jobs/{job_id}/files/A1.vcf.gz").status == 404
    bob_ctx.close()

    # a state-changing request on the cookie from elsewhere (no X-Requested-With) is refused
    assert alice_ctx.request.delete(f"{base}/jobs/{job_id}").status == 403

    # sign out: the session ends here and at Keycloak (it asks to confirm: no token in the URL)
    page.goto(f"{base}/#/jobs")
    expect(page.locator("#whoami-name")).to_have_text("alice")
    page.locator("#sign-out").click()
    page.wait_for_url(re.compile(re.escape(keycloak.issuer) + r"/protocol/openid-connect/logout"))
    page.locator("#kc-logout").click()
    page.wait_for_url(re.compile(re.escape(keycloak.issuer) + r"/protocol/openid-connect/auth\?"))  # back, and asked to sign in
    assert alice_ctx.request.get(f"{base}/me").status == 401
    assert not [u for u in urls if any(w in u for w in TOKEN_WORDS)], "a token in a URL"
    alice_ctx.close()
