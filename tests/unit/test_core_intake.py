"""The poison caps: whatever a body or its headers hold, reading it raises MalformedMessage with a reason."""

from __future__ import annotations

import json

import pytest

from taskq.core.intake import broker_delivery_count, read_message
from taskq.core.message import MalformedMessage

VALID = {"id": "x1", "name": "echo", "args": [], "kwargs": {}, "queue": "q", "created_at": "2026-01-01T00:00:00Z"}


def _body(**changes: object) -> bytes:
    return json.dumps({**VALID, **changes}).encode()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested deeper"),
        (_body(args=[{"a": [{"b": 1}]}] * 1 + [json.loads("[" * 0 + "1")]) + b" " * (2 * 1024 * 1024), "over the"),
        (b"\xff\xfe not utf-8", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "expected an object"),
        (_body(args=[[1, 2]]), "array directly inside an array"),
        (_body(kwargs={"$where": 1}), "may not contain"),
        (_body(args=[2**64]), "64-bit"),
        (_body(args=["\udcff"]), "lone surrogate"),
        (_body(name=3), "schema violation"),
        (_body(extra=1), "schema violation"),
    ],
)
def test_poison_bodies_are_malformed_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage) as caught:
        read_message(body)
    assert reason in caught.value.reason


def test_a_good_body_is_read() -> None:
    message = read_message(_body(args=[{"deep": {"er": [1, {"x": None}]}}]))
    assert message.id == "x1"
    assert message.timeout is None and message.max_retries is None


@pytest.mark.parametrize("headers", [["x"], {"x-delivery-count": "3"}, {"x-delivery-count": -1}, {"x-delivery-count": True}])
def test_wrong_header_types_are_malformed(headers: object) -> None:
    with pytest.raises(MalformedMessage):
        broker_delivery_count(headers)


def test_delivery_count_header() -> None:
    assert broker_delivery_count(None) is None
    assert broker_delivery_count({}) is None
    assert broker_delivery_count({"x-delivery-count": 2}) == 2
