"""One log line per state-changing request (POST, PUT, PATCH, DELETE), naming its principal:

    pipeq.audit: DELETE /jobs/4f... principal=oidc:https://idp/realms/lab|8c1... job_id=4f... status=200

The principal is the one pipeq.auth's dependency found (``-`` when the request was refused
before it had one); the job id is the route's ``job_id`` (or the new job's, set by the route
in ``request.state.job_id``), ``-`` for requests about no job.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("pipeq.audit")
CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def configure() -> None:
    """Print the audit lines on stderr when nothing else handles them (``pipeq api``)."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


class AuditLog:
    """ASGI middleware writing the line once the response has started (or the app failed)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in CHANGING:
            return await self.app(scope, receive, send)
        scope.setdefault("state", {})  # where request.state keeps the principal and job id
        code = 500

        async def capture(message):
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            state = scope.get("state") or {}
            principal = state.get("principal")
            job_id = state.get("job_id") or (scope.get("path_params") or {}).get("job_id") or "-"
            upload = (scope.get("path_params") or {}).get("upload_id")
            log.info("%s %s principal=%s job_id=%s%s status=%s", scope["method"], scope["path"],
                     principal.id if principal is not None else "-", job_id,
                     f" upload_id={upload}" if upload else "", code)
