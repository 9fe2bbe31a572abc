"""The task message: what a producer publishes and a worker consumes (JSON on the wire).

`decode` turns a body into a `TaskMessage` or raises `MalformedMessage` with a reason a human can
read; the worker dead-letters such messages with that reason.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from taskq.core.limits import MAX_PRIORITY, MAX_RETRIES
from taskq.core.limits import MAX_TIMEOUT_S as MAX_TIMEOUT_S
from taskq.core.limits import QUEUE_NAME_PATTERN as QUEUE_NAME_PATTERN

TASK_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
TASK_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$"
# Queue names and caps come from the one table of limits (shared with the CRD and the worker's settings).
MAX_PRIORITY_LIMIT = MAX_PRIORITY.high
MAX_RETRIES_LIMIT = MAX_RETRIES.high


class MalformedMessage(ValueError):
    """A message body that is not a valid task; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def new_task_id() -> str:
    """A fresh random task id."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """Now, timezone-aware, in UTC (the only clock the core reads; callers may pass their own)."""
    return datetime.now(UTC)


class TaskMessage(BaseModel):
    """One task as published: identity, what to run, and how to treat failure."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=TASK_ID_PATTERN)
    name: str = Field(pattern=TASK_NAME_PATTERN)
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    queue: str = Field(pattern=QUEUE_NAME_PATTERN)
    priority: int = Field(default=0, ge=0, le=MAX_PRIORITY_LIMIT)
    # None: the producer left it to the task's decorator and the worker's limits (see `taskq.core.limits`).
    max_retries: int | None = Field(default=None, ge=0, le=MAX_RETRIES_LIMIT)
    timeout: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S)
    created_at: datetime
    attempt: int = Field(default=1, ge=1, le=MAX_RETRIES_LIMIT + 1)
    # Not before this time (a countdown or eta at submission); None: as soon as possible. The
    # producer publishes such a message to a delay queue (`taskq.core.schedule`).
    eta: datetime | None = None

    @field_validator("created_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    @field_validator("eta")
    @classmethod
    def _aware_eta(cls, value: datetime | None) -> datetime | None:
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)

    def encode(self) -> bytes:
        """The JSON body to publish."""
        # A message without an eta encodes as before the field existed.
        return self.model_dump_json(exclude={"eta"} if self.eta is None else None).encode()

    def next_attempt(self) -> TaskMessage:
        """The same task, numbered as its next attempt (used when scheduling a retry)."""
        return self.model_copy(update={"attempt": self.attempt + 1})


def decode(body: bytes) -> TaskMessage:
    """Parse and validate a message body; raise `MalformedMessage` with a readable reason."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedMessage(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise MalformedMessage("body is nested too deeply to parse") from None
    if not isinstance(data, dict):
        raise MalformedMessage(f"body is JSON {type(data).__name__}, expected an object")
    try:
        return TaskMessage.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(body)'}: {err['msg']}" for err in exc.errors()[:5])
        raise MalformedMessage(f"schema violation: {problems}") from None


def valid_queue_name(name: str) -> bool:
    """Whether `name` can be a taskq queue (the suffixes `.dead`/`.retry.N` are reserved)."""
    return re.fullmatch(QUEUE_NAME_PATTERN, name) is not None
