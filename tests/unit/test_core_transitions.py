"""Task states and transitions of the pure core: allowed edges, stale writes refused, one-step finishes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from taskq.core.message import TaskMessage
from taskq.core.states import FINAL_STATES, TaskState, allowed_sources, allowed_sources_via_running, can_transition
from taskq.core.transitions import bury, finish, start

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _message(attempt: int = 1) -> TaskMessage:
    return TaskMessage(id="t1", name="echo", queue="q", created_at=NOW, attempt=attempt)


@pytest.mark.parametrize(
    ("source", "target", "allowed"),
    [
        (TaskState.QUEUED, TaskState.RUNNING, True),
        (TaskState.RETRYING, TaskState.RUNNING, True),
        (TaskState.RUNNING, TaskState.RUNNING, True),
        (TaskState.RUNNING, TaskState.SUCCEEDED, True),
        (TaskState.RUNNING, TaskState.RETRYING, True),
        (TaskState.RUNNING, TaskState.DEAD, True),
        (TaskState.QUEUED, TaskState.DEAD, True),
        (TaskState.SUCCEEDED, TaskState.RUNNING, False),
        (TaskState.DEAD, TaskState.RUNNING, False),
        (TaskState.SUCCEEDED, TaskState.SUCCEEDED, False),
        (TaskState.QUEUED, TaskState.SUCCEEDED, False),
        (TaskState.FAILED, TaskState.RETRYING, False),
    ],
)
def test_edges(source: TaskState, target: TaskState, allowed: bool) -> None:
    assert can_transition(source, target) is allowed


def test_final_states_never_change() -> None:
    for final in FINAL_STATES:
        for target in TaskState:
            assert not can_transition(final, target), (final, target)


def test_start_is_refused_after_a_final_state() -> None:
    transition = start(_message(), "w1", NOW)
    assert transition.target is TaskState.RUNNING
    assert TaskState.SUCCEEDED not in transition.sources
    assert transition.fields["attempts"] == 1
    assert transition.fields["worker"] == "w1"


def test_finish_without_recorded_start_accepts_the_states_running_comes_from() -> None:
    transition = finish(_message(), TaskState.SUCCEEDED, "w1", NOW, started_at=NOW, result=5, start_recorded=False)
    assert transition.sources == allowed_sources_via_running(TaskState.SUCCEEDED)
    assert {TaskState.QUEUED, TaskState.RETRYING, TaskState.RUNNING} <= transition.sources
    assert transition.fields["timestamps.running"] == NOW
    assert transition.insert is not None and "state" not in transition.insert


def test_finish_with_recorded_start_needs_running() -> None:
    transition = finish(_message(2), TaskState.RETRYING, "w1", NOW)
    assert transition.sources == allowed_sources(TaskState.RETRYING) == frozenset({TaskState.RUNNING})
    assert transition.fields["attempts"] == 2
    assert transition.insert is None


def test_via_running_rejects_non_outcomes() -> None:
    with pytest.raises(ValueError):
        allowed_sources_via_running(TaskState.QUEUED)


def test_bury_records_the_reason() -> None:
    transition = bury(_message(), "unknown task", NOW)
    assert transition.target is TaskState.DEAD
    assert transition.fields["error"]["message"] == "unknown task"
