"""Cancellation on real servers: `Client.cancel` against `taskq-worker` processes (RabbitMQ + the store).

A queued task is cancelled and never runs (prefetched by a busy worker, or waiting before any worker
exists); a running process-pool task's child is killed, the task ends `cancelled` and its message is
acked; cancels racing workers that finish the same tasks leave exactly one outcome per task.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psutil
from fastapi.testclient import TestClient
from typer.testing import CliRunner
from worker_procs import Services, WorkerProcess, queue_counts, workers

from taskq.cli import app as cli_app
from taskq.client import Client
from taskq.core.states import TaskState
from taskq.examples import EXECUTIONS_COLLECTION
from taskq.http.app import create_app
from taskq.http.auth import TokenSet
from taskq.settings import Settings
from taskq.store.mongo import TaskStore
from taskq_dev.ports import poll


def _executions(store: TaskStore, task_id: str) -> int:
    collection = store.tasks.database[EXECUTIONS_COLLECTION]
    return sum(1 for _ in collection.find({"task_id": task_id}, {"_id": 1}))


def _state(client: Client, task_id: str) -> str:
    return str(client.status(task_id)["state"])


def _children(worker: WorkerProcess) -> set[int]:
    return {p.pid for p in psutil.Process(worker.pid).children(recursive=True)}


def _settled(rabbitmq: Any, svc: Services) -> bool:
    counts = queue_counts(rabbitmq.management_base, rabbitmq.management_auth, rabbitmq.vhost, svc.queue)
    return counts["ready"] == 0 and counts["unacked"] == 0


def test_cancel_prefetched_task_never_runs(
    svc: Services, client: Client, store: TaskStore, tmp_path: Path, rabbitmq: Any
) -> None:
    with workers(svc, tmp_path, concurrency=1, prefetch=4) as (worker,):
        blocker = client.submit("sleep", kwargs={"seconds": 3.0})
        target = client.submit("journal", kwargs={"seconds": 0.0})
        poll(lambda: _state(client, blocker) == "running", timeout=30, what="the blocker to run")
        time.sleep(0.3)  # the target is prefetched behind it
        result = client.cancel(target)
        assert result.cancelled and result.state is TaskState.CANCELLED and result.notified
        assert _state(client, target) == "cancelled"
        poll(lambda: _state(client, blocker) == "succeeded", timeout=30, what="the blocker to finish")
        poll(lambda: _settled(rabbitmq, svc), timeout=30, interval=0.5, what="both messages acked")
        received = worker.events_named("task.cancel_received")
        assert received and received[0]["task_id"] == target
    document = client.status(target)
    assert document["state"] == "cancelled"
    assert "running" not in (document.get("timestamps") or {})
    assert _executions(store, target) == 0
    again = client.cancel(target)
    assert not again.cancelled and again.state is TaskState.CANCELLED


def test_cancel_before_any_worker_never_runs(
    svc: Services, client: Client, store: TaskStore, tmp_path: Path, rabbitmq: Any
) -> None:
    target = client.submit("journal", kwargs={"seconds": 0.0})
    other = client.submit("journal", kwargs={"seconds": 0.0})
    assert client.cancel(target).cancelled
    with workers(svc, tmp_path, concurrency=1):
        poll(lambda: _state(client, other) == "succeeded", timeout=30, what="the other task to run")
        poll(lambda: _settled(rabbitmq, svc), timeout=30, interval=0.5, what="both messages acked")
    assert _state(client, target) == "cancelled"
    assert _executions(store, target) == 0
    assert _executions(store, other) == 1


def test_cancel_running_process_task_kills_child(
    svc: Services, client: Client, store: TaskStore, tmp_path: Path, rabbitmq: Any
) -> None:
    with workers(svc, tmp_path, concurrency=1, pool="process") as (worker,):
        before = _children(worker)
        target = client.submit("journal", kwargs={"seconds": 30.0})
        poll(lambda: _state(client, target) == "running", timeout=30, what="the task to run")
        started = time.monotonic()
        result = client.cancel(target)
        assert result.cancelled and result.attempt == 1
        killed = poll(lambda: before - _children(worker), timeout=10, interval=0.05, what="the child to be killed")
        kill_s = time.monotonic() - started
        assert killed and kill_s < 5.0
        poll(lambda: _settled(rabbitmq, svc), timeout=30, interval=0.5, what="the message acked")
        assert worker.events_named("task.cancel_received")[0]["stopped"] is True
        assert not worker.events_named("task.succeeded")
        # The pool keeps serving with a fresh child.
        after = client.submit("echo", args=[1])
        poll(lambda: _state(client, after) == "succeeded", timeout=30, what="the next task")
    document = client.status(target)
    assert document["state"] == "cancelled"
    assert document["error"]["type"] == "Cancelled"
    assert _executions(store, target) == 0
    print(f"cancel -> child gone: {kill_s * 1000:.0f} ms")


def test_cancel_racing_finishing_workers_one_outcome(svc: Services, client: Client, tmp_path: Path) -> None:
    """Cancels sent from the queue's tail towards its head meet the workers coming the other way.

    The first cancels reach tasks still queued (they win), the last reach tasks already finished (they
    lose), and the ones where both fronts meet race a worker finishing the same task. Cancelling from
    the head instead made the outcome depend on which side is faster: on a loaded machine the workers
    outran every cancel and nothing raced at all.
    """
    count = 120
    with workers(svc, tmp_path, count=2, concurrency=2) as procs:
        ids = client.submit_many({"name": "sleep", "kwargs": {"seconds": 0.02 * (i % 5)}} for i in range(count)).ids
        poll(lambda: _state(client, ids[0]) == "succeeded", timeout=60, interval=0.05, what="the workers to start on the head")
        results = {}
        for task_id in reversed(ids):
            results[task_id] = client.cancel(task_id)
            time.sleep(0.01)
        poll(lambda: all(TaskState(_state(client, t)).is_final for t in ids), timeout=120, interval=0.5, what="every task final")
        time.sleep(1.0)
        succeeded = [e["task_id"] for w in procs for e in w.events_named("task.succeeded")]
    won = {t for t, r in results.items() if r.cancelled}
    for task_id in ids:
        state = _state(client, task_id)
        recorded = succeeded.count(task_id) + (1 if task_id in won else 0)
        assert recorded == 1, (task_id, state, recorded)
        assert state == ("cancelled" if task_id in won else "succeeded"), (task_id, state)
        if task_id not in won:
            assert results[task_id].state is TaskState.SUCCEEDED
    print(f"{len(won)} of {count} cancels won, {count - len(won)} lost to a finishing worker")
    assert 0 < len(won) < count


def test_cancel_scheduled_task_never_runs(svc: Services, client: Client, store: TaskStore, tmp_path: Path, rabbitmq: Any) -> None:
    """A delayed task cancelled while its message waits in a delay queue: acked when it comes out, never run."""
    with workers(svc, tmp_path, concurrency=1) as (worker,):
        target = client.submit("journal", kwargs={"seconds": 0.0}, countdown=2)
        assert _state(client, target) == "scheduled"
        result = client.cancel(target)
        assert result.cancelled and result.attempt == 1
        worker.stop()  # its memory of the notice goes: the marker read at connect, or the check at the delay exit, must do it
    with workers(svc, tmp_path, concurrency=1):
        time.sleep(3.0)
        poll(lambda: _settled(rabbitmq, svc), timeout=30, interval=0.5, what="the delayed message acked")
    assert _state(client, target) == "cancelled"
    assert _executions(store, target) == 0


def test_cancel_over_http_and_the_cli(svc: Services, client: Client) -> None:
    token = "test-submit-read-0123456789abcdef"
    auth = TokenSet(TokenSet.parse(f"submit,read {token}\n", "test"))
    settings = Settings(amqp_url=svc.amqp_url, mongodb_uri=svc.mongodb_uri, database=svc.database, queue=svc.queue)
    over_http, over_cli = client.submit("echo"), client.submit("echo")
    with TestClient(create_app(settings, auth=auth), headers={"Authorization": f"Bearer {token}"}) as http:
        answer = http.post(f"/v1/tasks/{over_http}:cancel")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"id": over_http, "state": "cancelled", "notified": True}
        assert http.get(f"/v1/tasks/{over_http}").json()["state"] == "cancelled"
        again = http.post(f"/v1/tasks/{over_http}:cancel")
        assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
        assert http.post("/v1/tasks/no-such-task:cancel").status_code == 404
        read_only = TokenSet(TokenSet.parse(f"read {token}\n", "test"))
    with TestClient(create_app(settings, auth=read_only), headers={"Authorization": f"Bearer {token}"}) as http:
        assert http.post(f"/v1/tasks/{over_cli}:cancel").status_code == 403
    env = {
        "TASKQ_AMQP_URL": svc.amqp_url,
        "TASKQ_MONGODB_URI": svc.mongodb_uri,
        "TASKQ_DATABASE": svc.database,
        "TASKQ_QUEUE": svc.queue,
    }
    runner = CliRunner()
    done = runner.invoke(cli_app, ["cancel", over_cli, "--json"], env=env, catch_exceptions=False)
    assert done.exit_code == 0 and json.loads(done.stdout) == {"id": over_cli, "cancelled": True, "state": "cancelled"}
    late = runner.invoke(cli_app, ["cancel", over_cli], env=env, catch_exceptions=False)
    assert late.exit_code == 4 and "is already cancelled" in late.stderr
    missing = runner.invoke(cli_app, ["cancel", "no-such-task"], env=env, catch_exceptions=False)
    assert missing.exit_code == 1


def test_cancel_running_thread_pool_task_is_cooperative(svc: Services, client: Client, tmp_path: Path, rabbitmq: Any) -> None:
    """The thread pool cannot kill: the task sees `taskq.current().cancelled` and returns; its outcome is refused."""
    with workers(svc, tmp_path, concurrency=1, pool="thread") as (worker,):
        target = client.submit("cooperative", kwargs={"seconds": 60.0})
        poll(lambda: _state(client, target) == "running", timeout=30, what="the task to run")
        started = time.monotonic()
        result = client.cancel(target)
        assert result.cancelled
        poll(lambda: _settled(rabbitmq, svc), timeout=30, interval=0.5, what="the message acked")
        assert time.monotonic() - started < 20  # not the task's 60 s
        assert worker.events_named("task.cancel_received")[0]["stopped"] is True
        assert [e["task_id"] for e in worker.events_named("task.stale")] == [target]  # its "succeeded" was refused
        assert not worker.events_named("task.succeeded")
    assert _state(client, target) == "cancelled"


def test_cancel_retrying_task_claims_the_waiting_attempt(svc: Services, client: Client, tmp_path: Path, rabbitmq: Any) -> None:
    """A task waiting for its retry: the cancel claims the next attempt, which is acked when it leaves the delay queue."""
    with workers(svc, tmp_path, concurrency=1, retry_initial=3, retry_max=3) as (worker,):
        target = client.submit("fail", max_retries=3)
        poll(lambda: _state(client, target) == "retrying", timeout=30, what="the first attempt to fail")
        result = client.cancel(target)
        assert result.cancelled and result.attempt == 2
        time.sleep(4.0)  # the retry's delay ends
        poll(lambda: _settled(rabbitmq, svc), timeout=30, interval=0.5, what="the retry acked")
        assert len(worker.events_named("task.retrying")) == 1  # attempt 1 only: attempt 2 never ran
        assert not worker.events_named("task.dead")
    document = client.status(target)
    assert document["state"] == "cancelled" and document["attempts"] == 1
