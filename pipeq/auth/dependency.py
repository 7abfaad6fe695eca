"""The one FastAPI dependency that says who a request comes from.

Modes, by settings (see pipeq.auth.principal):
- neither PIPEQ_API_TOKEN nor PIPEQ_OIDC_ISSUER: every request is ``anonymous``;
- PIPEQ_API_TOKEN: ``Authorization: Bearer <token>`` is ``admin`` (compared in constant time);
- PIPEQ_OIDC_ISSUER: a bearer JWT of the issuer is its user (see pipeq.auth.tokens);
- both: the token first, then a JWT (scripts keep the admin token).
With a mode on, a request without a bearer credential gets 401 ``WWW-Authenticate: Bearer``;
one whose credential is refused gets 401 ``Bearer error="invalid_token"``; a valid user
outside PIPEQ_USER_GROUPS gets 403. A verified token is remembered until its ``exp`` (the
last VERIFIED_CACHE of them): a page or script polling with one token pays for its signature
once.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict

from fastapi import Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pipeq.auth import tokens
from pipeq.auth.keys import KeySet
from pipeq.auth.principal import ADMIN_TOKEN, ANONYMOUS, Principal, oidc_id
from pipeq.settings import Settings

#: Verified tokens remembered (a page polls with one token: its signature is checked once).
VERIFIED_CACHE = 4096

_bearer = HTTPBearer(auto_error=False, description="The admin token (PIPEQ_API_TOKEN) or an access token of the OIDC issuer.")


def mode_of(settings: Settings) -> str:
    """``none``, ``token``, ``oidc`` or ``token+oidc``."""
    modes = [m for m, on in (("token", settings.api_token), ("oidc", settings.oidc_issuer)) if on]
    return "+".join(modes) or "none"


class Authenticator:
    """Turns a request's bearer credential into a Principal, for one app's settings."""

    def __init__(self, settings: Settings, keys: KeySet | None = None):
        self.settings = settings
        self.token = settings.api_token.encode() if settings.api_token else None
        self.issuer = settings.oidc_issuer
        self.keys = keys if keys is not None or not self.issuer else KeySet(self.issuer)
        self.open = not (self.token or self.issuer)
        self.web = None  # the page's sessions (pipeq.auth.web), set by create_app with a web client id
        # token → (principal, exp): on the event loop only, so no lock
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._generation = 0  # of the key set the remembered tokens were verified with

    async def principal(self, credential: str | None) -> Principal:
        """The principal of a bearer credential (None: none given). Raises HTTPException."""
        if self.open:
            return ANONYMOUS
        if not credential:
            raise _unauthorized("a bearer token is required (Authorization: Bearer <token>)", invalid=False)
        if self.token is not None and hmac.compare_digest(credential.encode(), self.token):
            return ADMIN_TOKEN
        if self.issuer is None:
            raise _unauthorized("the token is not accepted")
        if self.keys.generation != self._generation:  # keys changed: verify everything anew
            self._verified.clear()
            self._generation = self.keys.generation
        if (seen := self._verified.get(credential)) is not None:
            if seen[1] > time.time():  # exp without leeway: a remembered token never outlives it
                self._verified.move_to_end(credential)
                return seen[0]
            del self._verified[credential]
        try:
            header = tokens.header_of(credential)
            key = self.keys.cached(header.get("kid"))
            if key is None:  # rare: a rotated key; the refetch blocks, so off the event loop
                key = await run_in_threadpool(self.keys.get, header.get("kid"))
                if key is None and not self.keys.has_keys:
                    raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                                        detail="the identity provider's signing keys cannot be read; try again shortly")
            claims = tokens.verify(credential, header, key, issuer=self.issuer, audience=self.settings.oidc_audience)
        except tokens.InvalidToken as e:
            raise _unauthorized(e.reason) from None
        principal = self.user(claims)
        self._verified[credential] = (principal, float(claims["exp"]))
        if len(self._verified) > VERIFIED_CACHE:
            self._verified.popitem(last=False)
        return principal

    def user(self, claims: dict) -> Principal:
        """The principal of verified claims; 403 outside PIPEQ_USER_GROUPS."""
        s = self.settings
        raw = claims.get(s.oidc_groups_claim) or []
        groups = tuple(g for g in ([raw] if isinstance(raw, str) else raw) if isinstance(g, str))
        admin = not s.admin_group_list.isdisjoint(groups)
        name = next((v for v in (claims.get("preferred_username"), claims.get("email")) if isinstance(v, str) and v), claims["sub"])
        if s.user_group_list and not admin and s.user_group_list.isdisjoint(groups):
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"{name} is not in a group allowed to use pipeq (PIPEQ_USER_GROUPS)")
        return Principal(id=oidc_id(claims["iss"], claims["sub"]), name=name, groups=groups, admin=admin)


def _unauthorized(reason: str, *, invalid: bool = True) -> HTTPException:
    challenge = 'Bearer error="invalid_token"' if invalid else "Bearer"
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=reason, headers={"WWW-Authenticate": challenge})


async def current_principal(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Principal:
    """Who the request comes from: its bearer token, else the page's session cookie (401/403/503
    otherwise); kept in ``request.state.principal`` for the log of state-changing requests.
    Async: it does no I/O on the usual path."""
    auth = request.app.state.authenticator
    if credentials is None and auth.web is not None and (session := request.cookies.get("pipeq_session")):
        principal = await auth.web.principal(request, session)
    else:
        principal = await auth.principal(credentials.credentials if credentials else None)
    request.state.principal = principal
    return principal


async def admin_principal(principal: Principal = Depends(current_principal)) -> Principal:
    """The principal if it is an admin (the admin token, an admin group, or mode none); 403 otherwise."""
    if not principal.admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="only admins may read this")
    return principal
