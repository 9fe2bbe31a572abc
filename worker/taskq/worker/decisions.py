"""What to do with a delivery: the store transition to record, then the broker action to take.

Pure mapping from "how the attempt went" to a `Decision`; the committer applies the transition in
a group commit and the consumer performs the action once the transition is recorded. Used by the
consumer (malformed and unknown messages) and the committer (finished attempts).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from taskq.core.document import TaskError, capped_result
from taskq.core.message import TASK_ID_PATTERN, TaskMessage
from taskq.core.retry import RetryPolicy, delay_bucket_ms, should_retry
from taskq.core.states import TaskState, allowed_sources
from taskq.core.transitions import Transition, bury, finish

REASON_LIMIT_CHARS = 500


@dataclass(frozen=True)
class Ack:
    """Acknowledge the delivery: its outcome is recorded (or it needs nothing recorded)."""


@dataclass(frozen=True)
class Requeue:
    """Give the delivery back to the broker unprocessed (shutdown, store never reached)."""


@dataclass(frozen=True)
class Retry:
    """Publish the next attempt to the delay queue for `bucket_ms`, expiring after `delay_ms`; then ack."""

    message: TaskMessage
    delay_ms: int
    bucket_ms: int


@dataclass(frozen=True)
class DeadLetter:
    """Publish `body` to the dead-letter queue with `reason` in its header; then ack."""

    body: bytes
    reason: str


Action = Ack | Requeue | Retry | DeadLetter


@dataclass(frozen=True)
class Decision:
    """A transition to record (None: nothing to record) and the action to take once it is."""

    transition: Transition | None
    action: Action
    event: str
    fields: dict[str, Any] = field(default_factory=dict)
    # When the transition is refused as stale (the task is already final), only ack: the action
    # (a retry, a dead letter) belongs to whoever made the task final. Malformed and undeliverable
    # messages are dead-lettered whatever the store says.
    act_only_if_recorded: bool = True


def _json_safe(value: Any) -> tuple[Any, int]:
    text = json.dumps(value, default=repr, separators=(",", ":"))
    return json.loads(text), len(text.encode())


def outcome_decision(
    message: TaskMessage,
    *,
    error: BaseException | None,
    value: Any,
    duration_s: float,
    worker_id: str,
    policy: RetryPolicy,
    now: datetime,
    started_at: datetime | None,
    start_recorded: bool,
    unit_random: float,
) -> Decision:
    """The decision for a finished attempt: succeeded, retrying (with a delay) or dead."""
    base = {
        "task_id": message.id,
        "name": message.name,
        "attempt": message.attempt,
        "duration_ms": round(duration_s * 1000, 3),
    }
    if error is None:
        result, size = _json_safe(value)
        transition = finish(
            message,
            TaskState.SUCCEEDED,
            worker_id,
            now,
            started_at=started_at,
            result=capped_result(result, size),
            start_recorded=start_recorded,
        )
        return Decision(transition, Ack(), "task.succeeded", base)
    task_error = TaskError.from_exception(error)
    failure = {**base, "error_type": task_error.type, "error": task_error.message}
    if should_retry(message.attempt, message.max_retries):
        delay_s = policy.delay(message.attempt, unit_random)
        bucket = delay_bucket_ms(delay_s)
        transition = finish(
            message, TaskState.RETRYING, worker_id, now, started_at=started_at, error=task_error, start_recorded=start_recorded
        )
        delay_ms = max(1, min(bucket, int(delay_s * 1000)))
        return Decision(transition, Retry(message.next_attempt(), delay_ms, bucket), "task.retrying", {**failure, "delay_ms": delay_ms})
    transition = finish(message, TaskState.DEAD, worker_id, now, started_at=started_at, error=task_error, start_recorded=start_recorded)
    reason = f"retries exhausted after attempt {message.attempt}: {task_error.type}: {task_error.message}"
    return Decision(transition, DeadLetter(message.encode(), reason[:REASON_LIMIT_CHARS]), "task.dead", failure)


def unknown_task_decision(message: TaskMessage, body: bytes, reason: str, now: datetime) -> Decision:
    """A well-formed message naming a task this worker does not have: dead at once."""
    fields = {"task_id": message.id, "name": message.name, "attempt": message.attempt, "reason": reason}
    return Decision(bury(message, reason, now), DeadLetter(body, reason[:REASON_LIMIT_CHARS]), "task.undeliverable", fields, False)


def readable_task_id(body: bytes) -> str | None:
    """The `id` of a malformed body when it is a JSON object with a plausible task id, else None."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if isinstance(data, dict) and isinstance(data.get("id"), str) and re.fullmatch(TASK_ID_PATTERN, data["id"]):
        return str(data["id"])
    return None


def malformed_decision(body: bytes, reason: str, now: datetime) -> Decision:
    """A body that is not a valid task: dead-letter it; mark an existing document dead when its id is readable."""
    task_id = readable_task_id(body)
    transition = None
    if task_id is not None:
        fields: dict[str, Any] = {
            "state": TaskState.DEAD.value,
            "updated_at": now,
            "timestamps.dead": now,
            "error": TaskError(type="MalformedMessage", message=reason).as_dict(),
        }
        # No insert: a malformed body cannot make a document; it can only end an existing one.
        transition = Transition(task_id, TaskState.DEAD, allowed_sources(TaskState.DEAD), fields, None)
    return Decision(transition, DeadLetter(body, reason[:REASON_LIMIT_CHARS]), "message.malformed", {"task_id": task_id, "reason": reason[:REASON_LIMIT_CHARS]}, False)
