"""`taskq_operator.core.guard`: a scale-down is held while some consumer's in-flight work cannot be placed."""

from __future__ import annotations

import pytest

from taskq_operator.core.guard import Attribution, guard_scale_down
from taskq_operator.core.policy import Decision

DOWN = Decision(1, "ScaleDown", "backlog 0 -> 1", 1)


@pytest.mark.parametrize(
    ("attribution", "held"),
    [
        (Attribution(consumers=3, reporting=3), None),
        (Attribution(consumers=0, reporting=0, store_error="store down"), None),  # nobody can hold work
        (Attribution(consumers=3, reporting=0, store_error="store down"), "StoreUnavailable"),
        (Attribution(consumers=3, reporting=2), "HeartbeatsMissing"),
        (Attribution(consumers=2, reporting=3), None),  # a worker between heartbeat and consume
    ],
)
def test_scale_down_is_held_only_while_work_is_unattributed(attribution: Attribution, held: str | None) -> None:
    decision, hold = guard_scale_down(DOWN, 3, attribution)
    if held is None:
        assert (decision, hold) == (DOWN, None)
    else:
        assert hold is not None and hold.reason == held
        assert (decision.replicas, decision.reason, decision.recommendation) == (3, "ScaleDownHeld", 1)
        assert "holding 3 replicas instead of 1" in decision.message


@pytest.mark.parametrize(
    "decision",
    [
        Decision(5, "ScaleUp", "up", 5),
        Decision(1, "Paused", "spec.replicas=1"),
        Decision(1, "Fallback", "fallbackReplicas=1"),
        Decision(3, "StabilizingDown", "holding", 1),
    ],
)
def test_other_decisions_pass_untouched(decision: Decision) -> None:
    assert guard_scale_down(decision, 3, Attribution(consumers=3, reporting=0, store_error="x")) == (decision, None)


def test_out_of_bounds_scale_down_is_held_too() -> None:
    decision, hold = guard_scale_down(Decision(2, "OutOfBounds", "maxReplicas 2", 2), 4, Attribution(4, 1))
    assert decision.replicas == 4 and hold is not None and hold.reason == "HeartbeatsMissing"
