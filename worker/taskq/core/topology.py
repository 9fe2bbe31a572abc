"""Names and arguments of the RabbitMQ queues behind one taskq queue (see docs/architecture.md).

Producer, worker and operator all derive the topology from here, so their declarations agree.
"""

from __future__ import annotations

from typing import Any

from taskq.core.limits import queue_consumer_timeout_ms

DEAD_SUFFIX = ".dead"
RETRY_INFIX = ".retry."
DEAD_REASON_HEADER = "x-taskq-dead-reason"
REPUBLISHED_HEADER = "x-taskq-republished"
"""Set on a message published again (outbox sweep, resubmission, stuck sweep): its worker checks the
task's state before running it, as for a redelivery, since the first copy may have been delivered."""


def dead_queue(queue: str) -> str:
    """The dead-letter queue of `queue`."""
    return queue + DEAD_SUFFIX


def retry_queue(queue: str, bucket_ms: int) -> str:
    """The delay queue holding retries of `queue` that wait `bucket_ms`."""
    return f"{queue}{RETRY_INFIX}{bucket_ms}"


QUEUE_TYPES = ("classic", "quorum")
QUORUM_DELIVERY_LIMIT_MARGIN = 5
"""A quorum queue's own delivery limit sits above the worker's, so the worker's `delivery-limit`
dead-lettering (with a reason and a recorded state) normally acts first; past the broker's limit the
broker dead-letters to `Q.dead` itself rather than dropping the message."""


def _check_type(queue_type: str) -> None:
    if queue_type not in QUEUE_TYPES:
        raise ValueError(f"queue type must be one of {', '.join(QUEUE_TYPES)}, not {queue_type!r}")


def work_queue_arguments(
    queue: str, *, max_priority: int, task_timeout_s: float, queue_type: str = "classic", max_deliveries: int = 5
) -> dict[str, Any]:
    """Arguments of the work queue.

    Classic: `x-max-priority`. Quorum (replicated): `x-queue-type`, priorities without arguments
    (RabbitMQ 4.0 quorum queues have two levels: priority 0–4 normal, above 4 high), a broker
    delivery limit above the worker's, dead-lettering to `Q.dead`. Both: a consumer timeout covering
    a lease and an attempt (`taskq.core.limits.queue_consumer_timeout_ms`).
    """
    _check_type(queue_type)
    timeout = {"x-consumer-timeout": queue_consumer_timeout_ms(task_timeout_s)}
    if queue_type == "classic":
        return {"x-max-priority": int(max_priority), **timeout}
    return {
        **timeout,
        "x-queue-type": "quorum",
        "x-delivery-limit": int(max_deliveries) + QUORUM_DELIVERY_LIMIT_MARGIN,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_queue(queue),
    }


def side_queue_arguments(queue_type: str) -> dict[str, Any] | None:
    """Arguments of the dead-letter queue: the work queue's type, so dead letters are as safe as work."""
    _check_type(queue_type)
    return {"x-queue-type": "quorum"} if queue_type == "quorum" else None


def retry_queue_arguments(queue: str, bucket_ms: int, queue_type: str = "classic") -> dict[str, Any]:
    """Arguments of a delay queue: expire after `bucket_ms`, then dead-letter back to the work queue.

    An idle delay queue deletes itself (`x-expires`) so old buckets do not pile up. With quorum work
    queues the delay queues are quorum too (a waiting retry survives a broker node's loss).
    """
    _check_type(queue_type)
    arguments: dict[str, Any] = {
        "x-message-ttl": int(bucket_ms),
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": queue,
        "x-expires": int(bucket_ms) * 2 + 60_000,
    }
    if queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
    return arguments
