"""Broker-side administration of a taskq queue: depth and consumers, dead letters, requeue, purge
(work queue, delay queues and dead letters).

Depth comes from a passive `queue_declare` (exact and immediate, but ready messages only; see
docs/architecture.md). Called by `taskq.Client` (and through it the CLI and the HTTP service) with a
`BlockingConnection` it owns; pika errors become `taskq.errors` through `translated`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pika
import pika.exceptions as pe
from pika.adapters.blocking_connection import BlockingChannel

from taskq.broker.connection import translated
from taskq.core.message import MalformedMessage, TaskMessage, decode
from taskq.core.schedule import delay_buckets_ms
from taskq.core.topology import DEAD_REASON_HEADER, dead_queue, retry_queue

NOT_FOUND = 404
PERSISTENT = 2
DEAD_HEADER_LIMIT_CHARS = 1000


@dataclass(frozen=True)
class QueueDepth:
    """Ready messages and consumers of one RabbitMQ queue, as a passive declare reports them."""

    messages: int
    consumers: int


@dataclass(frozen=True)
class DeadLetter:
    """One message in a dead-letter queue, decoded when it is a valid task."""

    task_id: str | None
    reason: str
    body: bytes
    message: TaskMessage | None


@dataclass(frozen=True)
class RequeueReport:
    """What `requeue_dead` did: ids sent back to the work queue, and how many it left in place."""

    requeued: list[str]
    left: int


def queue_depth(connection: pika.BlockingConnection, name: str) -> QueueDepth | None:
    """Depth and consumers of queue `name`, or None when it does not exist."""
    with translated(f"inspecting queue {name!r}", "the broker"):
        channel = connection.channel()
        try:
            ok = channel.queue_declare(name, passive=True)
        except pe.ChannelClosedByBroker as exc:
            if exc.reply_code == NOT_FOUND:
                return None
            raise
        channel.close()
    return QueueDepth(messages=ok.method.message_count, consumers=ok.method.consumer_count)


def _dead_letter(method_props: pika.BasicProperties, body: bytes) -> DeadLetter:
    headers = method_props.headers or {}
    reason = headers.get(DEAD_REASON_HEADER, "")
    if isinstance(reason, bytes):
        reason = reason.decode("utf-8", "replace")
    try:
        message: TaskMessage | None = decode(body)
    except MalformedMessage:
        message = None
    task_id = message.id if message is not None else method_props.message_id
    return DeadLetter(task_id=task_id, reason=str(reason), body=body, message=message)


def _fetch(channel: BlockingChannel, queue: str, limit: int) -> list[tuple[int, DeadLetter]]:
    """Up to `limit` messages of `queue`, unacked on `channel` (closing it puts them back)."""
    fetched: list[tuple[int, DeadLetter]] = []
    for _ in range(limit):
        method, props, body = channel.basic_get(queue, auto_ack=False)
        if method is None:
            break
        fetched.append((method.delivery_tag, _dead_letter(props, body)))
    return fetched


def peek_dead(connection: pika.BlockingConnection, queue: str, limit: int) -> list[DeadLetter]:
    """Up to `limit` dead letters of `queue`, left in the dead-letter queue in their order."""
    depth = queue_depth(connection, dead_queue(queue))
    if depth is None or depth.messages == 0:
        return []
    with translated(f"reading dead letters of {queue!r}", "the broker"):
        channel = connection.channel()
        letters = [letter for _, letter in _fetch(channel, dead_queue(queue), min(limit, depth.messages))]
        channel.close()
    return letters


def dead_letter(connection: pika.BlockingConnection, queue: str, message: TaskMessage, reason: str) -> None:
    """Put a task's message into the dead-letter queue of `queue` with `reason` in its header (confirmed)."""
    with translated(f"dead-lettering a task of {queue!r}", "the broker"):
        channel = connection.channel()
        channel.confirm_delivery()
        properties = pika.BasicProperties(
            delivery_mode=PERSISTENT,
            content_type="application/json",
            message_id=message.id,
            headers={DEAD_REASON_HEADER: reason[:DEAD_HEADER_LIMIT_CHARS]},
        )
        channel.basic_publish("", dead_queue(queue), message.encode(), properties, mandatory=True)
        channel.close()


def requeue_dead(
    connection: pika.BlockingConnection,
    queue: str,
    limit: int,
    prepare: Callable[[DeadLetter], bytes | None],
) -> RequeueReport:
    """Move up to `limit` dead letters back to the work queue.

    `prepare` gets each letter and returns the body to publish, or None to leave the letter where it
    is (e.g. a malformed message). Each letter is acked only after its republish is confirmed.
    """
    depth = queue_depth(connection, dead_queue(queue))
    if depth is None or depth.messages == 0:
        return RequeueReport(requeued=[], left=0)
    requeued: list[str] = []
    left = 0
    with translated(f"requeueing dead letters of {queue!r}", "the broker"):
        source = connection.channel()
        target = connection.channel()
        target.confirm_delivery()
        for tag, letter in _fetch(source, dead_queue(queue), min(limit, depth.messages)):
            body = prepare(letter) if letter.message is not None else None
            if body is None or letter.message is None:
                left += 1
                continue
            target.basic_publish(
                exchange="",
                routing_key=queue,
                body=body,
                properties=pika.BasicProperties(
                    delivery_mode=PERSISTENT,
                    content_type="application/json",
                    message_id=letter.message.id,
                    priority=letter.message.priority,
                ),
                mandatory=True,
            )
            source.basic_ack(tag)
            requeued.append(letter.message.id)
        target.close()
        source.close()
    return RequeueReport(requeued=requeued, left=left)


def _purge_delay_queues(connection: pika.BlockingConnection, queue: str) -> dict[str, int]:
    """Purge every existing delay queue of `queue` (`Q.retry.<ms>`: countdown/eta tasks and retry waits).

    AMQP cannot list queues, so each possible bucket is tried (`delay_buckets_ms`, 288 names); a missing
    one closes the channel with 404 and the next try opens another (about 0.2 s in all on loopback).
    """
    dropped: dict[str, int] = {}
    with translated(f"purging the delay queues of {queue!r}", "the broker"), _quiet_not_found():
        channel: BlockingChannel | None = None
        for bucket in delay_buckets_ms():
            name = retry_queue(queue, bucket)
            if channel is None or not channel.is_open:
                channel = connection.channel()
            try:
                dropped[name] = channel.queue_purge(name).method.message_count
            except pe.ChannelClosedByBroker as exc:
                if exc.reply_code != NOT_FOUND:
                    raise
        if channel is not None and channel.is_open:
            channel.close()
    return dropped


class _NotFoundFilter(logging.Filter):
    """Drops pika's warning about a 404 channel close while `_quiet_not_found` is active in this thread."""

    def __init__(self) -> None:
        super().__init__()
        self.active = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(self.active, "on", False) and "(404)" in record.getMessage())


_NOT_FOUND_FILTER = _NotFoundFilter()
logging.getLogger("pika.channel").addFilter(_NOT_FOUND_FILTER)


@contextmanager
def _quiet_not_found() -> Iterator[None]:
    """Within the block, pika does not log the expected 404s of probing for delay queues."""
    _NOT_FOUND_FILTER.active.on = True
    try:
        yield
    finally:
        _NOT_FOUND_FILTER.active.on = False


def purge(connection: pika.BlockingConnection, queue: str, *, include_dead: bool) -> dict[str, int]:
    """Drop the messages waiting in `queue`'s delay queues, then its ready messages (and its dead
    letters); how many per RabbitMQ queue. Delay queues first: a message expiring meanwhile lands in
    the work queue, which is purged after."""
    names = [queue, dead_queue(queue)] if include_dead else [queue]
    dropped: dict[str, int] = _purge_delay_queues(connection, queue)
    for name in names:
        if queue_depth(connection, name) is None:
            continue
        with translated(f"purging queue {name!r}", "the broker"):
            channel = connection.channel()
            ok = channel.queue_purge(name)
            channel.close()
        dropped[name] = ok.method.message_count
    return dropped
