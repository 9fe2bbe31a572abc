"""Stuck tasks found by the operator's sweep, on a real RabbitMQ and store.

A task left `running` by a worker that is gone, or `retrying` with no retry message anywhere (the
broker lost it), has nothing that would ever finish it. The operator's sweeper (set as a user sets
it, through its environment) publishes it again; a worker then finishes it. A task recovered too
often is given up as `dead` (`Lost`) and dead-lettered with the reason; a running task whose worker
is alive is left alone.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from worker_procs import Services, dead_letters, drain_queue, taskqueue_body, workers

from taskq.core.message import TaskMessage, utcnow
from taskq.core.topology import DEAD_REASON_HEADER
from taskq.store.mongo import TaskStore
from taskq_dev.ports import poll
from taskq_operator.core.spec import parse_taskqueue
from taskq_operator.observe import Target
from taskq_operator.sweep import Sweeper, SweptQueue

pytestmark = pytest.mark.services


@pytest.fixture
def sweeper(monkeypatch: pytest.MonkeyPatch) -> Sweeper:
    monkeypatch.setenv("TASKQ_STUCK_AFTER_SECONDS", "30")
    monkeypatch.setenv("TASKQ_STUCK_INTERVAL_SECONDS", "0")
    monkeypatch.setenv("TASKQ_STUCK_MAX_RECOVERIES", "2")
    return Sweeper.from_env()


def _swept(svc: Services) -> list[SweptQueue]:
    spec = parse_taskqueue(taskqueue_body(svc, "ns-stuck"))
    return [SweptQueue.of(spec, Target(svc.queue, svc.amqp_url, None, svc.mongodb_uri, svc.database))]


def _left_open(
    store: TaskStore, svc: Services, task_id: str, state: str, *, attempts: int, age_s: float, **extra: object
) -> None:
    """A task recorded as published whose message no longer exists, last written `age_s` ago."""
    now = utcnow()
    message = TaskMessage(id=task_id, name="echo", queue=svc.queue, args=[task_id], created_at=now, max_retries=3)
    store.insert_queued([message], now)
    store.mark_published([task_id])
    at = now - timedelta(seconds=age_s)
    store.tasks.update_one(
        {"_id": task_id},
        {"$set": {"state": state, "attempts": attempts, "worker": "gone-worker", "updated_at": at, "fence": 0, **extra}},
    )


def test_a_task_left_running_by_a_gone_worker_or_retrying_without_its_retry_is_published_again_and_finishes(
    svc: Services, store: TaskStore, sweeper: Sweeper, tmp_path: Path
) -> None:
    _left_open(store, svc, "stuck-running", "running", attempts=1, age_s=120)
    _left_open(store, svc, "stuck-retrying", "retrying", attempts=2, age_s=120)
    _left_open(store, svc, "recent-running", "running", attempts=1, age_s=5)
    try:
        sweeper.sweep_now(_swept(svc))
    finally:
        sweeper.close()
    for task_id in ("stuck-running", "stuck-retrying"):
        document = store.get(task_id)
        assert document is not None and document.get("recoveries") == 1, f"{task_id} was not recovered: {document}"
        assert "gone" in document["recovery_reason"] or "never arrived" in document["recovery_reason"]
    assert store.get("recent-running")["state"] == "running" and not store.get("recent-running").get("recoveries")
    with workers(svc, tmp_path):
        poll(
            lambda: all((store.get(t) or {}).get("state") == "succeeded" for t in ("stuck-running", "stuck-retrying")),
            timeout=60,
            what="the recovered tasks to finish",
        )
    assert store.get("stuck-running")["attempts"] == 1
    assert store.get("stuck-retrying")["attempts"] == 3, "a lost retry of attempt 2 comes back as attempt 3"


def test_a_task_recovered_too_often_is_given_up_as_lost_and_dead_lettered(
    svc: Services, store: TaskStore, sweeper: Sweeper
) -> None:
    _left_open(store, svc, "hopeless", "running", attempts=1, age_s=120, recoveries=2)
    try:
        sweeper.sweep_now(_swept(svc))
    finally:
        sweeper.close()
    document = store.get("hopeless")
    assert document is not None and document["state"] == "dead"
    assert document["error"]["type"] == "Lost" and "published again 2 times" in document["error"]["message"]
    ((properties, _),) = dead_letters(svc, 1)
    assert properties.message_id == "hopeless" and "lost:" in properties.headers[DEAD_REASON_HEADER]
    assert drain_queue(svc.amqp_url, svc.queue) == [], "a task given up is not published to its work queue"


def test_a_long_running_task_whose_worker_is_alive_is_left_alone(svc: Services, store: TaskStore, sweeper: Sweeper) -> None:
    _left_open(store, svc, "long-task", "running", attempts=1, age_s=120)
    store.tasks.update_one({"_id": "long-task"}, {"$set": {"worker": "busy-worker"}})
    store.heartbeat("busy-worker", svc.queue, inflight=1, processed=0, started_at=utcnow(), now=utcnow())
    try:
        sweeper.sweep_now(_swept(svc))
    finally:
        sweeper.close()
    document = store.get("long-task")
    assert document is not None and document["state"] == "running" and not document.get("recoveries")
