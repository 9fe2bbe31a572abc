"""Schemathesis fuzzing of the intake service against its own OpenAPI document, on real servers.

Valid and invalid requests (a bounded number per operation), each with a submit+read bearer token:
no answer may be a 5xx, and every answer must match the documented status codes, content type and
response schema.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from taskq.errors import QueueNotFound
from taskq.http.app import create_app
from taskq.http.auth import TokenSet
from taskq.settings import Settings

pytestmark = [pytest.mark.services, pytest.mark.slow]

EXAMPLES_PER_OPERATION = 40
TOKEN = "fuzz-submit-read-0123456789abcdef"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def intake_schema(amqp_url: str, mongodb_uri: str) -> Iterator[schemathesis.BaseSchema]:
    queue = "fuzz-intake"
    settings_ = Settings(amqp_url=amqp_url, mongodb_uri=mongodb_uri, database="taskq_fuzz", queue=queue)
    app = create_app(settings_, auth=TokenSet(TokenSet.parse(f"submit,read {TOKEN}", "fuzz")))
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    client = app.state.client
    for name in {queue, *(doc["queue"] for doc in client.list(limit=10_000))}:
        with contextlib.suppress(QueueNotFound):
            client.purge(name)
    client.store.tasks.database.client.drop_database("taskq_fuzz")
    client.close()


def _operations(schema: schemathesis.BaseSchema) -> list[schemathesis.APIOperation]:
    return [result.ok() for result in schema.get_all_operations()]


# Driven through Hypothesis directly (schemathesis's pytest fixture loader does not run on this pytest).
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_5xx_and_answers_match_the_document(intake_schema: schemathesis.BaseSchema, mode: GenerationMode) -> None:
    operations = _operations(intake_schema)
    statuses: list[int] = []  # of the current operation: every valid request must pass authentication
    assert {op.label for op in operations} >= {"POST /v1/tasks", "POST /v1/tasks:batch", "GET /v1/tasks/{task_id}"}
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and operation.method.upper() == "GET" and "{" not in operation.path:
            continue  # no input to make invalid

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def answers_well(case: schemathesis.Case) -> None:
            statuses.append(case.call_and_validate(headers=HEADERS, checks=CHECKS).status_code)

        statuses.clear()
        answers_well()
        if mode is GenerationMode.NEGATIVE:
            continue  # negative cases include a broken Authorization header on purpose: 401 is right there
        assert statuses and 401 not in statuses and 403 not in statuses, f"{operation.label}: the token was not accepted"
