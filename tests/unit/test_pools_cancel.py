"""`Pool.cancel`: the process pool kills the attempt's child (Completed: Cancelled, never retried); the thread
and asyncio pools set `taskq.current().cancelled`, which a cooperative task sees and stops on."""

from __future__ import annotations

import asyncio
import time

import pytest
from pool_support import attempt, collect, completions, started_pool

import taskq
from taskq.registry import task
from taskq.worker.pools import Started
from taskq.worker.pools.process import ProcessPool


@task(name="tests.cancel.cooperative")
def cooperative(seconds: float) -> str:
    """Works until its attempt is cancelled (checked every 10 ms) or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if taskq.current().cancelled:
            return "stopped early"
        time.sleep(0.01)
    return "ran to the end"


@task(name="tests.cancel.cooperative_async")
async def cooperative_async(seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if taskq.current().cancelled:
            return "stopped early"
        await asyncio.sleep(0.01)
    return "ran to the end"


def _wait_started(events: object, pool: object, key: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if pool.running():  # type: ignore[attr-defined]
            return
        time.sleep(0.01)
    raise AssertionError(f"{key} never started")


def test_process_pool_kills_the_cancelled_child() -> None:
    with started_pool("process", 1, 5.0) as (pool, events):
        assert isinstance(pool, ProcessPool)
        before = pool.child_pids()
        pool.submit(attempt("long", "sleep", 30.0))
        _wait_started(events, pool, "long")
        assert not pool.cancel("task-long", 2)  # another attempt: not running here
        started = time.monotonic()
        assert pool.cancel("task-long", 1)
        done = completions(collect(events, 1, timeout_s=10))["long"]
        assert time.monotonic() - started < 2.0
        assert done.error is not None and done.error.type == "Cancelled" and done.error.retryable is False
        pool.submit(attempt("next", "echo", 1))
        assert completions(collect(events, 1))["next"].error is None
        assert pool.child_pids() != before  # a fresh child took the killed one's slot


@pytest.mark.parametrize(
    ("kind", "name"), [("thread", "tests.cancel.cooperative"), ("asyncio", "tests.cancel.cooperative_async")]
)
def test_thread_and_asyncio_pools_are_cooperative(kind: str, name: str) -> None:
    with started_pool(kind, 2, 2.0) as (pool, events):
        pool.submit(attempt("flagged", name, 20.0))
        pool.submit(attempt("other", name, 0.3))
        _wait_started(events, pool, "flagged")
        assert pool.cancel("task-flagged", 1)
        seen = collect(events, 2, timeout_s=10)
        done = completions(seen)
        assert done["flagged"].result_json == '"stopped early"' and done["flagged"].duration_s < 5
        assert done["other"].result_json == '"ran to the end"'  # only the cancelled attempt sees the flag
        assert any(isinstance(e, Started) for e in seen)
        assert not pool.cancel("task-flagged", 1)  # over: nothing to cancel
