"""Rates for `targetWaitSeconds`: each TaskQueue's service rate per replica and its arrival rate.

Service rate, from the workers' heartbeats (every 2 s each: `processed`, the tasks it acked so far, and
`inflight`, the deliveries it holds). Between two heartbeats of one worker it completed
`processed` - `processed before` tasks in `dt` pod-seconds with min(inflight, slots) slots busy (the
heartbeat's `inflight` samples the interval it ends);
over the last `WINDOW_S` seconds of all workers, throughput per pod-second divided by the busy
fraction of the slots is what one replica completes per second when all its slots are busy. A busy
fraction under `MIN_BUSY` counts as `MIN_BUSY` (an idle pool says little about its speed; this errs
towards more replicas). Busy slots and no completion in the window: the tasks outgrew the window, and
the estimate becomes "one completion now", an upper bound that falls as the silence goes on. A worker
whose `processed` went down restarted: its count since the restart is taken.

Arrival rate: the broker's publish rate when the management API gives one, else the backlog's change
over the window plus the completions in it (what came in = what is left extra + what was done).

Pure; the scaler keeps one `RateState` per TaskQueue that sets `targetWaitSeconds`, calls `update` once
per tick with the fresh heartbeats and `with_rates` to put the estimate into the `Observation` that
`core.policy.decide` reads. Tested by tables in `tests/unit/operator/test_operator_rates.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from taskq_operator.core.policy import Observation

WINDOW_S = 30.0
"""How far back completions count: long enough for a few heartbeats of every pod, short enough to follow a change."""
MIN_SPAN_S = 3.0
"""Fewer pod-seconds than this in the window: no new estimate (the previous one stands)."""
MIN_BUSY = 0.05


@dataclass(frozen=True)
class Beat:
    """One worker's heartbeat: when (its own clock, seconds), tasks acked since it started, deliveries held."""

    at: float
    processed: int
    inflight: int


@dataclass(frozen=True)
class Interval:
    """What one worker did between two of its heartbeats, stamped with the tick that saw it."""

    seen: float
    pod_s: float
    busy_slot_s: float
    completions: int


@dataclass(frozen=True)
class RateState:
    """What the estimate needs from earlier ticks of one TaskQueue."""

    beats: Mapping[str, Beat] = field(default_factory=dict)
    intervals: tuple[Interval, ...] = ()
    backlogs: tuple[tuple[float, int, int], ...] = ()
    """(tick time, backlog, completions counted so far) per tick within the window."""
    completed: int = 0
    service_rate: float | None = None


def _intervals(state: RateState, beats: Mapping[str, Beat], slots: int, now: float) -> list[Interval]:
    found = []
    for worker, beat in beats.items():
        before = state.beats.get(worker)
        if before is None or beat.at <= before.at:
            continue
        dt = beat.at - before.at
        done = beat.processed - before.processed if beat.processed >= before.processed else beat.processed
        busy = min(slots, beat.inflight) * dt
        found.append(Interval(now, dt, busy, done))
    return found


def _service_rate(intervals: tuple[Interval, ...], slots: int, previous: float | None) -> float | None:
    pod_s = sum(i.pod_s for i in intervals)
    if pod_s < MIN_SPAN_S:
        return previous
    done = sum(i.completions for i in intervals)
    busy = min(1.0, sum(i.busy_slot_s for i in intervals) / (slots * pod_s))
    if done > 0:
        return (done / pod_s) / max(busy, MIN_BUSY)
    if busy >= 0.5:  # slots held all window, nothing finished: at most one completion now
        bound = (1.0 / pod_s) / busy
        return bound if previous is None else min(previous, bound)
    return previous


def update(state: RateState, beats: Mapping[str, Beat], backlog: int | None, slots: int, now: float) -> RateState:
    """The state after one tick that read `beats` (fresh heartbeats by worker) and `backlog` (None: unread)."""
    fresh = _intervals(state, beats, slots, now)
    intervals = tuple(i for i in state.intervals if now - i.seen <= WINDOW_S) + tuple(fresh)
    completed = state.completed + sum(i.completions for i in fresh)
    backlogs = tuple(b for b in state.backlogs if now - b[0] <= WINDOW_S)
    if backlog is not None:
        backlogs = backlogs + ((now, backlog, completed),)
    return RateState(
        beats=dict(beats),
        intervals=intervals,
        backlogs=backlogs,
        completed=completed,
        service_rate=_service_rate(intervals, slots, state.service_rate),
    )


def arrival_rate(state: RateState) -> float | None:
    """Arrivals per second from the backlog's change and the completions over the window (None: too short)."""
    if len(state.backlogs) < 2:
        return None
    (t0, b0, c0), (t1, b1, c1) = state.backlogs[0], state.backlogs[-1]
    if t1 - t0 < MIN_SPAN_S:
        return None
    return max(0.0, ((b1 - b0) + (c1 - c0)) / (t1 - t0))


def with_rates(observation: Observation | None, state: RateState) -> Observation | None:
    """`observation` carrying the state's service rate and the arrival rate (publish rate first)."""
    if observation is None:
        return None
    arrivals = observation.publish_rate if observation.publish_rate is not None else arrival_rate(state)
    return dataclasses.replace(observation, service_rate=state.service_rate, arrival_rate=arrivals)
