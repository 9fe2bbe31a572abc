"""Priorities: with one slot and prefetch 1, every high-priority task runs before the low ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from worker_procs import Services, count_in_state, workers

from taskq.client import Client
from taskq.core.states import TaskState
from taskq.store.mongo import TaskStore
from taskq_dev.ports import poll

pytestmark = [pytest.mark.services]


def test_high_priority_tasks_run_first(svc: Services, client: Client, store: TaskStore, tmp_path: Path) -> None:
    low = [client.submit("echo", args=[f"low{i}"], priority=0) for i in range(8)]
    high = [client.submit("echo", args=[f"high{i}"], priority=9) for i in range(8)]
    with workers(svc, tmp_path, concurrency=1, prefetch=1):
        poll(lambda: count_in_state(store, TaskState.SUCCEEDED) == 16, timeout=120, interval=0.5, what="16 tasks to succeed")
    finished = {task_id: store.get(task_id)["timestamps"]["succeeded"] for task_id in low + high}  # type: ignore[index]
    assert max(finished[t] for t in high) < min(finished[t] for t in low)
