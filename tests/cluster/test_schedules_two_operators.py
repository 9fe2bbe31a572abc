"""Periodic tasks under two operator replicas with kopf peering: two real `taskq-operator` processes
on the local control plane, one TaskQueue with a schedule every minute (cron has minute resolution),
the active replica SIGKILLed after the first slot and replaced by a third process. Every slot, over a
bounded run of three slots, is enqueued exactly once: one task document and one message per slot
(ids derived from the slot), one `enqueued` log line per slot across all replicas."""

from __future__ import annotations

import re
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
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

REPO = Path(__file__).resolve().parents[2]
PEERING_CRD = REPO / "charts" / "taskq" / "crds" / "kopf-peering.yaml"
PEERING = "taskq-sched-ha"
SLOTS = 3
ENQUEUED = re.compile(r"schedule every: enqueued (\S.*)$", re.MULTILINE)


@pytest.fixture(scope="module")
def namespace(cluster: Any) -> Iterator[str]:
    with fresh_namespace(cluster, "tq-sched2") as name:
        cluster.kubectl("apply", "-f", str(PEERING_CRD))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/kopfpeerings.kopf.dev")
        yield name


def _enqueued(path: Path) -> list[str]:
    """The slot task ids a replica logged as enqueued (one line per tick, ids comma-separated)."""
    text = path.read_text(errors="replace") if path.exists() else ""
    return [task_id.strip() for found in ENQUEUED.findall(text) for task_id in found.split(",")]



@pytest.mark.timeout(480)
def test_two_peered_operators_enqueue_each_slot_once_across_a_leader_kill(
    cluster: Any, namespace: str, tmp_path: Path, amqp_url: str, mongodb_uri: str, database_name: str, queue_name: str
) -> None:
    apply(cluster, {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING, "namespace": namespace}})
    for secret, data in (("rabbit", {"amqp-url": amqp_url}), ("mongo", {"mongodb-uri": mongodb_uri})):
        apply(
            cluster,
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret, "namespace": namespace}, "stringData": data},
        )
    schedule = {"name": "every", "cron": "* * * * *", "task": "echo", "args": ["tick"], "missedSlots": "catchUp"}
    body = manifests.taskqueue(
        "cron2", namespace, queue=queue_name, database=database_name, schedules=[schedule], scaling={"maxReplicas": 1}
    )
    env = {"KUBECONFIG": str(cluster.kubeconfig), "TASKQ_PEERING": PEERING, "TASKQ_SCHEDULE_INTERVAL_SECONDS": "1"}
    logs = [tmp_path / f"operator-{n}.log" for n in range(3)]
    try:
        with ExitStack() as stack:
            processes = [
                stack.enter_context(running_operator(namespace, log, env=env, start_timeout=30, stop_timeout=15))
                for log in logs[:2]
            ]
            apply(cluster, body)
            anchored = poll(lambda: schedule_status(cluster, namespace, "cron2").get("since"), timeout=40, what="the anchor")
            first_slot = poll(
                lambda: schedule_status(cluster, namespace, "cron2").get("lastSlot"),
                timeout=80,
                interval=0.5,
                what="the first slot",
            )
            first_id = slot_task_id("cron2", "every", parse_time(first_slot))
            leader = poll(  # a replica index, as a string: poll waits for a truthy answer
                lambda: next((str(n) for n in range(2) if first_id in _enqueued(logs[n])), None),
                timeout=10,
                what="the replica that enqueued the first slot",
            )
            processes[int(leader)].send_signal(signal.SIGKILL)  # its peering record stays until it expires
            processes[int(leader)].wait(10)
            stack.enter_context(running_operator(namespace, logs[2], env=env, start_timeout=30, stop_timeout=15))
            last = parse_time(first_slot) + timedelta(minutes=SLOTS - 1)
            entry = poll(
                lambda: (
                    (e := schedule_status(cluster, namespace, "cron2")).get("lastSlot", "")
                    >= last.strftime("%Y-%m-%dT%H:%M:%SZ")
                    and e
                ),
                timeout=SLOTS * 60 + 60,
                interval=0.5,
                what=f"{SLOTS} slots",
            )
            cluster.kubectl("delete", "-n", namespace, "tq", "cron2", "--wait=false")
            poll(lambda: not schedule_status(cluster, namespace, "cron2"), timeout=30, what="the TaskQueue gone")
    finally:
        for log in logs:
            if log.exists():
                text = log.read_text(errors="replace").splitlines()
                tail = [line for line in text if "schedule" in line or "peering" in line.lower()]
                sys.stderr.write(f"\n--- {log.name}:\n" + "\n".join(tail[-30:]) + "\n")
    assert parse_time(first_slot) > parse_time(anchored)
    minutes = int((parse_time(entry["lastSlot"]) - parse_time(first_slot)).total_seconds() // 60)
    assert minutes >= SLOTS - 1
    expected = [slot_task_id("cron2", "every", parse_time(first_slot) + timedelta(minutes=m)) for m in range(minutes + 1)]
    store = TaskStore(mongodb_uri, database_name)
    try:
        documents = sorted(d["_id"] for d in store.tasks.find({"name": "echo"}, {"_id": 1}))
    finally:
        store.close()
    messages = Counter(drain_ids(amqp_url, queue_name, name="schedule-ha-test"))
    lines = Counter(task_id for log in logs for task_id in _enqueued(log))
    print(f"slots {expected}; messages {dict(messages)}; enqueued lines {dict(lines)}")
    assert documents == expected  # every slot, none missed, no other id
    assert messages == Counter(expected), "a slot's message was published more than once (or not at all)"
    assert lines == Counter(expected), "more than one replica (or none) enqueued a slot"
