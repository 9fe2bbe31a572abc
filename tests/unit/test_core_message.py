"""Message decoding of the pure core: valid bodies round-trip, every malformed body gets a reason."""

from __future__ import annotations

import json

import pytest

from taskq.core.message import MalformedMessage, TaskMessage, decode, utcnow


def _valid(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {"id": "abc", "name": "echo", "queue": "q", "created_at": "2026-01-01T00:00:00Z"}
    body.update(changes)
    return body


def test_round_trip_and_next_attempt() -> None:
    message = TaskMessage(id="a1", name="echo", args=[1], kwargs={"k": "v"}, queue="q", priority=3, created_at=utcnow())
    decoded = decode(message.encode())
    assert decoded == message
    assert decoded.next_attempt().attempt == 2
    assert decoded.next_attempt().id == message.id


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"{", "not JSON"),
        (b"[1, 2]", "expected an object"),
        (json.dumps(_valid(name="")).encode(), "schema violation"),
        (json.dumps(_valid(priority=-1)).encode(), "priority"),
        (json.dumps(_valid(extra=1)).encode(), "extra"),
        (json.dumps({k: v for k, v in _valid().items() if k != "queue"}).encode(), "queue"),
        (json.dumps(_valid(id="has space")).encode(), "id"),
        (json.dumps(_valid(args="text")).encode(), "args"),
    ],
)
def test_malformed_bodies_have_reasons(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage) as caught:
        decode(body)
    assert reason in caught.value.reason


def test_naive_created_at_becomes_utc() -> None:
    decoded = decode(json.dumps(_valid(created_at="2026-01-01T00:00:00")).encode())
    assert decoded.created_at.tzinfo is not None
