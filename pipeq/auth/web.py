"""The web page's sign-in: a backend-for-frontend session (OIDC authorization code + PKCE).

Why a session cookie and not tokens in the page (oidc-client-ts): the page's file links,
``report.html`` and logs are plain links, which a browser follows with its cookies but never
with an Authorization header; with a cookie they open with a click as they are, and no
token is ever in a URL, in the page's JavaScript or in its storage (an XSS cannot carry one
away). The tokens stay in Redis, shared by every API replica.

- ``GET /auth/login?next=/#/jobs``: a fresh ``state`` and PKCE verifier (S256) kept in Redis
  for ten minutes, ``state`` also in a short cookie of the browser (a callback that another
  browser started is refused); a redirect to the issuer's authorization endpoint, with the
  public client ``PIPEQ_OIDC_WEB_CLIENT_ID``.
- ``GET /auth/callback``: the code is exchanged at the token endpoint (with the verifier);
  the access token is verified as any bearer token (issuer, audience, groups: 403 outside
  PIPEQ_USER_GROUPS); a session id of 256 random bits goes to the browser in an HttpOnly,
  SameSite=Lax cookie (Secure over https); Redis keeps the tokens under its hash.
- A request with that cookie and no bearer token is the session's user; a token near its
  exp is refreshed with the refresh token. CSRF: a state-changing request on the cookie must
  carry ``X-Requested-With: pipeq``, which another site cannot send without a CORS preflight
  that pipeq never grants.
- ``POST /auth/logout``: the session is deleted and the answer names the issuer's
  end-session URL, where the page goes to end the IdP's session too (without an
  ``id_token_hint``, which would put a token in a URL: the IdP asks the user to confirm).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request

import redis
from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, Field

from pipeq.auth.principal import Principal
from pipeq.keys import LOGIN_PREFIX, SESSION_PREFIX

SESSION_COOKIE = "pipeq_session"
LOGIN_COOKIE = "pipeq_login"
LOGIN_SECONDS = 600
#: A session lasts as the IdP's refresh token does, at most this long.
MAX_SESSION_SECONDS = 12 * 3600
#: An access token with less left than this is refreshed before use.
REFRESH_MARGIN = 30
CSRF_HEADER = "x-requested-with"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TIMEOUT = 10.0

router = APIRouter(prefix="/auth", tags=["sign-in"])


class SignIn(BaseModel):
    web_sign_in: bool = Field(description="Whether the page signs in through the identity provider (GET /auth/login).")
    token: bool = Field(description="Whether the admin token is accepted (the page then asks for it when not signed in).")


class SignedOut(BaseModel):
    logout_url: str | None = Field(description="The identity provider's end-session URL, to end its session too.")


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class WebSessions:
    """The sessions of one app: the authenticator verifies their access tokens."""

    def __init__(self, authenticator, conn: redis.Redis, client_id: str):
        self.auth, self.conn, self.client_id = authenticator, conn, client_id

    # -- the endpoints of the issuer -----------------------------------------------------------

    def endpoint(self, name: str) -> str:
        doc = self.auth.keys.discovery
        if doc is None:
            self.auth.keys.refresh()
            doc = self.auth.keys.discovery
        if doc is None or not isinstance(doc.get(name), str):
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="the identity provider cannot be reached; try again shortly")
        return doc[name]

    def _token_request(self, form: dict) -> dict:
        """POST to the token endpoint; the answer, or None when the IdP refuses (4xx)."""
        body = urllib.parse.urlencode({**form, "client_id": self.client_id}).encode()
        request = urllib.request.Request(self.endpoint("token_endpoint"), data=body,
                                         headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            if 400 <= e.code < 500:
                return None
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"the identity provider answered {e.code}") from None
        except (OSError, ValueError) as e:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"the identity provider cannot be reached ({e})") from None

    # -- sessions ------------------------------------------------------------------------------

    def _store(self, session_id: str, tokens: dict) -> None:
        now = time.time()
        record = {
            "access_token": tokens["access_token"],
            "refresh_token": tokens.get("refresh_token"),
            "expires_at": now + int(tokens.get("expires_in") or 60),
        }
        ttl = int(tokens.get("refresh_expires_in") or 0) or int(tokens.get("expires_in") or 60)
        self.conn.set(SESSION_PREFIX + _hash(session_id), json.dumps(record), ex=min(max(ttl, 60), MAX_SESSION_SECONDS))

    def _load(self, session_id: str) -> dict | None:
        raw = self.conn.get(SESSION_PREFIX + _hash(session_id))
        if raw is None:
            return None
        record = json.loads(raw)
        if record["expires_at"] - REFRESH_MARGIN > time.time():
            return record
        refreshed = self._token_request({"grant_type": "refresh_token", "refresh_token": record["refresh_token"]}) if record.get("refresh_token") else None
        if refreshed is None:  # the IdP's session is over
            self.conn.delete(SESSION_PREFIX + _hash(session_id))
            return None
        self._store(session_id, refreshed)
        return {**record, "access_token": refreshed["access_token"]}

    async def principal(self, request: Request, session_id: str) -> Principal:
        """The principal of a session cookie. 401 when it is over, 403 for a cross-site
        state-changing request."""
        if request.method not in SAFE_METHODS and request.headers.get(CSRF_HEADER) != "pipeq":
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"a request on the session cookie that changes something needs the header X-Requested-With: pipeq")
        record = await run_in_threadpool(self._load, session_id) if len(session_id) < 200 else None
        if record is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="the session is over: sign in again (GET /auth/login)",
                                headers={"WWW-Authenticate": "Bearer"})
        return await self.auth.principal(record["access_token"])

    # -- the routes ----------------------------------------------------------------------------

    def login(self, request: Request, next_path: str) -> RedirectResponse:
        state = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        self.conn.set(LOGIN_PREFIX + state, json.dumps({"verifier": verifier, "next": next_path}), ex=LOGIN_SECONDS)
        query = urllib.parse.urlencode({
            "response_type": "code", "client_id": self.client_id, "redirect_uri": _callback_url(request),
            "scope": "openid profile email", "state": state,
            "code_challenge": challenge, "code_challenge_method": "S256",
        })
        response = RedirectResponse(f"{self.endpoint('authorization_endpoint')}?{query}", status_code=status.HTTP_302_FOUND)
        response.set_cookie(LOGIN_COOKIE, state, max_age=LOGIN_SECONDS, httponly=True, samesite="lax",
                            secure=request.url.scheme == "https", path="/auth")
        return response

    async def callback(self, request: Request, code: str, state: str) -> RedirectResponse:
        if not secrets.compare_digest(request.cookies.get(LOGIN_COOKIE, ""), state):
            raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="this sign-in was not started by this browser: start again at /auth/login")
        raw = await run_in_threadpool(self.conn.getdel, LOGIN_PREFIX + state)
        if raw is None:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="the sign-in took too long or was used already: start again at /auth/login")
        login = json.loads(raw)
        tokens = await run_in_threadpool(self._token_request, {
            "grant_type": "authorization_code", "code": code, "redirect_uri": _callback_url(request),
            "code_verifier": login["verifier"]})
        if tokens is None or "access_token" not in tokens:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="the identity provider refused the sign-in code: start again at /auth/login")
        await self.auth.principal(tokens["access_token"])  # 401/403 here: no session for it
        session_id = secrets.token_urlsafe(32)
        await run_in_threadpool(self._store, session_id, tokens)
        response = RedirectResponse(login["next"], status_code=status.HTTP_303_SEE_OTHER)
        response.set_cookie(SESSION_COOKIE, session_id, max_age=MAX_SESSION_SECONDS, httponly=True, samesite="lax",
                            secure=request.url.scheme == "https", path="/")
        response.delete_cookie(LOGIN_COOKIE, path="/auth")
        return response

    async def logout(self, request: Request) -> JSONResponse:
        session_id = request.cookies.get(SESSION_COOKIE)
        url = None
        if session_id:
            await run_in_threadpool(self.conn.delete, SESSION_PREFIX + _hash(session_id))
        # no id_token_hint: it would put a token in a URL; the IdP asks the user to confirm instead
        if end := (self.auth.keys.discovery or {}).get("end_session_endpoint"):
            query = {"client_id": self.client_id, "post_logout_redirect_uri": str(request.base_url)}
            url = f"{end}?{urllib.parse.urlencode(query)}"
        response = JSONResponse(SignedOut(logout_url=url).model_dump())
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response


def _callback_url(request: Request) -> str:
    return str(request.base_url) + "auth/callback"


def _local(next_path: str) -> str:
    """Only a path of this site to go back to after sign-in (no open redirect)."""
    if not next_path.startswith("/") or next_path.startswith("//") or "\\" in next_path or any(ord(c) < 32 for c in next_path):
        return "/"
    return next_path


def _sessions(request: Request) -> WebSessions:
    web = request.app.state.authenticator.web
    if web is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="this pipeq has no web sign-in (PIPEQ_OIDC_ISSUER and PIPEQ_OIDC_WEB_CLIENT_ID)")
    return web


@router.get("/config", response_model=SignIn, summary="How the page signs in")
async def config(request: Request) -> SignIn:
    auth = request.app.state.authenticator
    return SignIn(web_sign_in=auth.web is not None, token=auth.token is not None)


_NO_WEB = {404: {"description": "This pipeq has no web sign-in."}}


@router.get("/login", response_class=RedirectResponse, status_code=302,
            responses={**_NO_WEB, 503: {"description": "The identity provider cannot be reached."}},
            summary="Sign in through the identity provider (a redirect)")
async def login(request: Request, next: str = Query("/", max_length=2000)) -> RedirectResponse:
    web = _sessions(request)
    return await run_in_threadpool(web.login, request, _local(next))


@router.get("/callback", response_class=RedirectResponse, status_code=303, include_in_schema=False)
async def callback(request: Request, code: str = Query(..., max_length=4000), state: str = Query(..., max_length=200)) -> RedirectResponse:
    return await _sessions(request).callback(request, code, state)


@router.post("/logout", response_model=SignedOut,
             responses={**_NO_WEB, 403: {"description": "Not from the page (no X-Requested-With: pipeq)."}},
             summary="Sign out: the session ends; go to logout_url to end the IdP's too")
async def logout(request: Request) -> JSONResponse:
    if request.headers.get(CSRF_HEADER) != "pipeq":
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="sign out from the page (X-Requested-With: pipeq)")
    return await _sessions(request).logout(request)
