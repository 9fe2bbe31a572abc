"""Declaring the queues behind a taskq queue, idempotently (names and arguments: `taskq.core.topology`).

A declarer first checks passively and creates with arguments only what is missing, so producers,
workers and the operator never trip over each other's arguments (RabbitMQ closes the channel on a
mismatch). Called by the publisher, the worker and the operator.
"""

from __future__ import annotations

from typing import Any

import pika
import pika.exceptions as pe
from pika.adapters.blocking_connection import BlockingChannel

from taskq.broker.connection import translated
from taskq.core.topology import dead_queue, retry_queue, retry_queue_arguments, side_queue_arguments, work_queue_arguments

NOT_FOUND = 404


def _exists(connection: pika.BlockingConnection, name: str) -> bool:
    probe = connection.channel()
    try:
        probe.queue_declare(name, passive=True)
    except pe.ChannelClosedByBroker as exc:
        if exc.reply_code == NOT_FOUND:
            return False
        raise
    probe.close()
    return True


def _ensure(connection: pika.BlockingConnection, channel: BlockingChannel, name: str, arguments: dict[str, Any] | None) -> None:
    if not _exists(connection, name):
        channel.queue_declare(name, durable=True, arguments=arguments)


def declare_queue_topology(
    connection: pika.BlockingConnection,
    queue: str,
    *,
    max_priority: int,
    task_timeout_s: float,
    queue_type: str = "classic",
    max_deliveries: int = 5,
) -> None:
    """Make sure the work queue and the dead-letter queue of `queue` exist (created as `queue_type`)."""
    with translated(f"declaring queue {queue!r}", "the broker"):
        channel = connection.channel()
        arguments = work_queue_arguments(
            queue, max_priority=max_priority, task_timeout_s=task_timeout_s, queue_type=queue_type, max_deliveries=max_deliveries
        )
        _ensure(connection, channel, queue, arguments)
        _ensure(connection, channel, dead_queue(queue), side_queue_arguments(queue_type))
        channel.close()


def declare_retry_queue(channel: BlockingChannel, queue: str, bucket_ms: int, queue_type: str = "classic") -> str:
    """Declare (idempotently: the name fixes the arguments) the delay queue for one bucket; return its name."""
    name = retry_queue(queue, bucket_ms)
    channel.queue_declare(name, durable=True, arguments=retry_queue_arguments(queue, bucket_ms, queue_type))
    return name
