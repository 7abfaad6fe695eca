"""schemathesis against the API's own OpenAPI schema: no 5xx, every response as documented."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings as hsettings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from pipeq.api.app import create_app
from pipeq.settings import Settings

pytestmark = pytest.mark.reliability

STATUSES: Counter[int] = Counter()
# The schema is read at collection from an app on no Redis (reading it needs none, so
# nothing is started while pytest collects); the cases run against an app on the session's
# real redis-server (the ``app`` fixture).
_schema_dir = tempfile.TemporaryDirectory(prefix="pipeq-fuzz-schema-")
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(Settings(redis_url="redis://127.0.0.1:9/0", data_dir=Path(_schema_dir.name)))
)


@pytest.fixture(scope="module")
def app(redis_server, tmp_path_factory):
    data = tmp_path_factory.mktemp("fuzz") / "data"
    yield create_app(Settings(redis_url=redis_server.url, data_dir=data, max_upload_bytes=200_000))
    print(f"\nschemathesis: {sum(STATUSES.values())} cases, no 5xx, responses match the schema: {dict(sorted(STATUSES.items()))}")
    assert STATUSES[200] > 0, "no case was answered by a live app"


@schema.parametrize()
@hsettings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_matches_its_schema_and_never_fails(case, app):
    # Uploads are checked by content, which no schema can say: random bytes that fit the
    # schema are rightly refused with 422, so "schema-valid data is accepted" does not apply.
    response = case.call_and_validate(app=app, excluded_checks=[positive_data_acceptance])
    STATUSES[response.status_code] += 1


def teardown_module(module):
    _schema_dir.cleanup()
