"""Who a request comes from.

A principal is one of three: ``anonymous`` (no identity configured: pipeq has one user, on a
laptop, who may do everything), ``admin`` (the admin token, for scripts), or an OIDC user,
``oidc:<iss>|<sub>`` (a service account's client-credentials token is one too: its ``sub``
is the service account's). ``id`` is stable and opaque: jobs and uploads record it as their
owner, quotas key on it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    id: str
    name: str
    groups: tuple[str, ...] = ()
    admin: bool = False

    @property
    def roles(self) -> list[str]:
        return ["admin", "user"] if self.admin else ["user"]

    def owns(self, owner: str | None) -> bool:
        """Whether this principal may see and act on something owned by ``owner`` (None: an
        old job without an owner, which is ``anonymous``'s)."""
        return self.admin or (owner or ANONYMOUS.id) == self.id


#: Mode none: the lone user of an unconfigured pipeq. An admin, so that `make run` behaves as
#: before (every job, /metrics), and old jobs without an owner are this one's.
ANONYMOUS = Principal(id="anonymous", name="anonymous", groups=(), admin=True)
#: The holder of PIPEQ_API_TOKEN.
ADMIN_TOKEN = Principal(id="admin", name="admin", groups=(), admin=True)


def oidc_id(issuer: str, subject: str) -> str:
    return f"oidc:{issuer}|{subject}"
