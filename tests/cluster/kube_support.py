"""Shared helpers of the cluster tests: test namespaces, the operator as a subprocess, connection
Secrets, TaskQueue bodies, reads of Deployments, pods and events, and the test services' client and
task store for one queue, and the ids of the messages left on a queue.

Used by test_operator_scaling.py (kwok nodes, bridged workers), test_real_nodes.py and
test_real_nodes_ha.py (real nodes, worker pods), and the periodic-task tests (test_schedules_*.py).
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from taskq.broker.connection import connect
from taskq.client import Client
from taskq.settings import Settings
from taskq.store.mongo import TaskStore
from taskq_dev import manifests
from taskq_dev.operator_process import running_operator
from taskq_dev.ports import poll
from taskq_dev.realnodes import REAL_NODE_SELECTOR, REAL_NODE_TOLERATION

CRD = Path(__file__).resolve().parents[2] / "crds" / "taskqueue.yaml"
REAL_NODE_WORKER: dict[str, Any] = {
    **manifests.DEFAULT_WORKER,
    "concurrency": 2,
    "nodeSelector": dict(REAL_NODE_SELECTOR),
    "tolerations": [dict(REAL_NODE_TOLERATION)],
    "terminationGracePeriodSeconds": 30,
}
"""The worker section of TaskQueues whose pods run on the real nodes only (the taskq:dev image)."""


# -- namespaces and the operator ------------------------------------------------------------------


@contextmanager
def fresh_namespace(cluster: Any, prefix: str, *, crd: bool = True, restricted: bool = False) -> Iterator[str]:
    """A fresh namespace `<prefix>-<random>` (the CRD applied first unless `crd=False`, e.g. when a chart
    brings it), labelled for Pod Security Admission `restricted` (enforce) if asked; deleted afterwards."""
    if crd:
        cluster.kubectl("apply", "-f", str(CRD))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/taskqueues.taskq.io")
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    if restricted:
        cluster.kubectl(
            "label",
            "namespace",
            name,
            "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest",
        )
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@contextmanager
def operator_process(
    cluster: Any, namespace: str, tmp_path_factory: pytest.TempPathFactory, log_tail: int = 4000
) -> Iterator[Path]:
    """`taskq-operator --namespace <namespace>` as a subprocess; yields its log file, whose last
    `log_tail` characters go to stderr afterwards (for the test report)."""
    log_path = tmp_path_factory.mktemp("operator") / "operator.log"
    try:
        with running_operator(
            namespace, log_path, env={"KUBECONFIG": str(cluster.kubeconfig)}, start_timeout=30, stop_timeout=15
        ):
            yield log_path
    finally:
        sys.stderr.write(log_path.read_text(errors="replace")[-log_tail:])


# -- what the tests apply ---------------------------------------------------------------------------


def apply(cluster: Any, body: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))


def connection_secrets(
    cluster: Any, namespace: str, suffix: str, amqp_url: str, management_url: str, mongodb_uri: str
) -> tuple[str, str]:
    """The broker Secret `rabbit-<suffix>` (amqp-url, management-url) and the store Secret
    `mongo-<suffix>` (mongodb-uri); returns their names."""
    broker, store = f"rabbit-{suffix}", f"mongo-{suffix}"
    for name, data in (
        (broker, {"amqp-url": amqp_url, "management-url": management_url}),
        (store, {"mongodb-uri": mongodb_uri}),
    ):
        apply(
            cluster,
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace}, "stringData": data},
        )
    return broker, store


def taskqueue(
    name: str,
    namespace: str,
    queue: str,
    secrets: tuple[str, str],
    database: str,
    scaling: dict[str, Any],
    *,
    worker: dict[str, Any],
    tasks: dict[str, Any],
) -> dict[str, Any]:
    """A TaskQueue body with the given worker and tasks sections; the scaler polls every second."""
    return manifests.taskqueue(
        name,
        namespace,
        queue=queue,
        broker_secret=secrets[0],
        store_secret=secrets[1],
        database=database,
        worker=worker,
        tasks=tasks,
        scaling={"pollIntervalSeconds": 1, **scaling},
    )


def real_node_taskqueue(
    name: str,
    namespace: str,
    queue: str,
    secrets: tuple[str, str],
    database: str,
    scaling: dict[str, Any],
    worker: dict[str, Any] | None = None,
    tasks: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A TaskQueue whose workers run on the real nodes only (`REAL_NODE_WORKER` plus `worker`; tasks
    time out after 20 s unless `tasks` says otherwise)."""
    return taskqueue(
        name,
        namespace,
        queue,
        secrets,
        database,
        scaling,
        worker={**REAL_NODE_WORKER, **(worker or {})},
        tasks={"timeoutSeconds": 20, **(tasks or {})},
    )


# -- what the tests read ----------------------------------------------------------------------------


def get(cluster: Any, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    result = cluster.kubectl("get", "-n", namespace, kind, name, "-o", "json", check=False)
    if result.returncode != 0:
        return None
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def replicas(cluster: Any, namespace: str, deployment: str) -> int | None:
    """The Deployment's `spec.replicas`, or None while it does not exist."""
    body = get(cluster, namespace, "deployment", deployment)
    return None if body is None else int(body["spec"].get("replicas") or 0)


def taskqueue_events(cluster: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    """The events about TaskQueue `name`, in the order of their names."""
    listing = json.loads(
        cluster.kubectl(
            "get",
            "events",
            "-n",
            namespace,
            "-o",
            "json",
            f"--field-selector=involvedObject.kind=TaskQueue,involvedObject.name={name}",
        ).stdout
    )
    return sorted(listing["items"], key=lambda e: e["metadata"]["name"])


def pods(cluster: Any, namespace: str, selector: str) -> list[dict[str, Any]]:
    """The pods matching the label selector `selector`."""
    listing = cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(listing)["items"]
    return items


def worker_pods(cluster: Any, namespace: str, instance: str) -> list[dict[str, Any]]:
    """The pods of TaskQueue `instance`'s workers."""
    return pods(cluster, namespace, f"app.kubernetes.io/instance={instance}")


def is_ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def ready_pods(cluster: Any, namespace: str, instance: str) -> dict[str, str]:
    """Ready, not terminating worker pods of the TaskQueue: name -> node."""
    return {
        p["metadata"]["name"]: p["spec"].get("nodeName", "") for p in worker_pods(cluster, namespace, instance) if is_ready(p)
    }


def at_least_ready(cluster: Any, namespace: str, instance: str, count: int, exactly: bool = False) -> dict[str, str] | None:
    """The Ready pods (name -> node) once there are `count` of them (or more, unless `exactly`)."""
    ready = ready_pods(cluster, namespace, instance)
    enough = len(ready) == count if exactly else len(ready) >= count
    return ready if enough else None


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def schedule_status(cluster: Any, namespace: str, name: str) -> dict[str, Any]:
    """The TaskQueue's first `status.schedules` entry ({} when it or its status is not there)."""
    found = get(cluster, namespace, "taskqueue", name)
    entries = ((found or {}).get("status") or {}).get("schedules") or [{}]
    return dict(entries[0])


def node_taints(cluster: Any, node: str) -> set[str]:
    body = json.loads(cluster.kubectl("get", "node", node, "-o", "json").stdout)
    return {t["key"] for t in body.get("spec", {}).get("taints") or []}


# -- the test services, for one queue ---------------------------------------------------------------


@dataclass(frozen=True)
class QueueServices:
    """The broker and store URLs (as this host reaches them) and the database and queue of one test."""

    amqp_url: str
    mongodb_uri: str
    database: str
    queue: str

    def settings(self) -> Settings:
        return Settings(amqp_url=self.amqp_url, mongodb_uri=self.mongodb_uri, database=self.database, queue=self.queue)

    def submit(self, tasks: Sequence[dict[str, Any]]) -> list[str]:
        """Submit `tasks` (`{"name": ..., "args"/"kwargs": ...}`) with a fresh client; their ids."""
        with Client(self.settings()) as client:
            return list(client.submit_many(tasks).ids)

    @contextmanager
    def store(self) -> Iterator[TaskStore]:
        task_store = TaskStore(self.mongodb_uri, self.database)
        try:
            yield task_store
        finally:
            task_store.close()

    def wait_succeeded(
        self, task_store: TaskStore, total: int, *, timeout: float, what: str, interval: float = 2
    ) -> dict[str, int]:
        """Wait until `total` tasks of the queue have succeeded; return the counts by state then."""
        poll(
            lambda: task_store.counts_by_state(self.queue).get("succeeded") == total,
            timeout=timeout,
            what=what,
            interval=interval,
        )
        return task_store.counts_by_state(self.queue)


def drain_ids(amqp_url: str, queue: str, *, name: str = "cluster-test") -> list[str]:
    """Take every message off `queue` (at most 1,000) and return their task ids, in queue order."""
    connection = connect(amqp_url, name=name)
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
