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
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from taskq.core.message import TaskMessage, new_task_id
from taskq.errors import InvalidTask

MAX_MESSAGE_BYTES = 1024 * 1024
MAX_NESTING = 32
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
SUBMISSION_FIELDS = frozenset({"name", "args", "kwargs", "queue", "priority", "task_id", "id", "max_retries", "timeout"})


def _check_value(value: Any, where: str, depth: int) -> None:
    if depth > MAX_NESTING:
        raise InvalidTask(f"{where}: nested deeper than {MAX_NESTING} levels")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        _check_text(value, where)
        return
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise InvalidTask(f"{where}: integer outside the 64-bit range")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidTask(f"{where}: {value} is not a JSON number")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            if isinstance(item, (list, tuple)):
                # FerretDB (one of the two stores taskq supports) refuses arrays directly inside arrays.
                raise InvalidTask(f"{where}[{index}]: an array directly inside an array cannot be stored; wrap it in an object")
            _check_value(item, f"{where}[{index}]", depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_key(key, where)
            _check_value(item, f"{where}.{key}", depth + 1)
        return
    raise InvalidTask(f"{where}: {type(value).__name__} is not JSON data")


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidTask(f"{where}: string is not valid Unicode (lone surrogate)") from None


def _check_key(key: Any, where: str) -> None:
    if not isinstance(key, str):
        raise InvalidTask(f"{where}: key {key!r} is not a string")
    _check_text(key, where)
    if "\x00" in key or key.startswith("$") or "." in key:
        raise InvalidTask(f"{where}: key {key!r} may not contain NUL or '.', nor start with '$'")


def check_arguments(args: Any, kwargs: Any) -> None:
    """Raise `InvalidTask` unless `args` is a list and `kwargs` a string-keyed dict of storable JSON data."""
    if not isinstance(args, (list, tuple)):
        raise InvalidTask(f"args must be a list, not {type(args).__name__}")
    if not isinstance(kwargs, Mapping):
        raise InvalidTask(f"kwargs must be an object, not {type(kwargs).__name__}")
    _check_value(list(args), "args", 0)
    _check_value(dict(kwargs), "kwargs", 0)


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
) -> TaskMessage:
    """A validated, encodable `TaskMessage`, or `InvalidTask` with a reason a person can act on."""
    kwargs = {} if kwargs is None else kwargs
    check_arguments(args, kwargs)
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
        )
    except ValidationError as exc:
        raise InvalidTask(_validation_reason(exc)) from None
    if len(message.encode()) > MAX_MESSAGE_BYTES:
        raise InvalidTask(f"task {message.id}: encoded message larger than {MAX_MESSAGE_BYTES} bytes")
    return message


def message_from_mapping(
    data: Mapping[str, Any], *, default_queue: str, default_max_retries: int, default_timeout: float, now: datetime
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
    )
