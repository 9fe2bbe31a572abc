"""Retry policy arithmetic: exponential backoff with equal jitter (uniform in [ceiling/2, ceiling]), and delay buckets.

A retry waits in a delay queue whose messages all share one TTL (RabbitMQ expires messages only at
the head of a queue, so mixing TTLs in one queue would hold short delays behind long ones). Delays
are rounded up to a bucket; the number of buckets stays small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait before attempt `n + 1` after attempt `n` failed."""

    initial_s: float = 1.0
    max_s: float = 300.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s < self.initial_s or self.factor < 1:
            raise ValueError("retry policy needs 0 < initial <= max and factor >= 1")

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the delay after failed attempt number `attempt` (1-based)."""
        exponent = max(attempt, 1) - 1
        # Cap the exponent so huge attempt counts cannot overflow the float.
        raw = self.initial_s * self.factor ** min(exponent, 64)
        return min(self.max_s, raw)

    def delay(self, attempt: int, unit_random: float) -> float:
        """The jittered delay: uniform in [ceiling/2, ceiling], given a uniform number in [0, 1)."""
        if not 0.0 <= unit_random < 1.0:
            raise ValueError("unit_random must be in [0, 1)")
        top = self.ceiling(attempt)
        return top / 2 + (top / 2) * unit_random


def delay_bucket_ms(delay_s: float) -> int:
    """Round a delay up to its bucket: 1 s steps to 10 s, then powers of two seconds, in ms."""
    if delay_s <= 0:
        return 1000
    if delay_s <= 10:
        return int(math.ceil(delay_s)) * 1000
    return int(2 ** math.ceil(math.log2(delay_s))) * 1000


def should_retry(attempt: int, max_retries: int) -> bool:
    """Whether a task whose attempt number `attempt` (1-based) failed gets another attempt."""
    return attempt <= max_retries
