"""Names and arguments of the RabbitMQ queues behind one taskq queue (see docs/architecture.md).

Producer, worker and operator all derive the topology from here, so their declarations agree.
"""

from __future__ import annotations

from typing import Any

DEAD_SUFFIX = ".dead"
RETRY_INFIX = ".retry."
DEAD_REASON_HEADER = "x-taskq-dead-reason"
CONSUMER_TIMEOUT_MARGIN_S = 60.0


def dead_queue(queue: str) -> str:
    """The dead-letter queue of `queue`."""
    return queue + DEAD_SUFFIX


def retry_queue(queue: str, bucket_ms: int) -> str:
    """The delay queue holding retries of `queue` that wait `bucket_ms`."""
    return f"{queue}{RETRY_INFIX}{bucket_ms}"


def work_queue_arguments(max_priority: int, task_timeout_s: float) -> dict[str, Any]:
    """Arguments of the work queue: priorities, and a consumer timeout longer than any task."""
    return {
        "x-max-priority": int(max_priority),
        "x-consumer-timeout": int((task_timeout_s + CONSUMER_TIMEOUT_MARGIN_S) * 1000),
    }


def retry_queue_arguments(queue: str, bucket_ms: int) -> dict[str, Any]:
    """Arguments of a delay queue: expire after `bucket_ms`, then dead-letter back to the work queue.

    An idle delay queue deletes itself (`x-expires`) so old buckets do not pile up.
    """
    return {
        "x-message-ttl": int(bucket_ms),
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": queue,
        "x-expires": int(bucket_ms) * 2 + 60_000,
    }
