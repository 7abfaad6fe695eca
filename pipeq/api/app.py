"""The FastAPI application: routers, error handling, the web page."""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from pathlib import Path

import redis
from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, multiprocess

from pipeq import __version__, queue
from pipeq.api import audit
from pipeq.api.metrics import REGISTRY, QueueCollector
from pipeq.api.routers import health, jobs, me, presigned, runs
from pipeq.auth import ANONYMOUS, Principal, current_principal
from pipeq.auth import web as sign_in
from pipeq.auth.dependency import Authenticator
from pipeq.settings import Settings, get_settings
from pipeq.storage import Unavailable, open_store

STATIC = Path(__file__).with_name("static")

DESCRIPTION = """
Submit a pipeline run with `POST /run_pipeline` (multipart: one or two `reads` FASTQ files,
one `reference` FASTA, an optional `sample`), get a `job_id` at once, and poll
`GET /job_status/{job_id}` until the job is `finished` (results under `result`) or `failed`
(the reason under `error`).
"""


class _Forward:
    """Expose a shared registry's metrics through a per-app registry."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def collect(self):
        yield from self.registry.collect()


class LimitUploadSize:
    """Refuse a submission whose declared size is over the limit before reading its body."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            length = dict(scope["headers"]).get(b"content-length")
            if length and length.isdigit() and int(length) > self.limit:
                response = JSONResponse(
                    status_code=413,
                    content={"detail": f"the upload is {int(length)} bytes, more than the {self.limit} accepted"},
                )
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    authenticator = Authenticator(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # the issuer's keys are fetched here and refreshed in the background, not per request
        if authenticator.keys is not None:
            authenticator.keys.start()
        try:
            yield
        finally:
            if authenticator.keys is not None:
                authenticator.keys.stop()

    app = FastAPI(title="pipeq", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.authenticator = authenticator
    audit.configure()
    app.state.redis = queue.connect(settings.redis_url)
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # several API processes (pipeq api --workers)
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Forward(REGISTRY))
    registry.register(QueueCollector(app.state.redis, settings.queue))
    app.state.metrics_registry = registry
    app.state.store = open_store(settings)

    @app.exception_handler(redis.RedisError)
    async def redis_down(request: Request, exc: redis.RedisError):
        return JSONResponse(status_code=503, content={"detail": f"Redis is unreachable, try again shortly ({type(exc).__name__})"})

    @app.exception_handler(Unavailable)
    async def store_down(request: Request, exc: Unavailable):
        return JSONResponse(status_code=503, content={"detail": f"the object store is unreachable, try again shortly ({exc})"})

    # multipart framing adds a little to the files' own size
    app.add_middleware(LimitUploadSize, limit=settings.max_total_upload_bytes + 64 * 1024)
    app.add_middleware(audit.AuditLog)
    # every route of these routers has a principal (401 without one when a mode is on); a
    # route that uses it names the same dependency, resolved once per request
    auth = [Depends(current_principal)]
    app.include_router(runs.router, dependencies=auth)
    app.include_router(jobs.router, dependencies=auth)
    app.include_router(presigned.router, dependencies=auth)
    app.include_router(me.router, dependencies=auth)
    app.include_router(health.router)
    # the page's sign-in; /auth/config answers in every mode (the page asks it how to sign in)
    if settings.oidc_issuer and settings.oidc_web_client_id:
        authenticator.web = sign_in.WebSessions(authenticator, app.state.redis, settings.oidc_web_client_id)
    app.include_router(sign_in.router)

    if authenticator.open:
        # one user: no credential to read (the bearer scheme's own dependency goes too)
        app.dependency_overrides[current_principal] = _anonymous
        _document_without_auth(app)

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        @app.get("/", include_in_schema=False)
        def index():
            return FileResponse(STATIC / "index.html")

    return app


async def _anonymous(request: Request) -> Principal:
    request.state.principal = ANONYMOUS
    return ANONYMOUS


def _document_without_auth(app: FastAPI) -> None:
    """With no identity configured (mode none) the routes are open: say so in the OpenAPI document."""
    base = app.openapi

    def openapi():
        if app.openapi_schema is None:
            schema = base()
            for path in schema.get("paths", {}).values():
                for op in path.values():
                    op.pop("security", None)
            schema.get("components", {}).pop("securitySchemes", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
