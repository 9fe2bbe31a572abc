"""The operator sizes a TaskQueue by `targetWaitSeconds` from real heartbeats on the real control plane.

One bridged worker (minReplicas 1, concurrency 2) runs 1 s `sleep` tasks, so its heartbeats say about
2 tasks/s per replica; 80 queued tasks with a 5 s target then need 80 / (2 + 2 * 5) = 7 replicas,
where the default `tasksPerReplica` (100) would keep one. The Events and the status carry the
estimate; every task succeeds and the Deployment goes back to minReplicas.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_support import (
    QueueServices,
    apply,
    connection_secrets,
    fresh_namespace,
    get,
    operator_process,
    replicas,
    taskqueue,
    taskqueue_events,
)

from taskq_dev import manifests
from taskq_dev.ports import poll

pytestmark = [pytest.mark.cluster, pytest.mark.services, pytest.mark.slow]

TASKS = 80
TASK_S = 1.0


@pytest.fixture(scope="module")
def namespace(cluster: Any) -> Iterator[str]:
    with fresh_namespace(cluster, "tq-wait") as name:
        yield name


@pytest.fixture(scope="module")
def operator(cluster: Any, namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with operator_process(cluster, namespace, tmp_path_factory, log_tail=4000) as log_path:
        yield log_path


@pytest.mark.timeout(600)
def test_target_wait_scales_from_heartbeat_rates(
    cluster: Any,
    bridge: Any,
    namespace: str,
    operator: Path,
    amqp_url: str,
    rabbitmq: Any,
    mongodb_uri: str,
    database_name: str,
    queue_name: str,
) -> None:
    broker, store = connection_secrets(cluster, namespace, "w", amqp_url, rabbitmq.management_url, mongodb_uri)
    scaling = {
        "minReplicas": 1,
        "maxReplicas": 8,
        "targetWaitSeconds": 5,
        "scaleDown": {"stabilizationWindowSeconds": 10},
    }
    worker = {**manifests.DEFAULT_WORKER, "concurrency": 2, "prefetch": 2, "pool": "thread"}
    body = taskqueue("wait", namespace, queue_name, (broker, store), database_name, scaling, worker=worker, tasks={})
    apply(cluster, body)
    stored = poll(lambda: get(cluster, namespace, "tq", "wait"), timeout=30, what="the TaskQueue", interval=0.5)
    assert "tasksPerReplica" not in stored["spec"]["scaling"]  # no CRD default: the target alone sizes it
    poll(lambda: replicas(cluster, namespace, "wait-worker") == 1, timeout=30, what="minReplicas 1", interval=0.5)

    services = QueueServices(amqp_url, mongodb_uri, database_name, queue_name)
    services.submit([{"name": "sleep", "kwargs": {"seconds": TASK_S}} for _ in range(TASKS)])

    peak = poll(
        lambda: (n := replicas(cluster, namespace, "wait-worker") or 0) >= 4 and n,
        timeout=90,
        what="a scale-up from the heartbeats' service rate (tasksPerReplica 100 would stay at 1)",
        interval=0.5,
    )
    assert peak <= 8
    status = (get(cluster, namespace, "tq", "wait") or {}).get("status") or {}
    service = status.get("backlog", {}).get("serviceRatePerReplica")
    assert service is not None and 0.5 <= service <= 2.5, status  # 2 slots x 1 s tasks: 2/s, less on a busy host

    with services.store() as task_store:
        services.wait_succeeded(task_store, TASKS, timeout=300, what=f"all {TASKS} sleep tasks")
    poll(lambda: replicas(cluster, namespace, "wait-worker") == 1, timeout=90, what="back to minReplicas", interval=0.5)

    events = taskqueue_events(cluster, namespace, "wait")
    ups = [e["message"] for e in events if e["reason"] == "ScaleUp"]
    assert ups, [e["reason"] for e in events]
    explained = [m for m in ups if "targetWaitSeconds 5: service" in m and "expected wait" in m]
    assert explained, ups
    rate = float(re.search(r"service ([0-9.]+)/s per replica", explained[0]).group(1))  # type: ignore[union-attr]
    assert 0.5 <= rate <= 2.5, explained[0]
    assert any(e["reason"] == "ScaleDown" and "targetWaitSeconds 5" in e["message"] for e in events), events
    print(f"peak seen {peak}; status service {service}/s; first explained ScaleUp: {explained[0]}")  # with -s
