"""The task of the chaos run: sleep a while and write every execution to a ledger outside the store.

Imported by the chaos run's workers (`TASKQ_TASK_MODULES=taskq_dev.chaos_tasks`). Each execution
appends one line when it starts and one when it ends (or fails), with one `write` on an `O_APPEND`
descriptor, so lines from many processes never interleave:

    start|end|fail <task id> <attempt> <worker id> <pid> <wall time>

The worker id is the `TASKQ_WORKER_ID` the run gave the worker process (its pool children inherit
it), or, for a worker pod, its `POD_NAME`, so an execution can be tied to the worker a fault hit. Read back by `taskq_dev.chaos`.
"""

from __future__ import annotations

import os
import time

import taskq

SLICE_S = 0.05


class PlannedFailure(RuntimeError):
    """Raised by a task asked to fail its first attempt (a retry that is part of the plan)."""


def _worker_id() -> str:
    return os.environ.get("TASKQ_WORKER_ID") or os.environ.get("POD_NAME") or "?"


def _append(path: str, kind: str, task_id: str, attempt: int) -> None:
    line = f"{kind} {task_id} {attempt} {_worker_id()} {os.getpid()} {time.time():.6f}\n"
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line.encode())
    finally:
        os.close(descriptor)


@taskq.task(name="chaos_step")
def chaos_step(ledger: str, seconds: float = 0.1, fail_first: bool = False) -> float:
    """Sleep `seconds` in short slices between a `start` and an `end` ledger line; with `fail_first`,
    the first attempt raises `PlannedFailure` after its sleep (and writes `fail`)."""
    context = taskq.current()
    _append(ledger, "start", context.id, context.attempt)
    deadline = time.monotonic() + max(0.0, float(seconds))
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(SLICE_S, left))
    if fail_first and context.attempt <= 1:
        _append(ledger, "fail", context.id, context.attempt)
        raise PlannedFailure("the first attempt fails by plan")
    _append(ledger, "end", context.id, context.attempt)
    return float(seconds)
