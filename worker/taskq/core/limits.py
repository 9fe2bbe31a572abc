"""The arithmetic of a worker's limits: which timeout and retry count apply, prefetch, consumer timeout, lease.

Precedence (one table in the README): the producer's per-message value, then the task decorator's,
then the worker's own (`TASKQ_MAX_RETRIES`, `TASKQ_TASK_TIMEOUT`, set from the TaskQueue's
`spec.tasks`); the first one given is the default and every later one is a cap, so a worker never
honours more than its own limit. Pure; used by the worker runtime and the operator's docs/tests.
"""

from __future__ import annotations

from dataclasses import dataclass

CONSUMER_TIMEOUT_MARGIN_S = 60.0
"""Slack on top of the worst case: group commit, a slow store write, the ack's round trip."""


@dataclass(frozen=True)
class AttemptLimits:
    """What one attempt of one task may use, after precedence."""

    timeout_s: float
    max_retries: int


def first_capped(values: tuple[float | None, ...], limit: float) -> float:
    """The smallest of the given `values` and `limit` (None means "not given")."""
    return min([v for v in values if v is not None] + [limit])


def attempt_limits(
    *,
    message_timeout: float | None,
    message_retries: int | None,
    task_timeout: float | None,
    task_retries: int | None,
    worker_timeout: float,
    worker_retries: int,
) -> AttemptLimits:
    """The timeout and retry count an attempt gets (message <= decorator <= worker)."""
    return AttemptLimits(
        timeout_s=first_capped((message_timeout, task_timeout), worker_timeout),
        max_retries=int(first_capped((message_retries, task_retries), worker_retries)),
    )


def kill_grace_s(timeout_s: float) -> float:
    """How long after the soft timeout signal a task's process is killed: 10 % of the timeout, 1–10 s."""
    return min(10.0, max(1.0, 0.1 * timeout_s))


def default_prefetch(concurrency: int) -> int:
    """Prefetch when none is set: one message per slot plus a look-ahead of one per slot.

    The look-ahead hides the ack → next delivery round trip after each task; more than that only
    makes messages wait in this worker that another worker could run (and may run into the lease
    below).
    """
    return 2 * concurrency


LEASE_MARGIN_S = 15.0
"""How long before the broker's consumer timeout a waiting delivery is handed back (ack latency, slack)."""


def queue_consumer_timeout_ms(timeout_s: float) -> int:
    """The work queue's `x-consumer-timeout` for tasks of at most `timeout_s`: two attempts plus a margin.

    RabbitMQ 4.0 counts the timeout from delivery and reads it only from the queue (argument or
    policy, the smaller) or the broker's `consumer_timeout`; a per-consumer argument is ignored
    there. A delivery may wait for a slot for at most `lease_s` (see below) and then run one attempt,
    so delivery → ack stays under this value whatever the prefetch.
    """
    attempt_s = timeout_s + kill_grace_s(timeout_s)
    return int((2 * attempt_s + CONSUMER_TIMEOUT_MARGIN_S) * 1000)


def lease_s(timeout_s: float) -> float:
    """How long a delivery may wait in a worker before it starts; after that it goes back to the queue.

    With the default look-ahead (one per slot) a waiting delivery starts within one attempt, so the
    lease never runs out; with a larger prefetch the oldest waiting deliveries are returned unstarted
    (never run twice) before `queue_consumer_timeout_ms` could close the channel.
    """
    return queue_consumer_timeout_ms(timeout_s) / 1000 - (timeout_s + kill_grace_s(timeout_s)) - LEASE_MARGIN_S
