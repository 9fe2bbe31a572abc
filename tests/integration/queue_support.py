"""Declaring, filling and deleting RabbitMQ queues for the operator's broker-read tests (one pika connection each call)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pika


def fill(amqp_url: str, messages: Mapping[str, int], *, declare: Sequence[str] = (), durable: bool = False) -> None:
    """Declare `declare` (plus, when `durable`, every filled queue durably), then publish `messages[q]` bodies to each q."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        for queue in dict.fromkeys([*declare, *(messages if durable else ())]):
            channel.queue_declare(queue, durable=durable, auto_delete=False)
        for queue, count in messages.items():
            for i in range(count):
                channel.basic_publish("", queue, str(i).encode())
    finally:
        connection.close()


def delete(amqp_url: str, *queues: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        for queue in queues:
            channel.queue_delete(queue)
    finally:
        connection.close()
