"""`delay_buckets_ms`, the list `purge` walks: it must hold every bucket a delayed task or a retry can use."""

from __future__ import annotations

import random

from taskq.core.limits import RETRY_DELAY_S
from taskq.core.retry import delay_bucket_ms
from taskq.core.schedule import MAX_DELAY_S, delay_buckets_ms, schedule_bucket_ms


def test_every_schedule_bucket_is_listed() -> None:
    listed = set(delay_buckets_ms())
    rng = random.Random(7)
    waits = {1, 999, 1000, 10_001, 16_000, 16_001, 32_000, 32_001, MAX_DELAY_S * 1000 - 1, MAX_DELAY_S * 1000}
    waits |= {2**k * 1000 + d for k in range(4, 21) for d in (-1, 0, 1)}
    waits |= {rng.randint(1, MAX_DELAY_S * 1000) for _ in range(20_000)}
    missing = sorted(w for w in waits if schedule_bucket_ms(w) not in listed)
    assert not missing, missing[:10]


def test_every_retry_bucket_is_listed() -> None:
    listed = set(delay_buckets_ms())
    delays = [0.0, 0.5, 1.0, 9.9, 10.0, 10.1, 100.0, 4000.5, float(RETRY_DELAY_S.high)]
    delays += [x / 10 for x in range(1, int(RETRY_DELAY_S.high) * 10, 9973)]
    assert all(delay_bucket_ms(d) in listed for d in delays)


def test_the_list_is_ascending_and_has_no_spare_names() -> None:
    buckets = delay_buckets_ms()
    assert list(buckets) == sorted(set(buckets)) and len(buckets) == 288
    assert buckets[0] == 1000 and buckets[-1] == MAX_DELAY_S * 1000
