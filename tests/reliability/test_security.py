"""Nobody let in: with PIPEQ_API_TOKEN set, every API route but the probes answers 401
without the bearer token (found by walking the app's routes, so a new route cannot slip
through); the comparison is constant-time; job ids are unguessable and one job's files are
not reachable through another job's id."""

from __future__ import annotations

import inspect
import re
import uuid

import pytest
from fastapi.routing import APIRoute

from pipeq.auth import dependency

pytestmark = pytest.mark.reliability

TOKEN = "s3cret-" + uuid.uuid4().hex
PROBES = {"/healthz", "/readyz"}
# Routes that carry no data and must load in a browser before it can send a token: the web
# page's shell and its static files, and the API's own description.
PUBLIC_NO_DATA = {"/", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
                  # the page's sign-in (pipeq.auth.web): how to sign in, and the way there and out
                  "/auth/config", "/auth/login", "/auth/callback", "/auth/logout"}
FQ = b"".join(b"@r%d\nACGTACGT\n+\nIIIIIIII\n" % i for i in range(20))
FA = b">c\n" + b"ACGT" * 20 + b"\n"


@pytest.fixture
def settings(settings):
    settings.api_token = TOKEN
    return settings


def _api_routes(routes, inherited=()):
    """Every APIRoute, also inside included routers (FastAPI >= 0.165 wraps them), with the
    dependencies its router was included with (create_app adds the principal there)."""
    for route in routes:
        if isinstance(route, APIRoute):
            route.inherited_dependencies = inherited
            yield route
        elif (inner := getattr(route, "original_router", None)) is not None:
            extra = tuple(d.dependency for d in getattr(route.include_context, "dependencies", None) or ())
            yield from _api_routes(inner.routes, inherited + extra)


def _calls(app):
    paths = set(app.openapi()["paths"])
    routes = list(_api_routes(app.routes))
    assert paths <= {r.path for r in routes}, "a documented route was not found by the walk"
    for route in routes:
        if True:
            path = re.sub(r"\{[^}]+\}", lambda m: "r.txt" if m.group(0) == "{name}" else uuid.uuid4().hex, route.path)
            for method in route.methods:
                yield route.path, method, path


BAD_CREDENTIALS = {
    "none": {},
    "wrong token": {"Authorization": "Bearer wrong"},
    "empty bearer": {"Authorization": "Bearer "},
    "token prefix": {"Authorization": f"Bearer {TOKEN[:-1]}"},
    "token plus one": {"Authorization": f"Bearer {TOKEN}x"},
    "basic scheme": {"Authorization": f"Basic {TOKEN}"},
    "bare token": {"Authorization": TOKEN},
    "other header": {"X-Api-Token": TOKEN},
    "non-ascii": {"Authorization": "Bearer t\u00f6ken".encode("utf-8")},
}
#: the ones that present a bearer credential (refused: an invalid token); the rest present none
REFUSED_BEARER = {"wrong token", "token prefix", "token plus one", "non-ascii"}


def test_every_route_but_the_probes_needs_the_token(client):
    checked = 0
    for template, method, path in _calls(client.app):
        if template in PROBES:
            assert client.request(method, path).status_code == 200, template
            continue
        if template in PUBLIC_NO_DATA:
            continue
        for why, headers in BAD_CREDENTIALS.items():
            r = client.request(method, path, headers=headers, params={"token": TOKEN})
            assert r.status_code == 401, (method, template, why, r.status_code, r.text)
            # a bearer credential that is refused is an invalid token (RFC 6750); none given, a bare challenge
            assert r.headers.get("www-authenticate") == ('Bearer error="invalid_token"' if why in REFUSED_BEARER else "Bearer"), (why, r.headers)
            checked += 1
        r = client.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code != 401, (method, template)
    public = {t for t, _, _ in _calls(client.app) if t not in PROBES} & PUBLIC_NO_DATA
    print(f"\ntoken: {checked} unauthenticated requests on {len({t for t, _, _ in _calls(client.app)}) - len(PROBES) - len(public)} routes, all 401; public: probes and {sorted(public)}")
    assert checked >= 6 * len(BAD_CREDENTIALS)


def test_the_public_routes_are_only_the_page_and_the_description(client):
    """Any new route without the token dependency fails here, not in production."""
    for template, _, _ in _calls(client.app):
        route = next(r for r in _api_routes(client.app.routes) if r.path == template)
        guarded = dependency.current_principal in route.inherited_dependencies or any(
            d.call in (dependency.current_principal, dependency.admin_principal) for d in route.dependant.dependencies)
        assert guarded or template in PROBES | PUBLIC_NO_DATA, f"{template} has no token check"
    assert client.get("/static/index.html").status_code == 200  # the page's shell, no data


def test_token_comparison_is_constant_time():
    src = inspect.getsource(dependency.Authenticator.principal)
    assert "hmac.compare_digest(" in src and "==" not in src.replace("compare_digest", "")


def test_job_ids_are_uuid4_and_files_do_not_cross_jobs(client, settings):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    files = [("reads", ("r.fq", FQ)), ("reference", ("r.fa", FA))]
    ids = [client.post("/run_pipeline", files=files, headers=auth).json()["job_id"] for _ in range(3)]
    assert len(set(ids)) == 3 and all(uuid.UUID(i).version == 4 and uuid.UUID(i).hex == i for i in ids)
    a, b, _ = ids
    out = settings.data_dir / "jobs" / a / "output"
    out.mkdir()
    (out / "mine.txt").write_text("job a's result")
    assert client.get(f"/jobs/{a}/files/mine.txt", headers=auth).text == "job a's result"
    assert client.get(f"/jobs/{b}/files/mine.txt", headers=auth).status_code == 404
    assert client.get(f"/jobs/{a}/files/mine.txt").status_code == 401
    for bad in (a.upper(), a[:-1], a + "0", f"{b}%2F..%2F{a}", f"..%2F{a}"):
        r = client.get(f"/jobs/{bad}/files/mine.txt", headers=auth)
        assert r.status_code in (404, 422), (bad, r.status_code)
