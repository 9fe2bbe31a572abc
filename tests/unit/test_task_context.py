"""`taskq.current()` and `taskq.report_progress()` (validation, rate limit, isolation) and the task retry rules."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

import taskq
from taskq.context import PROGRESS_MESSAGE_MAX, TaskContext, running
from taskq.errors import InvalidTask
from taskq.registry import TaskSpec, register
from taskq.worker.pools.outcome import encode_result, error_info

Report = tuple[float, "str | None", datetime]


def make_context(task_id: str = "t1", attempt: int = 1) -> TaskContext:
    return TaskContext(task_id, "name", attempt, "q", datetime.now(UTC) + timedelta(seconds=30))


def test_exports() -> None:
    assert taskq.SoftTimeLimitExceeded.__mro__[1] is taskq.TaskTimeout
    assert issubclass(taskq.Reject, Exception)
    assert {"current", "report_progress", "Reject", "TaskTimeout", "SoftTimeLimitExceeded", "Client", "task"} <= set(
        taskq.__all__
    )


def test_outside_a_task_both_raise_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="outside a running task"):
        taskq.current()
    with pytest.raises(RuntimeError, match="outside a running task"):
        taskq.report_progress(0.5)


def test_current_inside_and_after_the_block() -> None:
    context = make_context("abc", 3)
    with running(context, lambda *_: None):
        assert taskq.current() == context
        assert taskq.current().deadline.tzinfo is not None
    with pytest.raises(RuntimeError):
        taskq.current()


def test_progress_validation_and_message_cap() -> None:
    sent: list[Report] = []
    with running(make_context(), lambda *report: sent.append(report)):
        for bad in (-0.1, 1.01, float("nan"), float("inf")):
            with pytest.raises(ValueError):
                taskq.report_progress(bad)
        with pytest.raises(TypeError):
            taskq.report_progress(True)
        with pytest.raises(TypeError):
            taskq.report_progress("0.5")
        with pytest.raises(TypeError):
            taskq.report_progress(0.5, 5)
        assert taskq.report_progress(0, "x" * 1000 + "\udcff")
    assert len(sent) == 1
    fraction, message, at = sent[0]
    assert fraction == 0.0 and message is not None and len(message) == PROGRESS_MESSAGE_MAX
    message.encode("utf-8")
    assert at.tzinfo is not None


def test_progress_is_rate_limited_per_attempt_and_one_always_passes() -> None:
    first: list[Report] = []
    second: list[Report] = []
    with running(make_context("a"), lambda *report: first.append(report)):
        assert taskq.report_progress(0.1)
        assert not taskq.report_progress(0.2)
        with running(make_context("b"), lambda *report: second.append(report)):
            assert taskq.report_progress(0.3), "another attempt has its own limit"
        assert not taskq.report_progress(0.4)
        assert taskq.report_progress(1.0)
        time.sleep(1.05)
        assert taskq.report_progress(0.9)
    assert [report[0] for report in first] == [0.1, 1.0, 0.9]
    assert [report[0] for report in second] == [0.3]


def test_reports_after_the_attempt_ended_are_dropped() -> None:
    sent: list[Report] = []
    leftovers: list[BaseException] = []
    proceed = threading.Event()
    finished = threading.Event()

    def helper() -> None:
        proceed.wait(5)
        try:
            taskq.report_progress(1.0)
        except RuntimeError as exc:
            leftovers.append(exc)
        finished.set()

    with running(make_context(), lambda *report: sent.append(report)):
        context = contextvars.copy_context()
        threading.Thread(target=context.run, args=(helper,), daemon=True).start()
    proceed.set()
    assert finished.wait(5)
    assert sent == [] and len(leftovers) == 1


def test_each_asyncio_task_sees_its_own_context() -> None:
    async def one(task_id: str) -> tuple[str, str]:
        with running(make_context(task_id), lambda *_: None):
            await asyncio.sleep(0.01)
            in_thread = await asyncio.to_thread(lambda: taskq.current().id)
            return taskq.current().id, in_thread

    async def both() -> list[tuple[str, str]]:
        return list(await asyncio.gather(one("x"), one("y")))

    assert asyncio.run(both()) == [("x", "x"), ("y", "y")]


class Transient(Exception):
    pass


class Permanent(Transient):
    pass


def test_retry_rules() -> None:
    spec = TaskSpec("rules", lambda: None, retry_for=(Transient, OSError), dont_retry_for=(Permanent,))
    assert spec.retryable(Transient())
    assert spec.retryable(ConnectionError())
    assert not spec.retryable(Permanent())
    assert not spec.retryable(ValueError())
    assert not TaskSpec("default", lambda: None).retryable(taskq.Reject("no"))
    assert TaskSpec("default", lambda: None).retryable(ValueError())
    assert not TaskSpec("default", lambda: None).retryable(KeyboardInterrupt())
    info = error_info(Permanent("bad input"), spec)
    assert (info.type, info.message, info.kind, info.retryable) == ("Permanent", "bad input", "raised", False)
    assert error_info(taskq.SoftTimeLimitExceeded("late"), spec).kind == "timeout"
    assert error_info(taskq.Reject("no"), spec).kind == "rejected"


def test_retry_rule_types_are_checked_at_registration() -> None:
    with pytest.raises(InvalidTask, match="retry_for"):
        register(TaskSpec("tests.context.bad_rules", lambda: None, retry_for=(ValueError, "oops")))  # type: ignore[arg-type]
    with pytest.raises(InvalidTask, match="dont_retry_for"):
        register(TaskSpec("tests.context.bad_rules2", lambda: None, dont_retry_for=ValueError))  # type: ignore[arg-type]


def test_error_text_is_capped_and_storable() -> None:
    info = error_info(ValueError("\udcff" + "m" * 10_000), None)
    assert len(info.message) <= 2000 and len(info.traceback) <= 4000
    info.message.encode("utf-8")
    info.traceback.encode("utf-8")


def test_result_encoding() -> None:
    assert encode_result({"a": [1, 2.5, None]}) == ('{"a": [1, 2.5, null]}', None)
    for value in ({1, 2}, float("nan"), object()):
        result, error = encode_result(value)
        assert result is None and error is not None and error.type == "UnstorableResult" and not error.retryable
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    result, error = encode_result(deep)
    assert result is None and error is not None and "RecursionError" in error.message
