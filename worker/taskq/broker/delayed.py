"""Routing delayed tasks (an `eta` in the future) to their delay queue instead of the work queue.

The message goes to `Q.retry.<bucket ms>` (declared here first: a delay queue deletes itself when
idle) with a per-message expiration of its remaining wait; the broker dead-letters it into the work
queue when it expires (bucket choice and precision: `taskq.core.schedule`). So the wait is spent in
the broker, not in a worker, and the work queue's backlog (what the operator scales on) does not
count it. Used by `taskq.Client` (submissions, retries of finished tasks) and `taskq.sweeper`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime

import pika

from taskq.broker.connection import translated
from taskq.broker.publisher import Outgoing
from taskq.broker.topology import declare_retry_queue
from taskq.core.message import MalformedMessage, decode
from taskq.core.schedule import delay_ms, schedule_bucket_ms
from taskq.core.topology import retry_queue

DeclareDelay = Callable[[str, int], None]
"""`declare(queue, bucket_ms)`: make sure the delay queue of that bucket exists."""


def declare_delay_queue(connection: pika.BlockingConnection, queue: str, bucket_ms: int, queue_type: str) -> None:
    """Declare the delay queue of `queue` for `bucket_ms` on a channel of its own (idempotent)."""
    with translated(f"declaring the delay queue of {queue!r}", "the broker"):
        channel = connection.channel()
        declare_retry_queue(channel, queue, bucket_ms, queue_type)
        channel.close()


def eta_of(body: bytes) -> datetime | None:
    """The `eta` of an encoded task message, or None (none, or not a readable message)."""
    try:
        if b'"eta"' not in body:
            return None
        return decode(body).eta
    except (MalformedMessage, json.JSONDecodeError):
        return None


def route(items: Sequence[tuple[Outgoing, datetime | None]], now: datetime, declare: DeclareDelay) -> list[Outgoing]:
    """Each outgoing message as it is to be published: unchanged when due, else to its delay queue.

    The wait is measured at `now`, before the delay queues are declared, so it is never shorter than
    what remains when the broker takes the message.
    """
    routed: list[Outgoing] = []
    buckets: set[tuple[str, int]] = set()
    for outgoing, eta in items:
        wait = delay_ms(eta, now)
        if wait <= 0:
            routed.append(outgoing)
            continue
        bucket = schedule_bucket_ms(wait)
        buckets.add((outgoing.routing_key, bucket))
        routed.append(replace(outgoing, routing_key=retry_queue(outgoing.routing_key, bucket), expiration_ms=wait))
    for queue, bucket in sorted(buckets):
        declare(queue, bucket)
    return routed
