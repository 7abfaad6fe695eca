"""Probes and metrics."""

from __future__ import annotations

import redis
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from pipeq.api.deps import get_redis
from pipeq.auth import admin_principal
from pipeq.api.metrics import REGISTRY

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    detail: str | None = None


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    # async: it does no I/O, and a plain def would take two thread-pool hops per probe
    # (the call, then the response_model validation, which FastAPI also runs in a thread)
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health, "description": "Redis is unreachable."}}, summary="Readiness: Redis answers")
def readyz(conn: redis.Redis = Depends(get_redis)):
    try:
        conn.ping()
    except redis.RedisError as e:
        return JSONResponse(status_code=503, content={"status": "unavailable", "detail": f"Redis is unreachable: {e}"})
    return Health(status="ok")


@router.get("/metrics", dependencies=[Depends(admin_principal)], response_class=Response,
            responses={401: {"description": "No valid bearer token."}, 403: {"description": "Not an admin."}},
            summary="Prometheus metrics (admins and the admin token)")
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
