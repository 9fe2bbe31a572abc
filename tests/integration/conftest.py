"""Fixtures of the integration tests: one test's broker/store names and a producer and store on them.

The servers themselves come from `tests/conftest.py` (`amqp_url`, `mongodb_uri`, per-test
`queue_name` and `database_name`); worker subprocess helpers are in `worker_procs.py`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from worker_procs import Services

from taskq.client import Client
from taskq.settings import Settings
from taskq.store.mongo import TaskStore


@pytest.fixture
def svc(amqp_url: str, mongodb_uri: str, database_name: str, queue_name: str) -> Services:
    return Services(amqp_url, mongodb_uri, database_name, queue_name)


@pytest.fixture
def store(svc: Services) -> Iterator[TaskStore]:
    task_store = TaskStore(svc.mongodb_uri, svc.database, timeout_ms=10_000)
    yield task_store
    task_store.close()


@pytest.fixture
def client(svc: Services) -> Iterator[Client]:
    producer = Client(Settings(amqp_url=svc.amqp_url, mongodb_uri=svc.mongodb_uri, database=svc.database, queue=svc.queue))
    yield producer
    producer.close()
