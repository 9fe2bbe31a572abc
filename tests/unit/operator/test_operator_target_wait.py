"""Table tests of `decide` with `targetWaitSeconds`: replicas from the service and arrival rates.

The model (`taskq_operator.core.policy`): with c replicas of k slots each serving mu tasks/s per
replica, a new task waits for the (backlog - c*k) tasks ahead of it to start, at c*mu per second, so
c >= backlog / (k + mu*W); and c >= arrivals / (0.8*mu) keeps utilisation at most 0.8. With
`tasksPerReplica` too, the larger count wins.
"""

from __future__ import annotations

import pytest

from taskq_operator.core.policy import History, Observation, decide
from taskq_operator.core.spec import ScalingSpec, StepRules

NOW = 1000.0
WAIT = ScalingSpec(
    min_replicas=0,
    max_replicas=50,
    tasks_per_replica=None,
    target_wait_s=10.0,
    slots_per_replica=4,
    scale_up=StepRules(0, 100, 100),
    scale_down=StepRules(0, 100, 100),
)


def policy(**changes: object) -> ScalingSpec:
    return ScalingSpec(**{**WAIT.__dict__, **changes})  # type: ignore[arg-type]


def obs(
    ready: int, unacked: int = 0, *, mu: float | None = None, arrivals: float | None = None, publish: float | None = None
) -> Observation:
    return Observation(ready=ready, unacked=unacked, service_rate=mu, arrival_rate=arrivals, publish_rate=publish)


CASES = [
    # id, policy, observation, current, expected replicas, reason
    ("idle stays at zero", WAIT, obs(0, mu=2.0, arrivals=0.0), 0, 0, "Steady"),
    # backlog 400, mu 2/s per replica, 4 slots, W 10 s: 400 / (4 + 20) = 16.7 -> 17
    ("backlog drained within the target", WAIT, obs(400, mu=2.0, arrivals=0.0), 1, 17, "ScaleUp"),
    # short tasks: mu 40/s per replica: 400 / (4 + 400) -> 1
    ("short tasks need one replica", WAIT, obs(400, mu=40.0, arrivals=0.0), 1, 1, "Steady"),
    # long tasks: mu 0.1/s per replica (40 s tasks): every task must start now: 400 / (4 + 1) = 80 -> max 50
    ("long tasks start at once, capped", WAIT, obs(0, 400, mu=0.1, arrivals=0.0), 10, 50, "ScaleUp"),
    # no backlog, arrivals 12/s at 2/s per replica: 12 / (0.8 * 2) = 7.5 -> 8
    ("utilisation bound for the arrival rate", WAIT, obs(0, mu=2.0, arrivals=12.0), 2, 8, "ScaleUp"),
    ("publish rate used when no arrival estimate", WAIT, obs(0, mu=2.0, publish=12.0), 2, 8, "ScaleUp"),
    # both terms: backlog 100 -> 100 / 24 = 4.2 -> 5; arrivals 4/s -> 2.5 -> 3; larger: 5
    ("larger of drain and utilisation", WAIT, obs(100, mu=2.0, arrivals=4.0), 0, 5, "ScaleUp"),
    ("drained and quiet scales to zero", WAIT, obs(0, mu=2.0, arrivals=0.0), 6, 0, "ScaleDown"),
    ("min replicas still apply", policy(min_replicas=3), obs(0, mu=2.0, arrivals=0.0), 3, 3, "Steady"),
    ("max replicas still apply", policy(max_replicas=4), obs(400, mu=2.0), 4, 4, "Steady"),
    ("below activation stays at zero", policy(activation_backlog=50), obs(50, mu=2.0), 0, 0, "Steady"),
    ("above activation wakes", policy(activation_backlog=50), obs(51, mu=40.0, arrivals=0.0), 0, 1, "ScaleUp"),
    ("no estimate yet: wake one", WAIT, obs(30), 0, 1, "ScaleUp"),
    ("no estimate yet: hold", WAIT, obs(3000), 4, 4, "Steady"),
    ("no estimate and nothing queued: zero", WAIT, obs(0), 2, 0, "ScaleDown"),
    # tasksPerReplica 10 wants 40 from backlog 400; the wait model 17: the larger
    ("both set: tasksPerReplica larger", policy(tasks_per_replica=10), obs(400, mu=2.0, arrivals=0.0), 1, 40, "ScaleUp"),
    # tasksPerReplica 1000 wants 1; the wait model 17
    ("both set: wait model larger", policy(tasks_per_replica=1000), obs(400, mu=2.0, arrivals=0.0), 1, 17, "ScaleUp"),
    ("both set, no estimate: tasksPerReplica alone", policy(tasks_per_replica=100), obs(400), 1, 4, "ScaleUp"),
    ("paused holds", policy(paused=True), obs(900, mu=2.0), 2, 2, "Paused"),
]


@pytest.mark.parametrize(
    ("policy_", "observation", "current", "expected", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decide_for_a_target_wait(
    policy_: ScalingSpec, observation: Observation, current: int, expected: int, reason: str
) -> None:
    decision = decide(policy_, observation, History(current), NOW)
    assert (decision.replicas, decision.reason) == (expected, reason), decision.message


def test_scale_down_is_held_by_the_window() -> None:
    held = policy(scale_down=StepRules(60, 4, 100))
    decision = decide(held, obs(0, mu=2.0, arrivals=0.0), History(5, ((NOW - 30, 5),)), NOW)
    assert (decision.replicas, decision.reason) == (5, "StabilizingDown"), decision.message


def test_the_reason_explains_the_estimate() -> None:
    decision = decide(WAIT, obs(400, mu=2.0, arrivals=12.0), History(1), NOW)
    message = decision.message
    assert "targetWaitSeconds 10" in message, message
    assert "service 2.00/s per replica" in message, message
    assert "arrivals 12.00/s" in message, message
    assert "expected wait" in message, message
    # 17 replicas: (400 - 68) / (17 * 2) = 9.8 s
    assert "expected wait 9.8 s" in message, message


def test_expected_wait_stays_under_the_target_for_the_chosen_count() -> None:
    wide = policy(max_replicas=1000, scale_up=StepRules(0, 1000, 1000))
    for backlog in (0, 1, 7, 50, 399, 400, 401, 5000):
        for mu in (0.05, 0.5, 2.0, 40.0):
            decision = decide(wide, obs(backlog, mu=mu, arrivals=0.0), History(1), NOW)
            replicas = decision.replicas
            if decision.limited:  # capped at maxReplicas: the message says so
                assert replicas == 1000 and "capped at maxReplicas" in decision.message
                continue
            if replicas > 0:
                assert max(0, backlog - 4 * replicas) / (replicas * mu) <= 10.0 + 1e-9, (backlog, mu, replicas)
            if replicas > 1:  # and one fewer would miss it (the count is the smallest that meets it)
                fewer = replicas - 1
                assert max(0, backlog - 4 * fewer) / (fewer * mu) > 10.0, (backlog, mu, replicas)


def test_new_replicas_count_only_after_their_start_up() -> None:
    # 2 replicas serve now; 400 queued, mu 2/s, W 10 s. Instant start: 17. New ones need 5 s: each adds
    # 4 + 2*5 = 14 within the target, the old two 24 each: 2 + (400 - 48) / 14 = 27.1 -> 28
    instant = decide(WAIT, obs(400, mu=2.0, arrivals=0.0), History(2), NOW)
    slow = Observation(ready=400, unacked=0, service_rate=2.0, arrival_rate=0.0, startup_s=5.0)
    decision = decide(WAIT, slow, History(2), NOW)
    assert (instant.replicas, decision.replicas) == (17, 28), decision.message
    assert "new replicas serving after 5 s" in decision.message
    never = Observation(ready=400, unacked=0, service_rate=2.0, arrival_rate=0.0, startup_s=12.0)
    out_of_reach = decide(WAIT, never, History(2), NOW)
    assert out_of_reach.replicas == WAIT.max_replicas and out_of_reach.limited, out_of_reach.message
    assert "more than new replicas starting after the target can give" in out_of_reach.message
