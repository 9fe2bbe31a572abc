"""The thread pool: results, errors, async def, what its time limit can and cannot stop, one Completed per attempt."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pool_support import MODULES, attempt, collect, completions, started_pool

import taskq
from taskq.registry import task
from taskq.worker.pools import PoolEvent, Progress, Started, make_pool
from taskq.worker.pools.thread import ThreadPool


@contextmanager
def thread_pool(size: int = 1, **options: Any) -> Iterator[tuple[ThreadPool, queue.Queue[PoolEvent]]]:
    with started_pool("thread", size, 2.0, **options) as (pool, events):
        assert isinstance(pool, ThreadPool)
        yield pool, events


@task(name="tests.thread.spin")
def spin(seconds: float) -> int:
    """Pure Python work for `seconds` (interruptible at any bytecode)."""
    deadline = time.monotonic() + seconds
    count = 0
    while time.monotonic() < deadline:
        count += 1
    return count


def test_results_errors_retry_rules_and_unstorable_results() -> None:
    with thread_pool(size=2) as (pool, events):
        cases = {
            "echo": attempt("echo", "echo", 1, k=2),
            "os": attempt("os", "picky", "os"),
            "missing": attempt("missing", "picky", "missing"),
            "value": attempt("value", "picky", "value"),
            "reject": attempt("reject", "reject"),
            "circular": attempt("circular", "unstorable", "circular"),
            "hostile": attempt("hostile", "bad_exception"),
            "async": attempt("async", "async_sleep", 0.05, [1]),
        }
        for item in cases.values():
            pool.submit(item)
        seen = collect(events, len(cases))
    done = completions(seen)
    assert json.loads(done["echo"].result_json or "") == {"args": [1], "kwargs": {"k": 2}}
    assert done["async"].result_json == "[1]"
    errors = {key: event.error for key, event in done.items() if event.error is not None}
    assert errors["os"].retryable and not errors["missing"].retryable and not errors["value"].retryable
    assert (errors["reject"].kind, errors["reject"].retryable) == ("rejected", False)
    assert (errors["circular"].type, errors["circular"].kind) == ("UnstorableResult", "unstorable")
    assert errors["hostile"].type == "HostileError"
    assert {event.key for event in seen if isinstance(event, Started)} == set(cases)


def test_python_code_is_stopped_at_the_deadline_and_the_thread_is_reused() -> None:
    with thread_pool() as (pool, events):
        pool.submit(attempt("spin", "tests.thread.spin", 30, timeout_s=1.0))
        began = time.monotonic()
        spun = completions(collect(events, 1, timeout_s=10))["spin"]
        elapsed = time.monotonic() - began
        pool.submit(attempt("next", "echo", 1))
        after = completions(collect(events, 1))["next"]
        assert pool.abandoned_threads == 0
    assert spun.error is not None and (spun.error.type, spun.error.kind, spun.error.retryable) == ("TaskTimeout", "timeout", True)
    assert 0.9 <= elapsed <= 2.5, elapsed
    assert after.error is None


def test_async_def_is_cancelled_at_the_deadline() -> None:
    with thread_pool() as (pool, events):
        pool.submit(attempt("nap", "async_sleep", 30, timeout_s=1.0))
        began = time.monotonic()
        nap = completions(collect(events, 1, timeout_s=10))["nap"]
        assert time.monotonic() - began < 2.5
        assert pool.abandoned_threads == 0
    assert nap.error is not None and nap.error.type == "TaskTimeout"


def test_a_blocking_c_call_is_not_stopped_the_thread_is_abandoned_and_its_late_end_emits_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "late.txt"
    with thread_pool(size=1, kill_grace_s=0.5) as (pool, events):
        pool.submit(attempt("stuck", "stubborn", 2.5, str(marker), timeout_s=0.5))
        began = time.monotonic()
        stuck = completions(collect(events, 1, timeout_s=10))["stuck"]
        assert 0.9 <= time.monotonic() - began <= 2.0
        assert stuck.error is not None and stuck.error.type == "TaskTimeout" and "abandoned" in stuck.error.message
        # The slot was replaced: another attempt runs while the abandoned thread still sleeps.
        pool.submit(attempt("meanwhile", "echo", 1))
        assert completions(collect(events, 1, timeout_s=1.0))["meanwhile"].error is None
        assert pool.abandoned_threads == 1
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the docstring says the abandoned call keeps running; it should finish"
        time.sleep(0.2)
        assert events.empty(), f"the abandoned thread emitted after it was reported: {events.get_nowait()}"


def test_racing_deadlines_never_give_two_completions_or_hit_the_next_attempt() -> None:
    with thread_pool(size=2) as (pool, events):
        for index in range(40):
            pool.submit(attempt(index, "tests.thread.spin", 0.02 + (index % 5) * 0.005, timeout_s=0.03))
        done = completions(collect(events, 40, timeout_s=30))
        for index in range(40, 60):
            pool.submit(attempt(index, "echo", index))
        after = completions(collect(events, 20, timeout_s=10))
        time.sleep(0.2)
        assert events.empty()
        assert pool.failure() is None
    assert len(done) == 40
    assert {event.error.type for event in done.values() if event.error is not None} <= {"TaskTimeout"}
    assert all(event.error is None for event in after.values())


def test_current_and_progress_in_a_thread() -> None:
    with thread_pool() as (pool, events):
        pool.submit(attempt("ctx", "context", number=2))
        pool.submit(attempt("burst", "progress", 5, 0))
        seen = collect(events, 2)
    done = completions(seen)
    ctx = json.loads(done["ctx"].result_json or "")
    assert (ctx["id"], ctx["name"], ctx["attempt"], ctx["queue"]) == ("task-ctx", "context", 2, "q")
    assert [event.fraction for event in seen if isinstance(event, Progress)] == [0.2, 1.0]


def test_take_queued_and_stop() -> None:
    with thread_pool() as (pool, events):
        pool.submit(attempt("first", "sleep", 0.5))
        for index in range(4):
            pool.submit(attempt(index, "noop"))
        deadline = time.monotonic() + 5
        while pool.running() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.running() == 1
        assert [item.key for item in pool.take_queued(lambda item: item.key in (1, 3))] == [1, 3]
        assert [item.key for item in pool.take_queued()] == [0, 2]
        assert list(completions(collect(events, 1))) == ["first"]
    threads_before = {thread.name for thread in threading.enumerate() if thread.name.startswith("taskq-task-")}
    assert not threads_before, f"task threads still alive after stop: {threads_before}"
    assert taskq.current is not None


def test_stop_abandons_a_running_attempt_with_worker_lost() -> None:
    events: queue.Queue[PoolEvent] = queue.Queue()
    pool = make_pool("thread", size=1, events=events, task_modules=MODULES)
    pool.start()
    pool.submit(attempt("long", "sleep", 3))
    collect_started = time.monotonic()
    while pool.running() == 0 and time.monotonic() - collect_started < 5:
        time.sleep(0.01)
    began = time.monotonic()
    pool.stop(0.3)
    assert time.monotonic() - began < 3
    lost = completions(collect(events, 1, timeout_s=2))["long"]
    assert lost.error is not None and lost.error.kind == "lost"
