"""Property-based run of schemathesis against the served /openapi.json.

Hypothesis generates valid and invalid requests for every operation from
the schema; no answer may be a 5xx, and every answer must match what the
schema documents (status code, content type, headers, body).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.gateway_harness import API_KEY, Served

# Per operation, on top of the deterministic boundary cases of the coverage phase.
EXAMPLES_PER_OPERATION = 40
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]


# Generated values are kept, except that a valid request asking for many long
# samples (n up to 128, up to the whole context each) is made cheap: the
# answers' shapes are the same, the run takes seconds instead of minutes.
CHEAP_N = 2
CHEAP_MAX_TOKENS = 8


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def cap_generation_cost(body: object) -> object:
    if not isinstance(body, dict):
        return body
    body = dict(body)
    if _is_int(body.get("n")) and CHEAP_N < body["n"] <= 128:
        body["n"] = CHEAP_N
    for name in ("max_tokens", "max_completion_tokens"):
        if _is_int(body.get(name)) and body[name] > CHEAP_MAX_TOKENS:
            body[name] = CHEAP_MAX_TOKENS
    if "messages" in body and body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = CHEAP_MAX_TOKENS  # chat's default is "until the context is full"
    return body


@pytest.fixture(scope="module")
def api_schema(served: Served):
    return schemathesis.openapi.from_url(f"{served.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.timeout(300)
@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case):
    # Applied here rather than as a map_body hook so it reaches the cases of every phase.
    case.body = cap_generation_cost(case.body)
    case.call_and_validate(headers={"Authorization": f"Bearer {API_KEY}"}, checks=CHECKS, timeout=60)
