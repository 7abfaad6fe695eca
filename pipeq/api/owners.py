"""Who owns what: the owner keys of a job's meta, and the owners of presigned uploads.

A job's owner is in its RQ meta from its enqueue (``owner``, ``owner_name``, ``owner_groups``,
``owner_admin``: quotas and the fair share read them too). A presigned
upload's owner is kept in Redis under ``UPLOAD_OWNER_PREFIX + upload_id`` from its start for
as long as a job may name it; a submission naming an upload checks it (closed by default: an
upload without that record is no one's, and only admins may name it).
"""

from __future__ import annotations

import redis

from pipeq.auth import Principal
from pipeq.keys import UPLOAD_OWNER_PREFIX


def meta_of(principal: Principal) -> dict:
    """The owner keys of a new job's meta."""
    return {
        "owner": principal.id,
        "owner_name": principal.name,
        "owner_groups": list(principal.groups),
        "owner_admin": principal.admin,
    }


def record_upload(conn: redis.Redis, upload_id: str, principal: Principal, ttl: int) -> None:
    conn.set(UPLOAD_OWNER_PREFIX + upload_id, principal.id, ex=ttl)


def upload_owner(conn: redis.Redis, upload_id: str) -> str | None:
    raw = conn.get(UPLOAD_OWNER_PREFIX + upload_id)
    return raw.decode() if raw is not None else None


def owns_upload(conn: redis.Redis, upload_id: str, principal: Principal) -> bool:
    """Whether ``principal`` may name the upload ``upload_id`` in a submission: its owner or
    an admin."""
    return principal.admin or upload_owner(conn, upload_id) == principal.id
