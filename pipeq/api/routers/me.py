"""``GET /me``: who the caller is to pipeq, and how much of their quota they use."""

from __future__ import annotations

import redis
from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from pipeq import quotas
from pipeq.api.deps import get_redis, get_settings
from pipeq.auth import Principal, current_principal, mode_of
from pipeq.settings import Settings

router = APIRouter(tags=["me"])  # create_app adds the principal (401 without one)


class Me(BaseModel):
    id: str = Field(description="The principal id jobs record as their owner.")
    name: str
    groups: list[str]
    admin: bool
    roles: list[str] = Field(description="`user`, and `admin` for admins (who see and stop every job).")
    mode: str = Field(description="How this pipeq knows who you are: `none`, `token`, `oidc` or `token+oidc`.")
    quota: dict = Field(description="The quota use and limits (pipeq.quotas.usage).")


@router.get("/me", response_model=Me, summary="Who the caller is, their roles and quota use")
async def me(principal: Principal = Depends(current_principal), conn: redis.Redis = Depends(get_redis),
             settings: Settings = Depends(get_settings)) -> Me:
    quota = await run_in_threadpool(usage, conn, principal, settings)
    return Me(id=principal.id, name=principal.name, groups=list(principal.groups), admin=principal.admin,
              roles=principal.roles, mode=mode_of(settings), quota=quota)


def usage(conn: redis.Redis, principal: Principal, settings: Settings) -> dict:
    """The caller's quota use and limits (pipeq.quotas)."""
    return quotas.usage(conn, principal.id, list(principal.groups), settings)
