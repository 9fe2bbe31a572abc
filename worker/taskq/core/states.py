"""Task states and the transitions allowed between them.

The store applies a transition only when the document is in one of the allowed source states, so a
stale writer (a redelivered message, a slow worker) can never move a task backwards.
"""

from __future__ import annotations

from enum import Enum


class TaskState(str, Enum):  # noqa: UP042 - str() of a state is its enum name in logs; values are what is stored
    """Where a task is in its life. The final states never change again."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"  # submitted with a countdown or eta: its message waits in a delay queue until due
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRYING = "retrying"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES: frozenset[TaskState] = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.DEAD, TaskState.CANCELLED})

_ALLOWED: dict[TaskState, frozenset[TaskState]] = {
    TaskState.QUEUED: frozenset(),
    TaskState.SCHEDULED: frozenset(),
    # A redelivered message finds its task still "running" (the previous worker died): run again.
    # A scheduled task's message reaches the work queue when due and starts like a queued one.
    TaskState.RUNNING: frozenset({TaskState.QUEUED, TaskState.SCHEDULED, TaskState.RETRYING, TaskState.RUNNING}),
    TaskState.SUCCEEDED: frozenset({TaskState.RUNNING}),
    TaskState.FAILED: frozenset({TaskState.RUNNING}),
    TaskState.RETRYING: frozenset({TaskState.RUNNING}),
    # Dead: retries exhausted while running, or a malformed/undeliverable message at intake.
    TaskState.DEAD: frozenset({TaskState.QUEUED, TaskState.SCHEDULED, TaskState.RUNNING, TaskState.RETRYING}),
    # Cancelled: by `Client.cancel`, which claims the outcome of the task's current attempt (`taskq.core.cancel`).
    TaskState.CANCELLED: frozenset({TaskState.QUEUED, TaskState.SCHEDULED, TaskState.RUNNING, TaskState.RETRYING}),
}

# An outcome recorded in one write together with its start (group commit of a short task): the
# task went from one of these states through `running` to the outcome.
_VIA_RUNNING: frozenset[TaskState] = _ALLOWED[TaskState.RUNNING]


def allowed_sources(target: TaskState) -> frozenset[TaskState]:
    """The states from which a task may move to `target`."""
    return _ALLOWED[target]


def allowed_sources_via_running(target: TaskState) -> frozenset[TaskState]:
    """The states from which a task may reach `target` through `running` in one recorded step."""
    if target not in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.RETRYING, TaskState.DEAD):
        raise ValueError(f"{target.value} is not an outcome of running a task")
    return _VIA_RUNNING | _ALLOWED[target]


def can_transition(source: TaskState, target: TaskState) -> bool:
    """Whether `source -> target` is an allowed edge."""
    return source in _ALLOWED[target]
