"""Identity: who a request comes from (principal), how a bearer token is verified (tokens,
keys: the OIDC issuer's JWKS), and the FastAPI dependency that puts them together."""

from pipeq.auth.dependency import admin_principal, current_principal, mode_of  # noqa: F401
from pipeq.auth.principal import ADMIN_TOKEN, ANONYMOUS, Principal  # noqa: F401
