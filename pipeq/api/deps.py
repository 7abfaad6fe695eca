"""FastAPI dependencies: settings, the Redis connection, the job store. (Who the request comes
from is pipeq.auth's ``current_principal``.)"""

from __future__ import annotations

import redis
from fastapi import Request

from pipeq.settings import Settings
from pipeq.storage import Store

# These are async on purpose: they do no I/O, and FastAPI runs a plain-def dependency in its
# thread pool, one hop per dependency per request (on /job_status that tripled the hops).


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_redis(request: Request) -> redis.Redis:
    return request.app.state.redis


async def get_store(request: Request) -> Store:
    return request.app.state.store
