"""Periodic tasks end to end: a real `taskq-operator` (kopf timer) on the local control plane enqueues a TaskQueue's
schedule into the real RabbitMQ and store, one task per slot, across a SIGKILL and a restart of the operator."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kube_support import apply, drain_ids, fresh_namespace, parse_time, schedule_status

from taskq.store.mongo import TaskStore
from taskq_dev import manifests
from taskq_dev.operator_process import running_operator
from taskq_dev.ports import poll
from taskq_operator.core.schedules import slot_task_id

pytestmark = [pytest.mark.cluster, pytest.mark.services, pytest.mark.slow]

ENV_INTERVAL = {"TASKQ_SCHEDULE_INTERVAL_SECONDS": "1"}


@pytest.fixture(scope="module")
def namespace(cluster: Any) -> Iterator[str]:
    with fresh_namespace(cluster, "tq-sched") as name:
        yield name


def test_schedule_enqueues_one_task_per_slot_across_operator_restarts(
    cluster: Any, namespace: str, tmp_path: Path, amqp_url: str, mongodb_uri: str, database_name: str, queue_name: str
) -> None:
    for secret, data in (("rabbit", {"amqp-url": amqp_url}), ("mongo", {"mongodb-uri": mongodb_uri})):
        apply(
            cluster,
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret, "namespace": namespace}, "stringData": data},
        )
    schedule = {"name": "minutely", "cron": "* * * * *", "task": "echo", "args": ["tick"], "missedSlots": "catchUp"}
    body = manifests.taskqueue(
        "cron", namespace, queue=queue_name, database=database_name, schedules=[schedule], scaling={"maxReplicas": 1}
    )
    env = {"KUBECONFIG": str(cluster.kubeconfig), **ENV_INTERVAL}
    logs = [tmp_path / "operator-1.log", tmp_path / "operator-2.log", tmp_path / "operator-3.log"]
    try:
        with running_operator(namespace, logs[0], env=env, start_timeout=30, stop_timeout=15) as first:
            apply(cluster, body)
            anchored = poll(
                lambda: schedule_status(cluster, namespace, "cron").get("since"), timeout=30, what="the schedule to be anchored"
            )
            first_slot = poll(
                lambda: schedule_status(cluster, namespace, "cron").get("lastSlot"),
                timeout=75,
                interval=0.5,
                what="the first slot",
            )
            first.send_signal(signal.SIGKILL)  # no clean stop: whatever it was doing is replayed
            first.wait(10)
        with running_operator(namespace, logs[1], env=env, start_timeout=30, stop_timeout=15):
            second_slot = poll(
                lambda: (s := schedule_status(cluster, namespace, "cron").get("lastSlot")) != first_slot and s,
                timeout=75,
                interval=0.5,
                what="the next slot after a restart",
            )
        with running_operator(namespace, logs[2], env=env, start_timeout=30, stop_timeout=15):
            entry = poll(
                lambda: (s := schedule_status(cluster, namespace, "cron")).get("nextSlot", "") > second_slot and s,
                timeout=30,
                interval=0.5,
                what="the restarted operator's status",
            )
    finally:
        for log in logs:
            if log.exists():
                sys.stderr.write(log.read_text(errors="replace")[-2000:])
    assert parse_time(first_slot) > parse_time(anchored)
    assert (parse_time(second_slot) - parse_time(first_slot)).total_seconds() == 60
    last = parse_time(entry["lastSlot"])
    minutes = int((last - parse_time(first_slot)).total_seconds() // 60)
    expected = [slot_task_id("cron", "minutely", parse_time(first_slot) + timedelta(minutes=m)) for m in range(minutes + 1)]
    assert entry["lastTaskId"] == expected[-1]
    store = TaskStore(mongodb_uri, database_name)
    try:
        documents = sorted(d["_id"] for d in store.tasks.find({"name": "echo"}, {"_id": 1}))
    finally:
        store.close()
    assert documents == expected  # every slot once, none twice, none missed
    assert sorted(drain_ids(amqp_url, queue_name, name="schedule-test")) == expected  # one message per slot
    print(f"anchored {anchored}; slots {', '.join(documents)}")

