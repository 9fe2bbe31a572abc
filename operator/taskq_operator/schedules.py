"""Periodic tasks in the operator: submit the due slots of a TaskQueue's `spec.schedules`, report them in its status.

Called by the kopf timer in `taskq_operator.handlers` (in a worker thread: everything here blocks),
which kopf runs only on the active replica under peering (and which also stands by when the scaler
does). The slot arithmetic is pure (`taskq_operator.core.schedules`). A slot is submitted as the
producer does it (`TaskStore.record_submission`: outbox entry and `queued` document first, then a
confirmed publish, then `mark_published`), under its derived task id: submitting an id again
publishes nothing new, so a restart, a second replica or a replay of a tick never enqueues a slot
twice; a publish whose confirm was lost is sent again by the next tick (or the outbox sweep).
A schedule whose submit failed keeps its last state and says why in `status.schedules[].error`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from prometheus_client import Counter

from taskq.broker.publisher import ConfirmingPublisher, Outgoing
from taskq.core.message import TaskMessage
from taskq.errors import InvalidTask, TaskqError
from taskq.store.mongo import TaskStore
from taskq.submission import build_message
from taskq_operator.cache import SecretCache
from taskq_operator.core.schedules import (
    Plan,
    Schedule,
    ScheduleError,
    plan,
    slot_task_id,
    states_from_status,
    status_entry,
)
from taskq_operator.core.spec import TaskQueueSpec
from taskq_operator.observe import Observers, Target, target_for

log = logging.getLogger("taskq_operator.schedules")
ENQUEUED = Counter(
    "taskq_operator_scheduled_total", "Slots of periodic tasks submitted (new task ids)", ("namespace", "taskqueue")
)


class Scheduler:
    """Due slots of every TaskQueue's schedules; one store client and one publisher per target, reused."""

    def __init__(self, secrets: SecretCache, observers: Observers) -> None:
        self._secrets = secrets
        self._observers = observers
        self._stores: dict[tuple[str, str], TaskStore] = {}
        self._publishers: dict[str, ConfirmingPublisher] = {}
        self._declared: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def tick(self, spec: TaskQueueSpec, status: Mapping[str, Any] | None, now: datetime) -> list[dict[str, Any]] | None:
        """Submit what is due for `spec` at `now`; the new `status.schedules`, or None when it is unchanged."""
        previous = list((status or {}).get("schedules") or [])
        if not spec.schedules:
            return [] if previous else None
        states = states_from_status(status)
        target: Target | None = None
        entries: list[dict[str, Any]] = []
        for schedule in spec.schedules:
            state = states.get(schedule.name)
            try:
                result = plan(schedule, state, now)
            except ScheduleError as exc:
                entries.append({"name": schedule.name, "error": str(exc)})
                continue
            error = None
            if result.slots:
                try:
                    target = target or self._target(spec)
                    self._submit(spec, target, schedule, result, now)
                except TaskqError as exc:
                    error = f"slots not submitted yet: {exc}"
                    log.warning("TaskQueue %s/%s schedule %s: %s", spec.namespace, spec.name, schedule.name, error)
                    kept = state if state is not None else result.state
                    result = Plan((), kept, result.next_slot)
            entries.append(status_entry(schedule, result, spec.name, error))
        return None if entries == previous else entries

    def _target(self, spec: TaskQueueSpec) -> Target:
        return target_for(
            spec.queue,
            spec.namespace,
            spec.broker_secret,
            self._secrets.get(spec.namespace, spec.broker_secret),
            spec.store_secret,
            self._secrets.get(spec.namespace, spec.store_secret),
            spec.database,
        )

    def _submit(self, spec: TaskQueueSpec, target: Target, schedule: Schedule, result: Plan, now: datetime) -> None:
        messages = [self._message(spec, schedule, slot, now) for slot in result.slots]
        key = (target.amqp_url, spec.queue)
        if key not in self._declared:
            self._observers.broker(target).declare(
                spec.queue,
                max_priority=spec.tasks.max_priority,
                task_timeout_s=spec.tasks.timeout_s,
                queue_type=spec.tasks.queue_type,
                max_deliveries=spec.tasks.max_deliveries,
            )
            self._declared.add(key)
        store, publisher = self._clients(target)
        recorded = store.record_submission(messages, now)
        outgoing = [Outgoing(m.queue, m.encode(), m.id, m.priority) for m in messages if m.id in recorded.fresh]
        outgoing += [Outgoing(u.queue, u.body, u.task_id, u.priority, republished=True) for u in recorded.republish]
        if outgoing:
            publisher.publish(outgoing)
            store.mark_published([o.message_id for o in outgoing])
        if recorded.conflicts:
            raise TaskqError(f"task id {next(iter(recorded.conflicts))!r} exists as another task")
        if recorded.fresh:
            ENQUEUED.labels(spec.namespace, spec.name).inc(len(recorded.fresh))
            log.info(
                "TaskQueue %s/%s schedule %s: enqueued %s",
                spec.namespace,
                spec.name,
                schedule.name,
                ", ".join(sorted(recorded.fresh)),
            )

    @staticmethod
    def _message(spec: TaskQueueSpec, schedule: Schedule, slot: datetime, now: datetime) -> TaskMessage:
        try:
            return build_message(
                schedule.task,
                args=list(schedule.args),
                kwargs=dict(schedule.kwargs),
                queue=spec.queue,
                task_id=slot_task_id(spec.name, schedule.name, slot),
                max_retries=None,
                timeout=None,
                now=now,
            )
        except InvalidTask as exc:  # an argument the store cannot hold, an unusable task name
            raise TaskqError(f"schedule {schedule.name}: invalid task: {exc}") from None

    def _clients(self, target: Target) -> tuple[TaskStore, ConfirmingPublisher]:
        with self._lock:
            store = self._stores.get(target.store_key)
            if store is None:
                store = self._stores[target.store_key] = TaskStore(target.mongodb_uri, target.database, timeout_ms=5000)
            publisher = self._publishers.get(target.amqp_url)
            if publisher is None:
                publisher = self._publishers[target.amqp_url] = ConfirmingPublisher(
                    target.amqp_url, name="taskq-operator-schedules"
                )
            return store, publisher

    def close(self) -> None:
        with self._lock:
            stores: Sequence[TaskStore] = list(self._stores.values())
            publishers: Sequence[ConfirmingPublisher] = list(self._publishers.values())
            self._stores.clear()
            self._publishers.clear()
        for store in stores:
            store.close()
        for publisher in publishers:
            publisher.close()
