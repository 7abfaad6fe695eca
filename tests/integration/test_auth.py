"""Who sees what, with a real identity provider (Keycloak, tests/support/keycloak.py) and real
Redis, workers and pipeline.sh: each user sees their own runs only (another user's run, its
log and files answer 404, as a job that does not exist, even by its right id), an admin sees
and stops everything, an upload is its uploader's alone, the three identity modes, a script's
client-credentials token, and 403 for a user outside PIPEQ_USER_GROUPS."""

from __future__ import annotations

import logging
import uuid

import httpx
import pytest

from tests.conftest import wait_for
from tests.support import pipelines

FINAL = ("finished", "failed", "canceled", "stopped")
ADMIN_TOKEN = "adm-" + uuid.uuid4().hex


def files_of(dataset, sample="S1"):
    files = [("reads", (p.name, p.read_bytes())) for p in dataset.reads]
    files.append(("reference", (dataset.reference.name, dataset.reference.read_bytes())))
    return files


class User:
    """A client of the API as one principal (its bearer token on every request)."""

    def __init__(self, client, token: str | None):
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def __getattr__(self, method):
        return lambda path, **kw: self.client.request(method.upper(), path, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def submit(self, dataset, sample="S1"):
        r = self.post("/run_pipeline", files=files_of(dataset), data={"sample": sample})
        assert r.status_code == 202, r.text
        return r.json()["job_id"]

    def final(self, job_id, timeout=120):
        return wait_for(lambda: (s := self.get(f"/job_status/{job_id}").json())["status"] in FINAL and s,
                        timeout=timeout, what=f"job {job_id} to end")


@pytest.fixture
def oidc(settings, keycloak):
    """Settings with OIDC against the test realm, and the admin token for scripts."""
    return keycloak.settings(settings, api_token=ADMIN_TOKEN)


@pytest.fixture
def users(oidc, keycloak, make_client):
    with make_client(oidc) as c:
        yield {name: User(c, keycloak.password_token(name)) for name in ("alice", "bob", "carol", "dana")} | {
            "admin-token": User(c, ADMIN_TOKEN), "nobody": User(c, None)}


def test_another_users_run_does_not_exist_for_them(users, dataset, workers, keycloak):
    alice, bob, carol, dana = (users[n] for n in ("alice", "bob", "carol", "dana"))
    job = alice.submit(dataset)
    workers.start()
    s = alice.final(job)
    assert s["status"] == "finished", s
    assert s["owner"] == f"oidc:{keycloak.issuer}|{alice.get('/me').json()['id'].split('|')[1]}" and s["owner_name"] == "alice"
    name = "S1.vcf.gz"
    assert name in s["result"]["files"]
    assert alice.get(f"/jobs/{job}/files/{name}").status_code == 200
    assert "PROGRESS 100 done" in alice.get(f"/jobs/{job}/log").text
    missing = uuid.uuid4().hex
    # bob shares alice's lab group, carol does not: neither sees it, by its right id
    for other in (bob, carol):
        for method, path in (("get", f"/job_status/{job}"), ("delete", f"/jobs/{job}"), ("get", f"/jobs/{job}/log"),
                             ("get", f"/jobs/{job}/files/{name}"), ("get", f"/jobs/{job}/files/report.html")):
            r = getattr(other, method)(path)
            absent = getattr(other, method)(path.replace(job, missing))
            assert r.status_code == 404 == absent.status_code, (method, path, r.status_code, r.text)
            assert r.json()["detail"] == absent.json()["detail"].replace(missing, job), (r.text, absent.text)
        listing = other.get("/jobs").json()
        assert listing["total"] == 0 and listing["jobs"] == []
        assert other.get("/jobs", params={"owner": s["owner"]}).status_code == 403
    # nothing of bob's cancel attempt reached the job
    assert alice.get(f"/job_status/{job}").json()["status"] == "finished"
    mine = alice.get("/jobs").json()
    assert mine["total"] == 1 and mine["jobs"][0]["job_id"] == job
    assert alice.get("/jobs", params={"owner": s["owner"]}).json()["total"] == 1
    # the admin sees it (and whose it is), reads its log and files
    for admin in (dana, users["admin-token"]):
        every = admin.get("/jobs").json()
        assert [(j["job_id"], j["owner_name"]) for j in every["jobs"]] == [(job, "alice")]
        assert admin.get("/jobs", params={"owner": s["owner"]}).json()["total"] == 1
        assert admin.get("/jobs", params={"owner": "oidc:someone-else"}).json()["total"] == 0
        assert admin.get(f"/jobs/{job}/files/{name}").content == alice.get(f"/jobs/{job}/files/{name}").content
        assert admin.get(f"/jobs/{job}/log").status_code == 200


def test_an_admin_sees_and_stops_everything(users, dataset, workers, oidc, tmp_path, caplog):
    oidc.pipeline = pipelines.write(tmp_path, "pipe.sh", pipelines.SLEEPY)
    alice, carol, dana = users["alice"], users["carol"], users["dana"]
    running = alice.submit(dataset, "R1")
    workers.start()
    wait_for(lambda: alice.get(f"/job_status/{running}").json()["status"] == "started", timeout=60, what="the job to start")
    queued = [carol.submit(dataset, f"Q{i}") for i in range(2)]
    ids = {j["job_id"]: j for j in dana.get("/jobs").json()["jobs"]}
    assert set(ids) == {running, *queued} and {j["owner_name"] for j in ids.values()} == {"alice", "carol"}
    assert len(carol.get("/jobs").json()["jobs"]) == 2 and len(alice.get("/jobs").json()["jobs"]) == 1
    with caplog.at_level(logging.INFO, logger="pipeq.audit"):
        assert dana.delete(f"/jobs/{queued[0]}").json()["status"] == "canceled"
        assert users["admin-token"].delete(f"/jobs/{queued[1]}").json()["status"] == "canceled"
        assert dana.delete(f"/jobs/{running}").status_code == 200
    assert alice.final(running)["status"] == "stopped"
    assert {carol.get(f"/job_status/{q}").json()["status"] for q in queued} == {"canceled"}
    # every state-changing request is logged with its principal and job
    dana_id = dana.get("/me").json()["id"]
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeq.audit"]
    assert f"DELETE /jobs/{queued[0]} principal={dana_id} job_id={queued[0]}" in "\n".join(lines), lines
    assert f"DELETE /jobs/{queued[1]} principal=admin job_id={queued[1]}" in "\n".join(lines), lines


def test_an_upload_is_its_uploaders_alone(keycloak, settings, s3_server, make_client, dataset, monkeypatch, conn):
    bucket = f"t-{uuid.uuid4().hex[:16]}"
    s3_server.make_bucket(bucket)
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    keycloak.settings(settings, storage=f"s3://{bucket}/pipeq")
    with make_client(settings) as c:
        alice, bob, dana = (User(c, keycloak.password_token(n)) for n in ("alice", "bob", "dana"))
        refs = []
        for p in (dataset.reads[0], dataset.reference):
            data = p.read_bytes()
            up = alice.post("/uploads", json={"filename": p.name, "size": len(data)}).json()
            etags = []
            for part in up["parts"]:
                n = part["part_number"]
                put = httpx.put(part["url"], content=data[(n - 1) * up["part_size"]: n * up["part_size"]])
                etags.append({"part_number": n, "etag": put.headers["etag"]})
            # bob cannot finish alice's upload: it does not exist for him
            assert bob.post(f"/uploads/{up['upload_id']}/complete", json={"parts": etags}).status_code == 404
            done = alice.post(f"/uploads/{up['upload_id']}/complete", json={"parts": etags})
            assert done.status_code == 200, done.text
            refs.append(done.json()["reference"])
        body = {"reads": [refs[0]], "reference": refs[1]}
        r = bob.post("/run_pipeline", json=body)
        assert r.status_code == 422 and "no presigned upload of yours" in r.text, r.text
        never = refs[0].replace(refs[0].split("/")[-2], uuid.uuid4().hex)  # an upload that never was: the same answer
        r2 = bob.post("/run_pipeline", json={**body, "reads": [never]})
        assert r2.status_code == 422 and "no presigned upload of yours" in r2.text
        r = alice.post("/run_pipeline", json=body)
        assert r.status_code == 202, r.text
        job = r.json()["job_id"]
        assert dana.post("/run_pipeline", json=body).status_code == 202  # an admin may name anyone's
        # another job's files in the store are no one's input
        r = bob.post("/run_pipeline", json={**body, "reads": [f"s3://{bucket}/pipeq/jobs/{job}/inputs/{dataset.reads[0].name}"]})
        assert r.status_code == 422 and "job store's own files" in r.text


def test_the_three_identity_modes(settings, keycloak, make_client, dataset):
    # none: one user, anonymous, an admin (make run on a laptop)
    with make_client(settings) as c:
        me = c.get("/me").json()
        assert (me["id"], me["admin"], me["mode"]) == ("anonymous", True, "none")
        job = User(c, None).submit(dataset)
        assert c.get(f"/job_status/{job}").json()["owner"] == "anonymous"
        assert c.get("/metrics").status_code == 200
    # token: the admin token is the principal admin; without it, 401
    settings.api_token = ADMIN_TOKEN
    with make_client(settings) as c:
        admin = User(c, ADMIN_TOKEN)
        me = admin.get("/me").json()
        assert (me["id"], me["admin"], me["mode"], me["roles"]) == ("admin", True, "token", ["admin", "user"])
        assert admin.get("/jobs").json()["jobs"][0]["job_id"] == job  # the admin sees anonymous's
        r = c.get("/me")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = User(c, keycloak.password_token("alice")).get("/me")  # OIDC is off: a JWT is just a wrong token
        assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    # OIDC (with the token still on): a user's token, their groups, their own quota use
    keycloak.settings(settings)
    with make_client(settings) as c:
        alice = User(c, keycloak.password_token("alice"))
        me = alice.get("/me").json()
        assert me["name"] == "alice" and me["groups"] == ["lab-a"] and not me["admin"] and me["mode"] == "token+oidc"
        assert me["id"].startswith(f"oidc:{keycloak.issuer}|") and me["quota"]["active_jobs"] == 0
        alice.submit(dataset)
        assert alice.get("/me").json()["quota"]["active_jobs"] == 1
        assert alice.get("/jobs").json()["total"] == 1  # not anonymous's job
        assert alice.get("/metrics").status_code == 403
        assert User(c, keycloak.password_token("dana")).get("/metrics").status_code == 200
        assert User(c, ADMIN_TOKEN).get("/me").json()["id"] == "admin"
        # an ID token is for the web client, not for the API's audience
        id_token = keycloak.token(grant_type="password", client_id="pipeq-tests", username="alice", password="alice-pw", scope="openid")["id_token"]
        r = User(c, id_token).get("/me")
        assert r.status_code == 401 and "audience" in r.json()["detail"]


def test_a_scripts_client_credentials_token(oidc, keycloak, make_client, dataset):
    with make_client(oidc) as c:
        robot = User(c, keycloak.robot_token())
        me = robot.get("/me").json()
        assert me["name"] == "service-account-pipeq-robot" and me["groups"] == ["robots"] and not me["admin"]
        job = robot.submit(dataset)
        assert robot.get(f"/job_status/{job}").json()["owner"] == me["id"]
        assert User(c, keycloak.password_token("alice")).get(f"/job_status/{job}").status_code == 404


def test_a_user_outside_the_user_groups_gets_403(oidc, keycloak, make_client):
    with make_client(oidc) as c:
        olga = User(c, keycloak.password_token("olga"))
        for path in ("/me", "/jobs", f"/job_status/{uuid.uuid4().hex}"):
            r = olga.get(path)
            assert r.status_code == 403 and "olga is not in a group allowed" in r.json()["detail"], (path, r.text)
        assert olga.post("/run_pipeline", json={"reads": ["https://x.example/r.fq"], "reference": "https://x.example/r.fa"}).status_code == 403
    oidc.user_groups = ""  # no PIPEQ_USER_GROUPS: every user of the issuer
    with make_client(oidc) as c:
        assert User(c, keycloak.password_token("olga")).get("/me").status_code == 200


def test_the_pages_sign_in_endpoints(oidc, keycloak, make_client, conn):
    """The BFF's edges the browser test does not walk: PKCE S256 and a state bound to the
    browser; no redirect off the site after sign-in; a callback another browser started, or
    replayed, is refused; a session cookie that is not one is 401; sign-out needs the page."""
    import json
    from urllib.parse import parse_qs, urlsplit

    from pipeq.auth import web

    with make_client(oidc, follow_redirects=False) as c:
        assert c.get("/auth/config").json() == {"web_sign_in": True, "token": True}
        r = c.get("/auth/login", params={"next": "https://evil.example/"})
        assert r.status_code == 302 and r.headers["location"].startswith(f"{keycloak.issuer}/protocol/openid-connect/auth?")
        q = parse_qs(urlsplit(r.headers["location"]).query)
        assert q["code_challenge_method"] == ["S256"] and len(q["code_challenge"][0]) == 43 and q["client_id"] == ["pipeq-web"]
        state = q["state"][0]
        assert json.loads(conn.get(web.LOGIN_PREFIX + state))["next"] == "/"  # not off the site
        assert "httponly" in r.headers["set-cookie"].lower() and c.cookies.get(web.LOGIN_COOKIE) == state
        for bad in ("//evil.example/x", "/\\evil.example", "javascript:alert(1)"):
            c.get("/auth/login", params={"next": bad})
            assert json.loads(conn.get(web.LOGIN_PREFIX + c.cookies.get(web.LOGIN_COOKIE)))["next"] == "/", bad
        c.cookies.clear()
        r = c.get("/auth/callback", params={"code": "x", "state": state})  # not this browser's sign-in
        assert r.status_code == 400 and "not started by this browser" in r.text
        c.cookies.set(web.LOGIN_COOKIE, state, path="/auth")
        r = c.get("/auth/callback", params={"code": "made-up", "state": state})
        assert r.status_code == 400 and "refused the sign-in code" in r.text
        r = c.get("/auth/callback", params={"code": "made-up", "state": state})  # the state is used up
        assert r.status_code == 400 and "used already" in r.text
        c.cookies.clear()
        c.cookies.set(web.SESSION_COOKIE, "not-a-session")
        assert c.get("/me").status_code == 401
        assert c.post("/auth/logout").status_code == 403
        r = c.post("/auth/logout", headers={"X-Requested-With": "pipeq"})
        assert r.status_code == 200 and "id_token" not in r.json()["logout_url"]
    oidc.oidc_web_client_id = None
    with make_client(oidc) as c:
        assert c.get("/auth/config").json()["web_sign_in"] is False and c.get("/auth/login").status_code == 404
