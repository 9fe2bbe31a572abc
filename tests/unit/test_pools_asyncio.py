"""The asyncio pool: coroutines on one loop, at most `size` at once, `asyncio.timeout`, sync functions in helper threads."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pool_support import MODULES, attempt, collect, completions, started_pool

import taskq
from taskq.registry import task
from taskq.worker.pools import PoolEvent, Progress, Started, make_pool
from taskq.worker.pools.aio import AsyncioPool

_peak = {"now": 0, "max": 0}
_peak_lock = threading.Lock()


@contextmanager
def asyncio_pool(size: int = 2, **options: Any) -> Iterator[tuple[AsyncioPool, queue.Queue[PoolEvent]]]:
    with started_pool("asyncio", size, 2.0, **options) as (pool, events):
        assert isinstance(pool, AsyncioPool)
        yield pool, events


@task(name="tests.aio.measured")
async def measured(seconds: float) -> int:
    """Sleep on the loop, recording how many of these run at once."""
    with _peak_lock:
        _peak["now"] += 1
        _peak["max"] = max(_peak["max"], _peak["now"])
    try:
        await asyncio.sleep(seconds)
    finally:
        with _peak_lock:
            _peak["now"] -= 1
    return 1


@task(name="tests.aio.swallow")
async def swallow(seconds: float) -> str:
    """Ignore cancellation until `seconds` have passed (a coroutine the timeout cannot stop)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            await asyncio.sleep(deadline - time.monotonic())
        except asyncio.CancelledError:
            continue
    return "finished"


@task(name="tests.aio.context")
async def context_and_progress() -> dict[str, Any]:
    """Report progress from the coroutine and from a helper thread; return what `taskq.current()` said."""
    taskq.report_progress(0.5, "half")
    await asyncio.sleep(0)
    seen_in_thread = await asyncio.to_thread(lambda: taskq.current().id)
    now = taskq.current()
    taskq.report_progress(1.0)
    return {"id": now.id, "attempt": now.attempt, "thread": seen_in_thread}


def test_coroutines_and_sync_functions_give_results_and_errors() -> None:
    with asyncio_pool() as (pool, events):
        cases = {
            "async": attempt("async", "async_sleep", 0.05, {"a": 1}),
            "sync": attempt("sync", "echo", "x"),
            "fail": attempt("fail", "fail", "boom"),
            "missing": attempt("missing", "picky", "missing"),
            "reject": attempt("reject", "reject"),
            "circular": attempt("circular", "unstorable", "circular"),
            "hostile": attempt("hostile", "bad_exception"),
        }
        for item in cases.values():
            pool.submit(item)
        seen = collect(events, len(cases))
        assert pool.failure() is None
    done = completions(seen)
    assert json.loads(done["async"].result_json or "") == {"a": 1}
    assert json.loads(done["sync"].result_json or "") == {"args": ["x"], "kwargs": {}}
    errors = {key: event.error for key, event in done.items() if event.error is not None}
    assert (errors["fail"].type, errors["fail"].retryable) == ("ExampleFailure", True)
    assert not errors["missing"].retryable
    assert (errors["reject"].kind, errors["reject"].retryable) == ("rejected", False)
    assert errors["circular"].type == "UnstorableResult"
    assert errors["hostile"].type == "HostileError"
    assert {event.key for event in seen if isinstance(event, Started)} == set(cases)


def test_at_most_size_coroutines_run_at_once() -> None:
    _peak.update(now=0, max=0)
    with asyncio_pool(size=2) as (pool, events):
        began = time.monotonic()
        for index in range(6):
            pool.submit(attempt(index, "tests.aio.measured", 0.3))
        done = completions(collect(events, 6))
        elapsed = time.monotonic() - began
    assert all(event.result_json == "1" for event in done.values())
    assert _peak["max"] == 2
    assert elapsed >= 0.85, elapsed


def test_timeout_cancels_an_awaiting_coroutine() -> None:
    with asyncio_pool() as (pool, events):
        pool.submit(attempt("nap", "async_sleep", 30, timeout_s=1.0))
        began = time.monotonic()
        nap = completions(collect(events, 1, timeout_s=10))["nap"]
        elapsed = time.monotonic() - began
    assert nap.error is not None and (nap.error.type, nap.error.kind) == ("TaskTimeout", "timeout")
    assert 0.9 <= elapsed <= 2.0, elapsed


def test_a_coroutine_that_swallows_cancellation_is_abandoned_after_the_grace() -> None:
    with asyncio_pool(kill_grace_s=0.5) as (pool, events):
        pool.submit(attempt("stubborn", "tests.aio.swallow", 3, timeout_s=0.5))
        began = time.monotonic()
        done = completions(collect(events, 1, timeout_s=10))["stubborn"]
        elapsed = time.monotonic() - began
        pool.submit(attempt("next", "async_sleep", 0, "ok"))
        after = completions(collect(events, 1, timeout_s=5))["next"]
    assert done.error is not None and done.error.type == "TaskTimeout" and "abandoned" in done.error.message
    assert 0.9 <= elapsed <= 2.0, elapsed
    assert after.result_json == '"ok"'


_spin_state: dict[str, Any] = {}


@task(name="tests.aio.spin")
def spin(seconds: float) -> str:
    """Pure Python work in a helper thread; records whether it ran to its end or was interrupted."""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            pass
    except taskq.SoftTimeLimitExceeded:
        _spin_state["interrupted_after"] = time.monotonic() - (deadline - seconds)
        raise
    _spin_state["finished"] = True
    return "finished"


def test_a_sync_function_is_reported_at_its_deadline_and_its_thread_interrupted() -> None:
    _spin_state.clear()
    with asyncio_pool() as (pool, events):
        pool.submit(attempt("spin", "tests.aio.spin", 5.0, timeout_s=0.5))
        began = time.monotonic()
        spun = completions(collect(events, 1, timeout_s=10))["spin"]
        elapsed = time.monotonic() - began
        deadline = time.monotonic() + 5
        while "interrupted_after" not in _spin_state and time.monotonic() < deadline:
            time.sleep(0.02)
    assert spun.error is not None and spun.error.type == "TaskTimeout" and "interrupted" in spun.error.message
    assert 0.4 <= elapsed <= 1.5, elapsed
    assert "finished" not in _spin_state and _spin_state["interrupted_after"] < 1.5


def test_a_blocking_sync_call_is_reported_at_its_deadline_though_its_thread_runs_on() -> None:
    with asyncio_pool() as (pool, events):
        pool.submit(attempt("blocking", "stubborn", 2.0, timeout_s=0.5))
        began = time.monotonic()
        blocking = completions(collect(events, 1, timeout_s=10))["blocking"]
        elapsed = time.monotonic() - began
        pool.submit(attempt("next", "echo", 1))
        assert completions(collect(events, 1, timeout_s=5))["next"].error is None
    assert blocking.error is not None and blocking.error.type == "TaskTimeout"
    assert "runs on" in blocking.error.message
    assert 0.4 <= elapsed <= 1.5, elapsed


def test_current_and_progress_in_coroutines_and_their_threads() -> None:
    with asyncio_pool() as (pool, events):
        pool.submit(attempt("ctx", "tests.aio.context", number=4))
        pool.submit(attempt("sync-ctx", "context", number=1))
        pool.submit(attempt("burst", "progress", 5, 0))
        seen = collect(events, 3)
    done = completions(seen)
    assert json.loads(done["ctx"].result_json or "") == {"id": "task-ctx", "attempt": 4, "thread": "task-ctx"}
    assert json.loads(done["sync-ctx"].result_json or "")["id"] == "task-sync-ctx"
    progress = [(event.fraction, event.message) for event in seen if isinstance(event, Progress) and event.key == "ctx"]
    assert progress == [(0.5, "half"), (1.0, None)]
    assert [event.fraction for event in seen if isinstance(event, Progress) and event.key == "burst"] == [0.2, 1.0]


def test_take_queued_and_stop_cancels_what_still_runs() -> None:
    events: queue.Queue[PoolEvent] = queue.Queue()
    pool = make_pool("asyncio", size=1, events=events, task_modules=MODULES)
    pool.start()
    pool.submit(attempt("long", "async_sleep", 30, timeout_s=60))
    for index in range(3):
        pool.submit(attempt(index, "noop"))
    deadline = time.monotonic() + 5
    while pool.running() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool.running() == 1 and pool.queued() == 3
    assert [item.key for item in pool.take_queued(lambda item: item.key == 1)] == [1]
    assert [item.key for item in pool.take_queued()] == [0, 2]
    began = time.monotonic()
    pool.stop(0.3)
    assert time.monotonic() - began < 3
    lost = completions(collect(events, 1, timeout_s=2))["long"]
    assert lost.error is not None and lost.error.kind == "lost"
    assert not any(thread.name == "taskq-asyncio-pool" for thread in threading.enumerate())
    assert pool.failure() is None
