"""Reading a delivery into a task message, safely: the poison caps.

Nothing in a message may crash the worker: a body over the size limit, nesting past the depth
limit, an encoding that is not UTF-8, JSON that is not a task, or headers of the wrong type all
raise `MalformedMessage` with a reason (the worker dead-letters the message with it). Pure; called
by the worker's connection stage for every delivery.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from taskq.core.message import MalformedMessage, TaskMessage
from taskq.core.storable import MAX_NESTING, storable_problem

MAX_BODY_BYTES = 1024 * 1024
"""The largest body a worker reads; a producer's submission is capped at the same size."""
DELIVERY_COUNT_HEADER = "x-delivery-count"


def read_message(body: object, *, max_body_bytes: int = MAX_BODY_BYTES, max_nesting: int = MAX_NESTING) -> TaskMessage:
    """The task message in `body`, or `MalformedMessage` saying why it is not one."""
    if not isinstance(body, (bytes, bytearray)):
        raise MalformedMessage(f"body is {type(body).__name__}, not bytes")
    if len(body) > max_body_bytes:
        raise MalformedMessage(f"body of {len(body)} bytes is over the {max_body_bytes}-byte limit")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedMessage(f"body is not UTF-8 text (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedMessage(f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise MalformedMessage(f"body is nested deeper than {max_nesting} levels") from None
    if not isinstance(data, dict):
        raise MalformedMessage(f"body is JSON {type(data).__name__}, expected an object")
    # args/kwargs sit one level down in the body: allow them the full nesting of a submission.
    problem = storable_problem(data, "body", max_nesting=max_nesting + 1)
    if problem is not None:
        raise MalformedMessage(problem)
    try:
        return TaskMessage.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(body)'}: {err['msg']}" for err in exc.errors()[:5])
        raise MalformedMessage(f"schema violation: {problems}") from None


def broker_delivery_count(headers: object) -> int | None:
    """Earlier deliveries the broker counted (quorum queues' `x-delivery-count`), None if it does not count.

    Raises `MalformedMessage` for headers of the wrong type (a table that is not a table, a count
    that is not a non-negative integer).
    """
    if headers is None:
        return None
    if not isinstance(headers, Mapping):
        raise MalformedMessage(f"headers are {type(headers).__name__}, not a table")
    value: Any = headers.get(DELIVERY_COUNT_HEADER)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedMessage(f"header {DELIVERY_COUNT_HEADER} is {value!r}, not a non-negative integer")
    return value
