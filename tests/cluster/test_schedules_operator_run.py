"""Periodic tasks end to end: a real `taskq-operator` (kopf timer) on the local control plane enqueues a TaskQueue's
schedule into the real RabbitMQ and store, one task per slot, across a SIGKILL and a restart of the operator."""

from __future__ import annotations

import json
import signal
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from taskq.broker.connection import connect
from taskq.store.mongo import TaskStore
from taskq_dev import manifests
from taskq_dev.operator_process import running_operator
from taskq_dev.ports import poll
from taskq_operator.core.schedules import slot_task_id

pytestmark = [pytest.mark.cluster, pytest.mark.services, pytest.mark.slow]

CRD = Path(__file__).resolve().parents[2] / "crds" / "taskqueue.yaml"
ENV_INTERVAL = {"TASKQ_SCHEDULE_INTERVAL_SECONDS": "1"}


@pytest.fixture(scope="module")
def namespace(cluster: Any) -> Iterator[str]:
    cluster.kubectl("apply", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/taskqueues.taskq.io")
    name = f"tq-sched-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _apply(cluster: Any, body: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))


def _schedule_status(cluster: Any, namespace: str, name: str) -> dict[str, Any]:
    result = cluster.kubectl("get", "-n", namespace, "taskqueue", name, "-o", "json", check=False)
    if result.returncode != 0:
        return {}
    entries = (json.loads(result.stdout).get("status") or {}).get("schedules") or [{}]
    return dict(entries[0])


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_schedule_enqueues_one_task_per_slot_across_operator_restarts(
    cluster: Any, namespace: str, tmp_path: Path, amqp_url: str, mongodb_uri: str, database_name: str, queue_name: str
) -> None:
    for secret, data in (("rabbit", {"amqp-url": amqp_url}), ("mongo", {"mongodb-uri": mongodb_uri})):
        _apply(
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
            _apply(cluster, body)
            anchored = poll(
                lambda: _schedule_status(cluster, namespace, "cron").get("since"), timeout=30, what="the schedule to be anchored"
            )
            first_slot = poll(
                lambda: _schedule_status(cluster, namespace, "cron").get("lastSlot"),
                timeout=75,
                interval=0.5,
                what="the first slot",
            )
            first.send_signal(signal.SIGKILL)  # no clean stop: whatever it was doing is replayed
            first.wait(10)
        with running_operator(namespace, logs[1], env=env, start_timeout=30, stop_timeout=15):
            second_slot = poll(
                lambda: (s := _schedule_status(cluster, namespace, "cron").get("lastSlot")) != first_slot and s,
                timeout=75,
                interval=0.5,
                what="the next slot after a restart",
            )
        with running_operator(namespace, logs[2], env=env, start_timeout=30, stop_timeout=15):
            entry = poll(
                lambda: (s := _schedule_status(cluster, namespace, "cron")).get("nextSlot", "") > second_slot and s,
                timeout=30,
                interval=0.5,
                what="the restarted operator's status",
            )
    finally:
        for log in logs:
            if log.exists():
                sys.stderr.write(log.read_text(errors="replace")[-2000:])
    assert _when(first_slot) > _when(anchored)
    assert (_when(second_slot) - _when(first_slot)).total_seconds() == 60
    last = _when(entry["lastSlot"])
    minutes = int((last - _when(first_slot)).total_seconds() // 60)
    expected = [slot_task_id("cron", "minutely", _when(first_slot) + timedelta(minutes=m)) for m in range(minutes + 1)]
    assert entry["lastTaskId"] == expected[-1]
    store = TaskStore(mongodb_uri, database_name)
    try:
        documents = sorted(d["_id"] for d in store.tasks.find({"name": "echo"}, {"_id": 1}))
    finally:
        store.close()
    assert documents == expected  # every slot once, none twice, none missed
    assert sorted(_drain(amqp_url, queue_name)) == expected  # one message per slot
    print(f"anchored {anchored}; slots {', '.join(documents)}")


def _drain(amqp_url: str, queue: str) -> list[str]:
    connection = connect(amqp_url, name="schedule-test")
    try:
        channel = connection.channel()
        ids = []
        for _ in range(1000):
            method, _properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                break
            ids.append(json.loads(body)["id"])
        return ids
    finally:
        connection.close()
