"""Publishing retries to delay queues and failures to the dead-letter queue, with publisher confirms.

Runs on the consumer's connection thread only (pika channels are not thread-safe). Each publish is
confirmed before the original delivery is acked, so a retry or a dead letter is never lost between
the two. Used by `taskq.worker.consumer`.
"""

from __future__ import annotations

import pika
from pika.adapters.blocking_connection import BlockingChannel

from taskq.broker.admin import DEAD_HEADER_LIMIT_CHARS
from taskq.broker.topology import declare_retry_queue
from taskq.core.outcomes import DeadLetter, Retry
from taskq.core.topology import DEAD_REASON_HEADER, dead_queue


class Republisher:
    """A confirm-mode channel for the retry and dead-letter publishes of one work queue."""

    def __init__(self, connection: pika.BlockingConnection, queue: str, queue_type: str = "classic") -> None:
        self._queue = queue
        self._queue_type = queue_type
        self._channel: BlockingChannel = connection.channel()
        self._channel.confirm_delivery()

    def retry(self, retry: Retry) -> None:
        """Put the next attempt into its delay queue; it returns to the work queue when it expires."""
        # Declared on every retry: the delay queue deletes itself when idle (`x-expires`), and a
        # publish to a missing queue would be dropped. Retries are rare enough for one extra round trip.
        name = declare_retry_queue(self._channel, self._queue, retry.bucket_ms, self._queue_type)
        properties = pika.BasicProperties(
            delivery_mode=2,
            content_type="application/json",
            message_id=retry.message.id,
            priority=retry.message.priority,
            expiration=str(retry.delay_ms),
        )
        self._channel.basic_publish("", name, retry.message.encode(), properties, mandatory=True)

    def dead_letter(self, dead: DeadLetter, original: pika.BasicProperties | None) -> None:
        """Put `dead.body` into the dead-letter queue with the reason in its header."""
        headers = dict((original.headers or {}) if original is not None else {})
        headers[DEAD_REASON_HEADER] = dead.reason[:DEAD_HEADER_LIMIT_CHARS]
        properties = pika.BasicProperties(
            delivery_mode=2,
            content_type=(original.content_type if original is not None else None) or "application/octet-stream",
            message_id=original.message_id if original is not None else None,
            headers=headers,
        )
        self._channel.basic_publish("", dead_queue(self._queue), dead.body, properties, mandatory=True)
