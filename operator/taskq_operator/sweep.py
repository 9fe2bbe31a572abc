"""The outbox sweep in the operator: republish tasks whose producer never saw the broker's confirm.

Each tick the scaler `offer`s the TaskQueues it observed (spec and resolved `Target`); per store
(MongoDB URI and database) a sweep runs at most every `interval_s` (`core.sweep.due_stores`) in one
background thread, so a slow store or broker never delays scaling and at most one sweep runs at a
time. A store's sweep takes at most `limit` outbox entries older than `grace_s`, per broker, for the
queues of the TaskQueues known on that store (`taskq.sweeper.sweep`), declaring each queue as the
workers of its TaskQueue do. On FerretDB the selection scans the outbox collection (see
`taskq.sweeper`). Republished tasks are logged and counted in `taskq_operator_republished_total`.

Every `stuck_interval_s` (5 min) per store the same thread also sweeps for stuck tasks
(`taskq.recovery`: `running` with its worker gone, `retrying` whose retry never came, both long
unwritten): published again, or given up as `dead` (`Lost`) after `max_recoveries`; counted in
`taskq_operator_stuck_total{outcome}`. That selection scans the tasks collection on FerretDB,
hence the longer interval.

Every `expire_interval_s` (1 h, `TASKQ_EXPIRE_INTERVAL_SECONDS`) per store it applies retention: the
finished tasks of each queue older than its TaskQueue's `spec.tasks.resultTTLSeconds` (7 days by
default; 0 keeps them) and their outcome claims are deleted, at most `expire_limit` (1000,
`TASKQ_EXPIRE_LIMIT`) per queue and run; counted in `taskq_operator_expired_total`. FerretDB 1.x
has no TTL index, hence a sweep rather than `expireAfterSeconds`.

Created by `taskq_operator.scaler.Scaler`; closed with it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import pika.exceptions
from prometheus_client import Counter

from taskq.broker import admin
from taskq.broker.connection import connect
from taskq.broker.delayed import declare_delay_queue
from taskq.broker.publisher import ConfirmingPublisher
from taskq.broker.topology import declare_queue_topology
from taskq.core.limits import DEFAULT_RESULT_TTL_S
from taskq.core.message import TaskMessage, utcnow
from taskq.core.stuck import StuckPolicy
from taskq.errors import TaskqError
from taskq.recovery import recover_stuck
from taskq.store.mongo import TaskStore
from taskq.sweeper import DEFAULT_GRACE_S, DEFAULT_LIMIT, sweep
from taskq_operator.core.spec import TaskQueueSpec
from taskq_operator.core.sweep import SWEEP_INTERVAL_S, due_stores
from taskq_operator.observe import Target

log = logging.getLogger("taskq_operator.sweep")
REPUBLISHED = Counter(
    "taskq_operator_republished_total",
    "Tasks the outbox sweep published again (their producer never saw the confirm)",
    ("namespace", "taskqueue"),
)
SWEEP_ERRORS = Counter("taskq_operator_sweep_errors_total", "Outbox sweeps that failed on the store or the broker")
STUCK = Counter(
    "taskq_operator_stuck_total",
    "Stuck tasks the sweep published again (recovered) or gave up (lost)",
    ("namespace", "taskqueue", "outcome"),
)
STUCK_INTERVAL_S = 300.0
EXPIRE_INTERVAL_S = 3600.0
EXPIRE_LIMIT = 1000
EXPIRED = Counter(
    "taskq_operator_expired_total",
    "Finished tasks deleted past their TaskQueue's result TTL.",
    ("namespace", "taskqueue"),
)
StoreKey = tuple[str, str]


@dataclass(frozen=True)
class SweptQueue:
    """One TaskQueue's queue as the sweep needs it: where it lives and how its workers declare it."""

    namespace: str
    name: str
    queue: str
    amqp_url: str
    store_key: StoreKey
    max_priority: int
    task_timeout_s: float
    queue_type: str
    max_deliveries: int
    result_ttl_s: int = DEFAULT_RESULT_TTL_S

    @classmethod
    def of(cls, spec: TaskQueueSpec, target: Target) -> SweptQueue:
        return cls(
            namespace=spec.namespace,
            name=spec.name,
            queue=spec.queue,
            amqp_url=target.amqp_url,
            store_key=target.store_key,
            max_priority=spec.tasks.max_priority,
            task_timeout_s=float(spec.tasks.timeout_s),
            queue_type=spec.tasks.queue_type,
            max_deliveries=spec.tasks.max_deliveries,
            result_ttl_s=spec.tasks.result_ttl_s,
        )


class Sweeper:
    """Per-store outbox sweeps, at most one running, started from the scaler's tick."""

    def __init__(
        self,
        *,
        interval_s: float = SWEEP_INTERVAL_S,
        grace_s: float = DEFAULT_GRACE_S,
        limit: int = DEFAULT_LIMIT,
        clock: Callable[[], float] = time.monotonic,
        stuck: StuckPolicy | None = None,
        stuck_interval_s: float = STUCK_INTERVAL_S,
        expire_interval_s: float = EXPIRE_INTERVAL_S,
        expire_limit: int = EXPIRE_LIMIT,
    ) -> None:
        self.interval_s = interval_s
        self.grace_s = grace_s
        self.limit = limit
        self.clock = clock
        self.stuck = stuck or StuckPolicy()
        self.stuck_interval_s = stuck_interval_s
        self._last_stuck: dict[StoreKey, float] = {}
        self.expire_interval_s = expire_interval_s
        self.expire_limit = expire_limit
        self._last_expiry: dict[StoreKey, float] = {}
        self._known: dict[tuple[str, str], SweptQueue] = {}
        self._last_run: dict[StoreKey, float] = {}
        self._running: Future[int] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="taskq-operator-sweep")
        self._lock = threading.Lock()
        # Used by the sweep thread only.
        self._stores: dict[StoreKey, TaskStore] = {}
        self._publishers: dict[str, ConfirmingPublisher] = {}
        self._declared: set[tuple[str, str]] = set()

    @classmethod
    def from_env(cls) -> Sweeper:
        """A sweeper set by `TASKQ_SWEEP_GRACE_SECONDS` (60), `TASKQ_SWEEP_INTERVAL_SECONDS` (30), `TASKQ_SWEEP_LIMIT` (500),
        `TASKQ_STUCK_AFTER_SECONDS` (900), `TASKQ_STUCK_INTERVAL_SECONDS` (300), `TASKQ_STUCK_MAX_RECOVERIES` (3)."""
        try:
            stuck_after = float(os.environ.get("TASKQ_STUCK_AFTER_SECONDS", StuckPolicy.running_after_s))
            return cls(
                grace_s=float(os.environ.get("TASKQ_SWEEP_GRACE_SECONDS", DEFAULT_GRACE_S)),
                interval_s=float(os.environ.get("TASKQ_SWEEP_INTERVAL_SECONDS", SWEEP_INTERVAL_S)),
                limit=int(os.environ.get("TASKQ_SWEEP_LIMIT", DEFAULT_LIMIT)),
                stuck=StuckPolicy(
                    running_after_s=stuck_after,
                    retrying_after_s=stuck_after,
                    max_recoveries=int(os.environ.get("TASKQ_STUCK_MAX_RECOVERIES", StuckPolicy.max_recoveries)),
                ),
                stuck_interval_s=float(os.environ.get("TASKQ_STUCK_INTERVAL_SECONDS", STUCK_INTERVAL_S)),
                expire_interval_s=float(os.environ.get("TASKQ_EXPIRE_INTERVAL_SECONDS", EXPIRE_INTERVAL_S)),
                expire_limit=int(os.environ.get("TASKQ_EXPIRE_LIMIT", EXPIRE_LIMIT)),
            )
        except ValueError as exc:
            raise ValueError(f"invalid TASKQ_SWEEP_* setting: {exc}") from None

    def offer(self, observed: Sequence[tuple[TaskQueueSpec, Target]], present: set[tuple[str, str]] | None = None) -> None:
        """Note the TaskQueues observed this tick and start a sweep of the stores that are due (not waiting for it).

        `present` (namespace, name) of every TaskQueue that still exists: the others are forgotten.
        """
        for spec, target in observed:
            self._known[(spec.namespace, spec.name)] = SweptQueue.of(spec, target)
        if present is not None:
            for key in set(self._known) - present:
                del self._known[key]
        with self._lock:
            if self._running is not None and not self._running.done():
                return
        now = self.clock()
        queues = list(self._known.values())
        due = due_stores(self._last_run, (q.store_key for q in queues), now, self.interval_s)
        if not due:
            return
        for store_key in due:
            self._last_run[store_key] = now
        work = [q for q in queues if q.store_key in due]
        with self._lock:
            self._running = self._pool.submit(self.sweep_now, work)

    def wait(self, timeout: float) -> int | None:
        """Wait for the sweep in flight (tests); its republished count, or None when none was started."""
        with self._lock:
            running = self._running
        return running.result(timeout=timeout) if running is not None else None

    def sweep_now(self, queues: Sequence[SweptQueue]) -> int:
        """Sweep the stores of `queues` now (blocking); how many tasks were republished. Never raises taskq errors."""
        groups: dict[tuple[StoreKey, str], list[SweptQueue]] = {}
        for swept in queues:
            groups.setdefault((swept.store_key, swept.amqp_url), []).append(swept)
        total = 0
        for (store_key, amqp_url), members in groups.items():
            by_queue = {m.queue: m for m in members}
            try:
                store = self._store(store_key)
                publisher = self._publishers.setdefault(amqp_url, ConfirmingPublisher(amqp_url, name="taskq-operator-sweep"))
                report = sweep(
                    store,
                    publisher,
                    functools.partial(self._declare_named, by_queue),
                    grace_s=self.grace_s,
                    limit=self.limit,
                    queues=set(by_queue),
                    declare_delay=functools.partial(self._declare_delay, by_queue),
                )
            except TaskqError as exc:
                SWEEP_ERRORS.inc()
                log.warning("outbox sweep of database %s failed: %s", store_key[1], exc)
                continue
            for name, count in report.republished_by_queue.items():
                member = by_queue[name]
                REPUBLISHED.labels(member.namespace, member.name).inc(count)
                log.warning(
                    "TaskQueue %s/%s: republished %d task(s) whose publish was never confirmed",
                    member.namespace,
                    member.name,
                    count,
                )
            total += len(report.republished)
            self._sweep_stuck(store_key, amqp_url, by_queue)
            self._expire(store_key, by_queue)
        return total

    def _expire(self, store_key: StoreKey, by_queue: dict[str, SweptQueue]) -> None:
        """Retention: delete finished tasks older than their TaskQueue's `resultTTLSeconds`, when `expire_interval_s` has passed.

        FerretDB 1.x has no TTL index (it refuses `expireAfterSeconds`), so the sweep deletes them, at
        most `expire_limit` per queue and run (a backlog of expired tasks goes over several runs).
        """
        now = self.clock()
        last = self._last_expiry.get(store_key)
        if last is not None and now - last < self.expire_interval_s:
            return
        self._last_expiry[store_key] = now
        wall = utcnow()
        for name, member in sorted(by_queue.items()):
            if member.result_ttl_s <= 0:
                continue
            try:
                deleted = self._store(store_key).expire_finished(
                    name, wall - timedelta(seconds=member.result_ttl_s), limit=self.expire_limit
                )
            except TaskqError as exc:
                SWEEP_ERRORS.inc()
                log.warning("expiring finished tasks of queue %s failed: %s", name, exc)
                continue
            if deleted:
                EXPIRED.labels(member.namespace, member.name).inc(deleted)
                log.info(
                    "TaskQueue %s/%s: deleted %d finished task(s) past the result TTL", member.namespace, member.name, deleted
                )

    def _sweep_stuck(self, store_key: StoreKey, amqp_url: str, by_queue: dict[str, SweptQueue]) -> None:
        """The stuck-task sweep of one store and broker, when `stuck_interval_s` has passed for the store."""
        now = self.clock()
        last = self._last_stuck.get(store_key)
        if last is not None and now - last < self.stuck_interval_s:
            return
        self._last_stuck[store_key] = now

        def dead_letter(message: TaskMessage, reason: str) -> None:
            connection = connect(amqp_url, name="taskq-operator-stuck-sweep")
            try:
                admin.dead_letter(connection, message.queue, message, reason)
            finally:
                with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                    connection.close()

        try:
            report = recover_stuck(
                self._store(store_key),
                self._publishers.setdefault(amqp_url, ConfirmingPublisher(amqp_url, name="taskq-operator-sweep")),
                functools.partial(self._declare_named, by_queue),
                dead_letter,
                queues=sorted(by_queue),
                policy=self.stuck,
                limit=self.limit,
            )
        except TaskqError as exc:
            SWEEP_ERRORS.inc()
            log.warning("stuck-task sweep of database %s failed: %s", store_key[1], exc)
            return
        for outcome, ids in (("recovered", report.recovered), ("lost", report.lost)):
            for task_id in ids:
                queue = report.queues.get(task_id)
                member = by_queue.get(queue) if queue is not None else None
                if member is not None:
                    STUCK.labels(member.namespace, member.name, outcome).inc()

    def _store(self, key: StoreKey) -> TaskStore:
        store = self._stores.get(key)
        if store is None:
            store = self._stores[key] = TaskStore(key[0], key[1], timeout_ms=3000)
        return store

    def _declare_named(self, members: dict[str, SweptQueue], name: str) -> None:
        self._declare(members[name])

    def _declare_delay(self, members: dict[str, SweptQueue], name: str, bucket_ms: int) -> None:
        """The delay queue of a delayed task found in the outbox (its message goes there, not to the work queue)."""
        member = members[name]
        connection = connect(member.amqp_url, name="taskq-operator-sweep-admin")
        try:
            declare_delay_queue(connection, member.queue, bucket_ms, member.queue_type)
        finally:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):  # already broken: nothing to close
                connection.close()

    def _declare(self, queue: SweptQueue) -> None:
        if (queue.amqp_url, queue.queue) in self._declared:
            return
        connection = connect(queue.amqp_url, name="taskq-operator-sweep-admin")
        try:
            declare_queue_topology(
                connection,
                queue.queue,
                max_priority=queue.max_priority,
                task_timeout_s=queue.task_timeout_s,
                queue_type=queue.queue_type,
                max_deliveries=queue.max_deliveries,
            )
        finally:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):  # already broken: nothing to close
                connection.close()
        self._declared.add((queue.amqp_url, queue.queue))

    def close(self) -> None:
        """Wait briefly for a sweep in flight, then close the connections."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        for publisher in self._publishers.values():
            publisher.close()
        for store in self._stores.values():
            store.close()
        self._publishers.clear()
        self._stores.clear()
