"""FastAPI dependencies: settings, the Redis connection, and the optional bearer token."""

from __future__ import annotations

import hmac

import redis
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pipeq.settings import Settings
from pipeq.storage import Store

_bearer = HTTPBearer(auto_error=False, description="Needed when the server has PIPEQ_API_TOKEN set.")


# These are async on purpose: they do no I/O, and FastAPI runs a plain-def dependency in its
# thread pool, one hop per dependency per request (on /job_status that tripled the hops).


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_redis(request: Request) -> redis.Redis:
    return request.app.state.redis


async def get_store(request: Request) -> Store:
    return request.app.state.store


async def require_token(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> None:
    """401 unless the request carries the configured token (compared in constant time)."""
    token = request.app.state.settings.api_token
    if not token:
        return
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="a valid bearer token is required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
