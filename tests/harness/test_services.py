"""The test services really work: RabbitMQ (AMQP and management API), the MongoDB-protocol store, restarts
that keep durable data, per-test cleanup, and the `AMQP_URL` / `MONGODB_URI` overrides."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pika
import pymongo
import pytest
from pymongo import InsertOne, UpdateOne

from taskq.broker.admin import queue_depth
from taskq_dev import ports
from taskq_dev.mongo import ExternalMongo, PrivateMongo
from taskq_dev.rabbitmq import ExternalRabbitMQ, PrivateRabbitMQ
from taskq_dev.services import MongoService, RabbitMQService, ServiceSet, delete_queues

pytestmark = pytest.mark.services

FERRETDB_UPDATES_PER_COMMAND = 99
"""FerretDB 1.24.2 (SQLite) hangs on one `update` command with 100+ statements (each holds a pooled
connection until the command ends; the pool has 100): bulk writes go in chunks of at most this."""


def _channel(amqp_url: str) -> tuple[pika.BlockingConnection, Any]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    return connection, channel


def _publish_and_get(amqp_url: str, queue: str, body: bytes) -> bytes:
    connection, channel = _channel(amqp_url)
    try:
        channel.queue_declare(queue, durable=True)
        channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
        method, _, received = channel.basic_get(queue, auto_ack=True)
        assert method is not None
        return bytes(received)
    finally:
        connection.close()


@pytest.fixture
def store(mongodb_uri: str, database_name: str) -> Iterator[pymongo.database.Database[dict[str, Any]]]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongodb_uri, socketTimeoutMS=30000)
    yield client[database_name]
    client.close()


# ---- RabbitMQ ----


def test_publish_and_consume(amqp_url: str, queue_name: str) -> None:
    assert _publish_and_get(amqp_url, queue_name, b"hello") == b"hello"


def test_management_api_sees_queue_and_fresh_counts(rabbitmq: RabbitMQService, queue_name: str) -> None:
    connection, channel = _channel(rabbitmq.amqp_url)
    channel.queue_declare(queue_name, durable=True)
    for number in range(3):
        channel.basic_publish("", queue_name, b"%d" % number)
    connection.close()
    url = f"{rabbitmq.management_base}/api/queues/%2F/{queue_name}"

    def three_ready() -> bool:
        return httpx.get(url, auth=rabbitmq.management_auth, timeout=5).json().get("messages_ready") == 3

    # statistics are emitted every second on a private node: counts show up within a few seconds
    assert ports.wait_until(three_ready, timeout=15, what="management API counts", interval=0.5) < 15


def test_cleanup_deletes_only_the_test_queues(rabbitmq: RabbitMQService, queue_name: str) -> None:
    ours = [queue_name, f"{queue_name}.dead", f"{queue_name}.retry.1000"]
    other = f"{queue_name}x"  # shares the prefix but not the dot: not this test's
    connection, channel = _channel(rabbitmq.amqp_url)
    for name in [*ours, other]:
        channel.queue_declare(name, durable=True)
    assert sorted(delete_queues(rabbitmq, queue_name)) == sorted(ours)
    assert [queue_depth(connection, name) for name in ours] == [None] * len(ours)
    assert queue_depth(connection, other) is not None
    channel.queue_delete(other)
    connection.close()


@pytest.mark.slow
def test_durable_messages_survive_a_broker_restart(rabbitmq: RabbitMQService, queue_name: str) -> None:
    if not isinstance(rabbitmq, PrivateRabbitMQ):
        pytest.skip("AMQP_URL names an external broker: it cannot be restarted here")
    connection, channel = _channel(rabbitmq.amqp_url)
    channel.queue_declare(queue_name, durable=True)
    for number in range(5):
        channel.basic_publish("", queue_name, b"kept-%d" % number, pika.BasicProperties(delivery_mode=2))
    connection.close()
    rabbitmq.stop()
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(pika.URLParameters(rabbitmq.amqp_url + "?connection_attempts=1"))
    rabbitmq.start()
    connection, channel = _channel(rabbitmq.amqp_url)
    got = []
    for _ in range(10):
        method, _, body = channel.basic_get(queue_name, auto_ack=True)
        if method is None:
            break
        got.append(body)
    connection.close()
    assert got == [b"kept-%d" % number for number in range(5)]


# ---- the store ----


def test_insert_find_and_guarded_update(store: pymongo.database.Database[dict[str, Any]]) -> None:
    tasks = store.tasks
    tasks.insert_many([{"_id": f"t{n}", "state": "queued", "n": n} for n in range(10)])
    moved = tasks.update_one({"_id": "t1", "state": {"$in": ["queued", "retrying"]}}, {"$set": {"state": "running"}})
    refused = tasks.update_one({"_id": "t1", "state": {"$in": ["queued"]}}, {"$set": {"state": "running"}})
    assert (moved.modified_count, refused.matched_count) == (1, 0)
    assert [doc["_id"] for doc in tasks.find({"state": {"$in": ["running"]}})] == ["t1"]
    assert tasks.count_documents({"n": {"$gte": 5}}) == 5


def test_bulk_write_in_chunks_and_group_by_state(store: pymongo.database.Database[dict[str, Any]]) -> None:
    tasks = store.tasks
    tasks.bulk_write([InsertOne({"_id": f"t{n}", "state": "queued"}) for n in range(300)], ordered=False)
    updates = [
        UpdateOne({"_id": f"t{n}", "state": {"$in": ["queued"]}}, {"$set": {"state": "succeeded" if n % 3 else "failed"}})
        for n in range(250)
    ]
    modified = 0
    for start in range(0, len(updates), FERRETDB_UPDATES_PER_COMMAND):
        modified += tasks.bulk_write(updates[start : start + FERRETDB_UPDATES_PER_COMMAND], ordered=False).modified_count
    assert modified == 250
    counts = {row["_id"]: row["count"] for row in tasks.aggregate([{"$group": {"_id": "$state", "count": {"$sum": 1}}}])}
    assert counts == {"queued": 50, "succeeded": 166, "failed": 84}


@pytest.mark.slow
def test_store_data_survives_a_restart(mongo: MongoService, store: pymongo.database.Database[dict[str, Any]]) -> None:
    if not isinstance(mongo, PrivateMongo):
        pytest.skip("MONGODB_URI names an external store: it cannot be restarted here")
    store.tasks.insert_one({"_id": "kept", "state": "succeeded"})
    mongo.stop()
    probe: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo.uri, serverSelectionTimeoutMS=500)
    with pytest.raises(pymongo.errors.ServerSelectionTimeoutError):
        probe.admin.command("ping")
    probe.close()
    mongo.start()
    assert store.tasks.find_one({"_id": "kept"}) == {"_id": "kept", "state": "succeeded"}


# ---- overrides: a second set pointed at the first set's servers by the environment ----


def test_environment_overrides_are_honoured(
    rabbitmq: RabbitMQService, mongo: MongoService, queue_name: str, database_name: str,
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setenv("AMQP_URL", rabbitmq.amqp_url)
    monkeypatch.setenv("RABBITMQ_MANAGEMENT_URL", rabbitmq.management_url)
    monkeypatch.setenv("MONGODB_URI", mongo.uri)
    overridden = ServiceSet(base_dir=tmp_path / "overridden")
    broker, store = overridden.ensure_rabbitmq(), overridden.ensure_mongo()
    assert isinstance(broker, ExternalRabbitMQ) and broker.amqp_url == rabbitmq.amqp_url
    assert isinstance(store, ExternalMongo) and store.uri == mongo.uri
    assert broker.management_answers()
    assert _publish_and_get(broker.amqp_url, queue_name, b"via override") == b"via override"
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(store.uri)
    client[database_name].x.insert_one({"_id": 1})
    client.close()
    overridden.close()  # external servers are left alone
    assert rabbitmq.management_answers()
    client = pymongo.MongoClient(mongo.uri)
    assert client[database_name].x.count_documents({}) == 1
    client.close()


def test_index_writes_keeps_documents_and_writes_correct(
    mongo: MongoService, store: pymongo.database.Database[dict[str, Any]], database_name: str
) -> None:
    store.tasks.insert_many([{"_id": f"t{n}", "state": "queued"} for n in range(50)])
    store.workers.insert_one({"_id": "w1", "inflight": 0})
    indexed = mongo.index_writes(database_name)
    if mongo.kind == "ferretdb":
        assert indexed == 2  # one table per collection
        assert mongo.index_writes(database_name) == 2  # idempotent
    else:
        assert indexed == 0  # mongod's _id index serves writes; an external store is left alone
    updated = store.tasks.update_one({"_id": "t7"}, {"$set": {"state": "succeeded"}})
    assert updated.modified_count == 1
    assert store.tasks.delete_one({"_id": "t8"}).deleted_count == 1
    assert store.tasks.count_documents({}) == 49
    assert store.tasks.find_one({"_id": "t7"})["state"] == "succeeded"
    assert [index["name"] for index in store.tasks.list_indexes()] == ["_id_"]
