"""The scaling policy: one pure function from (policy, observation, history, now) to a replica count.

HPA-shaped: desired = ceil((ready + unacked) / tasksPerReplica) clamped to [min, max]; scale up at once
within the step limit (lowest recommendation in the up window), scale down only to the highest
recommendation seen in the down stabilization window and within the down step limit; wake from zero
only above `activationBacklog`; without an observation hold the current replicas or `fallbackReplicas`.

Called by the operator's scaling loop (`taskq_operator.scaler`, once per TaskQueue and tick); tested by
tables in `tests/unit/operator/test_operator_policy.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from taskq_operator.core.spec import ScalingSpec, StepRules


@dataclass(frozen=True)
class Observation:
    """One reading of a queue: exact ready count, in-flight work, consumers and rates if known."""

    ready: int
    unacked: int
    consumers: int = 0
    publish_rate: float | None = None
    deliver_rate: float | None = None

    @property
    def backlog(self) -> int:
        return self.ready + self.unacked


@dataclass(frozen=True)
class History:
    """What `decide` needs from the past: the current replicas and recent (time, recommendation) pairs."""

    current_replicas: int
    recommendations: tuple[tuple[float, int], ...] = ()


@dataclass(frozen=True)
class Decision:
    """The replicas to run and why. `recommendation` is what to remember for stabilization."""

    replicas: int
    reason: str
    message: str
    recommendation: int | None = None
    limited: bool = False


def remember(history: History, now: float, recommendation: int | None, keep_s: float) -> History:
    """History after recording `recommendation` at `now`, keeping only the last `keep_s` seconds.

    A run of equal recommendations is stored once, with the time it was last seen: "was r recommended
    within the window" only needs that time, and the history stays as short as the number of changes.
    """
    kept = tuple((t, r) for t, r in history.recommendations if now - t <= keep_s)
    if recommendation is not None:
        if kept and kept[-1][1] == recommendation:
            kept = kept[:-1]
        kept = kept + ((now, recommendation),)
    return History(current_replicas=history.current_replicas, recommendations=kept)


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _step(current: int, rules: StepRules) -> int:
    return max(rules.max_step_pods, math.ceil(current * rules.max_step_percent / 100))


def _window(history: History, now: float, window_s: int) -> list[int]:
    return [r for t, r in history.recommendations if now - t <= window_s]


def _without_observation(policy: ScalingSpec, current: int) -> Decision:
    if policy.fallback_replicas is not None:
        replicas = policy.fallback_replicas
        return Decision(replicas, "Fallback", f"broker unreadable: running fallbackReplicas={replicas}")
    return Decision(current, "BrokerUnreachable", f"broker unreadable: holding {current} replicas")


def _paused(policy: ScalingSpec, current: int) -> Decision:
    if policy.manual_replicas is None:
        return Decision(current, "Paused", f"scaling paused: holding {current} replicas")
    replicas = _clamp(policy.manual_replicas, policy.min_replicas, policy.max_replicas)
    return Decision(replicas, "Paused", f"scaling paused: spec.replicas={policy.manual_replicas} -> {replicas}")


def decide(policy: ScalingSpec, observation: Observation | None, history: History, now: float) -> Decision:
    """The replicas a TaskQueue's Deployment should have now, and the reason (see module docstring)."""
    current = history.current_replicas
    if policy.paused:
        return _paused(policy, current)
    if observation is None:
        return _without_observation(policy, current)

    backlog = observation.backlog
    figures = f"backlog {backlog} (ready {observation.ready}, unacked {observation.unacked})"
    if current == 0 and backlog <= policy.activation_backlog:
        raw = 0
        explained = f"{figures} <= activationBacklog {policy.activation_backlog}"
    else:
        raw = math.ceil(backlog / policy.tasks_per_replica)
        explained = f"{figures} / {policy.tasks_per_replica} per replica = {raw}"
    recommendation = _clamp(raw, policy.min_replicas, policy.max_replicas)
    limited = raw > policy.max_replicas
    if limited:
        explained += f", capped at maxReplicas {policy.max_replicas}"

    if current > policy.max_replicas or current < policy.min_replicas:
        replicas = _clamp(current, policy.min_replicas, policy.max_replicas)
        return Decision(
            replicas,
            "OutOfBounds",
            f"{current} replicas outside [{policy.min_replicas}, {policy.max_replicas}] -> {replicas}; {explained}",
            recommendation,
            limited,
        )

    up_floor = min(_window(history, now, policy.scale_up.stabilization_window_s) + [recommendation])
    down_ceiling = max(_window(history, now, policy.scale_down.stabilization_window_s) + [recommendation])
    if up_floor > current:
        step = _step(current, policy.scale_up)
        replicas = min(up_floor, current + step)
        step_limited = replicas < up_floor
        if step_limited:
            explained += f", step limit +{step}"
        return Decision(replicas, "ScaleUp", f"{explained} -> {replicas}", recommendation, limited or step_limited)
    if down_ceiling < current:
        step = _step(current, policy.scale_down)
        replicas = max(down_ceiling, current - step)
        step_limited = replicas > down_ceiling
        if step_limited:
            explained += f", step limit -{step}"
        return Decision(replicas, "ScaleDown", f"{explained} -> {replicas}", recommendation, limited or step_limited)
    if recommendation < current:
        return Decision(
            current,
            "StabilizingDown",
            f"{explained}; holding {current} (highest in {policy.scale_down.stabilization_window_s}s window)",
            recommendation,
            limited,
        )
    if recommendation > current:
        return Decision(
            current,
            "StabilizingUp",
            f"{explained}; holding {current} (lowest in {policy.scale_up.stabilization_window_s}s window)",
            recommendation,
            limited,
        )
    return Decision(current, "Steady", f"{explained}; steady at {current}", recommendation, limited)
