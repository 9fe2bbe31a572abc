"""The operator's broker and store reads against a real RabbitMQ and MongoDB-protocol store."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
from queue_support import delete, fill

from taskq.errors import BrokerUnavailable
from taskq.store.mongo import TaskStore
from taskq_dev.ports import poll
from taskq_operator.adapters.broker import BrokerObserver
from taskq_operator.observe import Observers, Target

pytestmark = pytest.mark.services


def test_passive_reads_are_exact_and_survive_missing_queues(amqp_url: str, rabbitmq: Any, queue_name: str) -> None:
    observer = BrokerObserver(amqp_url, rabbitmq.management_url)
    others = [f"{queue_name}-{i}" for i in range(20)]
    try:
        for queue in [queue_name, *others]:
            observer.declare(queue, max_priority=10, task_timeout_s=60)
        observer.declare(queue_name, max_priority=3, task_timeout_s=5)  # other arguments: left alone, no error
        fill(amqp_url, {queue_name: 37})
        counts = observer.ready_counts([queue_name, f"{queue_name}-missing", *others, f"{queue_name}.dead"])
        assert counts[queue_name] is not None and counts[queue_name].ready == 37
        assert counts[f"{queue_name}-missing"] is None
        assert all(counts[q] is not None and counts[q].ready == 0 for q in others)
        assert counts[f"{queue_name}.dead"] is not None
    finally:
        observer.close()
        delete(amqp_url, queue_name, f"{queue_name}.dead", *others, *[f"{q}.dead" for q in others])


def test_one_management_request_serves_every_queue(amqp_url: str, rabbitmq: Any, queue_name: str) -> None:
    observer = BrokerObserver(amqp_url, rabbitmq.management_url, management_ttl_s=60)
    try:
        observer.declare(queue_name, max_priority=10, task_timeout_s=60)
        first = observer.management(observer.vhost)
        second = observer.management(observer.vhost)
        assert queue_name in first and first is second
        assert observer.management_requests == 1
    finally:
        observer.close()
        delete(amqp_url, queue_name, f"{queue_name}.dead")


def test_recent_management_figures_never_wait(amqp_url: str, rabbitmq: Any, queue_name: str) -> None:
    observer = BrokerObserver(amqp_url, rabbitmq.management_url, management_ttl_s=60)
    try:
        observer.declare(queue_name, max_priority=10, task_timeout_s=60)
        started = time.monotonic()
        figures, error = observer.management_recent(observer.vhost)
        assert (figures, error) == ({}, None) and time.monotonic() - started < 0.1
        figures, error = poll(
            lambda: (lambda got: got if queue_name in got[0] else None)(observer.management_recent(observer.vhost)),
            timeout=10,
            what="the background management refresh",
            interval=0.05,
        )
        assert queue_name in figures and error is None
        assert observer.management_requests == 1
    finally:
        observer.close()
        delete(amqp_url, queue_name, f"{queue_name}.dead")


def test_unacked_comes_from_fresh_heartbeats(
    amqp_url: str, rabbitmq: Any, mongodb_uri: str, database_name: str, queue_name: str
) -> None:
    store = TaskStore(mongodb_uri, database_name)
    observers = Observers()
    try:
        observers.broker(Target(queue_name, amqp_url, None, mongodb_uri, database_name)).declare(
            queue_name, max_priority=10, task_timeout_s=60
        )
        fill(amqp_url, {queue_name: 5})
        now = datetime.now(UTC)
        store.heartbeat("pod-a", queue_name, inflight=7, processed=1, started_at=now, now=now)
        store.heartbeat("pod-b", queue_name, inflight=2, processed=1, started_at=now, now=now)
        target = Target(queue_name, amqp_url, rabbitmq.management_url, mongodb_uri, database_name)
        reading = observers.read([target])[(target.broker_key, queue_name)]
        assert reading.observation is not None
        assert (reading.observation.ready, reading.observation.unacked) == (5, 9)
        assert reading.source == "amqp+heartbeats"
        assert reading.loads.inflight_by_worker == {"pod-a": 7, "pod-b": 2}
    finally:
        observers.close()
        store.workers.delete_many({"queue": queue_name})
        store.close()
        delete(amqp_url, queue_name, f"{queue_name}.dead")


def test_unreachable_broker_is_a_taskq_error_without_credentials() -> None:
    observer = BrokerObserver("amqp://user:hunter2@127.0.0.1:1/%2F", "http://user:hunter2@127.0.0.1:1")
    with pytest.raises(BrokerUnavailable) as amqp_error:
        observer.ready_counts(["q"])
    with pytest.raises(BrokerUnavailable) as http_error:
        observer.management("/")
    assert "hunter2" not in str(amqp_error.value) and "hunter2" not in str(http_error.value)
