"""The worker's execution pools: where task attempts run (`process`, `thread` or `asyncio`).

The runtime builds one with `make_pool`, submits `Attempt`s and consumes `Started`/`Progress`/
`Completed` events from the queue it passed in; see `base` for the contract every pool keeps.
"""

from __future__ import annotations

import queue
from collections.abc import Sequence

from taskq.worker.pools.base import Attempt, Completed, ErrorInfo, Pool, PoolEvent, Progress, Started

POOL_KINDS = ("process", "thread", "asyncio")

__all__ = ["POOL_KINDS", "Attempt", "Completed", "ErrorInfo", "Pool", "PoolEvent", "Progress", "Started", "make_pool"]


def make_pool(
    kind: str,
    *,
    size: int,
    events: queue.Queue[PoolEvent],
    task_modules: Sequence[str],
    max_tasks_per_child: int = 0,
    max_memory_per_child_mb: int = 0,
    kill_grace_s: float | None = None,
) -> Pool:
    """A pool of `kind` running at most `size` attempts at once.

    `max_tasks_per_child` and `max_memory_per_child_mb` (0 = off) apply to the process pool only.
    `kill_grace_s` (default min(10, max(1, 10 % of the attempt's timeout))) is how long an attempt
    gets after its time limit to stop before it is killed (process) or abandoned (thread, asyncio).
    """
    if kind == "process":
        from taskq.worker.pools.process import ProcessPool

        return ProcessPool(
            size=size,
            events=events,
            task_modules=task_modules,
            max_tasks_per_child=max_tasks_per_child,
            max_memory_per_child_mb=max_memory_per_child_mb,
            kill_grace_s=kill_grace_s,
        )
    if kind == "thread":
        from taskq.worker.pools.thread import ThreadPool

        return ThreadPool(size=size, events=events, task_modules=task_modules, kill_grace_s=kill_grace_s)
    if kind == "asyncio":
        from taskq.worker.pools.aio import AsyncioPool

        return AsyncioPool(size=size, events=events, task_modules=task_modules, kill_grace_s=kill_grace_s)
    raise ValueError(f"unknown pool kind {kind!r} (expected one of {', '.join(POOL_KINDS)})")
