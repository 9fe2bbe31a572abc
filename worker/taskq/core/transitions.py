"""Transitions as pure data: which document moves to which state, from which states, writing what.

Built by the worker's pure outcome decisions (`taskq.core.outcomes`) and its committer (starts,
progress), applied by `taskq.store` in one guarded write each, or in one bulk write per batch (group
commit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from taskq.core.document import TaskError, queued_document
from taskq.core.fencing import OUTCOME_STATES, fence, outcome_fence
from taskq.core.message import TaskMessage
from taskq.core.states import TaskState, allowed_sources, allowed_sources_via_running


@dataclass(frozen=True)
class Transition:
    """Move task `task_id` to `target` if it is in one of `sources`; `fields` are written with it.

    `insert` is the document to create when the task has no document yet (a message published
    without the producer API); None means a missing document refuses the transition. `attempt` and
    `epoch` (the delivery of that attempt) fence the write (`taskq.core.fencing`); a transition
    without an attempt (a malformed message's) is guarded by its sources alone. `worker` names the
    writer in an outcome's claim (the worker's committer makes it name the very delivery).
    """

    task_id: str
    target: TaskState
    sources: frozenset[TaskState]
    fields: dict[str, Any] = field(default_factory=dict)
    insert: dict[str, Any] | None = None
    attempt: int | None = None
    epoch: int = 1
    worker: str | None = None

    @property
    def is_outcome(self) -> bool:
        """An attempt's outcome: decided by its claim, one per attempt."""
        return self.attempt is not None and self.target in OUTCOME_STATES

    @property
    def fence(self) -> int | None:
        """The fence this write carries (and leaves), or None when it has no attempt."""
        if self.attempt is None:
            return None
        return outcome_fence(self.attempt) if self.is_outcome else fence(self.attempt, self.epoch)

    def with_fields(self, extra: dict[str, Any]) -> Transition:
        """The same transition writing `extra` too."""
        return Transition(
            self.task_id, self.target, self.sources, {**self.fields, **extra}, self.insert, self.attempt, self.epoch, self.worker
        )


def _insert_base(message: TaskMessage, now: datetime, exclude: dict[str, Any]) -> dict[str, Any]:
    base = queued_document(message, now)
    base.pop("_id")
    return {key: value for key, value in base.items() if key not in exclude and not any(k.startswith(key + ".") for k in exclude)}


def start(message: TaskMessage, worker_id: str, now: datetime, *, epoch: int = 1) -> Transition:
    """The task begins attempt `message.attempt` on `worker_id` (delivery `epoch` of that attempt)."""
    fields: dict[str, Any] = {
        "state": TaskState.RUNNING.value,
        "worker": worker_id,
        "attempts": message.attempt,
        "updated_at": now,
        "timestamps.running": now,
        "fence": fence(message.attempt, epoch),
    }
    insert = _insert_base(message, now, fields)
    sources = allowed_sources(TaskState.RUNNING)
    return Transition(message.id, TaskState.RUNNING, sources, fields, insert, message.attempt, epoch, worker_id)


def progress(message: TaskMessage, worker_id: str, values: dict[str, Any], now: datetime, *, epoch: int = 1) -> Transition:
    """Attempt `message.attempt`, still running on `worker_id`, reports progress."""
    fields: dict[str, Any] = {"progress": values, "updated_at": now, "fence": fence(message.attempt, epoch)}
    sources = frozenset({TaskState.RUNNING})
    return Transition(message.id, TaskState.RUNNING, sources, fields, None, message.attempt, epoch, worker_id)


def finish(
    message: TaskMessage,
    target: TaskState,
    worker_id: str,
    now: datetime,
    *,
    started_at: datetime | None = None,
    result: Any = None,
    error: TaskError | None = None,
    start_recorded: bool = True,
    epoch: int = 1,
) -> Transition:
    """An attempt ended in `target` (succeeded, failed, retrying or dead).

    With `start_recorded=False` the start was never written (group commit of a short task): the
    transition then also accepts the states `running` could be entered from, and records the start.
    """
    fields: dict[str, Any] = {
        "state": target.value,
        "worker": worker_id,
        "attempts": message.attempt,
        "updated_at": now,
        f"timestamps.{target.value}": now,
        "result": result,
        "error": error.as_dict() if error else None,
        "fence": outcome_fence(message.attempt),
    }
    if start_recorded:
        sources = allowed_sources(target)
        insert = None
    else:
        sources = allowed_sources_via_running(target)
        if started_at is not None:
            fields["timestamps.running"] = started_at
        insert = _insert_base(message, now, fields)
    return Transition(message.id, target, sources, fields, insert, message.attempt, epoch, worker_id)


def bury(
    message: TaskMessage,
    reason: str,
    now: datetime,
    *,
    error_type: str = "Undeliverable",
    epoch: int = 1,
    worker_id: str | None = None,
) -> Transition:
    """The task is dead without running again (its function is not registered here, its delivery limit is hit)."""
    fields: dict[str, Any] = {
        "state": TaskState.DEAD.value,
        "updated_at": now,
        "timestamps.dead": now,
        "error": TaskError.storable(error_type, reason).as_dict(),
        "fence": outcome_fence(message.attempt),
    }
    insert = _insert_base(message, now, fields)
    sources = allowed_sources(TaskState.DEAD)
    return Transition(message.id, TaskState.DEAD, sources, fields, insert, message.attempt, epoch, worker_id)
