"""`taskq_operator.liveness.TickHealth`: the age of the last completed tick against the stall limit."""

from __future__ import annotations

import pytest

from taskq_operator.liveness import TickHealth, TickStalled


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("completed_at", "now", "stalled"),
    [
        (None, 100.0, False),  # just started
        (None, 129.9, False),  # no tick yet, within the limit from start-up
        (None, 130.5, True),  # no tick completed since start-up for longer than the limit
        (110.0, 139.0, False),
        (110.0, 140.5, True),
    ],
)
def test_stall_is_the_age_of_the_last_completed_tick(completed_at: float | None, now: float, stalled: bool) -> None:
    clock = Clock()
    health = TickHealth(stall_after_s=30, clock=clock)
    if completed_at is not None:
        clock.now = completed_at
        health.tick_completed()
    clock.now = now
    if stalled:
        with pytest.raises(TickStalled, match="limit 30 s"):
            health.report()
    else:
        assert health.report()["last_tick_age_s"] == round(now - (completed_at or 100.0), 3)


def test_a_completed_tick_makes_a_stalled_operator_healthy_again() -> None:
    clock = Clock()
    health = TickHealth(stall_after_s=5, clock=clock)
    clock.now += 6
    with pytest.raises(TickStalled, match="no scaler tick completed 6.0 s ago"):
        health.report()
    health.tick_completed()
    assert health.report() == {"last_tick_age_s": 0.0, "ticks": 1}
