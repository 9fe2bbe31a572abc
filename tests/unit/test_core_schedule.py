"""Delayed tasks' pure parts: delay buckets, the lateness bound, due times, the `scheduled` state's edges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from taskq.core.document import queued_document
from taskq.core.message import TaskMessage, decode
from taskq.core.retry import delay_bucket_ms
from taskq.core.schedule import MAX_DELAY_S, delay_ms, lateness_bound_ms, schedule_bucket_ms
from taskq.core.states import TaskState, allowed_sources, can_transition
from taskq.core.topology import retry_queue_arguments
from taskq.errors import InvalidTask
from taskq.submission import due_time

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "wait_ms", [1, 999, 1000, 1001, 9_999, 10_000, 10_001, 15_500, 16_000, 16_001, 100_000, 3_600_000, 86_400_000]
)
def test_a_bucket_holds_the_wait_and_is_at_most_one_step_longer(wait_ms: int) -> None:
    bucket = schedule_bucket_ms(wait_ms)
    assert wait_ms <= bucket <= wait_ms + lateness_bound_ms(wait_ms)
    assert lateness_bound_ms(wait_ms) <= max(1000, wait_ms / 16)


def test_short_waits_share_the_retries_buckets() -> None:
    for seconds in (0.2, 1, 2.5, 7, 10):
        assert schedule_bucket_ms(int(seconds * 1000)) == delay_bucket_ms(seconds)


def test_the_longest_delay_fits_rabbitmqs_32_bit_ms_limits() -> None:
    arguments = retry_queue_arguments("q", schedule_bucket_ms(MAX_DELAY_S * 1000))
    assert arguments["x-message-ttl"] < 2**32 and arguments["x-expires"] < 2**32


def test_the_wait_is_rounded_up_never_down() -> None:
    assert delay_ms(NOW + timedelta(microseconds=1), NOW) == 1
    assert delay_ms(NOW - timedelta(seconds=1), NOW) == 0 and delay_ms(None, NOW) == 0


def test_due_times() -> None:
    assert due_time(None, None, NOW) is None
    assert due_time(5, None, NOW) == NOW + timedelta(seconds=5)
    assert due_time(None, "2026-12-02T13:00:00", NOW) == datetime(2026, 12, 2, 13, tzinfo=UTC)  # no zone: UTC
    for countdown, eta, reason in (
        (1, NOW, "either"),
        (-1, None, "negative"),
        (float("nan"), None, "number"),
        (True, None, "number"),
        (MAX_DELAY_S + 1, None, "at most"),
        (None, "soon", "ISO"),
        (None, NOW + timedelta(seconds=MAX_DELAY_S + 1), "at most"),
    ):
        with pytest.raises(InvalidTask, match=reason):
            due_time(countdown, eta, NOW)


def test_a_delayed_message_makes_a_scheduled_document_and_round_trips() -> None:
    message = TaskMessage(id="t", name="echo", queue="q", created_at=NOW, eta=NOW + timedelta(seconds=5))
    document = queued_document(message, NOW)
    assert document["state"] == "scheduled" and document["eta"] == message.eta and "scheduled" in document["timestamps"]
    assert decode(message.encode()).eta == message.eta
    plain = TaskMessage(id="t", name="echo", queue="q", created_at=NOW)
    assert b"eta" not in plain.encode() and queued_document(plain, NOW)["state"] == "queued"
    assert queued_document(message, NOW + timedelta(seconds=6))["state"] == "queued"  # recorded after it was due


def test_scheduled_starts_like_queued_and_is_never_entered_again() -> None:
    assert can_transition(TaskState.SCHEDULED, TaskState.RUNNING)
    assert can_transition(TaskState.SCHEDULED, TaskState.DEAD)
    assert allowed_sources(TaskState.SCHEDULED) == frozenset()
    assert not TaskState.SCHEDULED.is_final
    for final in (s for s in TaskState if s.is_final):
        assert not any(can_transition(final, target) for target in TaskState)
