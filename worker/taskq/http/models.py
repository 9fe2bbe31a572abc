"""Request and response bodies of the HTTP intake service (pydantic), hence its OpenAPI document.

The limits mirror `taskq.core.message` so the document tells a client what will be accepted;
`taskq.submission` still checks what a schema cannot say (storable keys, 64-bit integers, size).
Used by `taskq.http.app`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from taskq.core.message import (
    MAX_PRIORITY_LIMIT,
    MAX_RETRIES_LIMIT,
    MAX_TIMEOUT_S,
    QUEUE_NAME_PATTERN,
    TASK_ID_PATTERN,
    TASK_NAME_PATTERN,
)
from taskq.core.schedule import MAX_DELAY_S
from taskq.core.states import TaskState

MAX_BATCH = 1000


class TaskSubmission(BaseModel):
    """One task to run. Omitted options take the service's defaults (TASKQ_QUEUE, ...)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TASK_NAME_PATTERN, description="Registered task name.")
    args: list[Any] = Field(default_factory=list, description="Positional arguments (JSON).")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments (JSON).")
    queue: str | None = Field(default=None, pattern=QUEUE_NAME_PATTERN)
    priority: int = Field(default=0, ge=0, le=MAX_PRIORITY_LIMIT)
    task_id: str | None = Field(
        default=None, pattern=TASK_ID_PATTERN, description="Idempotency key: an id that exists already is not run again."
    )
    max_retries: int | None = Field(default=None, ge=0, le=MAX_RETRIES_LIMIT)
    timeout: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S, description="Hard timeout, seconds.")
    countdown: float | None = Field(
        default=None, ge=0, le=MAX_DELAY_S, description="Run no sooner than this many seconds from now (state `scheduled`)."
    )
    eta: datetime | None = Field(default=None, description="Run no sooner than this time (ISO 8601; no zone means UTC).")


class BatchSubmission(BaseModel):
    """Many tasks in one request (validated as a whole before any is submitted)."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskSubmission] = Field(min_length=1, max_length=MAX_BATCH)


class Submitted(BaseModel):
    """The answer to one submission."""

    id: str
    queue: str
    created: bool = Field(description="False when a task with this id existed already (nothing was sent).")


class BatchSubmitted(BaseModel):
    """The answer to a batch: ids in request order."""

    ids: list[str]
    published: int
    existing: int


class TaskErrorInfo(BaseModel):
    """The last error of a task."""

    type: str = ""
    message: str = ""
    traceback: str = ""


class TaskStatus(BaseModel):
    """A task's status document."""

    id: str
    name: str = ""
    queue: str = ""
    state: TaskState
    attempts: int = 0
    worker: str | None = None
    priority: int = 0
    max_retries: int = 0
    timeout: float = 0
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    eta: datetime | None = None
    timestamps: dict[str, datetime] = Field(default_factory=dict)
    result: Any = None
    error: TaskErrorInfo | None = None


class QueueStatus(BaseModel):
    """A queue: ready messages and consumers (from the broker), dead letters, task counts by state."""

    name: str
    ready: int
    consumers: int
    dead: int
    counts: dict[str, int]


class Cancelled(BaseModel):
    """A cancel that won: the task is `cancelled`; `notified` says whether its workers were told at once."""

    id: str
    state: TaskState
    notified: bool


class Health(BaseModel):
    status: str


class Problem(BaseModel):
    """Every error answer: what was wrong, in one sentence."""

    detail: str
