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
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from worker_procs import Services

from taskq.core.document import queued_document
from taskq.core.message import TaskMessage
from taskq.core.states import TaskState
from taskq.core.transitions import Transition, finish, start
from taskq.store.mongo import TaskStore

pytestmark = pytest.mark.services

ROUNDS = 200


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
    assert check.state is TaskState.SUCCEEDED and check.decided
    assert first.tasks.find_one({"_id": message.id})["state"] == "succeeded", "the redelivery check rolls the document forward"
