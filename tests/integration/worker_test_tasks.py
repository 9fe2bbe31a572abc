"""Task functions only the worker tests use (imported by `taskq-worker` through TASKQ_TASK_MODULES).

`stamped` writes when each execution starts and ends, so a test can prove from the tasks' own
records that a killed attempt never ran on and that its retry started only after the kill. The
decorated tasks carry their own limits, to check that decorators bind and worker limits cap them.
Fault injection for supervision tests: with `TASKQ_TEST_FAULT=committer-crash` set, importing this
module makes the store's group write raise an unexpected error after the first flush, as a bug in a
stage would.
"""

from __future__ import annotations

import os
import time

import taskq
from taskq.store.mongo import TaskStore


@taskq.task(name="stamped")
def stamped(path: str, seconds: float) -> str:
    """Append "start <attempt> <wall time>", sleep `seconds`, append "end <attempt> <wall time>"."""
    attempt = taskq.current().attempt
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(f"start {attempt} {time.time():.6f}\n")
    time.sleep(seconds)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(f"end {attempt} {time.time():.6f}\n")
    return "finished"


@taskq.task(name="one_retry", max_retries=1)
def one_retry() -> None:
    """Always fails; its decorator allows one retry."""
    raise RuntimeError("one_retry fails")


@taskq.task(name="greedy", max_retries=50, timeout=10_000)
def greedy(seconds: float = 0.0) -> float:
    """Asks for more than any test worker allows; the worker's limits cap it."""
    time.sleep(seconds)
    return seconds


if os.environ.get("TASKQ_TEST_FAULT") == "committer-crash":
    _original_apply_many = TaskStore.apply_many
    _calls = {"n": 0}

    def _crashing_apply_many(self: TaskStore, transitions):  # type: ignore[no-untyped-def]
        _calls["n"] += 1
        if _calls["n"] > 1:
            raise RuntimeError("injected fault: the committer stage crashes")
        return _original_apply_many(self, transitions)

    TaskStore.apply_many = _crashing_apply_many  # type: ignore[method-assign]
