"""The stuck-task verdicts (`taskq.core.stuck`): a table of documents and what the sweep does with each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from taskq.core.stuck import Lost, Recover, StuckPolicy, stuck_verdict

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
POLICY = StuckPolicy(running_after_s=600, retrying_after_s=900, max_recoveries=2)


def _doc(state: str, age_s: float, **extra: Any) -> dict[str, Any]:
    return {
        "_id": "t1",
        "name": "echo",
        "queue": "q",
        "state": state,
        "attempts": 2,
        "worker": "w-gone",
        "created_at": NOW - timedelta(hours=1),
        "updated_at": NOW - timedelta(seconds=age_s),
        **extra,
    }


@pytest.mark.parametrize(
    ("document", "live", "expected"),
    [
        (_doc("running", 601), set(), (Recover, 2)),
        (_doc("running", 599), set(), None),
        (_doc("running", 3600), {"w-gone"}, None),
        (_doc("retrying", 901), set(), (Recover, 3)),
        (_doc("retrying", 899), set(), None),
        (_doc("running", 601, recoveries=2), set(), (Lost, 2)),
        (_doc("queued", 10_000), set(), None),
        (_doc("succeeded", 10_000), set(), None),
        (_doc("running", 601, name="not a task name!"), set(), None),
    ],
)
def test_stuck_verdicts(document: dict[str, Any], live: set[str], expected: tuple[type, int] | None) -> None:
    verdict = stuck_verdict(document, live, NOW, POLICY)
    if expected is None:
        assert verdict is None
    else:
        kind, attempt = expected
        assert isinstance(verdict, kind) and verdict.message.attempt == attempt and verdict.reason


def test_a_policy_with_no_age_is_refused() -> None:
    with pytest.raises(ValueError, match="positive ages"):
        StuckPolicy(running_after_s=0)
