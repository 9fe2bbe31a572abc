"""Shared helpers of the pool tests (`test_pools_*.py`): attempts, a started pool, and event collection.

Every pool is started on the shipped example tasks (`taskq.examples`) plus the test module's own,
and stopped when the block ends; every wait is bounded.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from taskq.worker.pools import Attempt, Completed, Pool, PoolEvent, make_pool

MODULES = ["taskq.examples"]


def attempt(key: Any, name: str, *args: Any, timeout_s: float = 30.0, number: int = 1, **kwargs: Any) -> Attempt:
    """An attempt of task `name` keyed `key` (task id `task-<key>`) with these arguments."""
    return Attempt(key, f"task-{key}", name, number, "q", list(args), kwargs, timeout_s)


@contextmanager
def started_pool(kind: str, size: int, stop_s: float, **options: Any) -> Iterator[tuple[Pool, queue.Queue[PoolEvent]]]:
    """A started pool of `kind` and its events queue; stopped (with `stop_s`) when the block ends."""
    events: queue.Queue[PoolEvent] = queue.Queue()
    pool = make_pool(kind, size=size, events=events, task_modules=MODULES, **options)
    pool.start()
    try:
        yield pool, events
    finally:
        pool.stop(stop_s)


def collect(events: queue.Queue[PoolEvent], completed: int, timeout_s: float = 30.0) -> list[PoolEvent]:
    """Every event until `completed` Completed events arrived (fails after `timeout_s`)."""
    seen: list[PoolEvent] = []
    deadline = time.monotonic() + timeout_s
    while sum(isinstance(event, Completed) for event in seen) < completed:
        left = deadline - time.monotonic()
        assert left > 0, f"only {sum(isinstance(e, Completed) for e in seen)} of {completed} attempts completed: {seen}"
        try:
            seen.append(events.get(timeout=left))
        except queue.Empty:
            continue
    return seen


def completions(seen: list[PoolEvent]) -> dict[Any, Completed]:
    """The Completed event of each key (fails if a key completed twice)."""
    done: dict[Any, Completed] = {}
    for event in seen:
        if isinstance(event, Completed):
            assert event.key not in done, f"two Completed events for {event.key!r}"
            done[event.key] = event
    return done
