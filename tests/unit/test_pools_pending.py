"""The pools' not-started queue: an attempt whose precheck says no is dropped, the next one is handed out."""

from __future__ import annotations

from taskq.worker.pools.base import Attempt
from taskq.worker.pools.pending import PendingAttempts


def _attempt(task_id: str, precheck: object = None) -> Attempt:
    return Attempt(
        key=task_id, task_id=task_id, name="echo", attempt=1, queue="q", args=[], kwargs={}, timeout_s=5, precheck=precheck
    )  # type: ignore[arg-type]


def test_an_attempt_whose_precheck_says_no_is_dropped() -> None:
    asked: list[str] = []

    def no() -> bool:
        asked.append("stale")
        return False

    pending = PendingAttempts()
    pending.put(_attempt("stale", no))
    pending.put(_attempt("fresh"))
    got = pending.get(1.0)
    assert got is not None and got.task_id == "fresh" and asked == ["stale"]
    assert pending.get(0.01) is None and len(pending) == 0
