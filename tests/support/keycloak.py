"""A real Keycloak (the IdP the tests sign in with), once per test session.

scripts/keycloak.sh installs and builds it (cached); here it is started with the test realm
(tests/keycloak/realm.json) on free loopback ports, its database in a temporary folder, and
waited for on its management port's /health/ready. It comes up in a background thread from
the end of collection, when any collected test uses the ``keycloak`` fixture, so that its
start (about 23 s on an idle machine, minutes on a loaded one) overlaps the tests that run
before; it is stopped at the session's end, nothing left running.

``PIPEQ_TEST_KEYCLOAK=http://127.0.0.1:PORT`` uses a Keycloak already running with the test
realm instead (while working on the tests), neither started nor stopped here.

The realm ``pipeq``: users alice and bob (group lab-a), carol (lab-b), dana (pipeq-admins),
olga (no group), each with the password ``<name>-pw``; clients ``pipeq-web`` (public,
authorization code with PKCE S256, redirects to loopback), ``pipeq-tests`` (password grant),
``pipeq-robot`` (client credentials, secret ``pipeq-robot-secret``, its service account in
group robots); every client's access tokens carry ``groups`` (names, no path) and the
audience ``pipeq-api``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.support.servers import Process, ServerError, free_port

ROOT = Path(__file__).resolve().parents[2]
REALM = "pipeq"
AUDIENCE = "pipeq-api"
ADMIN_GROUP = "pipeq-admins"
USER_GROUPS = "lab-a,lab-b,robots"
ROBOT = ("pipeq-robot", "pipeq-robot-secret")
READY_TIMEOUT = 900  # seconds: a cold build (~34 s idle) and a start (~23 s idle) on a loaded machine


class Keycloak:
    """One Keycloak process; ``url`` its HTTP root, ``issuer`` the test realm's issuer."""

    def __init__(self, workdir: Path, url: str | None = None):
        self.workdir = Path(workdir)
        self.external = url is not None
        self.http_port = free_port() if url is None else None
        self.management_port = free_port() if url is None else None
        self.url = url.rstrip("/") if url else f"http://127.0.0.1:{self.http_port}"
        self.issuer = f"{self.url}/realms/{REALM}"
        self.proc: Process | None = None

    def start(self) -> Keycloak:
        if self.external:
            return self
        subprocess.run([str(ROOT / "scripts/keycloak.sh")], check=True, stdout=subprocess.DEVNULL)
        db = self.workdir / "db"
        db.mkdir(parents=True, exist_ok=True)
        argv = [
            str(ROOT / "scripts/keycloak.sh"), "run", "start", "--optimized", "--import-realm",
            "--http-enabled=true", "--http-host=127.0.0.1", f"--http-port={self.http_port}",
            f"--http-management-port={self.management_port}", f"--hostname={self.url}",
            "--cache=local", f"--db-url=jdbc:h2:file:{db}/keycloakdb;NON_KEYWORDS=VALUE",
        ]
        env = dict(os.environ, JAVA_OPTS_KC_HEAP="-Xms64m -Xmx512m")
        self.proc = Process("keycloak", argv, self.workdir / "keycloak.log", env=env).start()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        if self.external:
            _get(f"{self.issuer}/.well-known/openid-configuration")
            return
        ready = f"http://127.0.0.1:{self.management_port}/health/ready"
        self.proc.wait_until(lambda: json.loads(_get(ready)).get("status") == "UP", "/health/ready",
                             timeout=timeout, interval=0.5)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(grace=20)

    # -- tokens ---------------------------------------------------------------------------------

    def token(self, **form) -> dict:
        body = urllib.parse.urlencode(form).encode()
        request = urllib.request.Request(f"{self.issuer}/protocol/openid-connect/token", data=body)
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.load(r)

    def password_token(self, user: str, password: str | None = None) -> str:
        """An access token of ``user`` (password grant of the tests' client)."""
        return self.token(grant_type="password", client_id="pipeq-tests", username=user,
                          password=password or f"{user}-pw", scope="openid")["access_token"]

    def robot_token(self) -> str:
        """An access token of the service account (client credentials)."""
        return self.token(grant_type="client_credentials", client_id=ROBOT[0], client_secret=ROBOT[1])["access_token"]

    def settings(self, settings, **extra):
        """``settings`` (pipeq's) with OIDC against this Keycloak's test realm."""
        settings.oidc_issuer = self.issuer
        settings.oidc_audience = AUDIENCE
        settings.admin_groups = ADMIN_GROUP
        settings.user_groups = USER_GROUPS
        settings.oidc_web_client_id = "pipeq-web"
        for k, v in extra.items():
            setattr(settings, k, v)
        return settings


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


# -- the session's Keycloak: a pytest plugin (tests/conftest.py loads it) -----------------------

_state: dict = {"keycloak": None, "error": None, "thread": None, "workdir": None}
_ready = threading.Event()
_stopping = threading.Event()


def pytest_collection_finish(session):
    """Start Keycloak in the background when this process runs the Keycloak group (each xdist
    worker collects every test; only the one given the group starts it)."""
    from tests.support import parallel

    if session.config.option.collectonly or not parallel.runs_group(session.config, parallel.KEYCLOAK):
        return
    if not any("keycloak" in getattr(i, "fixturenames", ()) for i in session.items):
        return
    _bring_up()


def _bring_up() -> None:
    """Start the session's Keycloak in a thread; ``_ready`` is set when it answers or failed."""
    _state["workdir"] = Path(tempfile.mkdtemp(prefix="pipeq-keycloak-"))
    kc = _state["keycloak"] = Keycloak(_state["workdir"], url=os.environ.get("PIPEQ_TEST_KEYCLOAK"))

    def run():
        try:
            kc.start()
            if not _stopping.is_set():
                kc.wait_ready()
        except Exception as e:  # noqa: BLE001  (reported by the fixture, on each test)
            _state["error"] = f"{type(e).__name__}: {e}"
            kc.stop()
        finally:
            _ready.set()

    _state["thread"] = threading.Thread(target=run, name="keycloak-up", daemon=True)
    _state["thread"].start()


def pytest_sessionfinish(session, exitstatus):
    if _state["thread"] is None:
        return
    _stopping.set()
    kc = _state["keycloak"]
    kc.stop()  # also when it is still starting: its wait then fails at once
    _state["thread"].join(timeout=60)
    kc.stop()
    shutil.rmtree(_state["workdir"], ignore_errors=True)


@pytest.fixture(scope="session")
def keycloak() -> Keycloak:
    """The session's Keycloak, ready (waited for if it is still coming up)."""
    if _state["thread"] is None:  # collected without it (a test asked for it late): start it now
        _bring_up()
    _ready.wait(timeout=READY_TIMEOUT)
    if _state["error"] or not _ready.is_set():
        pytest.fail(f"Keycloak could not be made ready: {_state['error'] or f'not ready after {READY_TIMEOUT} s'}")
    return _state["keycloak"]
