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
from taskq.core.message import TaskMessage
from taskq.core.states import TaskState, allowed_sources, allowed_sources_via_running


@dataclass(frozen=True)
class Transition:
    """Move task `task_id` to `target` if it is in one of `sources`; `fields` are written with it.

    `insert` is the document to create when the task has no document yet (a message published
    without the producer API); None means a missing document refuses the transition.
    """

    task_id: str
    target: TaskState
    sources: frozenset[TaskState]
    fields: dict[str, Any] = field(default_factory=dict)
    insert: dict[str, Any] | None = None


def _insert_base(message: TaskMessage, now: datetime, exclude: dict[str, Any]) -> dict[str, Any]:
    base = queued_document(message, now)
    base.pop("_id")
    return {key: value for key, value in base.items() if key not in exclude and not any(k.startswith(key + ".") for k in exclude)}


def start(message: TaskMessage, worker_id: str, now: datetime) -> Transition:
    """The task begins attempt `message.attempt` on `worker_id`."""
    fields: dict[str, Any] = {
        "state": TaskState.RUNNING.value,
        "worker": worker_id,
        "attempts": message.attempt,
        "updated_at": now,
        "timestamps.running": now,
    }
    return Transition(
        message.id, TaskState.RUNNING, allowed_sources(TaskState.RUNNING), fields, _insert_base(message, now, fields)
    )


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
    }
    if start_recorded:
        sources = allowed_sources(target)
        insert = None
    else:
        sources = allowed_sources_via_running(target)
        if started_at is not None:
            fields["timestamps.running"] = started_at
        insert = _insert_base(message, now, fields)
    return Transition(message.id, target, sources, fields, insert)


def bury(message: TaskMessage, reason: str, now: datetime, *, error_type: str = "Undeliverable") -> Transition:
    """The task is dead without running again (its function is not registered here, its delivery limit is hit)."""
    fields: dict[str, Any] = {
        "state": TaskState.DEAD.value,
        "updated_at": now,
        "timestamps.dead": now,
        "error": TaskError.storable(error_type, reason).as_dict(),
    }
    return Transition(message.id, TaskState.DEAD, allowed_sources(TaskState.DEAD), fields, _insert_base(message, now, fields))
