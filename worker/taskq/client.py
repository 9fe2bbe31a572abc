"""`taskq.Client`: the producer API (submit, submit_many, status) and queue administration.

Order of a submission: validate, write an outbox entry and the `queued` document of each task, publish
with confirms, then delete the confirmed tasks' outbox entries (`TaskStore.record_submission`,
`mark_published`). A caller-given `task_id` is an idempotency key: an id already published is not sent
again, an id whose publish was never confirmed is sent again, an id of another task (other queue or
name) raises `TaskConflict`. Entries left by a producer that died are sent by `taskq.sweeper`.
`submit_many` overlaps the store insert of one batch with the confirms of the previous batches.
Used directly by Python producers, and by the `taskq` CLI and the HTTP intake service.
"""

from __future__ import annotations

import builtins
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import chain, islice
from typing import Any, TypeVar

import pika

from taskq.broker import admin
from taskq.broker.admin import DeadLetter, RequeueReport
from taskq.broker.connection import connect, translated
from taskq.broker.control import publish_notice
from taskq.broker.delayed import declare_delay_queue, eta_of, route
from taskq.broker.publisher import DEFAULT_WINDOW, ConfirmingPublisher, Outgoing
from taskq.broker.topology import declare_queue_topology
from taskq.core.cancel import CancelNotice, CancelResult
from taskq.core.message import TaskMessage, utcnow
from taskq.core.states import TaskState
from taskq.core.topology import dead_queue
from taskq.errors import (
    BrokerRejected,
    BrokerUnavailable,
    InvalidTask,
    QueueNotFound,
    TaskConflict,
    TaskNotFound,
    TaskqError,
    TaskStateConflict,
    UnknownTask,
    WaitTimedOut,
)
from taskq.registry import lookup
from taskq.settings import Settings
from taskq.store.mongo import TaskStore
from taskq.submission import build_message, message_from_mapping
from taskq.sweeper import DEFAULT_GRACE_S, DEFAULT_LIMIT, SweepReport, sweep

T = TypeVar("T")
DEFAULT_BATCH = 500
MARK_CHUNK = 2000  # confirmed publishes recorded per outbox delete during a long submit_many
RETRY_DEAD_SCAN = 1000  # dead letters looked through for one retried task's own letter
WAIT_FIRST_INTERVAL_S = 0.05
WAIT_BACKOFF = 1.5
WAIT_MAX_INTERVAL_S = 1.0
WAIT_LIMIT_S = 24 * 3600.0  # `wait` never blocks longer, whatever the timeout asked
Progress = Callable[[int], None]


def registered_queue(name: str) -> str | None:
    """The `queue=` of task `name`'s decorator when this process has it registered, else None."""
    try:
        return lookup(name).queue
    except UnknownTask:
        return None


@dataclass(frozen=True)
class SubmitReceipt:
    """The outcome of `submit_many`: every id in input order, and how many were new vs. already known."""

    ids: list[str]
    published: int
    existing: int


@dataclass(frozen=True)
class QueueInfo:
    """A queue as the CLI and the HTTP service show it."""

    name: str
    ready: int
    consumers: int
    dead: int
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PurgeReport:
    """What `purge` removed."""

    messages: dict[str, int]
    documents: int


def _public(document: dict[str, Any]) -> dict[str, Any]:
    """A store document as callers see it: `id` instead of `_id`, no internal fields."""
    doc = dict(document)
    doc["id"] = doc.pop("_id")
    doc.pop("write_token", None)
    return doc


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


class Client:
    """A producer and administrator of taskq queues; thread-safe, one per process is enough."""

    def __init__(
        self, settings: Settings | None = None, *, window: int = DEFAULT_WINDOW, batch_size: int = DEFAULT_BATCH
    ) -> None:
        self.settings = settings or Settings()
        self.batch_size = batch_size
        self._store: TaskStore | None = None
        self._publisher = ConfirmingPublisher(self.settings.amqp_url, name="taskq-producer", window=window)
        self._admin: pika.BlockingConnection | None = None
        self._admin_lock = threading.Lock()
        self._store_lock = threading.Lock()
        self._declared: set[str] = set()

    @classmethod
    def from_env(cls, **overrides: Any) -> Client:
        """A client configured from `TASKQ_*` environment variables (keyword arguments override them)."""
        return cls(Settings(**overrides))

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the broker connections and the store client."""
        self._publisher.close()
        with self._admin_lock:
            if self._admin is not None and self._admin.is_open:
                with contextlib.suppress(pika.exceptions.AMQPError, OSError):  # already broken: nothing to close
                    self._admin.close()
            self._admin = None
        if self._store is not None:
            self._store.close()
            self._store = None

    @property
    def store(self) -> TaskStore:
        with self._store_lock:
            if self._store is None:
                self._store = TaskStore(self.settings.mongodb_uri, self.settings.database)
            return self._store

    def _with_admin(self, action: Callable[[pika.BlockingConnection], T]) -> T:
        """Run `action` on the admin connection, reconnecting once if it was lost."""
        with self._admin_lock:
            for attempt in (1, 2):
                if self._admin is None or not self._admin.is_open:
                    self._admin = connect(self.settings.amqp_url, name="taskq-admin")
                try:
                    return action(self._admin)
                except BrokerUnavailable:
                    self._admin = None
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

    def ping(self) -> None:
        """Raise `StoreUnavailable` / `BrokerUnavailable` unless both answer (the HTTP readiness check)."""
        self.store.ping()

        def probe(conn: pika.BlockingConnection) -> None:
            with translated("pinging", "the broker"):
                conn.process_data_events(time_limit=0)

        self._with_admin(probe)

    def _ensure_queue(self, queue: str) -> None:
        if queue in self._declared:
            return
        self._with_admin(
            lambda conn: declare_queue_topology(
                conn,
                queue,
                max_priority=self.settings.max_priority,
                task_timeout_s=self.settings.task_timeout,
                queue_type=self.settings.queue_type,
                max_deliveries=self.settings.max_deliveries,
            )
        )
        self._declared.add(queue)

    # -- producing ----------------------------------------------------------------------------

    def message(
        self,
        name: str,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int = 0,
        task_id: str | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
    ) -> TaskMessage:
        """Build and validate a task message (raises `InvalidTask`).

        `max_retries`/`timeout` left None are decided by the worker: the task decorator's value, else
        the worker's own limit (which also caps what is given here). The queue, when not given, is
        the decorator's `queue=` if this process has the task registered, else this client's default.
        `countdown` (seconds) or `eta` (a datetime; naive means UTC) delays the task: it is `scheduled`
        and its message waits in a delay queue of the broker until due (`taskq.broker.delayed`).
        """
        return build_message(
            name,
            args=list(args) if not isinstance(args, (str, bytes, Mapping)) else args,
            kwargs=kwargs,
            queue=queue or registered_queue(name) or self.settings.queue,
            priority=priority,
            task_id=task_id,
            max_retries=max_retries,
            timeout=timeout,
            now=utcnow(),
            countdown=countdown,
            eta=eta,
        )

    def submit(
        self,
        name: str,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int = 0,
        task_id: str | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
    ) -> str:
        """Submit one task; returns its id. A `task_id` already published is not sent again (see the module).

        With `countdown` (seconds from now) or `eta` the task is `scheduled` and runs when due (see `message`).
        """
        message = self.message(
            name,
            args,
            kwargs,
            queue=queue,
            priority=priority,
            task_id=task_id,
            max_retries=max_retries,
            timeout=timeout,
            countdown=countdown,
            eta=eta,
        )
        return self.submit_many([message]).ids[0]

    def as_message(self, task: Mapping[str, Any] | TaskMessage, queue: str | None = None) -> TaskMessage:
        """A validated message from a dict (keys as in `submit`, `id` or `task_id`), or the message itself."""
        if isinstance(task, TaskMessage):
            return task
        return message_from_mapping(
            task,
            default_queue=queue or registered_queue(str(task.get("name", ""))) or self.settings.queue,
            default_max_retries=None,
            default_timeout=None,
            now=utcnow(),
        )

    def submit_many(
        self,
        tasks: Iterable[Mapping[str, Any] | TaskMessage],
        *,
        queue: str | None = None,
        progress: Progress | None = None,
    ) -> SubmitReceipt:
        """Submit many tasks (dicts with `name`, `args`, ... or `TaskMessage`s) with many confirms in flight.

        `progress(n)` is called (from this or a helper thread) as `n` more tasks are settled: confirmed,
        or already known. Tasks are validated batch by batch: an `InvalidTask` stops the submission,
        and the batches before it stay submitted. A repeated id within one call is submitted once.
        """
        ids: list[str] = []
        seen: set[str] = set()
        existing = 0
        conflicts: dict[str, str] = {}
        stream = self._publisher.stream(on_confirmed=progress)

        confirmed: builtins.list[str] = []

        def settle(at_least: int = 1) -> None:
            # Marks go in chunks: on FerretDB each one scans the outbox, so fewer, larger ones cost less.
            confirmed.extend(stream.take_confirmed())
            if len(confirmed) >= at_least:
                self.store.mark_published(confirmed)
                confirmed.clear()

        def record_and_publish(messages: builtins.list[TaskMessage]) -> int:
            for name in {m.queue for m in messages}:
                self._ensure_queue(name)
            recorded = self.store.record_submission(messages, utcnow())
            conflicts.update(recorded.conflicts)
            if progress is not None and (recorded.known or recorded.conflicts):
                progress(len(recorded.known) + len(recorded.conflicts))
            outgoing = [(Outgoing(m.queue, m.encode(), m.id, m.priority), m.eta) for m in messages if m.id in recorded.fresh]
            # Same id, name and queue, never confirmed: send the body first recorded again.
            outgoing += [
                (Outgoing(u.queue, u.body, u.task_id, u.priority, republished=True), eta_of(u.body)) for u in recorded.republish
            ]
            stream.add(self._routed(outgoing))
            settle(at_least=MARK_CHUNK)
            return len(recorded.known)

        def validated(chunk: builtins.list[Mapping[str, Any] | TaskMessage]) -> builtins.list[TaskMessage]:
            messages: builtins.list[TaskMessage] = []
            for task in chunk:
                message = self.as_message(task, queue)
                ids.append(message.id)
                if message.id not in seen:
                    seen.add(message.id)
                    messages.append(message)
            return messages

        try:
            chunks = _chunks(tasks, self.batch_size)
            first = next(chunks, [])
            second = next(chunks, None)
            if second is None:  # one batch (a single submit, an HTTP request): no helper thread
                existing += record_and_publish(validated(first))
            else:
                # One helper thread records batch k (and hands it to the publisher) while this thread
                # validates batch k+1: the store insert is the slow step, so the others hide behind it.
                with ThreadPoolExecutor(max_workers=1, thread_name_prefix="taskq-submit") as recorder:
                    pending: deque[Future[int]] = deque()
                    try:
                        for chunk in chain([first, second], chunks):
                            messages = validated(chunk)
                            while len(pending) >= 2:
                                existing += pending.popleft().result()
                            pending.append(recorder.submit(record_and_publish, messages))
                    finally:
                        while pending:
                            existing += pending.popleft().result()
            stream.wait()
            settle()
        except (BrokerUnavailable, BrokerRejected) as failure:
            if isinstance(failure, BrokerRejected):
                self._declared.clear()  # a queue may have been deleted: declare again next time
            # What was not confirmed keeps its outbox entry: a resubmission or the sweeper sends it.
            self._settle_quietly(settle)
            raise
        except Exception:
            # An invalid task or a store failure mid-stream: what was handed to the broker before it is
            # still waited for and recorded as published, so that nothing is sent twice needlessly.
            self._settle_quietly(stream.wait)
            self._settle_quietly(settle)
            raise
        if conflicts:
            raise TaskConflict(
                f"{len(conflicts)} task id(s) exist as other tasks: {next(iter(conflicts.values()))}", sorted(conflicts)
            )
        return SubmitReceipt(ids=ids, published=stream.added, existing=existing)

    def _routed(self, items: builtins.list[tuple[Outgoing, datetime | None]]) -> builtins.list[Outgoing]:
        """Messages as published: a delayed one to its delay queue (declared first), the others unchanged."""
        if all(eta is None for _, eta in items):
            return [outgoing for outgoing, _ in items]
        return route(items, utcnow(), self._declare_delay)

    def _declare_delay(self, queue: str, bucket_ms: int) -> None:
        self._with_admin(lambda conn: declare_delay_queue(conn, queue, bucket_ms, self.settings.queue_type))

    def sweep(self, *, grace_s: float = DEFAULT_GRACE_S, limit: int = DEFAULT_LIMIT) -> SweepReport:
        """Publish again the tasks whose publish was never confirmed, older than `grace_s` (see `taskq.sweeper`)."""
        try:
            return sweep(
                self.store, self._publisher, self._ensure_queue, grace_s=grace_s, limit=limit, declare_delay=self._declare_delay
            )
        except BrokerRejected:
            self._declared.clear()
            raise

    @staticmethod
    def _settle_quietly(step: Callable[[], None]) -> None:
        """Best effort after a failure (the broker or the store may be down too): the first error stays the one raised."""
        with contextlib.suppress(TaskqError):
            step()

    def cancel(self, task_id: str, *, reason: str | None = None) -> CancelResult:
        """Cancel a task that is not final (queued, running or retrying): it ends `cancelled`.

        The cancel claims the outcome of the task's current attempt, so it races a worker finishing
        that attempt and exactly one wins (`cancelled` False, and the final state, when the worker
        did). Then the queue's workers are notified: a prefetched delivery is acked without running,
        a running one is killed (process pool) or flagged (`taskq.current().cancelled`, thread and
        asyncio pools). A notice the broker did not take (`notified` False) only delays that: the
        claim stands either way. `TaskNotFound` when there is no such task. See `taskq.core.cancel`.
        """
        result = self.store.cancel(task_id, utcnow(), reason=reason)
        if result is None:
            raise TaskNotFound(f"no task with id {task_id!r}")
        if not result.cancelled or result.attempt is None or not result.queue:
            return result
        notice = CancelNotice(task_id, result.attempt)
        queue = result.queue

        def announce(conn: pika.BlockingConnection) -> None:
            with translated("announcing a cancel", "the broker"):
                channel = conn.channel()
                try:
                    publish_notice(channel, queue, notice)
                finally:
                    if channel.is_open:
                        channel.close()

        try:
            self._with_admin(announce)
        except TaskqError:
            return result
        return CancelResult(task_id, True, result.state, result.attempt, queue, notified=True)

    # -- reading ------------------------------------------------------------------------------

    def status(self, task_id: str) -> dict[str, Any]:
        """The status document of one task (`id`, `state`, `attempts`, `result`, `error`, ...)."""
        document = self.store.get(task_id)
        if document is None:
            raise TaskNotFound(f"no task with id {task_id!r}")
        return _public(document)

    def wait(
        self,
        ids: str | Iterable[str],
        timeout: float | None = 60.0,
        *,
        progress: Progress | None = None,
        max_interval_s: float = WAIT_MAX_INTERVAL_S,
    ) -> dict[str, dict[str, Any]]:
        """Block until every task of `ids` is final; their final documents by id (as `status` shows them).

        Polls the store by `_id` (each task's state, its outcome claim when the document lags), first
        every 50 ms, then backing off to `max_interval_s`; only unfinished tasks are read again.
        `timeout` (seconds; None: at most `WAIT_LIMIT_S`) raises `WaitTimedOut` naming the pending ids and
        carrying the finished documents. An id with no document raises `TaskNotFound`. `progress(n)` is
        called as `n` more tasks finish.
        """
        wanted = [ids] if isinstance(ids, str) else list(dict.fromkeys(ids))
        limit = WAIT_LIMIT_S if timeout is None else max(0.0, min(float(timeout), WAIT_LIMIT_S))
        deadline = time.monotonic() + limit
        pending = set(wanted)
        finished: dict[str, dict[str, Any]] = {}
        interval = WAIT_FIRST_INTERVAL_S
        first = True
        while True:
            states = self.store.states_of(sorted(pending))
            if first:
                missing = sorted(pending - set(states))
                if missing:
                    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                    raise TaskNotFound(f"no task with id {missing[0]!r}{more}")
                first = False
            done = [task_id for task_id, state in states.items() if state.is_final]
            for task_id in done:
                document = self.store.get(task_id)
                if document is not None:
                    finished[task_id] = _public(document)
                pending.discard(task_id)
            if done and progress is not None:
                progress(len(done))
            if not pending:
                return {task_id: finished[task_id] for task_id in wanted if task_id in finished}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                order = [task_id for task_id in wanted if task_id in pending]
                summary = f"{len(order)} of {len(wanted)} task(s) not finished after {limit:g} s, e.g. {order[0]!r}"
                raise WaitTimedOut(summary, order, finished)
            time.sleep(min(interval, remaining))
            interval = min(interval * WAIT_BACKOFF, max(max_interval_s, WAIT_FIRST_INTERVAL_S))

    def list(
        self,
        *,
        queue: str | None = None,
        state: TaskState | str | None = None,
        limit: int = 50,
        name: str | None = None,
        since: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """The most recently updated tasks, optionally of one queue, state and/or task name, updated at or after `since`."""
        try:
            wanted = TaskState(state) if state is not None else None
        except ValueError:
            raise InvalidTask(f"unknown state {state!r}; one of {', '.join(s.value for s in TaskState)}") from None
        return [_public(d) for d in self.store.list(queue=queue, state=wanted, limit=limit, name=name, since=since)]

    def expire_finished(self, queue: str | None = None, *, ttl_s: int | None = None, limit: int = 1000) -> int:
        """Delete up to `limit` finished tasks of `queue` older than `ttl_s` (default `TASKQ_RESULT_TTL`), with their claims.

        What the operator's sweep does per TaskQueue; for stores without an operator. A TTL of 0 keeps everything.
        """
        ttl = self.settings.result_ttl if ttl_s is None else ttl_s
        if ttl <= 0:
            return 0
        return self.store.expire_finished(queue or self.settings.queue, utcnow() - timedelta(seconds=ttl), limit=limit)

    def workers(self, queue: str | None = None) -> builtins.list[dict[str, Any]]:
        """The workers' last heartbeats (`id`, `queue`, `inflight`, `processed`, `heartbeat_at`, `started_at`), by id.

        A worker that shut down cleanly removed its entry; one that died stays until the store forgets
        it, so `heartbeat_at` tells a live worker (every 2 s) from a gone one.
        """
        rows = [_public(d) for d in self.store.heartbeats()]
        return [row for row in rows if queue is None or row.get("queue") == queue]

    def retry(self, task_id: str) -> str:
        """Run a `failed` or `dead` task again as a fresh first attempt; how: `requeued` or `retried`.

        A dead task's own dead letter is sent back when it is still in the dead-letter queue (the
        `requeue_dead` path, so it is not requeued twice); otherwise the task is rebuilt from its
        document and recorded like a submission (outbox entry, then `queued`), then published.
        `TaskNotFound` without such a task, `TaskStateConflict` when it is in another state.
        """
        document = self.store.get(task_id)
        if document is None:
            raise TaskNotFound(f"no task with id {task_id!r}")
        state = document.get("state")
        queue = str(document.get("queue") or self.settings.queue)
        retryable = (TaskState.FAILED.value, TaskState.DEAD.value)
        if state not in retryable:
            raise TaskStateConflict(f"task {task_id!r} is {state}: only failed or dead tasks can be retried")
        if state == TaskState.DEAD.value and task_id in self.requeue_dead(queue, limit=RETRY_DEAD_SCAN, ids={task_id}).requeued:
            return "requeued"
        message = self.message(
            str(document["name"]),
            document.get("args") or [],
            document.get("kwargs") or {},
            queue=queue,
            priority=int(document.get("priority") or 0),
            task_id=task_id,
            max_retries=document.get("max_retries"),
            timeout=document.get("timeout"),
        )
        if not self.store.retry_finished(message, utcnow()):
            raise TaskStateConflict(f"task {task_id!r} changed state meanwhile: not retried")
        self._ensure_queue(queue)
        stream = self._publisher.stream()
        stream.add([Outgoing(message.queue, message.encode(), message.id, message.priority)])
        stream.wait()
        self.store.mark_published(stream.take_confirmed())
        return "retried"

    def queue_depth(self, name: str | None = None) -> int:
        """Ready messages of a queue: one passive declare, no store query (cheap enough to poll)."""
        name = name or self.settings.queue
        depth = self._with_admin(lambda conn: admin.queue_depth(conn, name))
        if depth is None:
            raise QueueNotFound(f"no queue named {name!r}")
        return depth.messages

    def queue_info(self, name: str | None = None) -> QueueInfo:
        """Ready messages, consumers, dead letters and task counts by state of one queue."""
        name = name or self.settings.queue
        depth = self._with_admin(lambda conn: admin.queue_depth(conn, name))
        if depth is None:
            raise QueueNotFound(f"no queue named {name!r}")
        dead = self._with_admin(lambda conn: admin.queue_depth(conn, dead_queue(name)))
        return QueueInfo(
            name=name,
            ready=depth.messages,
            consumers=depth.consumers,
            dead=dead.messages if dead is not None else 0,
            counts=self.store.counts_by_state(name),
        )

    # -- administration -----------------------------------------------------------------------

    def dead(self, queue: str | None = None, *, limit: int = 50) -> builtins.list[DeadLetter]:
        """Up to `limit` dead letters of a queue, oldest first; they stay in the dead-letter queue."""
        name = queue or self.settings.queue
        return self._with_admin(lambda conn: admin.peek_dead(conn, name, limit))

    def requeue_dead(self, queue: str | None = None, *, limit: int = 1000, ids: builtins.set[str] | None = None) -> RequeueReport:
        """Send dead letters back to their work queue as fresh first attempts; malformed ones stay.

        A task whose document is `dead` is reset to `queued` first (an explicit operator action, the
        only way out of a final state); a task that meanwhile finished otherwise is left dead-lettered.
        With `ids`, only those tasks' letters are sent (among the first `limit`); the others stay.
        """
        name = queue or self.settings.queue

        def prepare(letter: DeadLetter) -> bytes | None:
            assert letter.message is not None
            task_id = letter.message.id
            if ids is not None and task_id not in ids:
                return None
            if not self.store.requeue_dead(task_id, utcnow()):
                document = self.store.get(task_id)
                if document is not None and document.get("state") != TaskState.QUEUED.value:
                    return None
            return letter.message.model_copy(update={"attempt": 1}).encode()

        self._ensure_queue(name)
        return self._with_admin(lambda conn: admin.requeue_dead(conn, name, limit, prepare))

    def purge(self, queue: str | None = None, *, include_dead: bool = True, include_documents: bool = True) -> PurgeReport:
        """Drop the waiting messages of a queue (ready and delayed; and its dead letters), and the documents of its tasks."""
        name = queue or self.settings.queue
        messages = self._with_admin(lambda conn: admin.purge(conn, name, include_dead=include_dead))
        if not messages:
            raise QueueNotFound(f"no queue named {name!r}")
        documents = self.store.delete_queue_tasks(name) if include_documents else 0
        return PurgeReport(messages=messages, documents=documents)
