"""Task features on real servers: delayed tasks (`countdown`/`eta`), waiting, retention, and the CLI verbs
`workers`, `retry`, `wait`, `list --name/--since`.

Timing tolerances: a delayed task must not start before its due time (its `timestamps.running` is at
or after submission + countdown, minus 5 ms for the store's millisecond timestamps), and must start
within one bucket step (1 s for countdowns up to 16 s) plus 3 s of worker pickup on this loaded
2-core machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pymongo.errors
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner
from worker_procs import Services, workers

from taskq.cli import app as cli_app
from taskq.client import Client
from taskq.core.message import TaskMessage, utcnow
from taskq.core.schedule import schedule_bucket_ms
from taskq.core.states import TaskState
from taskq.core.topology import retry_queue
from taskq.errors import QueueNotFound, WaitTimedOut
from taskq.http.app import create_app
from taskq.http.auth import TokenSet
from taskq.settings import Settings
from taskq.store.mongo import TaskStore
from taskq_operator.adapters.broker import BrokerObserver

pytestmark = pytest.mark.services

EARLY_TOLERANCE = timedelta(milliseconds=5)
PICKUP_S = 3.0
TOKEN = "test-submit-read-0123456789abcdef"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def producer(svc: Services) -> Iterator[Client]:
    with Client(Settings(amqp_url=svc.amqp_url, mongodb_uri=svc.mongodb_uri, database=svc.database, queue=svc.queue)) as client:
        yield client
        with contextlib.suppress(QueueNotFound):
            client.purge(svc.queue)


@pytest.fixture
def taskq(svc: Services) -> Run:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TASKQ_")}
    environment.update(
        TASKQ_AMQP_URL=svc.amqp_url, TASKQ_MONGODB_URI=svc.mongodb_uri, TASKQ_DATABASE=svc.database, TASKQ_QUEUE=svc.queue
    )
    runner = CliRunner()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        result = runner.invoke(cli_app, list(args), env=environment, catch_exceptions=False)
        return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)

    return run


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _assert_on_time(document: dict[str, Any], due: datetime, step_s: float = 1.0) -> None:
    started = _aware(document["timestamps"]["running"])
    assert started >= due - EARLY_TOLERANCE, f"started {started - due} before it was due"
    assert started <= due + timedelta(seconds=step_s + PICKUP_S), f"started {started - due} after it was due"


def test_a_delayed_task_is_scheduled_waits_in_the_broker_and_runs_when_due(
    svc: Services, producer: Client, rabbitmq: Any, tmp_path: Path
) -> None:
    countdown = 4.0
    with workers(svc, tmp_path, count=1):
        submitted = utcnow()
        task_id = producer.submit("echo", [1], countdown=countdown)
        document = producer.status(task_id)
        assert document["state"] == TaskState.SCHEDULED.value
        assert _aware(document["eta"]) >= submitted + timedelta(seconds=countdown) - EARLY_TOLERANCE  # stored in ms

        # The operator's broker reading sees no backlog: the message waits in a delay queue.
        observer = BrokerObserver(svc.amqp_url, rabbitmq.management_url)
        try:
            delay_queue = retry_queue(svc.queue, schedule_bucket_ms(int(countdown * 1000)))
            counts = observer.ready_counts([svc.queue, delay_queue])
            work, waiting = counts[svc.queue], counts[delay_queue]
            assert work is not None and work.ready == 0
            assert waiting is not None and waiting.ready == 1
        finally:
            observer.close()
        time.sleep(1.0)
        assert producer.status(task_id)["state"] == TaskState.SCHEDULED.value  # not run early

        final = producer.wait([task_id], timeout=countdown + 20)[task_id]
    assert final["state"] == TaskState.SUCCEEDED.value and final["result"]["args"] == [1]
    _assert_on_time(final, _aware(document["eta"]))


def test_an_eta_from_the_cli_and_wait_with_a_timeout(svc: Services, taskq: Run, tmp_path: Path) -> None:
    due = utcnow() + timedelta(seconds=3)
    submitted = taskq("submit", "echo", "--args", "[5]", "--eta", due.isoformat())
    assert submitted.returncode == 0, submitted.stderr
    task_id = submitted.stdout.strip()
    status = json.loads(taskq("status", task_id, "--json").stdout)
    assert status["state"] == "scheduled"

    # No worker: the wait times out, exit code 5, the pending id named.
    started = time.monotonic()
    timed_out = taskq("wait", task_id, "--timeout", "1")
    assert timed_out.returncode == 5 and task_id in timed_out.stderr
    assert 0.9 <= time.monotonic() - started < 10

    with workers(svc, tmp_path, count=1):
        waited = taskq("wait", task_id, "--timeout", "30", "--json")
    assert waited.returncode == 0, waited.stderr
    (final,) = json.loads(waited.stdout)
    assert final["id"] == task_id and final["state"] == "succeeded"
    started_at = datetime.fromisoformat(final["timestamps"]["running"])
    assert _aware(started_at) >= due - EARLY_TOLERANCE


def test_submit_rejects_bad_delays(producer: Client, taskq: Run) -> None:
    from taskq.errors import InvalidTask

    with pytest.raises(InvalidTask, match="either countdown or eta"):
        producer.submit("echo", countdown=1, eta=utcnow())
    with pytest.raises(InvalidTask, match="negative"):
        producer.submit("echo", countdown=-1)
    with pytest.raises(InvalidTask, match="at most"):
        producer.submit("echo", countdown=30 * 86_400)
    assert taskq("submit", "echo", "--eta", "tomorrow").returncode == 2


def test_wait_returns_at_finish_and_times_out_on_a_task_that_never_finishes(
    svc: Services, producer: Client, tmp_path: Path
) -> None:
    never = producer.submit("echo", countdown=3600)  # scheduled for an hour: never final within the test
    with workers(svc, tmp_path, count=1):
        ids = [producer.submit("sleep", kwargs={"seconds": 0.5}) for _ in range(3)]
        started = time.monotonic()
        seen: list[int] = []
        finals = producer.wait(ids, timeout=30, progress=seen.append)
        took = time.monotonic() - started
        assert list(finals) == ids and all(d["state"] == "succeeded" for d in finals.values())
        assert sum(seen) == 3 and took < 30

        started = time.monotonic()
        with pytest.raises(WaitTimedOut) as caught:
            producer.wait([ids[0], never], timeout=1.5)
        assert 1.4 <= time.monotonic() - started < 6
        assert caught.value.pending == [never] and list(caught.value.finished) == [ids[0]]
    from taskq.errors import TaskNotFound

    with pytest.raises(TaskNotFound):
        producer.wait(["no-such-task"], timeout=1)


def test_http_delayed_submission_and_long_poll(svc: Services, tmp_path: Path) -> None:
    settings = Settings(amqp_url=svc.amqp_url, mongodb_uri=svc.mongodb_uri, database=svc.database, queue=svc.queue)
    app = create_app(settings, auth=TokenSet(TokenSet.parse(f"submit,read {TOKEN}\n", "test")))
    with TestClient(app, headers=HEADERS) as http:
        try:
            answer = http.post("/v1/tasks", json={"name": "echo", "args": [2], "countdown": 2})
            assert answer.status_code == 202, answer.text
            task_id = answer.json()["id"]
            assert http.get(f"/v1/tasks/{task_id}").json()["state"] == "scheduled"

            started = time.monotonic()
            polled = http.get(f"/v1/tasks/{task_id}", params={"wait": 1})  # no worker: answers at the timeout
            assert polled.status_code == 200 and polled.json()["state"] == "scheduled"
            assert 0.9 <= time.monotonic() - started < 5
            assert http.get(f"/v1/tasks/{task_id}", params={"wait": 61}).status_code == 422  # bounded

            with workers(svc, tmp_path, count=1):
                started = time.monotonic()
                final = http.get(f"/v1/tasks/{task_id}", params={"wait": 30})
                took = time.monotonic() - started
            assert final.status_code == 200 and final.json()["state"] == "succeeded", final.text
            assert took < 25  # answered when final, not at the end of the wait
            eta = datetime.fromisoformat(final.json()["eta"])
            assert _aware(datetime.fromisoformat(final.json()["timestamps"]["running"])) >= _aware(eta) - EARLY_TOLERANCE

            batch = http.post(
                "/v1/tasks:batch", json={"tasks": [{"name": "echo", "eta": (utcnow() + timedelta(hours=1)).isoformat()}]}
            )
            assert batch.status_code == 202 and http.get(f"/v1/tasks/{batch.json()['ids'][0]}").json()["state"] == "scheduled"
        finally:
            with contextlib.suppress(QueueNotFound):
                app.state.client.purge(settings.queue)


def test_ferretdb_refuses_ttl_indexes(store: TaskStore) -> None:
    """Why retention is the operator's sweep and not a TTL index: FerretDB 1.24 does not implement `expireAfterSeconds`."""
    if not store.is_ferretdb():
        pytest.skip("a MongoDB store has TTL indexes")
    with pytest.raises(pymongo.errors.OperationFailure, match="expireAfterSeconds"):
        store.tasks.create_index([("finished_at", 1)], expireAfterSeconds=60)


def test_finished_tasks_older_than_the_ttl_and_their_claims_are_deleted(
    svc: Services, store: TaskStore, producer: Client
) -> None:
    now = utcnow()
    old = now - timedelta(seconds=120)
    messages = [TaskMessage(id=f"ttl-{i}", name="noop", queue=svc.queue, created_at=old) for i in range(4)]
    store.insert_queued(messages, old)
    store.mark_published([m.id for m in messages])
    for state, task_id in ((TaskState.SUCCEEDED, "ttl-0"), (TaskState.DEAD, "ttl-1"), (TaskState.FAILED, "ttl-3")):
        store.tasks.update_one({"_id": task_id}, {"$set": {"state": state.value, "updated_at": old, "attempts": 1}})
        store.claims.insert_one({"_id": f"{task_id}#a1", "task_id": task_id, "attempt": 1, "state": state.value})
    store.tasks.update_one({"_id": "ttl-3"}, {"$set": {"updated_at": now}})  # finished recently: kept
    # ttl-2 stays queued (open tasks never expire)

    deleted = store.expire_finished(svc.queue, now - timedelta(seconds=60), limit=10)

    assert deleted == 2
    assert sorted(d["_id"] for d in store.tasks.find({})) == ["ttl-2", "ttl-3"]
    assert sorted(d["_id"] for d in store.claims.find({})) == ["ttl-3#a1"]

    # Without an operator: `taskq expire` with TASKQ_RESULT_TTL or --ttl.
    store.tasks.update_one({"_id": "ttl-3"}, {"$set": {"updated_at": now - timedelta(seconds=30)}})
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TASKQ_")}
    environment.update(
        TASKQ_AMQP_URL=svc.amqp_url, TASKQ_MONGODB_URI=svc.mongodb_uri, TASKQ_DATABASE=svc.database, TASKQ_QUEUE=svc.queue
    )
    kept = CliRunner().invoke(cli_app, ["expire", "--json"], env={**environment, "TASKQ_RESULT_TTL": "60"})
    assert kept.exit_code == 0 and json.loads(kept.stdout) == {"deleted": 0}
    gone = CliRunner().invoke(cli_app, ["expire", "--ttl", "20"], env=environment)
    assert gone.exit_code == 0 and gone.stdout == "deleted 1 finished task(s)\n"
    assert [d["_id"] for d in store.tasks.find({})] == ["ttl-2"]


def test_the_operator_sweep_expires_by_the_taskqueues_ttl(svc: Services, store: TaskStore) -> None:
    from taskq_operator.core.spec import parse_taskqueue
    from taskq_operator.observe import Target
    from taskq_operator.sweep import Sweeper

    body = {
        "metadata": {"name": "tq", "namespace": "ns-ttl", "uid": "u", "resourceVersion": "1"},
        "spec": {
            "queue": svc.queue,
            "broker": {"secretRef": {"name": "b"}},
            "store": {"secretRef": {"name": "s"}, "database": svc.database},
            "worker": {"image": "w"},
            "tasks": {"resultTTLSeconds": 30},
        },
    }
    spec = parse_taskqueue(body)
    assert spec.tasks.result_ttl_s == 30
    target = Target(svc.queue, svc.amqp_url, None, svc.mongodb_uri, svc.database)
    now = utcnow()
    store.insert_queued([TaskMessage(id="gone", name="noop", queue=svc.queue, created_at=now)], now)
    store.tasks.update_one({"_id": "gone"}, {"$set": {"state": "succeeded", "updated_at": now - timedelta(seconds=31)}})
    store.insert_queued([TaskMessage(id="kept", name="noop", queue=svc.queue, created_at=now)], now)
    store.tasks.update_one({"_id": "kept"}, {"$set": {"state": "succeeded", "updated_at": now - timedelta(seconds=5)}})
    sweeper = Sweeper(interval_s=30, grace_s=60, limit=10)
    try:
        sweeper.offer([(spec, target)])
        sweeper.wait(timeout=60)
    finally:
        sweeper.close()
    assert sorted(d["_id"] for d in store.tasks.find({})) == ["kept"]


def test_cli_workers_retry_and_list_filters(svc: Services, producer: Client, taskq: Run, tmp_path: Path) -> None:
    with workers(svc, tmp_path, count=1, max_retries=0) as (worker,):
        shown = taskq("workers", "--json")
        assert shown.returncode == 0, shown.stderr
        rows = json.loads(shown.stdout)
        assert [r["queue"] for r in rows] == [svc.queue] and rows[0]["id"]
        assert json.loads(taskq("workers", "--queue", "other-queue", "--json").stdout) == []
        assert svc.queue in taskq("workers").stdout

        failing = producer.submit("reject")
        echo = producer.submit("echo")
        several = taskq("wait", failing, echo, "--timeout", "30")  # a progress bar on stderr, one line per task
        assert several.returncode == 0, several.stderr
        assert several.stdout.splitlines() == [f"{failing} failed", f"{echo} succeeded"] and "waiting" in several.stderr
        before = utcnow()

        retried = taskq("retry", failing)
        assert retried.returncode == 0, retried.stderr
        assert taskq("retry", echo).returncode == 4  # succeeded: nothing to retry (as cancel of a final task)
        assert taskq("retry", "no-such-task").returncode == 1
        final = producer.wait([failing], timeout=30)[failing]
        assert final["state"] == "failed" and _aware(final["timestamps"]["running"]) >= before

    by_name = json.loads(taskq("list", "--name", "reject", "--json").stdout)
    assert [d["id"] for d in by_name] == [failing]
    recent = json.loads(taskq("list", "--since", before.isoformat(), "--json").stdout)
    assert [d["id"] for d in recent] == [failing]
    assert json.loads(taskq("list", "--since", "10m", "--json").stdout)
    assert taskq("list", "--since", "yesterday-ish").returncode == 2
