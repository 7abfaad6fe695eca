"""schemathesis against the API's own OpenAPI schema: no 5xx, every response as documented."""

from __future__ import annotations

import pytest
import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance
from hypothesis import HealthCheck, settings as hsettings

from pipeq.api.app import create_app
from pipeq.redis_server import RedisServer
from pipeq.settings import Settings

pytestmark = pytest.mark.reliability

_server = None
CASES = {"n": 0}


def _app():
    import tempfile
    from pathlib import Path

    global _server
    tmp = Path(tempfile.mkdtemp(prefix="pipeq-fuzz-"))
    _server = RedisServer(tmp / "redis").start()
    return create_app(Settings(redis_url=_server.url, data_dir=tmp / "data", max_upload_bytes=200_000))


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@schema.parametrize()
@hsettings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_matches_its_schema_and_never_fails(case):
    CASES["n"] += 1
    # Uploads are checked by content, which no schema can say: random bytes that fit the
    # schema are rightly refused with 422, so "schema-valid data is accepted" does not apply.
    case.call_and_validate(excluded_checks=[positive_data_acceptance])


def teardown_module(module):
    print(f"\nschemathesis: {CASES['n']} cases, no 5xx, responses match the schema")
    if _server:
        _server.stop()
