"""Test services for every suite: RabbitMQ and the MongoDB-protocol store, started on first use.

Session-scoped servers (`rabbitmq`, `mongo`, `amqp_url`, `mongodb_uri`) come from `AMQP_URL` /
`MONGODB_URI` or are private ones started by `taskq_dev.services` (RabbitMQ 4.0 unless
`TASKQ_TEST_RABBITMQ=3.10`; `rabbitmq_version` says which broker runs); per-test names (`queue_name`,
`database_name`) isolate tests and are cleaned up afterwards. Tests that use the servers get the
`services` marker automatically. The logic lives in `taskq_dev.services`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from taskq_dev.services import MongoService, RabbitMQService, ServiceSet, delete_queues, drop_database, session_services

SERVICE_FIXTURES = {"rabbitmq", "mongo"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)


@pytest.fixture(scope="session")
def service_set() -> Iterator[ServiceSet]:
    services = session_services()
    try:
        yield services
    finally:
        services.close()


@pytest.fixture(scope="session")
def rabbitmq(service_set: ServiceSet) -> RabbitMQService:
    return service_set.ensure_rabbitmq()


@pytest.fixture(scope="session")
def rabbitmq_version(rabbitmq: RabbitMQService) -> tuple[int, ...]:
    """The running broker's version as numbers, e.g. `(4, 0, 5)`: branch or skip with `>= (4, 0)`."""
    return rabbitmq.version_info


@pytest.fixture(scope="session")
def mongo(service_set: ServiceSet) -> MongoService:
    return service_set.ensure_mongo()


@pytest.fixture(scope="session")
def amqp_url(rabbitmq: RabbitMQService) -> str:
    return rabbitmq.amqp_url


@pytest.fixture(scope="session")
def mongodb_uri(mongo: MongoService) -> str:
    return mongo.uri


@pytest.fixture
def queue_name(request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    yield name
    if "rabbitmq" in request.fixturenames:
        request.getfixturevalue("service_set").revive()
        delete_queues(request.getfixturevalue("rabbitmq"), name)


@pytest.fixture
def database_name(request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:8]}"
    yield name
    if "mongo" in request.fixturenames:
        request.getfixturevalue("service_set").revive()
        drop_database(request.getfixturevalue("mongo"), name)
