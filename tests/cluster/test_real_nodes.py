"""The worker image as real pods on real kubelets: Pod Security Admission `restricted`, the kubelet's
probes, scaling a burst up and back down, a node container killed with work in flight, and SIGTERM
from the kubelet on scale-down.

The real nodes are Docker containers running containerd and a kubelet (`real_nodes` fixture;
`TASKQ_REAL_NODES=0` skips them); workers run `taskq:dev` built from this tree and reach RabbitMQ and
the store through the node network's gateway (`pod_services`). The operator runs as a local
`taskq-operator` process. Pods land on real nodes only through the TaskQueue's nodeSelector and
toleration; the kwok-based tests are unaffected.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from taskq.client import Client
from taskq.core.states import TaskState
from taskq.settings import Settings
from taskq.store.mongo import TaskStore
from taskq_dev.operator_process import running_operator
from taskq_dev.pod_services import PodServiceUrls
from taskq_dev.ports import poll
from taskq_dev.realnodes import REAL_NODE_SELECTOR, REAL_NODE_TOLERATION, RealNodes

pytestmark = [pytest.mark.cluster, pytest.mark.services, pytest.mark.slow, pytest.mark.realnodes]

CRD = Path(__file__).resolve().parents[2] / "crds" / "taskqueue.yaml"
NODE_LOSS_TOLERATION_S = 10
T = TypeVar("T")


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def namespace(cluster: Any, real_nodes: RealNodes) -> Iterator[str]:
    """A namespace where Pod Security Admission enforces `restricted`."""
    cluster.kubectl("apply", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/taskqueues.taskq.io")
    name = f"tq-real-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl(
        "label",
        "namespace",
        name,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(cluster: Any, namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    log_path = tmp_path_factory.mktemp("operator") / "operator.log"
    try:
        with running_operator(
            namespace, log_path, env={"KUBECONFIG": str(cluster.kubeconfig)}, start_timeout=30, stop_timeout=15
        ):
            yield log_path
    finally:
        sys.stderr.write(log_path.read_text(errors="replace")[-3000:])


@pytest.fixture(scope="module")
def secrets(cluster: Any, namespace: str, pod_services: PodServiceUrls) -> tuple[str, str]:
    broker, store = "rabbit-pods", "mongo-pods"
    for name, data in (
        (broker, {"amqp-url": pod_services.amqp_url, "management-url": pod_services.management_url}),
        (store, {"mongodb-uri": pod_services.mongodb_uri}),
    ):
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace}, "stringData": data}
        cluster.kubectl("apply", "-f", "-", input=json.dumps(secret))
    return broker, store


# -- helpers ----------------------------------------------------------------------------------


def taskqueue(
    name: str,
    namespace: str,
    queue: str,
    secrets: tuple[str, str],
    database: str,
    scaling: dict[str, Any],
    worker: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A TaskQueue whose workers run on the real nodes only."""
    return {
        "apiVersion": "taskq.io/v1alpha1",
        "kind": "TaskQueue",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "queue": queue,
            "broker": {"secretRef": {"name": secrets[0]}},
            "store": {"secretRef": {"name": secrets[1]}, "database": database},
            "worker": {
                "image": "taskq:dev",
                "taskModules": ["taskq.examples"],
                "concurrency": 2,
                "nodeSelector": dict(REAL_NODE_SELECTOR),
                "tolerations": [dict(REAL_NODE_TOLERATION)],
                "terminationGracePeriodSeconds": 30,
                **(worker or {}),
            },
            "tasks": {"timeoutSeconds": 20},
            "scaling": {"pollIntervalSeconds": 1, **scaling},
        },
    }


def apply(cluster: Any, body: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))


def replicas(cluster: Any, namespace: str, deployment: str) -> int | None:
    result = cluster.kubectl("get", "-n", namespace, "deployment", deployment, "-o", "json", check=False)
    return int(json.loads(result.stdout)["spec"].get("replicas") or 0) if result.returncode == 0 else None


def pods(cluster: Any, namespace: str, instance: str) -> list[dict[str, Any]]:
    listing = cluster.kubectl("get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={instance}", "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(listing)["items"]
    return items


def is_ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def ready_pods(cluster: Any, namespace: str, instance: str) -> dict[str, str]:
    """Ready, not terminating pods of the TaskQueue: name -> node."""
    return {p["metadata"]["name"]: p["spec"].get("nodeName", "") for p in pods(cluster, namespace, instance) if is_ready(p)}


def at_least_ready(cluster: Any, namespace: str, instance: str, count: int, exactly: bool = False) -> dict[str, str] | None:
    """The Ready pods (name -> node) once there are `count` of them (or more, unless `exactly`)."""
    ready = ready_pods(cluster, namespace, instance)
    enough = len(ready) == count if exactly else len(ready) >= count
    return ready if enough else None


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def node_taints(cluster: Any, node: str) -> set[str]:
    body = json.loads(cluster.kubectl("get", "node", node, "-o", "json").stdout)
    return {t["key"] for t in body.get("spec", {}).get("taints") or []}


def store_for(mongodb_uri: str, database: str) -> TaskStore:
    return TaskStore(mongodb_uri, database)


def client_settings(amqp_url: str, mongodb_uri: str, database: str, queue: str) -> Settings:
    return Settings(amqp_url=amqp_url, mongodb_uri=mongodb_uri, database=database, queue=queue)


# -- tests ------------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_workers_are_admitted_under_restricted_and_run_hardened(
    cluster: Any,
    real_nodes: RealNodes,
    namespace: str,
    operator: Path,
    secrets: tuple[str, str],
    amqp_url: str,
    mongodb_uri: str,
    database_name: str,
    queue_name: str,
) -> None:
    # Pod Security Admission really enforces here: a privileged pod is refused.
    privileged = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged", "namespace": namespace},
        "spec": {
            "nodeSelector": dict(REAL_NODE_SELECTOR),
            "tolerations": [dict(REAL_NODE_TOLERATION)],
            "containers": [{"name": "c", "image": "taskq:dev", "securityContext": {"privileged": True}}],
        },
    }
    refused = cluster.kubectl("apply", "-f", "-", input=json.dumps(privileged), check=False)
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr, refused.stderr

    apply(cluster, taskqueue("hardened", namespace, queue_name, secrets, database_name, {"minReplicas": 1, "maxReplicas": 1}))
    placed = poll(lambda: ready_pods(cluster, namespace, "hardened"), timeout=120, what="a Ready worker pod on a real node")
    pod, node = next(iter(placed.items()))
    assert node in real_nodes.names()

    uid = cluster.kubectl("exec", "-n", namespace, pod, "--", "id", "-u").stdout.strip()
    assert uid != "0" and uid == "10001"
    written = cluster.kubectl("exec", "-n", namespace, pod, "--", "sh", "-c", "echo x > /probe", check=False)
    assert written.returncode != 0 and "Read-only file system" in written.stderr, written.stderr
    capabilities = cluster.kubectl("exec", "-n", namespace, pod, "--", "grep", "CapEff", "/proc/1/status").stdout
    assert capabilities.split()[-1] == "0000000000000000"

    with Client(client_settings(amqp_url, mongodb_uri, database_name, queue_name)) as client:
        client.submit_many([{"name": "echo", "args": [i]} for i in range(20)])
    task_store = store_for(mongodb_uri, database_name)
    try:
        poll(
            lambda: task_store.counts_by_state(queue_name).get("succeeded") == 20,
            timeout=120,
            what="the pod to run 20 echo tasks",
            interval=1,
        )
        workers = {doc["worker"] for doc in task_store.list(queue=queue_name, limit=100)}
        assert workers == {pod}, workers
    finally:
        task_store.close()
    cluster.kubectl("delete", "-n", namespace, "tq", "hardened")


@pytest.mark.timeout(900)
def test_burst_scales_real_pods_up_drains_and_back_to_min(
    cluster: Any,
    real_nodes: RealNodes,
    namespace: str,
    operator: Path,
    secrets: tuple[str, str],
    amqp_url: str,
    mongodb_uri: str,
    database_name: str,
    queue_name: str,
) -> None:
    scaling = {"minReplicas": 0, "maxReplicas": 4, "tasksPerReplica": 50, "scaleDown": {"stabilizationWindowSeconds": 10}}
    apply(cluster, taskqueue("burst", namespace, queue_name, secrets, database_name, scaling))
    poll(lambda: replicas(cluster, namespace, "burst-worker") == 0, timeout=60, what="the Deployment at 0 replicas")

    total = 400
    with Client(client_settings(amqp_url, mongodb_uri, database_name, queue_name)) as client:
        client.submit_many([{"name": "sleep", "kwargs": {"seconds": 0.1}} for _ in range(total)])
    poll(lambda: replicas(cluster, namespace, "burst-worker") == 4, timeout=30, what="4 replicas for 400 tasks at 50 per replica")
    ready = poll(
        lambda: at_least_ready(cluster, namespace, "burst", 2),
        timeout=180,
        what="worker pods Ready (readiness probe answered by each pod's /readyz)",
        interval=1,
    )
    assert set(ready.values()) <= set(real_nodes.names())
    # Readiness is the kubelet's probe result: each pod turned Ready after its container started.
    for pod in pods(cluster, namespace, "burst"):
        if pod["metadata"]["name"] in ready:
            started = parse_time(pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"])
            ready_at = next(parse_time(c["lastTransitionTime"]) for c in pod["status"]["conditions"] if c["type"] == "Ready")
            assert ready_at >= started

    task_store = store_for(mongodb_uri, database_name)
    try:
        poll(
            lambda: task_store.counts_by_state(queue_name).get("succeeded") == total,
            timeout=600,
            what="the worker pods to finish all 400 tasks",
            interval=2,
        )
        counts = task_store.counts_by_state(queue_name)
        assert sum(counts.values()) == total, counts
    finally:
        task_store.close()
    poll(lambda: replicas(cluster, namespace, "burst-worker") == 0, timeout=90, what="scale-down to 0 after the 10 s window")
    poll(lambda: not pods(cluster, namespace, "burst"), timeout=90, what="the worker pods to terminate", interval=1)
    cluster.kubectl("delete", "-n", namespace, "tq", "burst")


@pytest.mark.timeout(900)
def test_killed_node_container_reschedules_its_pods_and_loses_no_task(
    cluster: Any,
    real_nodes: RealNodes,
    namespace: str,
    operator: Path,
    secrets: tuple[str, str],
    amqp_url: str,
    mongodb_uri: str,
    database_name: str,
    queue_name: str,
) -> None:
    scaling = {"minReplicas": 2, "maxReplicas": 2, "scaleDown": {"stabilizationWindowSeconds": 0}}
    apply(cluster, taskqueue("sturdy", namespace, queue_name, secrets, database_name, scaling))
    placement = poll(
        lambda: at_least_ready(cluster, namespace, "sturdy", 2, exactly=True), timeout=180, what="2 Ready worker pods"
    )
    total = 80
    task_store = store_for(mongodb_uri, database_name)
    try:
        with Client(client_settings(amqp_url, mongodb_uri, database_name, queue_name)) as client:
            client.submit_many([{"name": "sleep", "kwargs": {"seconds": 1.0}} for _ in range(total)])
        victim = sorted(placement.values())[0]
        lost_pods = {pod for pod, node in placement.items() if node == victim}

        def running_on_victim() -> bool:
            running = task_store.list(queue=queue_name, state=TaskState.RUNNING, limit=50)
            return any(doc.get("worker") in lost_pods for doc in running)

        poll(running_on_victim, timeout=120, what=f"tasks running on {victim}")
        killed = time.monotonic()
        real_nodes.kill(victim)

        poll(
            lambda: "node.kubernetes.io/unreachable" in node_taints(cluster, victim),
            timeout=60,
            what=f"{victim} tainted unreachable",
            interval=0.5,
        )
        tainted = time.monotonic()

        def replaced() -> dict[str, str] | None:
            now = ready_pods(cluster, namespace, "sturdy")
            return now if len(now) == 2 and not set(now) & lost_pods else None

        poll(replaced, timeout=120, what=f"the pods of {victim} Ready elsewhere", interval=0.5)
        rescheduled = time.monotonic()
        sys.stderr.write(
            f"\nnode loss: unreachable taint {tainted - killed:.1f} s after docker kill; replacement pods Ready "
            f"{rescheduled - tainted:.1f} s after the taint ({rescheduled - killed:.1f} s after the kill)\n"
        )
        # Evicted at the end of the 10 s toleration; a few seconds more for scheduling, start and readiness.
        assert rescheduled - tainted <= NODE_LOSS_TOLERATION_S + 20

        poll(
            lambda: task_store.counts_by_state(queue_name).get("succeeded") == total,
            timeout=600,
            what="every task to succeed after the node loss",
            interval=2,
        )
        counts = task_store.counts_by_state(queue_name)
        assert counts["succeeded"] == total and sum(counts.values()) == total, counts
    finally:
        task_store.close()
    cluster.kubectl("delete", "-n", namespace, "tq", "sturdy")


@pytest.mark.timeout(900)
def test_scale_down_sigterm_lets_running_tasks_finish_within_the_grace_period(
    cluster: Any,
    real_nodes: RealNodes,
    namespace: str,
    operator: Path,
    secrets: tuple[str, str],
    amqp_url: str,
    mongodb_uri: str,
    database_name: str,
    queue_name: str,
) -> None:
    scaling = {"minReplicas": 2, "maxReplicas": 2, "scaleDown": {"stabilizationWindowSeconds": 0}}
    apply(cluster, taskqueue("graceful", namespace, queue_name, secrets, database_name, scaling, {"prefetch": 2}))
    placement = poll(
        lambda: at_least_ready(cluster, namespace, "graceful", 2, exactly=True), timeout=180, what="2 Ready worker pods"
    )
    total = 8
    task_store = store_for(mongodb_uri, database_name)
    try:
        with Client(client_settings(amqp_url, mongodb_uri, database_name, queue_name)) as client:
            client.submit_many([{"name": "sleep", "kwargs": {"seconds": 8.0}} for _ in range(total)])

        def running_on_each() -> dict[str, int] | None:
            running = task_store.list(queue=queue_name, state=TaskState.RUNNING, limit=50)
            per_pod = {pod: sum(1 for d in running if d.get("worker") == pod) for pod in placement}
            return per_pod if all(per_pod.values()) else None

        poll(running_on_each, timeout=120, what="tasks running on both pods", interval=0.5)
        scaled_down = time.monotonic()
        cluster.kubectl(
            "patch",
            "-n",
            namespace,
            "tq",
            "graceful",
            "--type=merge",
            "-p",
            json.dumps({"spec": {"scaling": {"minReplicas": 1, "maxReplicas": 1}}}),
        )
        remaining = poll(
            lambda: at_least_ready(cluster, namespace, "graceful", 1, exactly=True), timeout=60, what="one pod left Ready"
        )
        stopped = (set(placement) - set(remaining)).pop()
        poll(
            lambda: stopped not in {p["metadata"]["name"] for p in pods(cluster, namespace, "graceful")},
            timeout=60,
            what=f"{stopped} to exit",
            interval=0.5,
        )
        exited = time.monotonic()
        assert exited - scaled_down < 30, "the stopped pod outlived its terminationGracePeriodSeconds"

        poll(
            lambda: task_store.counts_by_state(queue_name).get("succeeded") == total,
            timeout=300,
            what="every task to succeed",
            interval=1,
        )
        documents = task_store.list(queue=queue_name, limit=50)
        finished_by_stopped = [d for d in documents if d.get("worker") == stopped]
        assert finished_by_stopped, "the stopped pod finished none of its running tasks"
        assert all(d["attempts"] == 1 for d in documents), [(d["_id"], d["attempts"]) for d in documents]
    finally:
        task_store.close()
    cluster.kubectl("delete", "-n", namespace, "tq", "graceful")
