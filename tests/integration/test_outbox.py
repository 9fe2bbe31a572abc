"""No task stranded by its producer: outbox entries, resubmission of unconfirmed ids, id conflicts, the sweeper.

Real RabbitMQ and store (fixtures in `tests/conftest.py` and `conftest.py` here); a real producer
subprocess SIGKILLed mid-`submit_many` and real `taskq-worker` processes (`worker_procs`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner
from worker_procs import Services, count_in_state, workers

from taskq.cli import EXIT_CONFLICT
from taskq.cli import app as cli_app
from taskq.client import Client
from taskq.core.message import TaskMessage, utcnow
from taskq.core.states import TaskState
from taskq.errors import InvalidTask, TaskConflict
from taskq.http.app import create_app
from taskq.http.auth import DISABLED
from taskq.settings import Settings
from taskq.store.mongo import TaskStore
from taskq.sweeper import Action, action_for, sweep
from taskq_dev.ports import poll
from taskq_dev.services import MongoService

pytestmark = pytest.mark.services


@pytest.fixture
def producer(svc: Services) -> Iterator[Client]:
    settings = Settings(amqp_url=svc.amqp_url, mongodb_uri=svc.mongodb_uri, database=svc.database, queue=svc.queue)
    with Client(settings, window=200, batch_size=100) as client:
        yield client


def _messages(queue: str, prefix: str, count: int, name: str = "noop") -> list[TaskMessage]:
    return [TaskMessage(id=f"{prefix}-{i}", name=name, queue=queue, created_at=utcnow()) for i in range(count)]


def _queued_ids(client: Client, queue: str) -> list[str]:
    """Drain `queue` (every message is acked) and return the task ids it held."""
    ids: list[str] = []
    channel = client._with_admin(lambda conn: conn.channel())
    try:
        for _ in range(10_000):
            method, props, _body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                break
            ids.append(props.message_id)
    finally:
        channel.close()
    return ids


def test_resubmitting_ids_whose_publish_was_never_confirmed_publishes_exactly_those(producer: Client, svc: Services) -> None:
    messages = _messages(svc.queue, "half", 10)
    producer.submit_many(messages[5:])
    producer.store.insert_queued(messages[:5], utcnow())  # a producer that died between its insert and the publish
    assert sorted(_queued_ids(producer, svc.queue)) == sorted(m.id for m in messages[5:])
    # One of them was published after all (only the confirm was lost) and a worker has it already.
    producer.store.tasks.update_one({"_id": messages[0].id}, {"$set": {"state": TaskState.RUNNING.value}})

    receipt = producer.submit_many(messages)

    assert (receipt.published, receipt.existing) == (4, 6)
    assert sorted(_queued_ids(producer, svc.queue)) == sorted(m.id for m in messages[1:5])
    assert producer.store.outbox.count_documents({}) == 0
    again = producer.submit_many(messages)
    assert (again.published, again.existing) == (0, 10)  # now published: an idempotency key as before
    assert _queued_ids(producer, svc.queue) == []


PRODUCER = textwrap.dedent(
    """
    import sys, time
    from taskq.client import Client
    from taskq.settings import Settings
    tasks = [{"name": "noop", "task_id": f"crash-{i}"} for i in range(int(sys.argv[1]))]
    with Client(Settings(), window=20, batch_size=100) as client:
        client.submit_many(tasks, progress=lambda n: time.sleep(0.002 * n))
    print("finished", flush=True)
    """
)


def test_a_producer_killed_mid_submit_many_strands_nothing_once_it_is_rerun(
    producer: Client, store: TaskStore, svc: Services, mongo: MongoService, tmp_path: Path
) -> None:
    total = 2000
    child = subprocess.Popen(
        [sys.executable, "-c", PRODUCER, str(total)],
        env=svc.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        poll(
            lambda: store.tasks.estimated_document_count() >= 600 or child.poll() is not None,
            timeout=60,
            what="600 documents",
            interval=0.02,
        )
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        out, err = child.communicate(timeout=30)
    assert "finished" not in out, f"the producer was not killed mid-way: {err[-500:]}"
    documents = {d["_id"] for d in store.tasks.find({}, {"_id": 1})}
    unconfirmed = {d["_id"] for d in store.outbox.find({}, {"_id": 1})}
    confirmed = documents - unconfirmed
    assert 600 <= len(documents) < total and unconfirmed & documents, "the kill did not land between insert and confirm"

    receipt = producer.submit_many({"name": "noop", "task_id": f"crash-{i}"} for i in range(total))

    assert (receipt.published, receipt.existing) == (total - len(confirmed), len(confirmed))
    assert store.outbox.count_documents({}) == 0
    mongo.index_writes(svc.database)  # FerretDB's by-`_id` writes scan without it (see taskq_dev.mongo)
    with workers(svc, tmp_path, concurrency=4, prefetch=64):
        poll(lambda: count_in_state(store, TaskState.SUCCEEDED) == total, timeout=240, what="all succeeded", interval=1.0)
    assert store.counts_by_state()[TaskState.SUCCEEDED.value] == total == store.tasks.count_documents({})


def test_an_invalid_task_mid_stream_leaves_no_document_without_its_message(producer: Client, svc: Services) -> None:
    tasks: list[dict[str, object]] = [{"name": "noop", "task_id": f"v-{i}"} for i in range(250)]
    tasks.append({"name": "bad name"})
    tasks += [{"name": "noop", "task_id": f"v-{i}"} for i in range(250, 350)]

    with pytest.raises(InvalidTask):
        producer.submit_many(tasks)

    documents = {d["_id"] for d in producer.store.tasks.find({}, {"_id": 1})}
    assert len(documents) == 200  # the batches before the invalid one, none after
    assert producer.store.outbox.count_documents({}) == 0  # all confirmed and recorded so
    assert sorted(_queued_ids(producer, svc.queue)) == sorted(documents)
    valid = [t for t in tasks if t["name"] == "noop"]
    rerun = producer.submit_many(valid)
    assert (rerun.published, rerun.existing) == (150, 200)


def test_a_task_id_reused_on_another_queue_or_task_is_a_conflict(producer: Client, svc: Services) -> None:
    other = svc.queue + "-b"
    producer.submit("echo", task_id="c-1")
    try:
        with pytest.raises(TaskConflict, match="exists on queue") as caught:
            producer.submit_many([{"name": "echo", "task_id": "c-1", "queue": other}, {"name": "echo", "task_id": "c-2"}])
        assert caught.value.task_ids == ["c-1"]
        with pytest.raises(TaskConflict, match="exists as 'echo'"):
            producer.submit("noop", task_id="c-1")
        assert producer.queue_info(other).ready == 0
        assert sorted(_queued_ids(producer, svc.queue)) == ["c-1", "c-2"]  # the other task of the batch went out
        assert producer.status("c-1")["queue"] == svc.queue and producer.store.outbox.count_documents({}) == 0

        env = {"TASKQ_AMQP_URL": svc.amqp_url, "TASKQ_MONGODB_URI": svc.mongodb_uri, "TASKQ_DATABASE": svc.database}
        result = CliRunner().invoke(cli_app, ["submit", "echo", "--id", "c-1", "--queue", other], env=env)
        assert result.exit_code == EXIT_CONFLICT, result.output

        with TestClient(create_app(auth=DISABLED, client=producer)) as http:
            response = http.post("/v1/tasks", json={"name": "echo", "task_id": "c-1", "queue": other})
        assert response.status_code == 409 and "exists on queue" in response.text
    finally:
        producer.purge(other)


def test_the_sweeper_republishes_old_unconfirmed_tasks_and_leaves_fresh_ones(producer: Client, svc: Services) -> None:
    now = utcnow()
    old, fresh, done = _messages(svc.queue, "old", 1) + _messages(svc.queue, "fresh", 1) + _messages(svc.queue, "done", 1)
    producer.store.insert_queued([old, done], now - timedelta(seconds=120))
    producer.store.insert_queued([fresh], now - timedelta(seconds=5))
    producer.store.tasks.update_one({"_id": done.id}, {"$set": {"state": TaskState.SUCCEEDED.value}})

    assert (
        sweep(
            producer.store, producer._publisher, producer._ensure_queue, grace_s=60, limit=10, queues={"another"}, now=now
        ).republished
        == []
    )
    report = sweep(producer.store, producer._publisher, producer._ensure_queue, grace_s=60, limit=10, now=now)

    assert (report.republished, report.dropped) == ([old.id], [done.id])
    assert _queued_ids(producer, svc.queue) == [old.id]
    assert [d["_id"] for d in producer.store.outbox.find({})] == [fresh.id]
    assert producer.sweep(grace_s=60).republished == []  # nothing twice (the fresh one is 5 s old)
    assert [action_for(s) for s in (TaskState.QUEUED, TaskState.RUNNING, None)] == [Action.PUBLISH, Action.DROP, Action.DROP]

    env = {"TASKQ_AMQP_URL": svc.amqp_url, "TASKQ_MONGODB_URI": svc.mongodb_uri, "TASKQ_DATABASE": svc.database}
    result = CliRunner().invoke(cli_app, ["sweep", "--grace", "0", "--json"], env=env)
    assert result.exit_code == 0 and json.loads(result.stdout) == {"republished": [fresh.id], "dropped": []}, result.output
    assert _queued_ids(producer, svc.queue) == [fresh.id] and producer.store.outbox.count_documents({}) == 0
