"""Browser tests: Debian's headless chromium driven by Playwright, against a real `pipeq dev`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pipeq.redis_server import free_port
from tests.conftest import ROOT, wait_for
from tests.support import pipelines

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = ROOT / "docs" / "screenshots"


@pytest.fixture(scope="package")
def browser():
    """Headless chromium for the tests of this folder (one group on one xdist worker:
    tests/support/parallel.py). Package-scoped, not session: Playwright's sync API keeps an
    event loop running in the thread while it is open, and ``asyncio.run`` in any later test
    of the process would fail."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed: run scripts/browser-deps.sh (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def start_dev(tmp_path: Path, **env_extra) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPEQ_")}
    env.update(PYTHONPATH=str(ROOT), PIPEQ_PORT=str(port), PIPEQ_DATA_DIR=str(tmp_path / "data"), PIPEQ_SCALE_DOWN_DELAY="1")
    env.update({k: str(v) for k, v in env_extra.items()})
    proc = subprocess.Popen([sys.executable, "-m", "pipeq", "dev"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"

    def up():
        try:
            return httpx.get(base + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=30, what="pipeq dev")
    return proc, base


def stop_dev(proc):
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)


@pytest.fixture
def dev(tmp_path):
    """pipeq dev with the real pipeline and one worker."""
    proc, base = start_dev(tmp_path, PIPEQ_MIN_WORKERS=1, PIPEQ_MAX_WORKERS=2)
    yield base
    stop_dev(proc)


@pytest.fixture
def slow_dev(tmp_path):
    """pipeq dev with one worker and a 30 s stand-in pipeline: jobs stay queued behind it."""
    slow = pipelines.write(tmp_path, "slow.sh", pipelines.SLEEPY)
    proc, base = start_dev(tmp_path, PIPEQ_MIN_WORKERS=1, PIPEQ_MAX_WORKERS=1, PIPEQ_PIPELINE=slow, PIPEQ_TEST_SLEEP=30, PIPEQ_KILL_GRACE=1)
    yield base
    stop_dev(proc)


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 860}, accept_downloads=True)
    pg = context.new_page()
    yield pg
    context.close()


def shot(page, name: str) -> None:
    """Screenshot of a state. Kept in docs/screenshots only with PIPEQ_SCREENSHOTS=1 (so that
    `make test` leaves the checked-in pictures alone); otherwise taken and thrown away."""
    if os.environ.get("PIPEQ_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    else:
        page.screenshot(full_page=True)


TOKEN = "browser-test-token"


@pytest.fixture
def failing_dev(tmp_path):
    """pipeq dev behind a bearer token, with a pipeline that fails for sample "boom"."""
    # sample "boom" fails in its second stage; any other sample finishes quickly
    body = pipelines.HEADER + '[ "${sample:-}" = boom ] && { echo "PROGRESS 10 work"; echo "something went wrong in stage two" >&2; exit 5; }\n' \
        + pipelines.SLEEPY.split(pipelines.HEADER, 1)[1]
    bad = pipelines.write(tmp_path, "failing.sh", body)
    proc, base = start_dev(tmp_path, PIPEQ_MIN_WORKERS=1, PIPEQ_MAX_WORKERS=1, PIPEQ_PIPELINE=bad, PIPEQ_RETRIES=0, PIPEQ_TEST_SLEEP=0, PIPEQ_API_TOKEN=TOKEN)
    yield base
    stop_dev(proc)
