"""Tests of `core.rates`: service rate per replica from heartbeats, arrival rate from publish rate or backlog."""

from __future__ import annotations

import pytest

from taskq_operator.core.policy import Observation
from taskq_operator.core.rates import WINDOW_S, Beat, RateState, arrival_rate, scaled_to, update, with_rates

SLOTS = 4


def run(ticks: list[dict[str, tuple[float, int, int]]], backlogs: list[int | None] | None = None) -> RateState:
    """Feed one heartbeat map per tick (2 s apart): worker -> (at, processed, inflight)."""
    state = RateState()
    for i, beats in enumerate(ticks):
        backlog = backlogs[i] if backlogs else None
        state = update(state, {w: Beat(*b) for w, b in beats.items()}, backlog, SLOTS, 2.0 * i)
    return state


def steady(workers: int, per_s: float, inflight: int, seconds: int) -> list[dict[str, tuple[float, int, int]]]:
    return [{f"w{n}": (2.0 * i, round(per_s * 2.0 * i), inflight) for n in range(workers)} for i in range(seconds // 2 + 1)]


def test_saturated_workers_give_their_throughput() -> None:
    state = run(steady(workers=3, per_s=5.0, inflight=8, seconds=20))  # all 4 slots busy: 5/s is the capacity
    assert state.service_rate == pytest.approx(5.0)


def test_half_busy_workers_are_corrected_for_idle_slots() -> None:
    state = run(steady(workers=2, per_s=1.0, inflight=2, seconds=20))  # 2 of 4 slots busy: 1/s seen, 2/s capacity
    assert state.service_rate == pytest.approx(2.0)


def test_idle_workers_leave_the_previous_estimate() -> None:
    ticks = steady(workers=1, per_s=5.0, inflight=4, seconds=10)
    last = ticks[-1]["w0"]
    ticks += [{"w0": (last[0] + 2.0 * i, last[1], 0)} for i in range(1, 30)]
    assert run(ticks).service_rate == pytest.approx(5.0)


def test_busy_slots_without_completions_lower_the_estimate() -> None:
    ticks = steady(workers=1, per_s=5.0, inflight=4, seconds=10)
    last = ticks[-1]["w0"]
    # tasks became long: all slots held for the whole window, nothing acked
    ticks += [{"w0": (last[0] + 2.0 * i, last[1], 4)} for i in range(1, int(WINDOW_S / 2) + 3)]
    rate = run(ticks).service_rate
    assert rate is not None and rate <= 1.0 / WINDOW_S + 1e-9


def test_the_estimate_follows_a_slowdown_within_the_window() -> None:
    fast = steady(workers=2, per_s=10.0, inflight=6, seconds=30)
    at, done = fast[-1]["w0"][0], fast[-1]["w0"][1]
    slow = [{f"w{n}": (at + 2.0 * i, done + round(0.5 * 2.0 * i), 6) for n in range(2)} for i in range(1, 20)]
    assert run(fast + slow).service_rate == pytest.approx(0.5, rel=0.05)


def test_a_restarted_worker_counts_from_its_restart() -> None:
    ticks = steady(workers=1, per_s=5.0, inflight=4, seconds=10)
    ticks += [{"w0": (10.0 + 2.0 * i, round(5.0 * 2.0 * i), 4)} for i in range(1, 6)]
    assert run(ticks).service_rate == pytest.approx(5.0)


def test_arrivals_from_the_backlog_change_plus_completions() -> None:
    # 2 workers complete 3/s each; the backlog grows by 4/s: 10/s arrive
    ticks = steady(workers=2, per_s=3.0, inflight=8, seconds=20)
    state = run(ticks, [100 + 8 * i for i in range(len(ticks))])
    assert arrival_rate(state) == pytest.approx(10.0, rel=0.02)
    observation = with_rates(Observation(ready=180, unacked=0), state)
    assert observation is not None and observation.arrival_rate == pytest.approx(10.0, rel=0.02)


def test_the_publish_rate_wins_and_is_averaged_over_the_window() -> None:
    state = RateState()
    for i, published in enumerate([5.0, 5.0, 125.0, 5.0]):  # a burst in one statistics sample
        state = update(state, {"w0": Beat(2.0 * i, 6 * i, 8)}, 50, SLOTS, 2.0 * i, published)
    observation = with_rates(Observation(ready=50, unacked=0, publish_rate=5.0), state)
    assert observation is not None
    assert (observation.arrival_rate, observation.service_rate) == (35.0, pytest.approx(3.0))


def test_startup_is_timed_from_the_scale_up_to_the_first_new_heartbeat() -> None:
    state = scaled_to(update(RateState(), {"w0": Beat(0.0, 0, 1)}, 0, SLOTS, 0.0), 1, 0.0)
    state = scaled_to(update(state, {"w0": Beat(2.0, 0, 1)}, 40, SLOTS, 2.0), 3, 2.0)  # 1 -> 3
    state = update(state, {"w0": Beat(4.0, 0, 1)}, 40, SLOTS, 4.0)
    state = update(state, {"w0": Beat(8.0, 0, 1), "w1": Beat(7.5, 0, 2)}, 40, SLOTS, 8.0)
    assert state.startup_s == pytest.approx(6.0)
    state = update(state, {"w0": Beat(10.0, 0, 1), "w1": Beat(9.5, 0, 2), "w2": Beat(9.9, 0, 2)}, 40, SLOTS, 10.0)
    assert state.startup_s == pytest.approx(7.0)  # (6 + 8) / 2
    observation = with_rates(Observation(ready=40, unacked=0), state)
    assert observation is not None and observation.startup_s == pytest.approx(7.0)
    assert scaled_to(state, 1, 12.0).pending == ()
