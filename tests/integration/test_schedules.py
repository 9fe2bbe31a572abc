"""Periodic tasks on real servers: the operator's `Scheduler` against RabbitMQ and the store, across restarts and replays.

The operator's timer calls `Scheduler.tick(spec, status, now)` and writes the entries it returns into
`status.schedules`; here the status is carried by hand and the clock is given, so a restart is a fresh
`Scheduler` reading the last status, and a replay (a second replica, or a tick whose status patch was
lost) ticks again from an older status. Each slot must be one task document and one message.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from worker_procs import Services, drain_queue

from taskq.core.states import TaskState
from taskq.store.mongo import TaskStore
from taskq_dev import manifests
from taskq_operator.cache import SecretCache
from taskq_operator.core.schedules import slot_task_id
from taskq_operator.core.spec import parse_taskqueue
from taskq_operator.observe import Observers
from taskq_operator.schedules import Scheduler

T0 = datetime(2026, 12, 2, 3, 0, 20, tzinfo=UTC)


def _scheduler(svc: Services) -> Scheduler:
    secrets = SecretCache(lambda _ns, _name: {"amqp-url": svc.amqp_url, "mongodb-uri": svc.mongodb_uri})
    return Scheduler(secrets, Observers())


def _status(entries: list[dict[str, Any]] | None, previous: dict[str, Any]) -> dict[str, Any]:
    return previous if entries is None else {"schedules": entries}


def test_one_task_per_slot_across_restarts_and_replays(svc: Services, store: TaskStore) -> None:
    body = manifests.taskqueue(
        "tq",
        queue=svc.queue,
        database=svc.database,
        schedules=[{"name": "minutely", "cron": "* * * * *", "task": "echo", "args": [1], "missedSlots": "catchUp"}],
    )
    spec = parse_taskqueue(body)
    first = _scheduler(svc)
    status = _status(first.tick(spec, {}, T0), {})  # first seen: anchors, enqueues nothing
    assert status["schedules"][0]["since"] == "2026-12-02T03:00:20Z" and "lastSlot" not in status["schedules"][0]

    before = status
    status = _status(first.tick(spec, status, T0 + timedelta(minutes=2, seconds=5)), status)  # slots 03:01, 03:02
    second = _scheduler(svc)  # a second replica replaying the tick from the older status
    assert second.tick(spec, before, T0 + timedelta(minutes=2, seconds=6)) == status["schedules"]
    first.close()

    restarted = _scheduler(svc)  # the operator restarted: only the status is left
    older = status
    status = _status(restarted.tick(spec, status, T0 + timedelta(minutes=5)), status)  # 03:03 .. 03:05
    assert restarted.tick(spec, status, T0 + timedelta(minutes=5, seconds=10)) is None  # nothing new: no patch
    again = _scheduler(svc)  # restarted again, and its first tick replays from the status before the last patch
    assert again.tick(spec, older, T0 + timedelta(minutes=5, seconds=20)) == status["schedules"]
    for scheduler in (second, restarted, again):
        scheduler.close()

    expected = [slot_task_id("tq", "minutely", datetime(2026, 12, 2, 3, m, tzinfo=UTC)) for m in range(1, 6)]
    entry = status["schedules"][0]
    assert entry["lastSlot"] == "2026-12-02T03:05:00Z" and entry["lastTaskId"] == expected[-1]
    assert entry["nextSlot"] == "2026-12-02T03:06:00Z"
    documents = {d["_id"]: d for d in store.tasks.find({"_id": {"$in": expected}})}
    assert sorted(documents) == expected
    assert all(d["state"] == TaskState.QUEUED.value and d["name"] == "echo" and d["args"] == [1] for d in documents.values())
    assert store.tasks.count_documents({}) == len(expected)
    messages = [json.loads(body)["id"] for _, body in drain_queue(svc.amqp_url, svc.queue)]
    assert sorted(messages) == expected  # one message per slot, none twice
    assert store.outbox.count_documents({}) == 0  # every publish confirmed
