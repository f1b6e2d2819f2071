"""schemathesis (property-based fuzzing from the OpenAPI document) against the session's real
server: every operation of ``/v1/openapi.json`` with generated valid and invalid requests,
bounded by a number of examples per operation and a per-example deadline, with a fixed seed so a
failure repeats. Checks: no 5xx, and every response (status, content type, body) is one the
document describes."""

from __future__ import annotations

from datetime import timedelta

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import API_KEY

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 60
SEED = 20261201


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(f"{server}/v1/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@hypothesis.seed(SEED)
@hypothesis.settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=timedelta(seconds=15),
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_the_server_keeps_its_openapi_contract(case, server):
    case.call_and_validate(
        base_url=server,
        headers={"Authorization": f"Bearer {API_KEY}"},
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
        timeout=60,
    )
