"""taskq.Client against a real RabbitMQ and a real MongoDB-protocol store: submit, idempotency,
submit_many with pipelined confirms, reads, dead letters, requeue, purge, and unavailable brokers."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pika
import pytest

from taskq.client import Client
from taskq.core.message import TaskMessage, decode, utcnow
from taskq.core.states import TaskState
from taskq.core.topology import DEAD_REASON_HEADER, dead_queue
from taskq.errors import BrokerRejected, BrokerUnavailable, InvalidTask, QueueNotFound, TaskNotFound
from taskq.settings import Settings

pytestmark = pytest.mark.services


@pytest.fixture
def client(amqp_url: str, mongodb_uri: str, database_name: str, queue_name: str) -> Iterator[Client]:
    settings = Settings(amqp_url=amqp_url, mongodb_uri=mongodb_uri, database=database_name, queue=queue_name)
    with Client(settings, window=200, batch_size=100) as producer:
        yield producer
        try:
            producer.purge(queue_name)
        except QueueNotFound:
            pass


@pytest.fixture
def channel(amqp_url: str) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    confirmed = connection.channel()
    confirmed.confirm_delivery()  # what the test publishes is in the queue when basic_publish returns
    yield confirmed
    connection.close()


def _drain(channel: pika.adapters.blocking_connection.BlockingChannel, queue: str, limit: int) -> list[tuple[pika.BasicProperties, bytes]]:
    got = []
    for _ in range(limit):
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            break
        got.append((props, body))
    return got


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_submit_records_queued_then_publishes_a_persistent_message(client: Client, channel, queue_name: str) -> None:
    task_id = client.submit("echo", [1, "two"], {"three": 3.0}, priority=5, max_retries=2, timeout=9.5)

    doc = client.status(task_id)
    assert doc["state"] == TaskState.QUEUED.value and doc["attempts"] == 0 and doc["queue"] == queue_name
    assert doc["args"] == [1, "two"] and doc["kwargs"] == {"three": 3.0}
    (props, body), = _drain(channel, queue_name, 5)
    message = decode(body)
    assert (message.id, message.name, message.priority, message.max_retries, message.timeout, message.attempt) == (task_id, "echo", 5, 2, 9.5, 1)
    assert props.delivery_mode == 2 and props.message_id == task_id and props.priority == 5
    assert props.content_type == "application/json"


def test_a_given_task_id_is_an_idempotency_key(client: Client, channel, queue_name: str) -> None:
    first = client.submit("echo", task_id="order-42")
    again = client.submit_many([{"name": "echo", "task_id": "order-42"}, {"name": "echo", "id": "order-42"}])

    assert first == "order-42" and again.ids == ["order-42", "order-42"]
    assert (again.published, again.existing) == (0, 1)
    assert len(_drain(channel, queue_name, 10)) == 1
    assert client.store.tasks.count_documents({"_id": "order-42"}) == 1


def test_submit_many_publishes_every_task_once_and_reports_progress(client: Client, channel, queue_name: str) -> None:
    settled: list[int] = []
    tasks = [{"name": "noop", "args": [i]} for i in range(1500)]
    tasks.append({"name": "noop", "task_id": "dup"})
    tasks.append({"name": "noop", "task_id": "dup"})

    receipt = client.submit_many(tasks, progress=settled.append)

    assert len(receipt.ids) == 1502 and len(set(receipt.ids)) == 1501
    assert receipt.published == 1501 and receipt.existing == 0 and sum(settled) == 1501
    assert client.queue_info(queue_name).ready == 1501
    assert client.store.tasks.count_documents({"queue": queue_name, "state": "queued"}) == 1501
    bodies = [json.loads(body)["id"] for _, body in _drain(channel, queue_name, 2000)]
    assert sorted(bodies) == sorted(set(receipt.ids))


def test_submit_many_accepts_messages_and_mixed_queues(client: Client, queue_name: str) -> None:
    other = queue_name + "-b"
    message = TaskMessage(id="m-1", name="echo", queue=other, created_at=utcnow())
    receipt = client.submit_many([message, {"name": "echo"}])
    try:
        assert receipt.published == 2
        assert client.queue_info(other).ready == 1 and client.queue_info(queue_name).ready == 1
    finally:
        client.purge(other)


@pytest.mark.parametrize(
    "task, reason",
    [
        ({"name": "bad name"}, "name"),
        ({"name": "echo", "args": {"not": "a list"}}, "args must be a list"),
        ({"name": "echo", "args": [2**64]}, "64-bit"),
        ({"name": "echo", "kwargs": {"$where": 1}}, "may not"),
        ({"name": "echo", "args": [float("nan")]}, "not a JSON number"),
        ({"name": "echo", "priority": 256}, "priority"),
        ({"name": "echo", "task_id": "no spaces allowed"}, "id"),
        ({"name": "echo", "colour": "red"}, "unknown task field"),
        ({"args": []}, "needs a 'name'"),
    ],
)
def test_invalid_tasks_are_refused_before_anything_is_written(client: Client, queue_name: str, task: dict, reason: str) -> None:
    with pytest.raises(InvalidTask, match=reason):
        client.submit_many([task])
    assert client.store.tasks.count_documents({"queue": queue_name}) == 0


def test_reads_of_unknown_tasks_and_queues_raise_not_found(client: Client, queue_name: str) -> None:
    with pytest.raises(TaskNotFound):
        client.status("no-such-task")
    with pytest.raises(QueueNotFound):
        client.queue_info(queue_name + "-missing")
    with pytest.raises(InvalidTask):
        client.list(state="sleeping")


def test_list_filters_by_queue_and_state(client: Client, queue_name: str) -> None:
    ids = client.submit_many([{"name": "echo"} for _ in range(5)]).ids
    listed = client.list(queue=queue_name, state="queued", limit=3)
    assert len(listed) == 3 and all(doc["id"] in ids for doc in listed)
    assert client.list(queue=queue_name, state=TaskState.SUCCEEDED) == []


def _dead_letter(channel, queue_name: str, body: bytes, reason: str, message_id: str | None) -> None:
    channel.basic_publish(
        "",
        dead_queue(queue_name),
        body,
        pika.BasicProperties(delivery_mode=2, message_id=message_id, headers={DEAD_REASON_HEADER: reason}),
    )


def test_dead_lists_reasons_and_requeue_brings_tasks_back_as_first_attempts(client: Client, channel, queue_name: str) -> None:
    task_id = client.submit("fail", max_retries=1)
    (_, body), = _drain(channel, queue_name, 5)
    exhausted = TaskMessage.model_validate_json(body).next_attempt().next_attempt()
    client.store.tasks.update_one({"_id": task_id}, {"$set": {"state": TaskState.DEAD.value}})  # as a worker would
    _dead_letter(channel, queue_name, exhausted.encode(), "retries exhausted: ExampleFailure", task_id)
    _dead_letter(channel, queue_name, b"not json", "body is not JSON", "junk-1")

    letters = client.dead(queue_name)
    assert [(d.task_id, d.reason) for d in letters] == [(task_id, "retries exhausted: ExampleFailure"), ("junk-1", "body is not JSON")]
    assert client.queue_info(queue_name).dead == 2  # listing leaves them in place

    report = client.requeue_dead(queue_name)

    assert report.requeued == [task_id] and report.left == 1
    assert client.status(task_id)["state"] == TaskState.QUEUED.value
    (props, body), = _drain(channel, queue_name, 5)
    assert decode(body).attempt == 1 and props.message_id == task_id and props.delivery_mode == 2
    assert [d.task_id for d in client.dead(queue_name)] == ["junk-1"]


def test_purge_drops_messages_dead_letters_and_documents(client: Client, channel, queue_name: str) -> None:
    client.submit_many([{"name": "echo"} for _ in range(7)])
    _dead_letter(channel, queue_name, b"{}", "schema violation", None)

    report = client.purge(queue_name)

    assert report.messages == {queue_name: 7, dead_queue(queue_name): 1} and report.documents == 7
    info = client.queue_info(queue_name)
    assert (info.ready, info.dead, sum(info.counts.values())) == (0, 0, 0)


def test_a_refused_publish_keeps_its_document_unpublished_so_a_retry_sends_it(client: Client, channel, queue_name: str) -> None:
    client.submit("echo")
    channel.queue_delete(queue_name)

    with pytest.raises(BrokerRejected, match="NO_ROUTE"):
        client.submit("echo", task_id="retry-me")
    assert client.status("retry-me")["state"] == TaskState.QUEUED.value
    assert client.store.outbox.count_documents({"_id": "retry-me"}) == 1  # recorded as not confirmed

    assert client.submit("echo", task_id="retry-me") == "retry-me"  # the queue is declared again
    assert client.queue_info(queue_name).ready == 1
    assert client.status("retry-me")["state"] == TaskState.QUEUED.value
    assert client.store.outbox.count_documents({}) == 0


def test_unreachable_broker_writes_nothing_and_hides_the_password(mongodb_uri: str, database_name: str, queue_name: str) -> None:
    url = f"amqp://user:s3cret@127.0.0.1:{_free_port()}/%2F"
    settings = Settings(amqp_url=url, mongodb_uri=mongodb_uri, database=database_name, queue=queue_name)
    with Client(settings) as producer:
        with pytest.raises(BrokerUnavailable) as caught:
            producer.submit("echo", task_id="never-written")
        assert "s3cret" not in str(caught.value)
        assert producer.store.get("never-written") is None
