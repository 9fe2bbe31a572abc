"""`taskq_operator.core.sweep.due_stores`: each store at most once per interval."""

from __future__ import annotations

from taskq_operator.core.sweep import due_stores


def test_a_store_is_due_when_never_swept_or_after_the_interval() -> None:
    last = {"a": 100.0, "b": 80.0}
    assert due_stores(last, ["a", "b", "c"], now=105.0, interval_s=30.0) == ["c"]
    assert due_stores(last, ["a", "b", "c"], now=110.0, interval_s=30.0) == ["b", "c"]
    assert due_stores(last, ["a", "a", "b"], now=130.0, interval_s=30.0) == ["a", "b"]  # once each
    assert due_stores({}, [], now=0.0) == []
