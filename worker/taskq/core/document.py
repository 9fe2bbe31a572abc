"""The status document of a task, as pure data: what the store writes for each transition.

The store adapter turns these into MongoDB operations; keeping the shapes here lets the CLI, the HTTP
service and the tests agree on them without importing pymongo.
"""

from __future__ import annotations

import traceback as tb
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from taskq.core.message import TaskMessage
from taskq.core.states import TaskState
from taskq.core.storable import safe_text

RESULT_LIMIT_BYTES = 16 * 1024
TRACEBACK_LIMIT_CHARS = 4000
MESSAGE_LIMIT_CHARS = 2000


@dataclass(frozen=True)
class TaskError:
    """What went wrong in an attempt, trimmed to sizes a status document can carry."""

    type: str
    message: str
    traceback: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException) -> TaskError:
        try:
            text = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
        except Exception:  # noqa: BLE001 - formatting calls the exception's own __str__, which may raise
            text = f"{type(exc).__name__} (traceback could not be formatted)"
        return cls.storable(type(exc).__name__, exc, text)

    @classmethod
    def storable(cls, type_name: str, message: object, traceback: str = "") -> TaskError:
        """An error whose every field a store accepts: valid Unicode, no NUL, capped sizes."""
        return cls(
            type=safe_text(type_name, 200),
            message=safe_text(message, MESSAGE_LIMIT_CHARS),
            traceback=safe_text(traceback[-TRACEBACK_LIMIT_CHARS:], TRACEBACK_LIMIT_CHARS),
        )

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message, "traceback": self.traceback}


def queued_document(message: TaskMessage, now: datetime) -> dict[str, Any]:
    """The first document of a task, written by the producer before it publishes.

    A message due later than `now` (an `eta`) makes a `scheduled` document; it carries `eta` then.
    """
    state = TaskState.SCHEDULED if message.eta is not None and message.eta > now else TaskState.QUEUED
    extra: dict[str, Any] = {"eta": message.eta} if message.eta is not None else {}
    return {
        "_id": message.id,
        "name": message.name,
        "queue": message.queue,
        "state": state.value,
        "args": message.args,
        "kwargs": message.kwargs,
        "priority": message.priority,
        "max_retries": message.max_retries,
        "timeout": message.timeout,
        "attempts": 0,
        "fence": 0,
        "worker": None,
        "created_at": message.created_at,
        "updated_at": now,
        "timestamps": {state.value: now},
        "result": None,
        "error": None,
        **extra,
    }


def capped_result(value: Any, encoded_size: int) -> Any:
    """The result to store: the value itself, or a marker when its JSON is larger than the cap."""
    if encoded_size <= RESULT_LIMIT_BYTES:
        return value
    return {"truncated": True, "size_bytes": encoded_size, "limit_bytes": RESULT_LIMIT_BYTES}


@dataclass(frozen=True)
class Unpublished:
    """An outbox entry: a task recorded as `queued` whose publish the broker has not confirmed yet.

    The producer writes the entry before the task's document and deletes it after the confirm;
    what stays behind (a producer killed in between, a broker or store failure mid-batch) is sent
    again by a resubmission of the same id or by the sweeper (`taskq.sweeper`).
    """

    task_id: str
    queue: str
    priority: int
    body: bytes
    created_at: datetime


def outbox_entry(message: TaskMessage, now: datetime) -> dict[str, Any]:
    """The outbox document of a message about to be published: the exact body to send again."""
    return {"_id": message.id, "queue": message.queue, "priority": message.priority, "body": message.encode(), "created_at": now}


def unpublished_from(entry: dict[str, Any]) -> Unpublished:
    """An outbox document read back (see `outbox_entry`)."""
    return Unpublished(
        task_id=str(entry["_id"]),
        queue=str(entry["queue"]),
        priority=int(entry.get("priority") or 0),
        body=bytes(entry["body"]),
        created_at=entry["created_at"],
    )


def conflict_reason(document: dict[str, Any], message: TaskMessage) -> str | None:
    """Why `message` cannot reuse the id of the stored task `document` (another name or queue), or None."""
    if document.get("queue") != message.queue:
        return f"task {message.id!r} exists on queue {document.get('queue')!r}, not {message.queue!r}"
    if document.get("name") != message.name:
        return f"task {message.id!r} exists as {document.get('name')!r}, not {message.name!r}"
    return None
