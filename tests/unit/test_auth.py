"""Bearer tokens, checked against a local issuer (its own keys, discovery document and JWKS on
loopback): what is accepted, what is refused and why, how often the JWKS is fetched, and the
identity modes as the API answers them (401, 403, who the principal is)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from pipeq.api.app import create_app
from pipeq.auth.dependency import Authenticator
from pipeq.auth.keys import KeySet
from pipeq.auth import tokens
from pipeq.settings import Settings
from tests.support.oidc_issuer import LocalIssuer
from tests.support.waiting import wait_for


@pytest.fixture(scope="module")
def issuer():
    i = LocalIssuer().start()
    yield i
    i.stop()


@pytest.fixture
def fresh(issuer):
    """The module's issuer with its published keys reset, and its counter at zero."""
    issuer.published = {"rsa-1": "RS256", "ec-1": "ES256"}
    issuer.extra_jwks = []
    issuer.discovery_issuer = None
    issuer.jwks_fetches = 0
    if issuer.httpd is None:
        issuer.start()
    return issuer


def settings_for(issuer, **extra) -> Settings:
    return Settings(oidc_issuer=issuer.url, oidc_audience=issuer.audience, redis_url="redis://127.0.0.1:9/0", **extra)


def principal(auth: Authenticator, token: str | None):
    """The dependency's answer, run on an event loop of its own in a thread of its own: a test
    before this one in the same process (Playwright's sync API) may hold this thread's loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, auth.principal(token)).result()


def refusal(auth: Authenticator, token: str | None) -> HTTPException:
    with pytest.raises(HTTPException) as e:
        principal(auth, token)
    return e.value


@pytest.fixture
def auth(fresh):
    keys = KeySet(fresh.url, refetch_interval=3600)
    keys.refresh()
    return Authenticator(settings_for(fresh, admin_groups="pipeq-admins"), keys)


def test_a_valid_token_is_its_issuer_and_subject(auth, fresh):
    for kid in ("rsa-1", "ec-1"):
        p = principal(auth, fresh.sign(kid=kid, sub="u-1", preferred_username="ada", groups=["lab-a"]))
        assert p.id == f"oidc:{fresh.url}|u-1" and p.name == "ada" and p.groups == ("lab-a",) and not p.admin
    p = principal(auth, fresh.sign(sub="u-2", preferred_username=None, email="bo@lab.org", groups=["pipeq-admins"]))
    assert p.name == "bo@lab.org" and p.admin and p.roles == ["admin", "user"]
    assert principal(auth, fresh.sign(sub="u-3", preferred_username=None, groups=None)).name == "u-3"


def test_expired_and_not_yet_valid_tokens_are_refused_with_a_small_leeway(auth, fresh):
    now = int(time.time())
    e = refusal(auth, fresh.sign(exp=now - tokens.LEEWAY - 5))
    assert e.status_code == 401 and "expired" in e.detail
    assert e.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert principal(auth, fresh.sign(exp=now - 5))  # within the leeway
    assert "not valid yet" in refusal(auth, fresh.sign(nbf=now + tokens.LEEWAY + 30)).detail
    assert principal(auth, fresh.sign(nbf=now + 5))
    assert "'exp'" in refusal(auth, fresh.sign(exp=None)).detail  # no expiry at all


def test_the_issuer_must_match_exactly(auth, fresh):
    for iss in (fresh.url + "-evil", fresh.url[:-1], fresh.url + "/", "http://127.0.0.1/realms/lab", None):
        e = refusal(auth, fresh.sign(iss=iss))
        assert e.status_code == 401, iss
        assert "issuer" in e.detail or "'iss'" in e.detail, (iss, e.detail)


def test_the_audience_must_be_named(auth, fresh):
    assert "audience" in refusal(auth, fresh.sign(aud="account")).detail
    assert "'aud'" in refusal(auth, fresh.sign(aud=None)).detail
    assert principal(auth, fresh.sign(aud=["account", fresh.audience]))  # one of several


def test_alg_none_is_refused(auth, fresh):
    claims = fresh.claims()
    for alg in ("none", "None", "NONE", None):
        e = refusal(auth, fresh.unsigned(claims, {"alg": alg, "kid": "rsa-1", "typ": "JWT"}))
        assert e.status_code == 401 and "not accepted" in e.detail, alg
    # a none token stripped of its signature from a good one: still refused
    good = fresh.sign(claims)
    assert "not accepted" in refusal(auth, fresh.unsigned(claims, {"alg": "none", "kid": "rsa-1"})).detail
    assert principal(auth, good)


def test_hmac_signed_with_the_public_key_is_refused(auth, fresh):
    claims = fresh.claims()
    for alg in ("HS256", "HS384", "HS512"):
        forged = fresh.hmac_signed(claims, {"alg": alg, "kid": "rsa-1", "typ": "JWT"}, fresh.public_pem())
        assert "not accepted" in refusal(auth, forged).detail, alg
    # a symmetric key in the JWKS is never one to check a signature with
    fresh.extra_jwks = [{"kty": "oct", "kid": "oct-1", "k": "c2VjcmV0", "alg": "HS256"}]
    keys = KeySet(fresh.url)
    keys.refresh()
    assert keys.cached("oct-1") is None and keys.cached("rsa-1") is not None


def test_a_key_is_used_only_with_its_own_algorithm(auth, fresh):
    claims = fresh.claims()
    # the RSA key's kid on an ES256 token, and PS256 with a key published for RS256
    import jwt

    es_with_rsa_kid = jwt.encode(claims, fresh.ec, algorithm="ES256", headers={"kid": "rsa-1"})
    assert "not a ES256 key" in refusal(auth, es_with_rsa_kid).detail
    ps = jwt.encode(claims, fresh.rsa, algorithm="PS256", headers={"kid": "rsa-1"})
    assert "not a PS256 key" in refusal(auth, ps).detail
    tampered = fresh.sign(claims)[:-4] + "AAAA"
    assert "signature" in refusal(auth, tampered).detail
    assert "not a JWT" in refusal(auth, "abc.def").detail


def test_an_unknown_kid_refetches_the_keys_exactly_once(fresh):
    keys = KeySet(fresh.url, refetch_interval=3600)
    auth = Authenticator(settings_for(fresh), keys)
    keys.refresh()
    assert fresh.jwks_fetches == 1
    rotated = fresh.new_key("rsa-2", publish=True)  # the issuer rotates a key in
    assert principal(auth, fresh.sign(kid=rotated)).name == "ada"
    assert fresh.jwks_fetches == 2, "one refetch for the new kid"
    for _ in range(3):
        assert principal(auth, fresh.sign(kid=rotated))
    fresh.new_key("made-up", publish=False)
    for _ in range(20):  # a flood of unknown kids: no further fetch within the interval
        assert "no signing key" in refusal(auth, fresh.sign(kid="made-up")).detail
    assert fresh.jwks_fetches == 2 and keys.fetches == 2


def test_the_cached_keys_keep_serving_while_the_issuer_is_down(fresh):
    keys = KeySet(fresh.url, refresh_interval=0.05, retry_interval=0.05, refetch_interval=0, timeout=1)
    auth = Authenticator(settings_for(fresh), keys)
    keys.start()
    try:
        token = fresh.sign()
        assert principal(auth, token)
        fresh.stop()
        before = keys.fetches
        wait_for(lambda: keys.fetches >= before + 2, timeout=10, what="background refreshes that fail")
        assert principal(auth, token).name == "ada" and keys.has_keys
        fresh.new_key("rsa-9", publish=True)
        # an unknown kid while down: a refetch that fails, then 401 (not a 503: keys are held)
        assert refusal(auth, fresh.sign(kid="rsa-9")).status_code == 401
        fresh.start()
        wait_for(lambda: keys.cached("rsa-9"), timeout=10, what="the background refresh once the issuer is back")
        assert principal(auth, fresh.sign(kid="rsa-9"))
    finally:
        keys.stop()
        if fresh.httpd is None:
            fresh.start()


def test_no_keys_ever_and_the_issuer_down_is_503(fresh):
    fresh.stop()
    keys = KeySet(fresh.url, timeout=1)
    e = refusal(Authenticator(settings_for(fresh), keys), fresh.sign())
    assert e.status_code == 503 and "signing keys" in e.detail
    fresh.start()


def test_a_discovery_document_of_another_issuer_gives_no_keys(fresh):
    fresh.discovery_issuer = "https://evil.example/realms/lab"
    keys = KeySet(fresh.url)
    assert not keys.refresh() and not keys.has_keys and fresh.jwks_fetches == 0


# -- the modes, as the API answers -------------------------------------------------------------


def client_of(settings: Settings) -> TestClient:
    return TestClient(create_app(settings))


def test_mode_none_is_anonymous_and_ignores_credentials(tmp_path):
    with client_of(Settings(redis_url="redis://127.0.0.1:9/0", data_dir=tmp_path)) as c:
        assert c.get("/uploads/info").status_code == 200
        assert c.get("/uploads/info", headers={"Authorization": "Bearer junk"}).status_code == 200


def test_oidc_and_token_modes_over_http(fresh, tmp_path):
    s = settings_for(fresh, api_token="adm-" + "x" * 20, user_groups="lab-a,lab-b", admin_groups="pipeq-admins", data_dir=tmp_path)
    with client_of(s) as c:
        assert fresh.jwks_fetches == 1, "the keys are fetched at startup"
        r = c.get("/uploads/info")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = c.get("/uploads/info", headers={"Authorization": "Bearer " + fresh.sign(aud="other")})
        assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        assert "audience" in r.json()["detail"]
        assert c.get("/uploads/info", headers={"Authorization": "Bearer " + fresh.sign()}).status_code == 200
        assert c.get("/uploads/info", headers={"Authorization": "Bearer adm-" + "x" * 20}).status_code == 200
        r = c.get("/uploads/info", headers={"Authorization": "Bearer " + fresh.sign(groups=["lab-c"], preferred_username="cy")})
        assert r.status_code == 403 and "cy is not in a group" in r.json()["detail"]
        # an admin needs no user group
        assert c.get("/uploads/info", headers={"Authorization": "Bearer " + fresh.sign(groups=["pipeq-admins"])}).status_code == 200
        # /metrics: admins only
        assert c.get("/metrics", headers={"Authorization": "Bearer " + fresh.sign()}).status_code == 403
        assert fresh.jwks_fetches == 1


def test_settings_refuse_an_issuer_without_audience():
    with pytest.raises(ValueError, match="PIPEQ_OIDC_AUDIENCE"):
        Settings(oidc_issuer="https://idp.example/realms/lab")


def test_a_remembered_token_is_checked_anew_when_the_keys_change_or_it_expires(fresh, monkeypatch):
    keys = KeySet(fresh.url, refetch_interval=3600)
    keys.refresh()
    auth = Authenticator(settings_for(fresh), keys)
    verified = []
    real = tokens.verify
    monkeypatch.setattr(tokens, "verify", lambda *a, **kw: verified.append(1) or real(*a, **kw))
    token = fresh.sign()
    first = principal(auth, token)
    assert principal(auth, token) is first and len(verified) == 1  # remembered: its signature checked once
    fresh.published.pop("rsa-1")  # the issuer drops the key (compromised, say)
    keys.refresh()
    assert "no signing key" in refusal(auth, token).detail
    fresh.published["rsa-1"] = "RS256"
    keys.refresh()
    # past its exp (within the leeway, so still accepted): never served from memory
    late = fresh.sign(exp=int(time.time()) - 5)
    verified.clear()
    for _ in range(3):
        assert principal(auth, late)
    assert len(verified) == 3
