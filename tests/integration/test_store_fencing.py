"""Racing writers on one task, against the real store: one outcome per attempt, no state moving back.

Two store clients (two workers' connections) write the same tasks at the same moment, released by
a barrier, for 200 rounds: both start the attempt, both finish it with different outcomes, then
the slower one writes its start again (a worker that lost its broker connection and still thinks
it runs the task). Run once with the adapter's FerretDB path and once with its MongoDB path (the
guarded filters), both on the test store. In the MongoDB path the starts are written without their
upsert part: FerretDB answers a guarded upsert that meets an existing document with a reply pymongo
cannot read (no `nModified`), where MongoDB reports a duplicate key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from worker_procs import Services, count_in_state, publish_raw, workers

from taskq.broker.admin import queue_depth
from taskq.broker.connection import connect
from taskq.broker.publisher import ConfirmingPublisher, Outgoing
from taskq.client import Client
from taskq.core.document import queued_document
from taskq.core.message import TaskMessage
from taskq.core.states import TaskState
from taskq.core.transitions import Transition, finish, start
from taskq.store.mongo import TaskStore
from taskq_dev.ports import poll

pytestmark = pytest.mark.services

ROUNDS = 200


def queue_depth_of(svc: Services) -> int:
    connection = connect(svc.amqp_url, name="fencing-tests")
    try:
        depth = queue_depth(connection, svc.queue)
        return depth.messages if depth is not None else 0
    finally:
        connection.close()


def _now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture(params=["ferretdb-path", "mongodb-path"])
def writers(request: pytest.FixtureRequest, svc: Services) -> Iterator[tuple[TaskStore, TaskStore]]:
    pair = (TaskStore(svc.mongodb_uri, svc.database), TaskStore(svc.mongodb_uri, svc.database))
    for one in pair:
        if request.param == "mongodb-path":
            one._ferretdb = False  # the guarded-filter path; FerretDB executes it too (slowly)
        else:
            one.is_ferretdb()
    pair[0].ensure_indexes()
    yield pair
    for one in pair:
        one.close()


def _start(pair: tuple[TaskStore, TaskStore], message: TaskMessage, worker: str, epoch: int) -> Transition:
    transition = start(message, worker, _now(), epoch=epoch)
    return transition if pair[0].is_ferretdb() else replace(transition, insert=None)


def _race(pair: tuple[TaskStore, TaskStore], a: Callable[[], Transition], b: Callable[[], Transition]) -> tuple[bool, bool]:
    """Apply `a()` through the first store and `b()` through the second, released together."""
    barrier = threading.Barrier(2, timeout=30)
    results: list[bool | None] = [None, None]

    def run(index: int, make: Callable[[], Transition]) -> None:
        transition = make()
        barrier.wait()
        results[index] = pair[index].apply(transition)

    threads = [threading.Thread(target=run, args=(0, a)), threading.Thread(target=run, args=(1, b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results[0] is not None and results[1] is not None, "a writer did not finish"
    return results[0], results[1]


def test_racing_workers_record_one_outcome_and_a_late_start_never_overwrites_it(
    writers: tuple[TaskStore, TaskStore],
) -> None:
    first, second = writers
    double_outcomes: list[str] = []
    regressions: list[str] = []
    for round_ in range(ROUNDS):
        message = TaskMessage(id=f"race-{round_:03d}", name="echo", queue="q", args=[round_], created_at=_now())
        first.tasks.insert_one(queued_document(message, _now()))
        # Both deliveries of attempt 1 start (the second is a redelivery: a higher epoch).
        _race(
            writers,
            lambda m=message: _start(writers, m, "worker-a", 1),
            lambda m=message: _start(writers, m, "worker-b", 2),
        )
        won = _race(
            writers,
            lambda m=message: finish(m, TaskState.SUCCEEDED, "worker-a", _now(), result="a", epoch=1),
            lambda m=message: finish(m, TaskState.FAILED, "worker-b", _now(), epoch=2),
        )
        if won[0] == won[1]:
            double_outcomes.append(f"{message.id}: applied {won}")
        settled = first.get(message.id)
        assert settled is not None
        # The loser's connection comes back and it writes its start again.
        late = second.apply(_start(writers, message, "worker-b", 2))
        after = first.get(message.id)
        assert after is not None
        if late or after["state"] != settled["state"] or not TaskState(after["state"]).is_final:
            regressions.append(f"{message.id}: {settled['state']} -> {after['state']} (late start applied: {late})")
        expected = TaskState.SUCCEEDED if won[0] and not won[1] else TaskState.FAILED
        if won[0] != won[1] and after["state"] != expected.value:
            regressions.append(f"{message.id}: the winner wrote {expected.value}, the document says {after['state']}")
    assert not double_outcomes, f"{len(double_outcomes)} of {ROUNDS} attempts got two outcomes: {double_outcomes[:5]}"
    assert not regressions, f"{len(regressions)} of {ROUNDS} tasks moved back: {regressions[:5]}"


def test_a_stale_epoch_cannot_write_over_a_newer_delivery_of_the_same_attempt(writers: tuple[TaskStore, TaskStore]) -> None:
    first, second = writers
    message = TaskMessage(id="epoch-1", name="echo", queue="q", created_at=_now())
    first.tasks.insert_one(queued_document(message, _now()))
    assert second.apply(_start(writers, message, "worker-b", 2))
    assert not first.apply(_start(writers, message, "worker-a", 1)), "an older delivery overwrote a newer one's start"
    document = first.get(message.id)
    assert document is not None and document["worker"] == "worker-b"
    # The outcome of the attempt is the attempt's, whichever delivery reports it first.
    assert first.apply(finish(message, TaskState.SUCCEEDED, "worker-a", _now(), result=1, epoch=1))
    assert not second.apply(finish(message, TaskState.SUCCEEDED, "worker-b", _now(), result=2, epoch=2))
    document = first.get(message.id)
    assert document is not None and document["state"] == "succeeded" and document["result"] == 1


def test_an_outcome_recorded_only_in_its_claim_is_what_readers_see(writers: tuple[TaskStore, TaskStore]) -> None:
    """A writer that claimed an outcome and died before its document write: reads and the redelivery check see the claim."""
    first, _ = writers
    message = TaskMessage(id="claim-only", name="echo", queue="q", created_at=_now())
    first.tasks.insert_one(queued_document(message, _now()))
    assert first.apply(_start(writers, message, "worker-a", 1))
    outcome = finish(message, TaskState.SUCCEEDED, "worker-a", _now(), result="done", epoch=1)
    first.claim_outcomes([outcome])  # the claim lands; the document write never does
    assert first.tasks.find_one({"_id": message.id})["state"] == "running"
    assert first.states_of([message.id]) == {message.id: TaskState.SUCCEEDED}
    document = first.get(message.id)
    assert document is not None and document["state"] == "succeeded" and document["result"] == "done"
    check = first.note_redelivery(message.id, 1)
    assert check.state is TaskState.SUCCEEDED and check.claimed is TaskState.SUCCEEDED
    assert first.tasks.find_one({"_id": message.id})["state"] == "succeeded", "the redelivery check rolls the document forward"


def test_two_workers_racing_on_the_same_messages_record_one_outcome_each_and_nothing_moves_back(
    svc: Services, store: TaskStore, client: Client, tmp_path: Path
) -> None:
    """200 tasks, each message published twice, two workers: both copies run at once, one outcome stands."""
    ids = [f"dup-{i:03d}" for i in range(ROUNDS)]
    client.submit_many({"name": "sleep", "args": [0.02], "task_id": task_id} for task_id in ids)
    bodies = [
        TaskMessage(id=d["_id"], name="sleep", queue=svc.queue, args=[0.02], created_at=d["created_at"]).encode()
        for d in store.tasks.find({})
    ]
    rank = {"queued": 0, "running": 1, "retrying": 1, "succeeded": 2, "failed": 2, "dead": 2}
    seen: dict[str, int] = {}
    regressions: list[str] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for task_id, state in store_reader.states_of(ids).items():
                now_rank = rank[state.value]
                if now_rank < seen.get(task_id, 0):
                    regressions.append(f"{task_id}: back to {state.value}")
                seen[task_id] = max(seen.get(task_id, 0), now_rank)
            stop.wait(0.05)

    store_reader = TaskStore(svc.mongodb_uri, svc.database)
    sampler = threading.Thread(target=sample, daemon=True)
    try:
        with workers(svc, tmp_path, count=2, concurrency=4) as pair:
            sampler.start()
            publish_raw(svc.amqp_url, svc.queue, bodies)  # the second copy of every message
            poll(lambda: count_in_state(store, TaskState.SUCCEEDED) == ROUNDS, timeout=240, what="every task to succeed")
            poll(lambda: queue_depth_of(svc) == 0, timeout=60, what="every copy to be consumed")
            stale = sum(len(w.events_named("task.stale")) + len(w.events_named("task.redelivered_final")) for w in pair)
            ran_twice = sum(len(w.events_named("task.succeeded")) for w in pair) - ROUNDS
    finally:
        stop.set()
        sampler.join(10)
        store_reader.close()
    assert not regressions, regressions[:5]
    claims = list(store.claims.find({}))
    assert sorted(c["task_id"] for c in claims) == sorted(ids), "one outcome claim per task"
    assert all(d["state"] == "succeeded" and d["attempts"] == 1 for d in store.tasks.find({}))
    # Every second copy was either refused as stale after running (ran twice, one outcome) or acked unrun.
    assert ran_twice == 0, f"{ran_twice} second outcomes were recorded"
    assert stale >= 1, "the duplicates never met their first copies"


def test_a_republished_copy_of_a_finished_task_is_acked_without_running(
    svc: Services, store: TaskStore, client: Client, tmp_path: Path
) -> None:
    """The outbox sweep or a resubmission sent a copy while the first was on its way; the first finished."""
    ledger = tmp_path / "ledger.txt"
    task_id = client.submit("stamped", args=[str(ledger), 0.0])
    with workers(svc, tmp_path, task_modules="taskq.examples,worker_test_tasks") as (worker,):
        poll(lambda: (store.get(task_id) or {}).get("state") == "succeeded", timeout=30, what="the task to succeed")
        document = store.get(task_id)
        assert document is not None
        copy = TaskMessage(
            id=task_id, name="stamped", queue=svc.queue, args=[str(ledger), 0.0], created_at=document["created_at"]
        )
        publisher = ConfirmingPublisher(svc.amqp_url, name="fencing-tests")
        try:
            stream = publisher.stream()
            stream.add([Outgoing(svc.queue, copy.encode(), task_id, republished=True)])
            stream.wait()
        finally:
            publisher.close()
        poll(lambda: bool(worker.events_named("task.redelivered_final")), timeout=30, what="the copy to be acked")
        assert queue_depth_of(svc) == 0
    starts = [line for line in ledger.read_text().splitlines() if line.startswith("start")]
    assert len(starts) == 1, f"the task ran {len(starts)} times: {starts}"


def test_a_checked_copy_that_waited_in_the_pool_is_not_run_once_its_task_is_final(
    svc: Services, store: TaskStore, client: Client, tmp_path: Path
) -> None:
    """The check at intake said 'open'; while the copy waited for a slot, another worker recorded the outcome."""
    ledger = tmp_path / "ledger.txt"
    with workers(svc, tmp_path, concurrency=1, prefetch=4, task_modules="taskq.examples,worker_test_tasks") as (worker,):
        busy = client.submit("sleep", args=[6.0])
        poll(lambda: (store.get(busy) or {}).get("state") == "running", timeout=30, what="the slot to be taken")
        message = TaskMessage(id="waited-copy", name="stamped", queue=svc.queue, args=[str(ledger), 0.0], created_at=_now())
        store.insert_queued([message], _now())
        store.mark_published([message.id])
        publisher = ConfirmingPublisher(svc.amqp_url, name="fencing-tests")
        try:
            stream = publisher.stream()
            stream.add([Outgoing(svc.queue, message.encode(), message.id, republished=True)])
            stream.wait()
        finally:
            publisher.close()
        poll(lambda: queue_depth_of(svc) == 0, timeout=30, what="the copy to be delivered")
        time.sleep(1.0)  # its check at intake (one read by _id) finds it open; it waits for the slot
        # Another worker's outcome lands while the copy waits behind the 3 s task.
        assert store.apply(finish(message, TaskState.SUCCEEDED, "other-worker", _now(), result="elsewhere", start_recorded=False))
        poll(lambda: (store.get(busy) or {}).get("state") == "succeeded", timeout=30, what="the slot to free")
        poll(
            lambda: queue_depth_of(svc) == 0 and worker.events_named("task.redelivered_final"), timeout=30, what="the copy acked"
        )
    assert not ledger.exists(), f"the copy ran after its task was final: {ledger.read_text()}"
    document = store.get(message.id)
    assert document is not None and document["result"] == "elsewhere"
