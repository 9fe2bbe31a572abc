"""The committer stage: group-commit what happened to deliveries, then release their broker actions.

Its inbox is one queue fed by the pool (`Started`, `Progress`, `Completed` events) and by the
connection stage (`Decided`: a decision made at intake, such as a malformed message; `Redelivered`:
a redelivered message to check before it runs). The committer thread flushes what is pending in one
`TaskStore.apply_many` (bounded by `batch_size` and by `max_wait_s` while the worker is busy; at once
when it is idle: no attempt running or queued in the pool, so nothing could join the batch), then
hands each delivery's action to the connection stage (`AckSink.send`), which acks on the connection
thread. Nothing is acked before its outcome is in the store.

- Lazy starts: a start is written only if its task still runs `max_wait_s` after it began, so a
  short task costs one write (its outcome, recorded with `start_recorded=False`).
- A write the store refuses (`StoreRefused`) is isolated by splitting the batch; the rest commits.
  A refused outcome is recorded as `failed` with the store's reason; if even that is refused, the
  message is dead-lettered with the reason. One bad write never blocks the others.
- Store unavailable: the batch is kept, `healthy` goes false (readiness), the flush is retried with
  backoff; acks wait, so the prefetch window stops new deliveries.

Started by `taskq.worker.main` under the supervisor; unit tests in `tests/unit/test_worker_committer.py`.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from taskq.core.document import TaskError
from taskq.core.message import utcnow
from taskq.core.outcomes import (
    REASON_LIMIT_CHARS,
    Ack,
    Action,
    AttemptError,
    DeadLetter,
    Decision,
    RedeliveryCheck,
    Run,
    attempt_outcome,
    redelivery_outcome,
    retry_action,
)
from taskq.core.retry import RetryPolicy
from taskq.core.states import TaskState, allowed_sources
from taskq.core.transitions import Transition, finish, progress, start
from taskq.errors import StoreRefused, StoreUnavailable, TaskqError
from taskq.worker.delivery import Delivery
from taskq.worker.logs import JsonLog
from taskq.worker.pools import Completed, ErrorInfo, PoolEvent, Progress, Started

BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 2.0
RECHECK_AFTER_S = 0.0
"""A checked redelivery that waited longer than this in the pool is checked again before it starts (every
one: the second read by `_id` costs less than running a task that is final already)."""
MAX_STORE_ERRORS = 30
"""Consecutive store errors other than an outage (an operation the store rejects) after which the
committer gives up and fails the worker: a restart is better than a worker stuck retrying forever."""


class Store(Protocol):
    """What the committer needs of `taskq.store.mongo.TaskStore`."""

    def apply_many(self, transitions: list[Transition]) -> list[bool]: ...
    def states_of(self, task_ids: list[str]) -> dict[str, TaskState]: ...
    def note_redelivery(self, task_id: str, attempt: int, *, count: bool = True) -> RedeliveryCheck: ...


class AckSink(Protocol):
    """The connection stage's side: performs actions on the connection thread, admits runs to the pool."""

    def send(self, done: list[Done]) -> None: ...
    def admit(self, delivery: Delivery) -> None: ...


@dataclass(frozen=True)
class Decided:
    """A decision the connection stage made at intake (malformed, unknown task)."""

    delivery: Delivery
    decision: Decision


@dataclass(frozen=True)
class Redelivered:
    """A redelivered message: count the delivery (unless `count` is False) and check its task before it may run."""

    delivery: Delivery
    count: bool = True


@dataclass(frozen=True)
class Done:
    """A delivery whose outcome is recorded: the action the connection stage takes for it now."""

    delivery: Delivery
    action: Action
    decision: Decision | None


@dataclass(frozen=True)
class Wake:
    """Nothing to record: wakes the committer thread (sent by `stop`)."""


InboxItem = PoolEvent | Decided | Redelivered | Wake


@dataclass
class _Start:
    started_at: datetime
    since: float  # monotonic
    recorded: bool = False
    progress: dict[str, Any] | None = None
    progress_dirty: bool = False


@dataclass
class _Batch:
    """What one flush takes out of the pending lists."""

    completed: list[Completed] = field(default_factory=list)
    decided: list[Decided] = field(default_factory=list)
    redelivered: list[Redelivered] = field(default_factory=list)
    starts: list[Delivery] = field(default_factory=list)
    progress: list[Delivery] = field(default_factory=list)


def attempt_error(info: ErrorInfo) -> AttemptError:
    """The pool's error report as the pure core's storable `AttemptError`."""
    return AttemptError(TaskError.storable(info.type, info.message, info.traceback), retryable=info.retryable, kind=info.kind)


class Committer:
    """The group-commit stage between the pool, the store and the connection stage's acks."""

    def __init__(
        self,
        store: Store,
        worker_id: str,
        *,
        policy: RetryPolicy,
        max_deliveries: int,
        sink: AckSink,
        log: JsonLog,
        on_recorded: Callable[[Decision], None] | None = None,
        batch_size: int = 256,
        max_wait_s: float = 0.005,
        rng: Callable[[], float] = random.random,
        inbox: queue.Queue[InboxItem] | None = None,
        queued: Callable[[], int] = lambda: 0,
    ) -> None:
        self.inbox: queue.Queue[InboxItem] = inbox if inbox is not None else queue.Queue()
        self._store = store
        self._worker_id = worker_id
        self._policy = policy
        self._max_deliveries = max_deliveries
        self._sink = sink
        self._log = log
        self._on_recorded = on_recorded
        self._batch_size = batch_size
        self._batch_limit = batch_size  # halved after a timed-out flush, doubled back after a good one
        self._max_wait_s = max_wait_s
        self._rng = rng
        self._queued = queued  # the pool's admitted attempts that have not started yet
        self._starts: dict[Delivery, _Start] = {}
        self._completed: list[Completed] = []
        self._decided: list[Decided] = []
        self._redelivered: list[Redelivered] = []
        self._oldest: float | None = None
        self._stop_at: float | None = None
        self._stopped = threading.Event()
        self.healthy = True
        self.flushes = 0
        self.unflushed = 0

    # -- status (any thread) --------------------------------------------------------------------

    def pending_count(self) -> int:
        """Outcomes not yet recorded (approximate from other threads: the inbox is counted too)."""
        return self.inbox.qsize() + len(self._completed) + len(self._decided) + len(self._redelivered)

    def stop(self, timeout_s: float) -> bool:
        """Ask the thread to flush what is pending for at most `timeout_s`, wait, and say whether all was recorded."""
        self._stop_at = time.monotonic() + timeout_s
        self.inbox.put(Wake())
        self._stopped.wait(timeout_s + 2.0)
        return self.unflushed == 0 and self._stopped.is_set()

    # -- the thread -----------------------------------------------------------------------------

    def run(self) -> None:
        """The committer loop (run by the supervisor in its own thread) until `stop`."""
        failures = 0
        try:
            while True:
                self._collect(self._wait_s(time.monotonic()))
                now = time.monotonic()
                if self._stop_at is not None and (not self._has_pending() or now >= self._stop_at):
                    break
                if not self._due(now):
                    continue
                batch = self._take_batch(now)
                try:
                    self._flush(batch)
                except StoreUnavailable as exc:
                    failures += 1
                    self._put_back(batch)
                    # A store that is merely slow times out on big batches: smaller ones make progress.
                    self._batch_limit = max(1, self._batch_limit // 2)
                    if self.healthy:
                        self._log.event("store.unavailable", "warning", error=str(exc))
                    self.healthy = False
                    self._backoff(min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2 ** min(failures, 10)))
                    continue
                except TaskqError as exc:
                    failures += 1
                    self._put_back(batch)
                    self._log.event("store.write_failed", "error", error=str(exc), consecutive=failures)
                    if failures >= MAX_STORE_ERRORS:
                        raise
                    self._backoff(min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2 ** min(failures, 10)))
                    continue
                if not self.healthy:
                    self._log.event("store.available", "info", failed_attempts=failures)
                self.healthy = True
                failures = 0
                self._batch_limit = min(self._batch_size, self._batch_limit * 2)
        finally:
            self.unflushed = len(self._completed) + len(self._decided)
            self._stopped.set()

    def _collect(self, timeout_s: float) -> None:
        try:
            item = self.inbox.get(timeout=max(timeout_s, 0.0005))
        except queue.Empty:
            return
        self._take(item)
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return
            self._take(item)

    def _take(self, item: InboxItem) -> None:
        if isinstance(item, Started):
            assert isinstance(item.key, Delivery)
            self._starts[item.key] = _Start(item.started_at, time.monotonic())
            return
        if isinstance(item, Progress):
            entry = self._starts.get(item.key) if isinstance(item.key, Delivery) else None
            if entry is not None:
                entry.progress = {"fraction": item.fraction, "message": item.message, "at": item.at}
                entry.progress_dirty = True
            return
        if isinstance(item, Completed):
            self._completed.append(item)
        elif isinstance(item, Decided):
            self._decided.append(item)
        elif isinstance(item, Redelivered):
            self._redelivered.append(item)
        else:
            return  # the wake-up marker
        if self._oldest is None:
            self._oldest = time.monotonic()

    def _has_pending(self) -> bool:
        return bool(self._completed or self._decided or self._redelivered)

    def _due_starts(self, now: float) -> list[Delivery]:
        return [
            d
            for d, s in self._starts.items()
            if (not s.recorded and now - s.since >= self._max_wait_s) or (s.recorded and s.progress_dirty)
        ]

    def _due(self, now: float) -> bool:
        if self._has_pending():
            count = len(self._completed) + len(self._decided) + len(self._redelivered)
            age = now - (self._oldest or now)
            # Idle: nothing this worker runs or is about to run can join the batch, so waiting only adds latency.
            idle = self.inbox.empty() and not self._unfinished_runs() and not self._queued()
            if count >= self._batch_limit or age >= self._max_wait_s or idle or self._stop_at is not None:
                return True
        return bool(self._due_starts(now))

    def _unfinished_runs(self) -> bool:
        finished = {c.key for c in self._completed}
        return any(d not in finished for d in self._starts)

    def _wait_s(self, now: float) -> float:
        waits = [0.5]
        if self._has_pending():
            waits.append(self._max_wait_s - (now - (self._oldest or now)))
        unrecorded = [s.since for s in self._starts.values() if not s.recorded]
        if unrecorded:
            waits.append(self._max_wait_s - (now - min(unrecorded)))
        if self._stop_at is not None:
            waits.append(0.01)
        return max(min(waits), 0.0)

    def _take_batch(self, now: float) -> _Batch:
        limit = self._batch_limit
        batch = _Batch(
            completed=self._completed[:limit],
            decided=self._decided[: max(0, limit - min(len(self._completed), limit))],
            redelivered=self._redelivered[:limit],
        )
        del self._completed[: len(batch.completed)]
        del self._decided[: len(batch.decided)]
        del self._redelivered[: len(batch.redelivered)]
        finishing = {c.key for c in batch.completed}
        for delivery in self._due_starts(now):
            if delivery in finishing:
                continue
            entry = self._starts[delivery]
            (batch.progress if entry.recorded else batch.starts).append(delivery)
        self._oldest = time.monotonic() if self._has_pending() else None
        return batch

    def _put_back(self, batch: _Batch) -> None:
        self._completed[:0] = batch.completed
        self._decided[:0] = batch.decided
        self._redelivered[:0] = batch.redelivered
        if self._has_pending() and self._oldest is None:
            self._oldest = time.monotonic()

    def _backoff(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._stop_at is not None and time.monotonic() >= self._stop_at:
                return
            self._collect(min(0.05, max(deadline - time.monotonic(), 0.0)))

    # -- one flush --------------------------------------------------------------------------------

    def _flush(self, batch: _Batch) -> None:
        now = utcnow()
        outcomes: list[tuple[Delivery, Decision]] = []
        runs: list[Delivery] = []
        for item in batch.redelivered:
            decision = self._redelivery(item.delivery, item.count, now)
            if isinstance(decision.action, Run):
                runs.append(item.delivery)
            else:
                outcomes.append((item.delivery, decision))
        for completed in batch.completed:
            delivery = completed.key
            assert isinstance(delivery, Delivery)
            entry = self._starts.get(delivery)
            outcomes.append((delivery, self._attempt(delivery, completed, entry, now)))
        outcomes.extend((d.delivery, d.decision) for d in batch.decided)

        side: list[Transition] = []
        for delivery in batch.starts:
            side.append(self._start_transition(delivery, self._starts[delivery], now))
        for delivery in batch.progress:
            side.append(self._progress_transition(delivery, self._starts[delivery], now))

        # An outcome's claim names the delivery that wrote it: a retry of this flush finds its own claim.
        recorded = [replace(d.transition, worker=self._writer(delivery)) for delivery, d in outcomes if d.transition is not None]
        results = self._apply_isolating([*side, *recorded])
        side_results, outcome_results = results[: len(side)], results[len(side) :]
        for delivery, result in zip([*batch.starts, *batch.progress], side_results, strict=True):
            entry = self._starts.get(delivery)
            if entry is not None:
                entry.recorded = True  # a refused start/progress is not retried: the outcome records the start
                entry.progress_dirty = False
            if isinstance(result, StoreRefused):
                self._log.event("store.refused", "warning", what="start or progress", error=str(result))
        done = self._settle(outcomes, outcome_results, now)
        for completed in batch.completed:
            self._starts.pop(completed.key, None)  # type: ignore[call-overload]
        self.flushes += 1
        for delivery in runs:
            delivery.checked_at = time.monotonic()
            self._sink.admit(delivery)
        if done:
            self._sink.send(done)

    def still_open(self, delivery: Delivery) -> bool:
        """Whether a checked redelivery's attempt is still open right before it starts (any thread).

        It may have waited in the pool while another worker recorded its outcome. A read by `_id`
        (rare: only checked redeliveries, copies and retries); when the store cannot
        answer, the attempt runs (at-least-once).
        """
        message = delivery.message
        if message is None or delivery.checked_at is None or time.monotonic() - delivery.checked_at < RECHECK_AFTER_S:
            return True
        try:
            check = self._store.note_redelivery(message.id, message.attempt, count=False)
        except TaskqError:
            return True
        return not ((check.state is not None and check.state.is_final) or check.claimed is not None)

    def _writer(self, delivery: Delivery) -> str:
        return f"{self._worker_id}/{delivery.token}"

    def _redelivery(self, delivery: Delivery, count: bool, now: datetime) -> Decision:
        message = delivery.message
        assert message is not None
        # Counted in the document always (RabbitMQ 4.0 quorum queues do not count every return, e.g. a
        # closed channel); a broker's own count (`x-delivery-count`) wins when it is higher.
        check = self._store.note_redelivery(message.id, message.attempt, count=count)
        deliveries = check.deliveries
        if delivery.broker_deliveries is not None:
            deliveries = max(deliveries, delivery.broker_deliveries + 1)
        delivery.epoch = deliveries  # this delivery's writes are fenced above every earlier one's
        # Only a real redelivery may have lost its retry publish; a republished copy's original did not.
        returned = delivery.redelivered or (delivery.broker_deliveries or 0) > 0
        retry = retry_action(message, self._policy, self._rng()) if returned and check.claimed is TaskState.RETRYING else None
        return redelivery_outcome(
            message,
            delivery.body,
            state=check.state,
            deliveries=deliveries,
            max_deliveries=self._max_deliveries,
            now=now,
            claimed=check.claimed,
            retry=retry,
        )

    def _attempt(self, delivery: Delivery, done: Completed, entry: _Start | None, now: datetime) -> Decision:
        assert delivery.message is not None and delivery.limits is not None
        return attempt_outcome(
            delivery.message,
            result_json=done.result_json,
            failure=attempt_error(done.error) if done.error is not None else None,
            limits=delivery.limits,
            duration_s=done.duration_s,
            worker_id=self._worker_id,
            policy=self._policy,
            now=now,
            started_at=done.started_at,
            start_recorded=entry.recorded if entry is not None else False,
            unit_random=self._rng(),
            epoch=delivery.epoch,
        )

    def _start_transition(self, delivery: Delivery, entry: _Start, now: datetime) -> Transition:
        assert delivery.message is not None
        transition = start(delivery.message, self._worker_id, entry.started_at, epoch=delivery.epoch)
        return transition if entry.progress is None else transition.with_fields({"progress": entry.progress})

    def _progress_transition(self, delivery: Delivery, entry: _Start, now: datetime) -> Transition:
        assert delivery.message is not None
        return progress(delivery.message, self._worker_id, entry.progress or {}, now, epoch=delivery.epoch)

    def _apply_isolating(self, transitions: list[Transition]) -> list[bool | StoreRefused]:
        """`apply_many`, splitting the batch to isolate writes the store refuses (StoreUnavailable propagates)."""
        if not transitions:
            return []
        try:
            return list(self._store.apply_many(transitions))
        except StoreRefused as exc:
            if len(transitions) == 1:
                return [exc]
            middle = len(transitions) // 2
            return self._apply_isolating(transitions[:middle]) + self._apply_isolating(transitions[middle:])

    def _settle(self, outcomes: list[tuple[Delivery, Decision]], results: list[bool | StoreRefused], now: datetime) -> list[Done]:
        """Each outcome's action, given what the store said about its transition."""
        done: list[Done] = []
        index = 0
        stale: list[tuple[Delivery, Decision]] = []
        refused: list[tuple[Delivery, Decision, StoreRefused]] = []
        for delivery, decision in outcomes:
            if decision.transition is None:
                done.append(Done(delivery, decision.action, decision))
                self._recorded(decision)
                continue
            result = results[index]
            index += 1
            if isinstance(result, StoreRefused):
                refused.append((delivery, decision, result))
            elif result or not decision.act_only_if_recorded:
                done.append(Done(delivery, decision.action, decision))
                self._recorded(decision)
            else:
                stale.append((delivery, decision))
        done.extend(self._stale(stale))
        done.extend(self._refused(refused, now))
        return done

    def _stale(self, stale: list[tuple[Delivery, Decision]]) -> list[Done]:
        """Refused as stale: another delivery's outcome holds the attempt's claim (or the task is final),
        so its action is theirs; this delivery is only acked. (Our own claim from a try whose reply
        was lost counts as held: see `TaskStore.claim_outcomes`.)"""
        done: list[Done] = []
        for delivery, decision in stale:
            self._log.event("task.stale", "info", **decision.fields)
            done.append(Done(delivery, Ack(), decision))
        return done

    def _refused(self, refused: list[tuple[Delivery, Decision, StoreRefused]], now: datetime) -> list[Done]:
        """The store refused an outcome: record `failed` with its reason, else dead-letter the message."""
        if not refused:
            return []
        fallbacks: list[tuple[Delivery, Decision, Transition | None]] = []
        for delivery, decision, exc in refused:
            self._log.event("store.refused", "error", error=str(exc), **decision.fields)
            fallbacks.append((delivery, decision, self._failed_instead(delivery, str(exc), now)))
        results = self._apply_isolating([t for _, _, t in fallbacks if t is not None])
        done: list[Done] = []
        index = 0
        for delivery, decision, transition in fallbacks:
            ok = False
            if transition is not None:
                result = results[index]
                index += 1
                ok = result is True
            if ok:
                assert transition is not None
                failed = Decision(transition, Ack(), "task.failed", {**decision.fields, "error_type": "StoreRefused"})
                done.append(Done(delivery, Ack(), failed))
                self._recorded(failed)
            else:
                reason = f"store refused the outcome of this task: {decision.event}"[:REASON_LIMIT_CHARS]
                dead = Decision(None, DeadLetter(delivery.body, reason), "task.unrecordable", decision.fields, False)
                done.append(Done(delivery, dead.action, dead))
                self._recorded(dead)
        return done

    def _failed_instead(self, delivery: Delivery, reason: str, now: datetime) -> Transition | None:
        message = delivery.message
        if message is None:
            return None
        error = TaskError.storable("StoreRefused", reason)
        # Minimal fields only: whatever made the store refuse (a result, an error text) is left out.
        transition = finish(
            message, TaskState.FAILED, self._worker_id, now, error=error, start_recorded=False, epoch=delivery.epoch
        )
        sources = allowed_sources(TaskState.FAILED) | transition.sources
        return replace(transition, sources=sources, insert=None, worker=self._writer(delivery))

    def _recorded(self, decision: Decision) -> None:
        if self._on_recorded is not None:
            self._on_recorded(decision)
