"""Conditions keep their transition time until the status flips; the status reflects one tick."""

from __future__ import annotations

from taskq_dev.manifests import example as taskqueue
from taskq_operator.core.conditions import CONDITION_TYPES, Tick, build_status, condition_status, set_condition
from taskq_operator.core.policy import Decision, Observation
from taskq_operator.core.spec import parse_taskqueue


def test_transition_time_moves_only_on_flip() -> None:
    first = set_condition([], "Ready", True, "R", "m", "t1", 1)
    same = set_condition(first, "Ready", True, "R", "m2", "t2", 2)
    flipped = set_condition(same, "Ready", False, "N", "m3", "t3", 2)
    assert first[0]["lastTransitionTime"] == "t1"
    assert same[0]["lastTransitionTime"] == "t1" and same[0]["message"] == "m2"
    assert flipped[0]["lastTransitionTime"] == "t3" and flipped[0]["status"] == "False"


def _tick(observation: Observation | None, decision: Decision, scaled: bool = False) -> Tick:
    return Tick(
        spec=parse_taskqueue(taskqueue()),
        observation=observation,
        observation_source="amqp",
        broker_error=None if observation else "connection refused",
        decision=decision,
        replicas=2,
        ready_replicas=2,
        scaled=scaled,
        task_counts={"queued": 5},
        selector="a=b",
    )


def test_status_from_a_tick_is_stable_when_nothing_changes() -> None:
    tick = _tick(Observation(10, 3, 2, 1.5, 1.25), Decision(2, "Steady", "steady", 2))
    first = build_status(tick, {}, "t1")
    second = build_status(tick, first, "t2")
    assert first == second
    assert first["backlog"] == {"ready": 10, "unacked": 3, "consumers": 2, "source": "amqp",
                                "publishRate": 1.5, "deliverRate": 1.2}
    assert {c["type"] for c in first["conditions"]} == set(CONDITION_TYPES) == {
        "Ready", "Active", "BrokerReachable", "ScalingLimited", "Fallback", "Paused", "ScaleDownHeld",
        "DeploymentOwned"}


def test_unreachable_broker_keeps_last_backlog_and_sets_condition() -> None:
    seen = build_status(_tick(Observation(10, 3), Decision(2, "Steady", "s", 2)), {}, "t1")
    lost = build_status(_tick(None, Decision(2, "BrokerUnreachable", "holding 2")), seen, "t2")
    assert condition_status(lost["conditions"], "BrokerReachable") == "False"
    assert lost["backlog"]["ready"] == 10
    assert lost["desiredReplicas"] == 2


def test_scaling_records_time_and_reason() -> None:
    status = build_status(_tick(Observation(300, 0), Decision(6, "ScaleUp", "backlog 300", 6), True), {}, "t9")
    assert status["lastScaleTime"] == "t9"
    assert status["lastScaleReason"] == "ScaleUp: backlog 300"
