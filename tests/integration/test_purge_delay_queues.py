"""`Client.purge` (and so `taskq purge` and the dashboard's purge) on a queue with delayed messages:
countdown/eta tasks wait in the queue's delay queues (`Q.retry.<ms>`, taskq.core.topology), and a
purge must drop them too, or they reach the work queue after the purge. Real RabbitMQ and store."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

import pika
import pytest

from taskq.client import Client
from taskq.core.schedule import schedule_bucket_ms
from taskq.core.topology import retry_queue
from taskq.errors import QueueNotFound
from taskq.settings import Settings

pytestmark = pytest.mark.services

SHORT_S, LONG_S = 2, 40


@pytest.fixture
def client(amqp_url: str, mongodb_uri: str, database_name: str, queue_name: str) -> Iterator[Client]:
    settings = Settings(amqp_url=amqp_url, mongodb_uri=mongodb_uri, database=database_name, queue=queue_name)
    with Client(settings) as producer:
        yield producer
        with contextlib.suppress(QueueNotFound):
            producer.purge(queue_name)


def ready(amqp_url: str, name: str) -> int | None:
    """Ready messages of RabbitMQ queue `name` (passive declare), None when it does not exist."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return int(connection.channel().queue_declare(name, passive=True).method.message_count)
    except pika.exceptions.ChannelClosedByBroker:
        return None
    finally:
        if connection.is_open:
            connection.close()


def test_purge_drops_the_delayed_messages_waiting_in_the_delay_queues(client: Client, amqp_url: str, queue_name: str) -> None:
    client.submit_many([{"name": "echo"} for _ in range(2)])
    short = [client.submit("echo", countdown=SHORT_S) for _ in range(3)]
    late = client.submit("echo", countdown=LONG_S)
    short_queue = retry_queue(queue_name, schedule_bucket_ms(SHORT_S * 1000))
    long_queue = retry_queue(queue_name, schedule_bucket_ms(LONG_S * 1000))
    assert (ready(amqp_url, short_queue), ready(amqp_url, long_queue)) == (3, 1)
    assert client.status(short[0])["state"] == "scheduled" and client.status(late)["state"] == "scheduled"

    started = time.monotonic()
    report = client.purge(queue_name)
    took = time.monotonic() - started
    sys.stderr.write(f"\npurge with 2 delay queues (288 names tried): {took:.2f} s\n")

    assert report.messages[queue_name] == 2
    assert report.messages.get(short_queue) == 3 and report.messages.get(long_queue) == 1, report.messages
    assert report.documents == 6
    assert (ready(amqp_url, short_queue), ready(amqp_url, long_queue)) == (0, 0)
    # Past the short countdown and one bucket step: nothing arrived in the work queue.
    time.sleep(SHORT_S + 1.5)
    assert ready(amqp_url, queue_name) == 0
    assert took < 10, f"purge took {took:.1f} s"
