"""The control exchange of a queue: cancel notices published by a canceller, received by every worker at once.

One durable fanout exchange per taskq queue (`taskq.core.cancel.control_exchange`); each worker binds
an exclusive, auto-deleted queue of its own to it and consumes it without acks, on its consumer
connection. Notices are transient and best effort: the record of a cancel is its outcome claim in
the store (see `taskq.core.cancel`). Used by `taskq.client` (publish) and `taskq.worker.consumer`.
"""

from __future__ import annotations

from collections.abc import Callable

import pika
from pika.adapters.blocking_connection import BlockingChannel

from taskq.core.cancel import CancelNotice, control_exchange

NOTICE_TTL_MS = 60_000
"""A notice not consumed within a minute is dropped (its claim still stands)."""


def declare_control_exchange(channel: BlockingChannel, queue: str) -> str:
    """Declare (idempotently) the control exchange of `queue`; its name."""
    name = control_exchange(queue)
    channel.exchange_declare(name, exchange_type="fanout", durable=True)
    return name


def publish_notice(channel: BlockingChannel, queue: str, notice: CancelNotice) -> None:
    """Announce a cancel to the workers of `queue` (no confirm: a lost notice costs only latency)."""
    name = declare_control_exchange(channel, queue)
    properties = pika.BasicProperties(content_type="application/json", expiration=str(NOTICE_TTL_MS))
    channel.basic_publish(name, "", notice.encode(), properties)


def consume_notices(channel: BlockingChannel, queue: str, on_notice: Callable[[CancelNotice], None]) -> str:
    """Bind a private queue of this consumer to `queue`'s control exchange and consume it; the consumer tag."""
    name = declare_control_exchange(channel, queue)
    declared = channel.queue_declare("", exclusive=True, auto_delete=True)
    private = declared.method.queue
    channel.queue_bind(private, name)

    def deliver(_channel: object, _method: object, _properties: object, body: bytes) -> None:
        notice = CancelNotice.decode(bytes(body))
        if notice is not None:
            on_notice(notice)

    return str(channel.basic_consume(private, deliver, auto_ack=True))
