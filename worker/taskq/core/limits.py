"""The arithmetic of a worker's limits: which timeout and retry count apply, prefetch, consumer timeout.

Precedence (one table in the README): the producer's per-message value, then the task decorator's,
then the worker's own (`TASKQ_MAX_RETRIES`, `TASKQ_TASK_TIMEOUT`, set from the TaskQueue's
`spec.tasks`); the first one given is the default and every later one is a cap, so a worker never
honours more than its own limit. Pure; used by the worker runtime and the operator's docs/tests.
"""

from __future__ import annotations

import math
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
    makes messages wait in this worker that another worker could run (and must be covered by the
    consumer timeout below).
    """
    return 2 * concurrency


def consumer_timeout_ms(*, prefetch: int, concurrency: int, timeout_s: float) -> int:
    """The per-consumer delivery timeout to ask the broker for (`x-consumer-timeout` on basic.consume).

    RabbitMQ counts it from delivery, so a prefetched message that waits for a free slot uses it up
    while it waits: the worst case is waiting for `ceil(look-ahead / concurrency)` attempts of the
    longest allowed length, then running one itself, each attempt including its kill grace.
    """
    waiting_rounds = math.ceil(max(prefetch - concurrency, 0) / max(concurrency, 1))
    attempt_s = timeout_s + kill_grace_s(timeout_s)
    return int(((waiting_rounds + 1) * attempt_s + CONSUMER_TIMEOUT_MARGIN_S) * 1000)
