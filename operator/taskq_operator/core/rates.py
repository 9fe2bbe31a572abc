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

Arrival rate: the broker's publish rate when the management API gives one, averaged over the window
(a burst that is already in the backlog then counts as a burst, not as a new steady rate), else the
backlog's change over the window plus the completions in it (what came in = what is left extra + what
was done).

Start-up time: from the tick that added a replica (`scaled_to`) to the first tick that sees a new
worker's heartbeat, oldest addition first (so it includes scheduling, image pull, start, the first heartbeat);
the policy does not count on new replicas before that.

Pure; the scaler keeps one `RateState` per TaskQueue that sets `targetWaitSeconds`, calls `update` once
per tick with the fresh heartbeats, `with_rates` to put the estimate into the `Observation` that
`core.policy.decide` reads, and `scaled_to` with the decision. Tested by tables in `tests/unit/operator/test_operator_rates.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from taskq_operator.core.policy import Observation

WINDOW_S = 30.0
"""How far back completions and arrivals count: a few heartbeats of every pod, and a burst spread over it."""
RECENT_S = 10.0
"""When the last `RECENT_S` seconds alone give less than `SLOWDOWN` x the whole window's rate, the tasks got
slower and the recent rate is the estimate (a 20x slowdown shows within seconds, noise of a few
completions does not)."""
SLOWDOWN = 0.5
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
    publish_rates: tuple[tuple[float, float], ...] = ()
    """(tick time, the broker's publish rate) per tick within the window that had one."""
    completed: int = 0
    service_rate: float | None = None
    replicas: int | None = None
    """The Deployment's replicas at the last tick."""
    pending: tuple[float, ...] = ()
    """One entry per replica added and not reporting yet: the tick that first saw it wanted (oldest first)."""
    startup_s: float | None = None
    """How long new pods took to report, averaged over scale-ups."""


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


def _startup(state: RateState, beats: Mapping[str, Beat], now: float) -> tuple[tuple[float, ...], float | None]:
    """Pending scale-ups and the start-up estimate after this tick: each new worker answers the oldest."""
    pending, startup = list(state.pending), state.startup_s
    for _ in set(beats) - set(state.beats):
        if pending:
            sample = now - pending.pop(0)
            startup = sample if startup is None else (startup + sample) / 2
    if state.replicas is not None:
        del pending[max(0, state.replicas - len(beats)) :]  # scaled down before they reported: the newest go
    return tuple(pending), startup


def scaled_to(state: RateState, replicas: int, now: float) -> RateState:
    """The state after the tick at `now` set the Deployment to `replicas` (each one added is timed until it reports)."""
    added = replicas - state.replicas if state.replicas is not None else 0
    pending = state.pending + (now,) * max(0, added)
    return dataclasses.replace(state, replicas=replicas, pending=pending)


def _lower(intervals: tuple[Interval, ...], slots: int, previous: float | None, now: float) -> float | None:
    whole = _service_rate(intervals, slots, previous)
    recent = _service_rate(tuple(i for i in intervals if now - i.seen <= RECENT_S), slots, None)
    if recent is None or whole is None:
        return whole
    return recent if recent < SLOWDOWN * whole else whole


def update(
    state: RateState,
    beats: Mapping[str, Beat],
    backlog: int | None,
    slots: int,
    now: float,
    publish_rate: float | None = None,
) -> RateState:
    """The state after one tick that read `beats` (fresh heartbeats by worker), `backlog` (None: unread)
    and the broker's `publish_rate` (None: no management figures)."""
    fresh = _intervals(state, beats, slots, now)
    intervals = tuple(i for i in state.intervals if now - i.seen <= WINDOW_S) + tuple(fresh)
    completed = state.completed + sum(i.completions for i in fresh)
    backlogs = tuple(b for b in state.backlogs if now - b[0] <= WINDOW_S)
    if backlog is not None:
        backlogs = backlogs + ((now, backlog, completed),)
    publish_rates = tuple(p for p in state.publish_rates if now - p[0] <= WINDOW_S)
    if publish_rate is not None:
        publish_rates = publish_rates + ((now, publish_rate),)
    pending, startup = _startup(state, beats, now)
    return RateState(
        replicas=state.replicas,
        pending=pending,
        startup_s=startup,
        beats=dict(beats),
        intervals=intervals,
        backlogs=backlogs,
        publish_rates=publish_rates,
        completed=completed,
        service_rate=_lower(intervals, slots, state.service_rate, now),
    )


def arrival_rate(state: RateState) -> float | None:
    """Arrivals per second over the window: the mean publish rate, else the backlog's change plus the
    completions (None: too short)."""
    if state.publish_rates:
        return sum(rate for _, rate in state.publish_rates) / len(state.publish_rates)
    if len(state.backlogs) < 2:
        return None
    (t0, b0, c0), (t1, b1, c1) = state.backlogs[0], state.backlogs[-1]
    if t1 - t0 < MIN_SPAN_S:
        return None
    return max(0.0, ((b1 - b0) + (c1 - c0)) / (t1 - t0))


def with_rates(observation: Observation | None, state: RateState) -> Observation | None:
    """`observation` carrying the state's service rate and arrival rate."""
    if observation is None:
        return None
    return dataclasses.replace(
        observation, service_rate=state.service_rate, arrival_rate=arrival_rate(state), startup_s=state.startup_s
    )
