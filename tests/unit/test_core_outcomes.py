"""Table tests of the pure outcome decisions (taskq.core.outcomes) and the limit arithmetic."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from taskq.core.document import TaskError
from taskq.core.limits import AttemptLimits, attempt_limits, default_prefetch, kill_grace_s, lease_s, queue_consumer_timeout_ms
from taskq.core.message import TaskMessage
from taskq.core.outcomes import (
    Ack,
    AttemptError,
    DeadLetter,
    Retry,
    Run,
    attempt_outcome,
    malformed_outcome,
    redelivery_outcome,
)
from taskq.core.retry import RetryPolicy
from taskq.core.states import TaskState

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _message(attempt: int = 1) -> TaskMessage:
    return TaskMessage(id="t1", name="echo", queue="q", created_at=NOW, attempt=attempt)


def _decide(result_json: str | None = "1", failure: AttemptError | None = None, *, attempt: int = 1, retries: int = 2):
    return attempt_outcome(
        _message(attempt),
        result_json=result_json,
        failure=failure,
        limits=AttemptLimits(timeout_s=10, max_retries=retries),
        duration_s=0.5,
        worker_id="w",
        policy=RetryPolicy(),
        now=NOW,
        started_at=NOW,
        start_recorded=False,
        unit_random=0.5,
    )


def _raised(retryable: bool = True, kind: str = "raised") -> AttemptError:
    return AttemptError(TaskError.storable("ValueError", "boom"), retryable=retryable, kind=kind)


@pytest.mark.parametrize(
    ("result_json", "failure", "attempt", "state", "action", "event"),
    [
        ('{"a": 1}', None, 1, TaskState.SUCCEEDED, Ack, "task.succeeded"),
        ("null", None, 1, TaskState.SUCCEEDED, Ack, "task.succeeded"),
        (json.dumps(2**64), None, 1, TaskState.FAILED, Ack, "task.failed"),
        ('"\\udcff"', None, 1, TaskState.FAILED, Ack, "task.failed"),
        ("[[1, 2]]", None, 1, TaskState.FAILED, Ack, "task.failed"),
        ('{"a.b": 1}', None, 1, TaskState.FAILED, Ack, "task.failed"),
        (json.dumps("x" * 20_000), None, 1, TaskState.FAILED, Ack, "task.failed"),
        (None, _raised(), 1, TaskState.RETRYING, Retry, "task.retrying"),
        (None, _raised(kind="timeout"), 2, TaskState.RETRYING, Retry, "task.retrying"),
        (None, _raised(kind="lost"), 3, TaskState.DEAD, DeadLetter, "task.dead"),
        (None, _raised(retryable=False), 1, TaskState.FAILED, Ack, "task.failed"),
        (None, _raised(retryable=False, kind="rejected"), 3, TaskState.FAILED, Ack, "task.failed"),
    ],
)
def test_attempt_outcomes(result_json, failure, attempt, state, action, event) -> None:
    decision = _decide(result_json, failure, attempt=attempt)
    assert decision.transition is not None
    assert decision.transition.target is state
    assert isinstance(decision.action, action)
    assert decision.event == event


def test_unstorable_result_is_a_storable_failure() -> None:
    decision = _decide('"\\udcff"')
    assert decision.transition is not None
    error = decision.transition.fields["error"]
    assert error["type"] == "UnstorableResult"
    assert "surrogate" in error["message"]
    assert decision.transition.fields["result"] is None
    error["message"].encode("utf-8")  # storable text


def test_retry_carries_the_next_attempt_and_a_bounded_delay() -> None:
    decision = _decide(None, _raised())
    assert isinstance(decision.action, Retry)
    assert decision.action.message.attempt == 2
    assert 0 < decision.action.delay_ms <= decision.action.bucket_ms


def test_worker_limit_caps_retries() -> None:
    assert isinstance(_decide(None, _raised(), attempt=2, retries=1).action, DeadLetter)


@pytest.mark.parametrize(
    ("state", "deliveries", "action", "event"),
    [
        (None, 2, Run, "task.redelivered"),
        (TaskState.RUNNING, 5, Run, "task.redelivered"),
        (TaskState.RUNNING, 6, DeadLetter, "task.delivery_limit"),
        (None, 6, DeadLetter, "task.delivery_limit"),
        (TaskState.SUCCEEDED, 50, Ack, "task.redelivered_final"),
        (TaskState.FAILED, 2, Ack, "task.redelivered_final"),
        (TaskState.DEAD, 2, Ack, "task.redelivered_final"),
    ],
)
def test_redelivery_outcomes(state, deliveries, action, event) -> None:
    decision = redelivery_outcome(_message(), b"{}", state=state, deliveries=deliveries, max_deliveries=5, now=NOW)
    assert isinstance(decision.action, action)
    assert decision.event == event
    if isinstance(action, DeadLetter):
        assert decision.action.reason.startswith("delivery-limit")
        assert decision.transition is not None and decision.transition.target is TaskState.DEAD
        assert not decision.act_only_if_recorded


RETRY = Retry(_message(2), 1000, 1000)


@pytest.mark.parametrize(
    ("claimed", "retry", "deliveries", "action", "event", "buried_attempt"),
    [
        # The attempt ended retrying and its message came back: its retry may be lost, send it again.
        (TaskState.RETRYING, RETRY, 2, Retry, "task.retry_resent", None),
        # A republished copy of an attempt that ended retrying: its original sent the retry; only ack.
        (TaskState.RETRYING, None, 2, Ack, "task.redelivered_decided", None),
        # Past the delivery limit with the retry never sent: the next attempt is buried.
        (TaskState.RETRYING, RETRY, 6, DeadLetter, "task.delivery_limit", 2),
        (None, None, 6, DeadLetter, "task.delivery_limit", 1),
        (None, None, 2, Run, "task.redelivered", None),
    ],
)
def test_redelivery_of_a_claimed_attempt(claimed, retry, deliveries, action, event, buried_attempt) -> None:
    state = TaskState.RETRYING if claimed is not None else TaskState.RUNNING
    decision = redelivery_outcome(
        _message(), b"{}", state=state, deliveries=deliveries, max_deliveries=5, now=NOW, claimed=claimed, retry=retry
    )
    assert isinstance(decision.action, action) and decision.event == event
    if buried_attempt is not None:
        assert decision.transition is not None and decision.transition.attempt == buried_attempt
    else:
        assert decision.transition is None


def test_malformed_deep_body_never_raises() -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    decision = malformed_outcome(body, "nested", NOW)
    assert isinstance(decision.action, DeadLetter)
    assert decision.transition is None


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"message_timeout": None, "message_retries": None, "task_timeout": None, "task_retries": None}, AttemptLimits(60, 3)),
        ({"message_timeout": None, "message_retries": None, "task_timeout": 10, "task_retries": 1}, AttemptLimits(10, 1)),
        ({"message_timeout": 5, "message_retries": 0, "task_timeout": 10, "task_retries": 1}, AttemptLimits(5, 0)),
        ({"message_timeout": 50, "message_retries": 9, "task_timeout": 10, "task_retries": 1}, AttemptLimits(10, 1)),
        ({"message_timeout": 500, "message_retries": 9, "task_timeout": None, "task_retries": 5}, AttemptLimits(60, 3)),
    ],
)
def test_precedence_message_then_decorator_then_worker_cap(given, expected) -> None:
    assert attempt_limits(**given, worker_timeout=60, worker_retries=3) == expected


def test_queue_consumer_timeout_covers_a_full_lease_and_an_attempt() -> None:
    for timeout in (1, 5, 60, 300, 7 * 24 * 3600):
        attempt = timeout + kill_grace_s(timeout)
        assert lease_s(timeout) >= attempt  # the default look-ahead (one per slot) never waits longer
        assert lease_s(timeout) + attempt + 15 <= queue_consumer_timeout_ms(timeout) / 1000
    assert default_prefetch(4) == 8
    assert kill_grace_s(5) == 1.0 and kill_grace_s(60) == 6.0 and kill_grace_s(3600) == 10.0
