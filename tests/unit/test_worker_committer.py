"""The committer stage without servers: group commit, lazy starts, refused writes isolated, redeliveries.

The store here is an in-memory implementation of the committer's `Store` protocol that applies the
same guards as `TaskStore` (a transition applies only from its source states) and can be told to
refuse writes the way a real store refuses a document it cannot encode.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import pika
import pytest

from taskq.core.limits import AttemptLimits
from taskq.core.message import TaskMessage
from taskq.core.outcomes import Ack, DeadLetter, RedeliveryCheck, Retry
from taskq.core.retry import RetryPolicy
from taskq.core.states import TaskState
from taskq.core.transitions import Transition
from taskq.errors import StoreRefused, StoreUnavailable
from taskq.worker.committer import Committer, Done, Redelivered
from taskq.worker.delivery import Delivery
from taskq.worker.logs import JsonLog
from taskq.worker.pools import Completed, ErrorInfo, Started

NOW = datetime(2026, 12, 1, tzinfo=UTC)


class MemoryStore:
    """Guarded transitions on a dict; `refuse` makes writes for those task ids raise StoreRefused."""

    def __init__(self) -> None:
        self.states: dict[str, TaskState] = {}
        self.documents: dict[str, dict[str, Any]] = {}
        self.redeliveries: dict[str, int] = {}
        self.refuse: set[str] = set()
        self.refuse_fields: set[str] = set()
        self.down = False
        self.bulk_sizes: list[int] = []

    def apply_many(self, transitions: list[Transition]) -> list[bool]:
        if self.down:
            raise StoreUnavailable("store down")
        for t in transitions:
            refused_fields = not self.refuse_fields or any(t.fields.get(f) is not None for f in self.refuse_fields)
            if t.task_id in self.refuse and refused_fields:
                raise StoreRefused(f"cannot encode {t.task_id}")
        self.bulk_sizes.append(len(transitions))
        applied = []
        for t in transitions:
            state = self.states.get(t.task_id)
            ok = (state is None and t.insert is not None) or (state is not None and state in t.sources)
            if ok:
                self.states[t.task_id] = t.target
                self.documents.setdefault(t.task_id, {}).update(t.fields)
            applied.append(ok)
        return applied

    def states_of(self, task_ids: list[str]) -> dict[str, TaskState]:
        return {i: self.states[i] for i in task_ids if i in self.states}

    def note_redelivery(self, task_id: str, attempt: int, *, count: bool = True) -> RedeliveryCheck:
        if count:
            self.redeliveries[task_id] = self.redeliveries.get(task_id, 0) + 1
        return RedeliveryCheck(self.states.get(task_id), self.redeliveries.get(task_id, 0) + 1)


class Sink:
    def __init__(self) -> None:
        self.done: list[Done] = []
        self.admitted: list[Delivery] = []
        self.lock = threading.Lock()

    def send(self, done: list[Done]) -> None:
        with self.lock:
            self.done.extend(done)

    def admit(self, delivery: Delivery) -> None:
        with self.lock:
            self.admitted.append(delivery)


def _delivery(task_id: str, *, redelivered: bool = False, attempt: int = 1) -> Delivery:
    message = TaskMessage(id=task_id, name="echo", queue="q", created_at=NOW, attempt=attempt)
    delivery = Delivery(1, 1, message.encode(), pika.BasicProperties(), redelivered, message, AttemptLimits(10, 1))
    return delivery


@pytest.fixture
def rig():
    store, sink = MemoryStore(), Sink()
    committer = Committer(store, "w1", policy=RetryPolicy(), max_deliveries=3, sink=sink, log=JsonLog(level="error"))
    thread = threading.Thread(target=committer.run, daemon=True)
    thread.start()
    yield store, sink, committer
    committer.stop(5)
    thread.join(5)


def _wait(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError("condition not reached")


def _complete(committer: Committer, delivery: Delivery, result_json: str | None = "1", error: ErrorInfo | None = None) -> None:
    committer.inbox.put(Started(delivery, NOW))
    committer.inbox.put(Completed(delivery, NOW, 0.001, result_json, error))


def test_short_tasks_cost_one_write_each_in_one_bulk(rig) -> None:
    store, sink, committer = rig
    deliveries = [_delivery(f"t{i}") for i in range(50)]
    for d in deliveries:
        committer.inbox.put(Started(d, NOW))
    for d in deliveries:
        committer.inbox.put(Completed(d, NOW, 0.001, "1", None))
    _wait(lambda: len(sink.done) == 50)
    assert all(isinstance(d.action, Ack) for d in sink.done)
    assert set(store.states.values()) == {TaskState.SUCCEEDED}
    assert sum(store.bulk_sizes) == 50  # no separate start writes
    assert len(store.bulk_sizes) < 50  # grouped


def test_a_long_task_gets_its_start_recorded(rig) -> None:
    store, sink, committer = rig
    delivery = _delivery("long")
    committer.inbox.put(Started(delivery, NOW))
    _wait(lambda: store.states.get("long") is TaskState.RUNNING)
    committer.inbox.put(Completed(delivery, NOW, 1.0, '"done"', None))
    _wait(lambda: store.states.get("long") is TaskState.SUCCEEDED)


def test_a_refused_write_is_isolated_and_recorded_failed(rig) -> None:
    store, sink, committer = rig
    store.refuse = {"bad"}
    store.refuse_fields = {"result"}  # refused while it carries its result; the failed record has none
    store.states["bad"] = TaskState.QUEUED
    good = [_delivery(f"g{i}") for i in range(9)]
    bad = _delivery("bad")
    for d in [*good[:4], bad, *good[4:]]:
        _complete(committer, d, '{"x": 1}')
    _wait(lambda: len(sink.done) == 10)
    assert all(store.states[d.message.id] is TaskState.SUCCEEDED for d in good)  # type: ignore[union-attr]
    assert store.states["bad"] is TaskState.FAILED
    assert store.documents["bad"]["error"]["type"] == "StoreRefused"
    assert all(isinstance(d.action, Ack) for d in sink.done)


def test_an_outcome_refused_even_as_failed_is_dead_lettered(rig) -> None:
    store, sink, committer = rig
    store.refuse = {"worse"}
    store.states["worse"] = TaskState.QUEUED
    _complete(committer, _delivery("worse"))
    _complete(committer, _delivery("fine"))
    _wait(lambda: len(sink.done) == 2)
    actions = {d.delivery.message.id: d.action for d in sink.done}  # type: ignore[union-attr]
    assert isinstance(actions["worse"], DeadLetter) and "store refused" in actions["worse"].reason
    assert isinstance(actions["fine"], Ack)


def test_store_outage_keeps_the_batch_and_acks_nothing_until_it_is_back(rig) -> None:
    store, sink, committer = rig
    store.down = True
    _complete(committer, _delivery("wait"))
    time.sleep(0.3)
    assert not sink.done and committer.healthy is False
    store.down = False
    _wait(lambda: len(sink.done) == 1)
    assert committer.healthy


def test_failures_retry_then_die(rig) -> None:
    store, sink, committer = rig
    error = ErrorInfo("ValueError", "boom", "", "raised", True)
    _complete(committer, _delivery("r1", attempt=1), None, error)
    _complete(committer, _delivery("r2", attempt=2), None, error)
    _wait(lambda: len(sink.done) == 2)
    actions = {d.delivery.message.id: d.action for d in sink.done}  # type: ignore[union-attr]
    assert isinstance(actions["r1"], Retry) and isinstance(actions["r2"], DeadLetter)


def test_redeliveries_are_counted_admitted_then_buried(rig) -> None:
    store, sink, committer = rig
    for _ in range(2):
        committer.inbox.put(Redelivered(_delivery("loop", redelivered=True)))
    _wait(lambda: len(sink.admitted) == 2)
    committer.inbox.put(Redelivered(_delivery("loop", redelivered=True), count=False))  # handed back by a lease
    _wait(lambda: len(sink.admitted) == 3)
    committer.inbox.put(Redelivered(_delivery("loop", redelivered=True)))  # the 4th delivery: over the limit of 3
    _wait(lambda: len(sink.done) == 1)
    (done,) = sink.done
    assert isinstance(done.action, DeadLetter) and done.action.reason.startswith("delivery-limit")
    assert store.states["loop"] is TaskState.DEAD


def test_redelivery_of_a_final_task_is_acked_without_running(rig) -> None:
    store, sink, committer = rig
    store.states["fin"] = TaskState.SUCCEEDED
    committer.inbox.put(Redelivered(_delivery("fin", redelivered=True)))
    _wait(lambda: len(sink.done) == 1)
    assert isinstance(sink.done[0].action, Ack) and not sink.admitted


def test_stop_flushes_what_is_pending() -> None:
    store, sink = MemoryStore(), Sink()
    committer = Committer(store, "w1", policy=RetryPolicy(), max_deliveries=3, sink=sink, log=JsonLog(level="error"))
    thread = threading.Thread(target=committer.run, daemon=True)
    thread.start()
    for i in range(20):
        _complete(committer, _delivery(f"s{i}"))
    assert committer.stop(5)
    assert len(sink.done) == 20


def test_an_outcome_waits_for_attempts_still_queued_in_the_pool_then_for_nothing() -> None:
    """Idle means nothing running *or queued*: a completion with a queued attempt behind it waits for the
    batch window (so the next outcome can share the write); with nothing queued it is written at once."""
    store, sink = MemoryStore(), Sink()
    queued = [1]
    committer = Committer(
        store,
        "w1",
        policy=RetryPolicy(),
        max_deliveries=3,
        sink=sink,
        log=JsonLog(level="error"),
        max_wait_s=0.4,
        queued=lambda: queued[0],
    )
    thread = threading.Thread(target=committer.run, daemon=True)
    thread.start()
    try:
        began = time.monotonic()
        _complete(committer, _delivery("first"))
        time.sleep(0.15)
        assert not sink.done  # the queued attempt may finish within the window: not flushed yet
        _wait(lambda: len(sink.done) == 1)
        assert time.monotonic() - began >= 0.35  # written when the window closed
        queued[0] = 0
        began = time.monotonic()
        _complete(committer, _delivery("second"))
        _wait(lambda: len(sink.done) == 2)
        assert time.monotonic() - began < 0.3  # idle: at once, not after the window
    finally:
        committer.stop(5)
        thread.join(5)
