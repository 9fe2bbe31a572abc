"""taskq.submission: what a producer hands in becomes a valid TaskMessage or an InvalidTask with a reason."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from taskq.core.message import decode
from taskq.errors import InvalidTask
from taskq.submission import MAX_MESSAGE_BYTES, MAX_NESTING, build_message, check_arguments, message_from_mapping

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
DEFAULTS: dict[str, Any] = {"default_queue": "work", "default_max_retries": 3, "default_timeout": 60.0, "now": NOW}


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"k": value}
    return value


def test_a_mapping_with_defaults_round_trips_through_the_wire_format() -> None:
    message = message_from_mapping({"name": "echo", "args": [1, "a", None, True, 2.5], "kwargs": {"x": {"y": [1]}}}, **DEFAULTS)
    assert (message.queue, message.max_retries, message.timeout, message.attempt, message.created_at) == ("work", 3, 60.0, 1, NOW)
    assert decode(message.encode()) == message
    assert len(message.id) == 32


def test_id_and_task_id_are_both_accepted_as_the_idempotency_key() -> None:
    assert message_from_mapping({"name": "echo", "id": "a-1"}, **DEFAULTS).id == "a-1"
    assert message_from_mapping({"name": "echo", "task_id": "a-2"}, **DEFAULTS).id == "a-2"
    with pytest.raises(InvalidTask, match="either 'id' or 'task_id'"):
        message_from_mapping({"name": "echo", "id": "a", "task_id": "b"}, **DEFAULTS)


@pytest.mark.parametrize(
    "args, kwargs, reason",
    [
        ("not a list", {}, "args must be a list"),
        ([], [], "kwargs must be an object"),
        ([2**63], {}, "64-bit"),
        ([-(2**63) - 1], {}, "64-bit"),
        ([float("inf")], {}, "not a JSON number"),
        ([{1: "x"}], {}, "not a string"),
        ([], {"a.b": 1}, "may not contain"),
        ([], {"$set": 1}, "may not contain"),
        ([], {"nul\x00": 1}, "may not contain"),
        (["\ud800"], {}, "lone surrogate"),
        ([[1, 2]], {}, "array directly inside an array"),
        ([object()], {}, "not JSON data"),
        ([_nested(MAX_NESTING + 1)], {}, "nested deeper"),
    ],
)
def test_arguments_the_store_or_json_cannot_carry_are_refused(args: Any, kwargs: Any, reason: str) -> None:
    with pytest.raises(InvalidTask, match=reason):
        check_arguments(args, kwargs)


def test_storable_arguments_pass() -> None:
    check_arguments([2**63 - 1, -(2**63), {"list": [1, {"inner": [2]}]}, _nested(MAX_NESTING - 1)], {"ok_key": None})


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({"name": "has space"}, "name"),
        ({"queue": "bad/queue"}, "queue"),
        ({"priority": 300}, "priority"),
        ({"max_retries": -1}, "max_retries"),
        ({"timeout": 0}, "timeout"),
        ({"task_id": "-leading-dash"}, "id"),
    ],
)
def test_schema_violations_name_the_field(overrides: dict[str, Any], reason: str) -> None:
    fields: dict[str, Any] = {"queue": "work", "max_retries": 3, "timeout": 60.0, "now": NOW}
    name = overrides.pop("name", "echo")
    fields.update(overrides)
    with pytest.raises(InvalidTask, match=reason):
        build_message(name, **fields)


def test_oversized_messages_are_refused() -> None:
    with pytest.raises(InvalidTask, match="larger than"):
        build_message("echo", args=["x" * MAX_MESSAGE_BYTES], queue="work", max_retries=0, timeout=1.0, now=NOW)


def test_unknown_fields_and_missing_name_are_refused() -> None:
    with pytest.raises(InvalidTask, match="unknown task field"):
        message_from_mapping({"name": "echo", "color": "red"}, **DEFAULTS)
    with pytest.raises(InvalidTask, match="needs a 'name'"):
        message_from_mapping({"args": []}, **DEFAULTS)
    with pytest.raises(InvalidTask, match="JSON object"):
        message_from_mapping(["echo"], **DEFAULTS)  # type: ignore[arg-type]
