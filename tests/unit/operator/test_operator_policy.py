"""Table-driven tests of the scaling policy `decide` (HPA-style: one row per situation)."""

from __future__ import annotations

import pytest

from taskq_operator.core.policy import Decision, History, Observation, decide, remember
from taskq_operator.core.spec import ScalingSpec, StepRules

NOW = 1000.0
BASE = ScalingSpec(
    min_replicas=0,
    max_replicas=10,
    tasks_per_replica=100,
    activation_backlog=0,
    scale_up=StepRules(0, 4, 100),
    scale_down=StepRules(60, 4, 100),
)


def policy(**changes: object) -> ScalingSpec:
    values = {**BASE.__dict__, **changes}
    return ScalingSpec(**values)  # type: ignore[arg-type]


def obs(ready: int, unacked: int = 0) -> Observation:
    return Observation(ready=ready, unacked=unacked)


CASES = [
    # id, policy, observation, current, past recommendations (age_s, rec), expected replicas, reason
    ("idle stays at zero", BASE, obs(0), 0, [], 0, "Steady"),
    ("from zero at once within the step", BASE, obs(350), 0, [], 4, "ScaleUp"),
    ("from zero exact when under the step", BASE, obs(150), 0, [], 2, "ScaleUp"),
    ("unacked counts as backlog", BASE, obs(0, 250), 1, [], 3, "ScaleUp"),
    ("step is max(pods, percent)", BASE, obs(2000), 6, [], 10, "ScaleUp"),
    ("percent step from 8 is 8", policy(max_replicas=50), obs(5000), 8, [], 16, "ScaleUp"),
    ("capped at max", BASE, obs(5000), 10, [], 10, "Steady"),
    ("below activation stays at zero", policy(activation_backlog=50), obs(50), 0, [], 0, "Steady"),
    ("above activation wakes", policy(activation_backlog=50), obs(51), 0, [], 1, "ScaleUp"),
    ("activation ignored once running", policy(activation_backlog=50), obs(10), 1, [], 1, "Steady"),
    ("min replicas respected", policy(min_replicas=2), obs(0), 2, [], 2, "Steady"),
    ("below min is raised", policy(min_replicas=2), obs(0), 0, [], 2, "OutOfBounds"),
    ("above max is lowered", policy(max_replicas=3), obs(0), 5, [], 3, "OutOfBounds"),
    ("down held by window", BASE, obs(0), 5, [(30, 5)], 5, "StabilizingDown"),
    ("down to highest in window", BASE, obs(0), 5, [(30, 3), (10, 2)], 3, "ScaleDown"),
    ("down after window passes", BASE, obs(0), 5, [(61, 5)], 0, "ScaleDown"),
    ("down step limit", policy(scale_down=StepRules(0, 1, 0)), obs(0), 5, [], 4, "ScaleDown"),
    ("down to zero when drained", policy(scale_down=StepRules(0, 4, 100)), obs(0), 3, [], 0, "ScaleDown"),
    ("busy pods keep replicas", policy(scale_down=StepRules(0, 4, 100)), obs(0, 300), 3, [], 3, "Steady"),
    ("up window takes lowest", policy(scale_up=StepRules(30, 4, 100)), obs(400), 1, [(10, 2)], 2, "ScaleUp"),
    ("paused holds", policy(paused=True), obs(900), 2, [], 2, "Paused"),
    ("paused obeys kubectl scale", policy(paused=True, manual_replicas=7), obs(0), 2, [], 7, "Paused"),
    ("paused manual clamped", policy(paused=True, manual_replicas=70), obs(0), 2, [], 10, "Paused"),
]


@pytest.mark.parametrize(
    ("policy_", "observation", "current", "past", "expected", "reason"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decide(
    policy_: ScalingSpec,
    observation: Observation,
    current: int,
    past: list[tuple[float, int]],
    expected: int,
    reason: str,
) -> None:
    history = History(current, tuple((NOW - age, rec) for age, rec in past))
    decision = decide(policy_, observation, history, NOW)
    assert (decision.replicas, decision.reason) == (expected, reason), decision.message


@pytest.mark.parametrize(
    ("fallback", "current", "expected", "reason"),
    [(None, 3, 3, "BrokerUnreachable"), (None, 0, 0, "BrokerUnreachable"), (5, 3, 5, "Fallback"), (0, 3, 0, "Fallback")],
)
def test_without_observation(fallback: int | None, current: int, expected: int, reason: str) -> None:
    decision = decide(policy(fallback_replicas=fallback), None, History(current), NOW)
    assert (decision.replicas, decision.reason) == (expected, reason)
    assert decision.recommendation is None


def test_limited_flag_when_capped_or_stepped() -> None:
    assert decide(BASE, obs(5000), History(10), NOW).limited
    assert decide(BASE, obs(900), History(0), NOW).limited
    assert not decide(BASE, obs(200), History(0), NOW).limited


def test_message_explains_the_arithmetic() -> None:
    decision = decide(BASE, obs(990, 10), History(0), NOW)
    assert "backlog 1000 (ready 990, unacked 10)" in decision.message
    assert "step limit" in decision.message


def test_remember_prunes_old_entries() -> None:
    history = History(2, ((NOW - 100, 5), (NOW - 10, 4)))
    kept = remember(history, NOW, 1, keep_s=60)
    assert kept.recommendations == ((NOW - 10, 4), (NOW, 1))
    assert remember(history, NOW, None, keep_s=5).recommendations == ()


def test_remember_stores_a_run_once_with_its_latest_time() -> None:
    history = History(2)
    for t, rec in [(0, 5), (10, 5), (20, 5), (30, 3)]:
        history = remember(history, NOW + t, rec, keep_s=60)
    assert history.recommendations == ((NOW + 20, 5), (NOW + 30, 3))
    # 5 was last recommended 40 s before NOW + 60: still inside a 45 s down window, outside a 35 s one
    slow = policy(scale_down=StepRules(45, 4, 100))
    fast = policy(scale_down=StepRules(35, 4, 100))
    assert decide(slow, obs(0), History(5, history.recommendations), NOW + 60).replicas == 5
    assert decide(fast, obs(0), History(5, history.recommendations), NOW + 60).replicas == 3


def test_burst_then_drain_sequence() -> None:
    """A burst of 1000 tasks scales 0 -> 4 -> 8 -> 10, then holds through the window and drains."""
    rules = policy(scale_down=StepRules(20, 10, 100))
    history = History(0)
    seen: list[Decision] = []
    t = NOW
    for backlog in [1000, 1000, 1000, 600, 0, 0, 0]:
        decision = decide(rules, obs(backlog), history, t)
        seen.append(decision)
        history = remember(History(decision.replicas, history.recommendations), t, decision.recommendation, 60)
        t += 5
    assert [d.replicas for d in seen] == [4, 8, 10, 10, 10, 10, 10]
    t += 20
    final = decide(rules, obs(0), history, t)
    assert (final.replicas, final.reason) == (0, "ScaleDown")
