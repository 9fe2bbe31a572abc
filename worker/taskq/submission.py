"""Turning what a producer hands in (keyword arguments, a dict, a JSON line) into a valid `TaskMessage`.

Called by `taskq.Client` for every submission, so the CLI, the HTTP service and Python callers get
the same checks and the same `InvalidTask` reasons. Beyond the message schema it checks that the
arguments survive the trip through JSON and the store: finite numbers, 64-bit integers, string keys
the store accepts, no array directly inside an array (FerretDB cannot store those), bounded nesting
and size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from taskq.core.intake import MAX_BODY_BYTES
from taskq.core.message import TaskMessage, new_task_id
from taskq.core.schedule import MAX_DELAY_S
from taskq.core.storable import MAX_NESTING as MAX_NESTING  # re-exported: the limit producers check against
from taskq.core.storable import storable_problem
from taskq.errors import InvalidTask

MAX_MESSAGE_BYTES = MAX_BODY_BYTES
SUBMISSION_FIELDS = frozenset(
    {"name", "args", "kwargs", "queue", "priority", "task_id", "id", "max_retries", "timeout", "countdown", "eta"}
)


def due_time(countdown: Any, eta: Any, now: datetime) -> datetime | None:
    """When a task may run (`countdown` seconds from `now`, or `eta`), or None for now; `InvalidTask` if wrong.

    An `eta` without a time zone is UTC; an ISO 8601 string is accepted. At most `MAX_DELAY_S` ahead.
    """
    if countdown is not None and eta is not None:
        raise InvalidTask("give either countdown or eta, not both")
    if countdown is not None:
        if isinstance(countdown, bool) or not isinstance(countdown, (int, float)) or not math.isfinite(countdown):
            raise InvalidTask(f"countdown must be a number of seconds, not {countdown!r}")
        if countdown < 0:
            raise InvalidTask("countdown must not be negative")
        due = now + timedelta(seconds=float(min(countdown, MAX_DELAY_S + 1)))
    elif eta is not None:
        if isinstance(eta, str):
            try:
                eta = datetime.fromisoformat(eta)
            except ValueError:
                raise InvalidTask(f"eta is not an ISO 8601 time: {eta!r}") from None
        if not isinstance(eta, datetime):
            raise InvalidTask(f"eta must be a datetime, not {type(eta).__name__}")
        due = eta if eta.tzinfo else eta.replace(tzinfo=UTC)
    else:
        return None
    if (due - now).total_seconds() > MAX_DELAY_S:
        raise InvalidTask(f"a task can be delayed by at most {MAX_DELAY_S} seconds (about 24 days)")
    return due


def check_arguments(args: Any, kwargs: Any) -> None:
    """Raise `InvalidTask` unless `args` is a list and `kwargs` a string-keyed dict of storable JSON data."""
    if not isinstance(args, (list, tuple)):
        raise InvalidTask(f"args must be a list, not {type(args).__name__}")
    if not isinstance(kwargs, Mapping):
        raise InvalidTask(f"kwargs must be an object, not {type(kwargs).__name__}")
    for value, where in ((list(args), "args"), (dict(kwargs), "kwargs")):
        problem = storable_problem(value, where)
        if problem is not None:
            raise InvalidTask(problem)


def _validation_reason(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'task'}: {err['msg']}" for err in exc.errors()[:5])


def build_message(
    name: Any,
    *,
    args: Any = (),
    kwargs: Any = None,
    queue: Any,
    priority: Any = 0,
    task_id: Any = None,
    max_retries: Any,
    timeout: Any,
    now: datetime,
    countdown: Any = None,
    eta: Any = None,
) -> TaskMessage:
    """A validated, encodable `TaskMessage`, or `InvalidTask` with a reason a person can act on."""
    kwargs = {} if kwargs is None else kwargs
    check_arguments(args, kwargs)
    due = due_time(countdown, eta, now)
    try:
        message = TaskMessage(
            id=task_id if task_id is not None else new_task_id(),
            name=name,
            args=list(args),
            kwargs=dict(kwargs),
            queue=queue,
            priority=priority,
            max_retries=max_retries,
            timeout=timeout,
            created_at=now,
            eta=due,
        )
    except ValidationError as exc:
        raise InvalidTask(_validation_reason(exc)) from None
    if len(message.encode()) > MAX_MESSAGE_BYTES:
        raise InvalidTask(f"task {message.id}: encoded message larger than {MAX_MESSAGE_BYTES} bytes")
    return message


def message_from_mapping(
    data: Mapping[str, Any], *, default_queue: str, default_max_retries: int | None, default_timeout: float | None, now: datetime
) -> TaskMessage:
    """A `TaskMessage` from a dict such as one JSON line of `taskq submit --file` (`id` or `task_id` optional)."""
    if not isinstance(data, Mapping):
        raise InvalidTask(f"a task must be a JSON object, not {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in SUBMISSION_FIELDS)
    if unknown:
        raise InvalidTask(f"unknown task field(s): {', '.join(unknown)}")
    if "name" not in data:
        raise InvalidTask("a task needs a 'name'")
    if "id" in data and "task_id" in data:
        raise InvalidTask("give either 'id' or 'task_id', not both")
    return build_message(
        data["name"],
        args=data.get("args", ()),
        kwargs=data.get("kwargs"),
        queue=data.get("queue") or default_queue,
        priority=data.get("priority", 0),
        task_id=data.get("task_id", data.get("id")),
        max_retries=data.get("max_retries", default_max_retries),
        timeout=data.get("timeout", default_timeout),
        now=now,
        countdown=data.get("countdown"),
        eta=data.get("eta"),
    )
