"""Condition bookkeeping in the `metav1.Condition` shape, and the TaskQueue status built from one tick.

`set_condition` keeps `lastTransitionTime` when a condition's status does not change, so a status
that has not changed compares equal and the scaler skips the patch. Called by `taskq_operator.scaler`
(`build_status`, once per TaskQueue and tick); tested in `tests/unit/operator/test_operator_conditions.py`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from taskq_operator.core.guard import Hold
from taskq_operator.core.policy import Decision, Observation
from taskq_operator.core.spec import ScalingSpec, TaskQueueSpec

CONDITION_TYPES = (
    "Ready",
    "Active",
    "BrokerReachable",
    "ScalingLimited",
    "Fallback",
    "Paused",
    "ScaleDownHeld",
    "DeploymentOwned",
)


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now_iso: str,
    generation: int,
) -> list[dict[str, Any]]:
    """`conditions` with `type_` set; the transition time moves only when the status flips."""
    wanted = "True" if status else "False"
    result: list[dict[str, Any]] = []
    found = False
    for existing in conditions:
        if existing.get("type") != type_:
            result.append(dict(existing))
            continue
        found = True
        moved = existing.get("status") != wanted
        result.append(
            {
                "type": type_,
                "status": wanted,
                "observedGeneration": generation,
                "lastTransitionTime": now_iso if moved else existing.get("lastTransitionTime", now_iso),
                "reason": reason,
                "message": message,
            }
        )
    if not found:
        result.append(
            {
                "type": type_,
                "status": wanted,
                "observedGeneration": generation,
                "lastTransitionTime": now_iso,
                "reason": reason,
                "message": message,
            }
        )
    return result


def condition_status(conditions: Sequence[Mapping[str, Any]], type_: str) -> str | None:
    for condition in conditions:
        if condition.get("type") == type_:
            status = condition.get("status")
            return str(status) if status is not None else None
    return None


@dataclass(frozen=True)
class Tick:
    """What one pass of the loop saw and did, for building the status."""

    spec: TaskQueueSpec
    observation: Observation | None
    observation_source: str
    broker_error: str | None
    decision: Decision
    replicas: int
    ready_replicas: int
    scaled: bool
    task_counts: Mapping[str, int] | None
    selector: str
    held: Hold | None = None
    """Why a scale-down was held (`core.guard`), None when none was."""
    conflict: str | None = None
    """Why the Deployment of this name is refused (not owned by the TaskQueue), None when it is ours or absent."""


def _conditions(tick: Tick, previous: Sequence[Mapping[str, Any]], now_iso: str) -> list[dict[str, Any]]:
    gen = tick.spec.generation
    decision = tick.decision
    conditions: list[dict[str, Any]] = [dict(c) for c in previous]
    ready = tick.ready_replicas >= decision.replicas
    conditions = set_condition(
        conditions,
        "Ready",
        ready,
        "WorkersReady" if ready else "WorkersNotReady",
        f"{tick.ready_replicas}/{decision.replicas} worker replicas ready",
        now_iso,
        gen,
    )
    backlog = tick.observation.backlog if tick.observation is not None else None
    active = decision.replicas > 0 or bool(backlog)
    conditions = set_condition(
        conditions,
        "Active",
        active,
        "WorkPending" if active else "Idle",
        f"backlog {backlog if backlog is not None else 'unknown'}, {decision.replicas} replicas",
        now_iso,
        gen,
    )
    reachable = tick.observation is not None
    conditions = set_condition(
        conditions,
        "BrokerReachable",
        reachable,
        "QueueRead" if reachable else "BrokerUnreachable",
        f"queue {tick.spec.queue} read via {tick.observation_source}"
        if reachable
        else (tick.broker_error or "broker could not be read"),
        now_iso,
        gen,
    )
    conditions = set_condition(
        conditions,
        "ScalingLimited",
        decision.limited,
        "LimitReached" if decision.limited else "WithinLimits",
        decision.message if decision.limited else "desired replicas within limits",
        now_iso,
        gen,
    )
    fallback = decision.reason == "Fallback"
    conditions = set_condition(
        conditions,
        "Fallback",
        fallback,
        "FallbackReplicas" if fallback else "NotInFallback",
        decision.message if fallback else "scaling on observed backlog",
        now_iso,
        gen,
    )
    paused = tick.spec.scaling.paused
    conditions = set_condition(
        conditions,
        "Paused",
        paused,
        "ScalingPaused" if paused else "ScalingActive",
        decision.message if paused else _scales_on(tick.spec.scaling),
        now_iso,
        gen,
    )
    held = tick.held
    conditions = set_condition(
        conditions,
        "ScaleDownHeld",
        held is not None,
        held.reason if held is not None else "ScaleDownSafe",
        decision.message if held is not None else "no scale-down held back",
        now_iso,
        gen,
    )
    return set_condition(
        conditions,
        "DeploymentOwned",
        tick.conflict is None,
        "DeploymentNotOwned" if tick.conflict is not None else "Owned",
        tick.conflict or "the worker Deployment is controlled by this TaskQueue",
        now_iso,
        gen,
    )


def _scales_on(scaling: ScalingSpec) -> str:
    if scaling.target_wait_s is None:
        return "operator scales on backlog"
    also = f" and {scaling.tasks_per_replica} tasks per replica" if scaling.tasks_per_replica is not None else ""
    return f"operator scales for an expected wait under {scaling.target_wait_s:g} s{also}"


def build_status(tick: Tick, previous: Mapping[str, Any], now_iso: str) -> dict[str, Any]:
    """The full status for this tick; fields that did not change keep their earlier values."""
    status: dict[str, Any] = {
        "queue": tick.spec.queue,
        "replicas": tick.replicas,
        "desiredReplicas": tick.decision.replicas,
        "readyReplicas": tick.ready_replicas,
        "selector": tick.selector,
        "observedGeneration": tick.spec.generation,
        "conditions": _conditions(tick, previous.get("conditions") or [], now_iso),
    }
    if tick.observation is not None:
        backlog: dict[str, Any] = {
            "ready": tick.observation.ready,
            "unacked": tick.observation.unacked,
            "consumers": tick.observation.consumers,
            "source": tick.observation_source,
        }
        if tick.observation.publish_rate is not None:
            backlog["publishRate"] = round(tick.observation.publish_rate, 1)
        if tick.observation.deliver_rate is not None:
            backlog["deliverRate"] = round(tick.observation.deliver_rate, 1)
        if tick.observation.service_rate is not None:  # targetWaitSeconds' estimate (core.rates)
            backlog["serviceRatePerReplica"] = round(tick.observation.service_rate, 2)
        if tick.observation.arrival_rate is not None:
            backlog["arrivalRate"] = round(tick.observation.arrival_rate, 1)
        status["backlog"] = backlog
    elif "backlog" in previous:
        status["backlog"] = dict(previous["backlog"])
    if tick.task_counts is not None:
        status["tasks"] = dict(tick.task_counts)
    elif "tasks" in previous:
        status["tasks"] = dict(previous["tasks"])
    if tick.scaled:
        status["lastScaleTime"] = now_iso
        status["lastScaleReason"] = f"{tick.decision.reason}: {tick.decision.message}"
    else:
        for key in ("lastScaleTime", "lastScaleReason"):
            if key in previous:
                status[key] = previous[key]
    return status
