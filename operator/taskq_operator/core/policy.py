"""The scaling policy: one pure function from (policy, observation, history, now) to a replica count.

HPA-shaped: desired = ceil((ready + unacked) / tasksPerReplica) clamped to [min, max]; scale up at once
within the step limit (lowest recommendation in the up window), scale down only to the highest
recommendation seen in the down stabilization window and within the down step limit; wake from zero
only above `activationBacklog`; without an observation hold the current replicas or `fallbackReplicas`.

With `targetWaitSeconds` W the count comes from rates instead (or as well: the larger of the two wins).
The model is a deterministic backlog/service-rate bound, not M/M/c: c replicas of k slots (the worker's
concurrency) each complete mu tasks/s (`Observation.service_rate`, from heartbeats, `core.rates`); a
task arriving now waits for the max(0, backlog - c*k) tasks ahead of it to start, one per completion,
so its wait is (backlog - c*k) / (c*mu) and c >= backlog / (k + mu*W) keeps it under W; and
c >= arrivals / (UTILISATION * mu) keeps the queue from growing again at the arrival rate, with
headroom for bursts and a lagging estimate. Why not M/M/c: service times are neither exponential nor
stable (the point of the target is that they change), arrivals are bursty, and a tick every few seconds
acts on a backlog it can see, so the error that matters is the rate estimate, which the bound uses
directly; with the 0.8 cap, M/M/c's own steady-state wait at k >= 4 slots per replica is a fraction of
one service time. Without a service-rate estimate yet (no completions seen), the term holds the
current replicas (at least one while work is queued).

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
    service_rate: float | None = None
    """Completed tasks per second one replica manages when busy (`core.rates`); None: not estimated."""
    arrival_rate: float | None = None
    """Tasks per second arriving (`core.rates`: the publish rate, else from the backlog's change)."""
    startup_s: float | None = None
    """How long a new replica took to report after a scale-up (`core.rates`); None: not seen yet (0)."""

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


UTILISATION = 0.8
"""The highest arrivals / (replicas * service rate) `targetWaitSeconds` plans for."""
UNREACHABLE = 1_000_000
"""The drain term when new replicas start later than the target: as many as allowed (maxReplicas)."""


def _drain(backlog: int, slots: int, mu: float, target: float, current: int, startup: float) -> int:
    """Fewest replicas that start every task ahead of a new one within `target` seconds.

    The `current` replicas take `slots` at once and `mu` per second after; a replica added now takes
    its slots only after `startup` seconds, then `mu` per second (nothing within the target when the
    start takes longer: then as many as allowed).
    """
    if backlog <= current * (slots + mu * target):
        return math.ceil(backlog / (slots + mu * target) - 1e-9)
    added = slots + mu * (target - startup) if target > startup else 0.0
    if added <= 0:
        return UNREACHABLE
    return current + math.ceil((backlog - current * (slots + mu * target)) / added - 1e-9)


def _expected_wait(backlog: int, slots: int, mu: float, replicas: int, current: int, startup: float) -> float:
    """When the last task ahead of a new one starts, with `replicas` (the model of `_drain`)."""
    if replicas <= 0:
        return 0.0
    old = min(current, replicas)
    ahead = max(0.0, backlog - replicas * slots if replicas <= current else backlog - old * slots)
    if replicas <= current or old * mu * startup >= ahead:
        return ahead / (old * mu) if old else (startup + max(0.0, backlog - replicas * slots) / (replicas * mu))
    # the old replicas alone until the new ones start, then all of them
    left = ahead - old * mu * startup - (replicas - old) * slots
    return startup + max(0.0, left) / (replicas * mu)


def _target_wait(policy: ScalingSpec, observation: Observation, current: int) -> tuple[int, str]:
    """Replicas that keep a new task's expected wait under `targetWaitSeconds`, and the figures why."""
    target = policy.target_wait_s
    assert target is not None
    backlog, slots, mu = observation.backlog, policy.slots_per_replica, observation.service_rate
    arrivals = observation.arrival_rate if observation.arrival_rate is not None else observation.publish_rate
    head = f"targetWaitSeconds {target:g}: "
    seen = f"arrivals {arrivals:.2f}/s" if arrivals is not None else "arrivals unknown"
    if mu is None or mu <= 0:
        if backlog == 0 and not arrivals:
            return 0, head + f"no service-rate estimate yet, nothing queued, {seen} -> 0"
        hold = max(current, 1)
        return hold, head + f"no service-rate estimate yet (no completions in heartbeats), {seen}; holding {hold}"
    drain = _drain(backlog, slots, mu, target, current, observation.startup_s or 0.0)
    keep_up = math.ceil((arrivals or 0.0) / (UTILISATION * mu) - 1e-9)
    raw = max(drain, keep_up)
    wait = _expected_wait(backlog, slots, mu, raw, current, observation.startup_s or 0.0)
    needs = "more than new replicas starting after the target can give" if drain >= UNREACHABLE else str(drain)
    return raw, head + (
        f"service {mu:.2f}/s per replica, {seen}; backlog {backlog} within {target:g} s needs {needs}, "
        f"utilisation <= {UTILISATION:g} needs {keep_up} -> {raw} (expected wait {wait:.1f} s"
        + (f", new replicas serving after {observation.startup_s:.0f} s)" if observation.startup_s else ")")
    )


def _raw(policy: ScalingSpec, observation: Observation, current: int, figures: str) -> tuple[int, str]:
    """The unclamped recommendation from `tasksPerReplica`, `targetWaitSeconds` or both (the larger)."""
    backlog = observation.backlog
    parts: list[tuple[int, str]] = []
    if policy.tasks_per_replica is not None:
        raw = math.ceil(backlog / policy.tasks_per_replica)
        parts.append((raw, f"{figures} / {policy.tasks_per_replica} per replica = {raw}"))
    if policy.target_wait_s is not None:
        raw, text = _target_wait(policy, observation, current)
        parts.append((raw, text if policy.tasks_per_replica is None else f"{text}; {figures}"))
    if len(parts) == 1:
        return parts[0]
    (by_count, count_text), (by_wait, wait_text) = parts
    if by_count >= by_wait:
        return by_count, f"{count_text} (>= {by_wait} from targetWaitSeconds)"
    return by_wait, f"{wait_text} (> {by_count} from tasksPerReplica)"


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
        raw, explained = _raw(policy, observation, current, figures)
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
