"""Group commit: batch the store writes of many deliveries into one bulk write, then release their acks.

Executor threads report starts and finished attempts; the consumer reports decisions it made itself
(malformed or unknown messages) and redelivered messages to check. The committer thread flushes
everything pending in one `TaskStore.apply_many` (bounded by `batch_size` and by `max_wait_s` while
the worker is busy; at once when it is idle), then hands each delivery's action to the consumer,
which acks on the connection thread. Nothing is acked before its outcome is in the store.

Lazy starts: a start is written only if its task is still running `max_wait_s` after it began; a
task that finishes sooner gets one write (its finish with `start_recorded=False`) instead of two.

Store unavailable: the batch is kept, readiness goes false, and the flush is retried with backoff
until it succeeds or the worker is stopped; acks wait, so the prefetch window stops new deliveries.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from taskq.core.message import TaskMessage, utcnow
from taskq.core.states import TaskState
from taskq.core.transitions import Transition, start
from taskq.errors import StoreUnavailable, TaskqError
from taskq.store.mongo import TaskStore
from taskq.worker.decisions import Ack, Action, DeadLetter, Decision, Retry
from taskq.worker.logs import JsonLog

BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 2.0


@dataclass(frozen=True)
class Finished:
    """A finished attempt, waiting for the flush that records it."""

    token: Hashable
    message: TaskMessage
    value: Any
    error: BaseException | None
    duration_s: float
    started_at: datetime


@dataclass
class _Start:
    message: TaskMessage
    started_at: datetime
    since: float  # monotonic
    recorded: bool = False


@dataclass(frozen=True)
class Done:
    """A delivery whose outcome is recorded: the action the consumer takes for it now."""

    token: Hashable
    action: Action
    decision: Decision | None


DecideOutcome = Callable[[Finished, bool], Decision]


class Committer:
    """The group-commit thread between the executor, the store and the consumer's acks."""

    def __init__(
        self,
        store: TaskStore,
        worker_id: str,
        *,
        decide: DecideOutcome,
        on_done: Callable[[list[Done]], None],
        on_admit: Callable[[Hashable, TaskMessage], None],
        is_busy: Callable[[], bool],
        log: JsonLog,
        on_recorded: Callable[[Decision], None] | None = None,
        batch_size: int = 256,
        max_wait_s: float = 0.005,
    ) -> None:
        self._store = store
        self._worker_id = worker_id
        self._decide = decide
        self._on_done = on_done
        self._on_admit = on_admit
        self._is_busy = is_busy
        self._log = log
        self._on_recorded = on_recorded
        self._batch_size = batch_size
        self._batch_limit = batch_size  # halved after a timed-out flush, doubled back after a good one
        self._max_wait_s = max_wait_s
        self._cond = threading.Condition()
        self._starts: dict[Hashable, _Start] = {}
        self._finished: list[Finished] = []
        self._decided: list[tuple[Hashable, Decision]] = []
        self._prechecks: list[tuple[Hashable, TaskMessage]] = []
        self._oldest: float | None = None
        self._stopping = False
        self._stop_deadline = 0.0
        self._thread = threading.Thread(target=self._run, name="taskq-committer", daemon=True)
        self.healthy = True
        self.flushes = 0
        self.failed_final_flush = False

    # -- producers of work (any thread) ---------------------------------------------------------

    def start_thread(self) -> None:
        self._thread.start()

    def started(self, token: Hashable, message: TaskMessage, started_at: datetime) -> None:
        with self._cond:
            self._starts[token] = _Start(message, started_at, time.monotonic())
            self._cond.notify()

    def finished(self, item: Finished) -> None:
        with self._cond:
            self._finished.append(item)
            self._mark_pending()

    def decided(self, token: Hashable, decision: Decision) -> None:
        with self._cond:
            self._decided.append((token, decision))
            self._mark_pending()

    def precheck(self, token: Hashable, message: TaskMessage) -> None:
        """A redelivered message: ack it without running if its task is already final."""
        with self._cond:
            self._prechecks.append((token, message))
            self._mark_pending()

    def _mark_pending(self) -> None:
        if self._oldest is None:
            self._oldest = time.monotonic()
        self._cond.notify()

    def pending_count(self) -> int:
        with self._cond:
            return len(self._finished) + len(self._decided) + len(self._prechecks)

    def stop(self, timeout_s: float) -> bool:
        """Flush what is pending (for at most `timeout_s`) and end the thread; True if all was recorded."""
        with self._cond:
            self._stopping = True
            self._stop_deadline = time.monotonic() + timeout_s
            self._cond.notify()
        self._thread.join(timeout_s + 1.0)
        with self._cond:
            leftover = len(self._finished) + len(self._decided)
        self.failed_final_flush = leftover > 0
        return leftover == 0

    # -- the committer thread -------------------------------------------------------------------

    def _ready_to_flush(self, now: float) -> tuple[bool, float]:
        """Whether to flush now, else how long to wait at most (called with the lock held)."""
        waits: list[float] = []
        if self._finished or self._decided or self._prechecks:
            count = len(self._finished) + len(self._decided) + len(self._prechecks)
            age = now - (self._oldest or now)
            if count >= self._batch_limit or age >= self._max_wait_s or self._stopping or not self._is_busy():
                return True, 0.0
            waits.append(self._max_wait_s - age)
        unrecorded = [s.since for s in self._starts.values() if not s.recorded]
        if unrecorded:
            age = now - min(unrecorded)
            if age >= self._max_wait_s:
                return True, 0.0
            waits.append(self._max_wait_s - age)
        return False, min(waits) if waits else 0.5

    def _run(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while True:
                    if self._stopping and not (self._finished or self._decided or self._prechecks):
                        return
                    if self._stopping and time.monotonic() >= self._stop_deadline:
                        return
                    ready, wait_s = self._ready_to_flush(time.monotonic())
                    if ready:
                        break
                    self._cond.wait(max(wait_s, 0.0005))
                limit = self._batch_limit
                finished = self._finished[:limit]
                decided = self._decided[: max(0, limit - len(finished))]
                prechecks = self._prechecks[:limit]
                finished_tokens = {f.token for f in finished}
                now_mono = time.monotonic()
                due_starts = [
                    (token, s)
                    for token, s in self._starts.items()
                    if not s.recorded and token not in finished_tokens and now_mono - s.since >= self._max_wait_s
                ]
                start_flags = {f.token: self._starts[f.token].recorded if f.token in self._starts else False for f in finished}
            try:
                self._flush(finished, start_flags, decided, prechecks, due_starts)
            except StoreUnavailable as exc:
                failures += 1
                # A store that is merely slow (FerretDB's cost per update grows with the collection)
                # times out on big batches: smaller ones make progress instead of retrying forever.
                self._batch_limit = max(1, self._batch_limit // 2)
                if self.healthy:
                    self._log.event("store.unavailable", "warning", error=str(exc))
                self.healthy = False
                self._sleep_backoff(min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2 ** min(failures, 10)))
                continue
            except TaskqError as exc:
                failures += 1
                self._log.event("store.write_failed", "error", error=str(exc))
                self._sleep_backoff(min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2 ** min(failures, 10)))
                continue
            if not self.healthy:
                self._log.event("store.available", "info", failed_attempts=failures)
            self.healthy = True
            failures = 0
            self._batch_limit = min(self._batch_size, self._batch_limit * 2)
            with self._cond:
                del self._finished[: len(finished)]
                del self._decided[: len(decided)]
                del self._prechecks[: len(prechecks)]
                for token, _ in due_starts:
                    if token in self._starts:
                        self._starts[token].recorded = True
                for token in finished_tokens:
                    self._starts.pop(token, None)
                has_more = bool(self._finished or self._decided or self._prechecks)
                self._oldest = time.monotonic() if has_more else None

    def _sleep_backoff(self, seconds: float) -> None:
        with self._cond:
            if self._stopping and time.monotonic() >= self._stop_deadline:
                return
            self._cond.wait(seconds)

    def _flush(
        self,
        finished: list[Finished],
        start_flags: dict[Hashable, bool],
        decided: list[tuple[Hashable, Decision]],
        prechecks: list[tuple[Hashable, TaskMessage]],
        due_starts: list[tuple[Hashable, _Start]],
    ) -> None:
        outcomes: list[tuple[Hashable, Decision]] = [(f.token, self._decide(f, start_flags[f.token])) for f in finished]
        outcomes.extend(decided)
        now = utcnow()
        transitions: list[Transition] = [start(s.message, self._worker_id, s.started_at) for _, s in due_starts]
        recorded_index: list[int] = []
        for token, decision in outcomes:
            if decision.transition is not None:
                recorded_index.append(len(transitions))
                transitions.append(decision.transition)
            else:
                recorded_index.append(-1)
        applied = self._store.apply_many(transitions) if transitions else []
        final_states: dict[str, TaskState] = {}
        if prechecks:
            final_states = self._store.states_of([m.id for _, m in prechecks])
        stale_checks = [
            decision.transition.task_id
            for (token, decision), index in zip(outcomes, recorded_index)
            if decision.transition is not None
            and not applied[index]
            and isinstance(decision.action, (Retry, DeadLetter))
            and decision.act_only_if_recorded
        ]
        current = self._store.states_of(stale_checks) if stale_checks else {}
        self.flushes += 1
        done: list[Done] = []
        for (token, decision), index in zip(outcomes, recorded_index):
            action: Action = decision.action
            if index >= 0 and not applied[index] and decision.act_only_if_recorded:
                transition = decision.transition
                assert transition is not None
                # Refused: either the task is final elsewhere (just ack), or our own earlier write of
                # this very transition landed before a connection error hid its reply (act on it).
                if current.get(transition.task_id) != transition.target:
                    action = Ack()
                    self._log.event("task.stale", "info", **decision.fields)
            done.append(Done(token, action, decision))
            if self._on_recorded is not None and action == decision.action:
                self._on_recorded(decision)
        for token, message in prechecks:
            state = final_states.get(message.id)
            if state is not None and state.is_final:
                self._log.event("task.redelivered_final", "info", task_id=message.id, name=message.name, state=state.value)
                done.append(Done(token, Ack(), None))
            else:
                self._on_admit(token, message)
        if done:
            self._on_done(done)
