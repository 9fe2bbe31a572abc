"""The worker end to end on real RabbitMQ and the real store: the seed procedure, and 1000 tasks over 3 workers.

On FerretDB 1.x every write by `_id` scans the collection (its SQLite index is not used), so the
1000-task run is bound by the store: minutes on a busy 2-core machine, seconds on MongoDB.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from worker_procs import Services, count_in_state, workers

from taskq.client import Client
from taskq.core.states import TaskState
from taskq.store.mongo import TaskStore
from taskq_dev.ports import poll

pytestmark = [pytest.mark.services]


def test_seed_procedure_every_status_correct_and_logged(svc: Services, client: Client, store: TaskStore, tmp_path: Path) -> None:
    ids = [client.submit("echo", args=[i], kwargs={"tag": f"t{i}"}) for i in range(20)]
    with workers(svc, tmp_path, count=2) as running:
        poll(lambda: count_in_state(store, TaskState.SUCCEEDED) == len(ids), timeout=90, what="20 tasks to succeed")
        poll(lambda: sum(len(w.events_named("task.succeeded")) for w in running) >= len(ids), timeout=10, what="completion logs")
        logged = {e["task_id"]: e for w in running for e in w.events_named("task.succeeded")}
    for index, task_id in enumerate(ids):
        document = store.get(task_id)
        assert document is not None
        assert document["state"] == "succeeded"
        assert document["result"] == {"args": [index], "kwargs": {"tag": f"t{index}"}}
        assert document["attempts"] == 1
        assert document["worker"].startswith("w")
        assert set(document["timestamps"]) >= {"queued", "succeeded"}
        assert logged[task_id]["name"] == "echo"
        assert logged[task_id]["attempt"] == 1
        assert logged[task_id]["duration_ms"] >= 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_thousand_tasks_over_three_workers_exactly_one_document_each(
    svc: Services, client: Client, store: TaskStore, tmp_path: Path
) -> None:
    receipt = client.submit_many({"name": "noop", "args": [i]} for i in range(1000))
    ids = receipt.ids
    assert len(set(ids)) == 1000
    with workers(svc, tmp_path, count=3, prefetch=100) as running:
        poll(lambda: count_in_state(store, TaskState.SUCCEEDED) == 1000, timeout=480, interval=1.0, what="1000 tasks to succeed")
        per_worker = [len(w.events_named("task.succeeded")) for w in running]
    assert store.tasks.count_documents({}) == 1000
    assert store.states_of(ids) == {task_id: TaskState.SUCCEEDED for task_id in ids}
    assert sum(per_worker) >= 1000
