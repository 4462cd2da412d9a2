"""/openapi.json is the real contract (issue #12, item 9), checked by schemathesis against a live
gateway on loopback: generated from the published request schemas, every answer must be a declared
status with a declared content type and a body that matches its schema, and never a 5xx.

Before, the document had no request bodies and promised 422 where the gateway answers 400.
Bounded: `max_examples` per operation, on the tiny random model (`fuzz_servers.py`).
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from conftest import ADMIN_TOKEN
from fuzz_servers import TINY_MODEL, UPSTREAM_MODEL, engine_gateway, tiny_engine, upstream_gateway  # noqa: F401
from gateway_server import GatewayServer
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


EXAMPLES = {GenerationMode.POSITIVE: 15, GenerationMode.NEGATIVE: 8}  # per operation: ~700 requests in all
HEALTH = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]


def check(case, model: str) -> None:
    if case.path.startswith("/admin/"):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {ADMIN_TOKEN}"}
    if isinstance(case.body, dict) and "model" in case.body and case.path.startswith("/v1/"):
        case.body["model"] = model  # past the 404, into validation and generation
    case.call_and_validate(checks=CHECKS, timeout=120)  # a loaded 2-core CI machine, many tokens


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("backend", ["engine", "upstream"])
def test_every_operation_keeps_its_contract(request: pytest.FixtureRequest, backend: str,
                                            mode: GenerationMode) -> None:
    """Each operation of the document, `max_examples` generated cases (schemathesis's Python API:
    its pytest plugin does not load under this pytest), on the engine and on the upstream path."""
    server: GatewayServer = request.getfixturevalue(f"{backend}_gateway")
    model = TINY_MODEL if backend == "engine" else UPSTREAM_MODEL
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    fuzzed = []
    fuzz = settings(max_examples=EXAMPLES[mode], deadline=None, derandomize=True, suppress_health_check=HEALTH)
    for operation in operations:
        try:
            fuzz(given(operation.as_strategy(generation_mode=mode))(lambda case: check(case, model)))()
        except Unsatisfiable:  # negative mode: nothing to break in an operation without inputs (GET /healthz)
            assert mode is GenerationMode.NEGATIVE, operation.label
            continue
        fuzzed.append(operation.label)
    assert {"POST /v1/chat/completions", "POST /v1/completions", "POST /admin/v1/targets"} <= set(fuzzed), fuzzed


def test_document_publishes_bodies_and_400s(engine_gateway: GatewayServer) -> None:
    doc = httpx.get(engine_gateway.url + "/openapi.json").json()
    for path, model in (("/v1/chat/completions", "ChatCompletionRequest"), ("/v1/completions", "CompletionRequest")):
        operation = doc["paths"][path]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/" + model)
        assert "text/event-stream" in operation["responses"]["200"]["content"]
        assert operation["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/ErrorResponse")
    assert "requestBody" in doc["paths"]["/admin/v1/targets"]["post"]
    assert "201" in doc["paths"]["/admin/v1/targets"]["post"]["responses"]
    statuses = {code for ops in doc["paths"].values() for op in ops.values() for code in op["responses"]}
    assert "422" not in statuses
    assert "HTTPValidationError" not in doc["components"]["schemas"]
