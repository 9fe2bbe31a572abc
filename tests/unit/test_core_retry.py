"""Retry arithmetic of the pure core: exponential ceiling, jitter range, buckets, when to stop."""

from __future__ import annotations

import pytest

from taskq.core.retry import RetryPolicy, delay_bucket_ms, should_retry


def test_ceiling_grows_exponentially_and_is_capped() -> None:
    policy = RetryPolicy(initial_s=1, max_s=300, factor=2)
    assert [policy.ceiling(n) for n in range(1, 6)] == [1, 2, 4, 8, 16]
    assert policy.ceiling(20) == 300
    assert policy.ceiling(10_000) == 300


@pytest.mark.parametrize("unit", [0.0, 0.25, 0.5, 0.999999])
def test_jittered_delay_lies_between_half_and_full_ceiling(unit: float) -> None:
    policy = RetryPolicy(initial_s=2, max_s=100, factor=3)
    for attempt in range(1, 8):
        top = policy.ceiling(attempt)
        assert top / 2 <= policy.delay(attempt, unit) <= top


def test_delay_rejects_a_random_outside_the_unit_interval() -> None:
    with pytest.raises(ValueError):
        RetryPolicy().delay(1, 1.0)


@pytest.mark.parametrize("bad", [dict(initial_s=0), dict(initial_s=5, max_s=1), dict(factor=0.5)])
def test_invalid_policies_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**bad)


@pytest.mark.parametrize(
    ("delay", "bucket"), [(0, 1000), (0.2, 1000), (1.0, 1000), (1.01, 2000), (9.5, 10000), (10.5, 16000), (100, 128000)]
)
def test_buckets_round_up(delay: float, bucket: int) -> None:
    assert delay_bucket_ms(delay) == bucket
    assert delay_bucket_ms(delay) >= delay * 1000


def test_should_retry_counts_attempts_from_one() -> None:
    assert should_retry(1, 2) and should_retry(2, 2)
    assert not should_retry(3, 2)
    assert not should_retry(1, 0)
