"""Delayed tasks as pure arithmetic: how long a message with an `eta` waits, and in which delay queue.

A delayed task's message is published to a delay queue `Q.retry.<bucket ms>` (the retries' queues,
`taskq.core.topology.retry_queue`) with a per-message expiration of its exact remaining delay in ms;
when it expires the broker dead-letters it into the work queue. RabbitMQ expires messages only at
the head of a queue, so a message can wait behind one with a longer expiration in the same bucket:
the buckets here are fine enough that this costs at most one step of the bucket (1 s up to 16 s,
then 1/16 of the delay). A message is never published with less than its remaining delay, so it
does not reach the work queue early (measured against the producer's clock).
"""

from __future__ import annotations

import math
from datetime import datetime

from taskq.core.retry import delay_bucket_ms

MAX_DELAY_S = 2**21
"""The longest countdown (about 24 days): its bucket's TTL and `x-expires` stay within RabbitMQ's 32-bit ms limits."""
STEPS_PER_OCTAVE = 16


def delay_ms(eta: datetime | None, now: datetime) -> int:
    """How many ms a message due at `eta` still has to wait at `now` (0: due, publish to the work queue)."""
    if eta is None:
        return 0
    return max(0, math.ceil((eta - now).total_seconds() * 1000))


def schedule_bucket_ms(wait_ms: int) -> int:
    """The delay queue bucket for a wait of `wait_ms` (> 0): rounded up to 1 s up to 16 s, then to 1/16 of an octave.

    Up to 10 s these are the retries' buckets (`taskq.core.retry.delay_bucket_ms`), so both share the queues.
    """
    seconds = wait_ms / 1000
    if seconds <= 10:
        return delay_bucket_ms(seconds)
    if seconds <= 16:
        return math.ceil(seconds) * 1000
    octave = 2 ** math.floor(math.log2(seconds))
    step = octave / STEPS_PER_OCTAVE
    return int(math.ceil(seconds / step) * step * 1000)


def delay_buckets_ms() -> tuple[int, ...]:
    """Every bucket a delay queue can have, ascending: the 288 values `schedule_bucket_ms` (any wait up
    to `MAX_DELAY_S`) and `taskq.core.retry.delay_bucket_ms` (backoffs up to a day) return.

    `taskq purge` looks each one up, since AMQP cannot list a queue's delay queues.
    """
    seconds = set(range(1, 17))
    octave = 16
    while octave < MAX_DELAY_S:
        step = octave // STEPS_PER_OCTAVE
        seconds.update(range(octave + step, 2 * octave + 1, step))
        octave *= 2
    return tuple(sorted(s * 1000 for s in seconds))


def lateness_bound_ms(wait_ms: int) -> int:
    """How late (beyond its eta) a message of this wait can reach the work queue: one step of its bucket."""
    seconds = wait_ms / 1000
    if seconds <= 16:
        return 1000
    return int(2 ** math.floor(math.log2(seconds)) / STEPS_PER_OCTAVE * 1000)
