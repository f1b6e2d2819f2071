"""schemathesis (property-based fuzzing from the OpenAPI document) against the session's real
server: every operation of ``/v1/openapi.json`` with generated requests (valid and invalid
bodies, paths and headers), bounded by a number of examples per operation and a per-example
deadline, with a fixed seed so a failure repeats. Checks: no 5xx, and every response (status,
content type, body) is one the document describes.

schemathesis's own pytest integration (``from_fixture``) fails under pytest 9 (it reads a node
attribute pytest no longer has), so each operation's Hypothesis strategy is driven here directly.
"""

from __future__ import annotations

from datetime import timedelta

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.servers import API_KEY

pytestmark = pytest.mark.server

EXAMPLES_PER_OPERATION = 150
SEED = 20261201
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def fuzz(operation, server: str, mode: GenerationMode) -> int:
    """Run ``operation``'s examples of ``mode`` (requests that fit the document, or that do not)
    against ``server``; returns how many ran."""
    ran = 0

    @hypothesis.given(case=operation.as_strategy(mode))
    @hypothesis.seed(SEED)
    @hypothesis.settings(max_examples=EXAMPLES_PER_OPERATION, deadline=timedelta(seconds=15), database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    def keeps_contract(case):
        nonlocal ran
        ran += 1
        case.call_and_validate(base_url=server, headers={"Authorization": f"Bearer {API_KEY}"}, checks=CHECKS,
                               timeout=60)

    keeps_contract()
    return ran


def test_the_server_keeps_its_openapi_contract(server):
    schema = schemathesis.openapi.from_url(f"{server}/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} == {"/v1/embeddings", "/v1/rerank", "/v1/models", "/v1/models/{model}"}
    examples = {f"{mode.value} {op.method.upper()} {op.path}": fuzz(op, server, mode)
                for op in operations for mode in GenerationMode
                if mode.is_positive or len(op.body)}  # only a body can be made not to fit (a path is any string)
    print(f"\nschemathesis examples run: {examples} ({sum(examples.values())} in all, seed {SEED})")
    assert sum(examples.values()) >= 4 * EXAMPLES_PER_OPERATION, examples  # GET /v1/models has no inputs to vary


def test_what_the_fuzzer_found_stays_fixed(server):
    """Examples schemathesis found: an integer past 64 bits (the JSON parser raised an error the
    gateway did not expect: 500), and a path with a newline (no route pattern matches it: BentoML's
    plain-text 404)."""
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    body = b'{"model": "all-MiniLM-L6-v2", "input": [101, 99999999999999999999999, 102]}'
    response = httpx.post(f"{server}/v1/embeddings", content=body, headers=headers)
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    response = httpx.get(f"{server}/v1/models/a%0Ab", headers=headers)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
