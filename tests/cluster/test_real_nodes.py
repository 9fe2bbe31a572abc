"""The worker image as real pods on real kubelets: Pod Security Admission `restricted`, the kubelet's
probes, scaling a burst up and back down, a node container killed with work in flight, a node paused
(partition-like) and unpaused, a worker OOM-killed by the kernel, and SIGTERM from the kubelet on
scale-down.

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
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymongo
import pytest
from kube_support import (
    QueueServices,
    apply,
    at_least_ready,
    connection_secrets,
    fresh_namespace,
    node_taints,
    operator_process,
    parse_time,
    ready_pods,
    real_node_taskqueue,
    replicas,
    worker_pods,
)

from taskq.core.states import TaskState
from taskq.examples import EXECUTIONS_COLLECTION
from taskq.store.mongo import TaskStore
from taskq_dev.pod_services import PodServiceUrls
from taskq_dev.ports import WaitTimeout, poll
from taskq_dev.realnodes import REAL_NODE_SELECTOR, REAL_NODE_TOLERATION, RealNodes

pytestmark = [pytest.mark.cluster, pytest.mark.services, pytest.mark.slow, pytest.mark.realnodes]

NODE_LOSS_TOLERATION_S = 10


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def namespace(cluster: Any, real_nodes: RealNodes) -> Iterator[str]:
    """A namespace where Pod Security Admission enforces `restricted`."""
    with fresh_namespace(cluster, "tq-real", restricted=True) as name:
        yield name


@pytest.fixture(scope="module")
def operator(cluster: Any, namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with operator_process(cluster, namespace, tmp_path_factory, log_tail=3000) as log_path:
        yield log_path


@pytest.fixture(scope="module")
def secrets(cluster: Any, namespace: str, pod_services: PodServiceUrls) -> tuple[str, str]:
    return connection_secrets(
        cluster, namespace, "pods", pod_services.amqp_url, pod_services.management_url, pod_services.mongodb_uri
    )


@pytest.fixture
def services(amqp_url: str, mongodb_uri: str, database_name: str, queue_name: str) -> QueueServices:
    """The test's queue and database, as this host (the test, its client) reaches them."""
    return QueueServices(amqp_url, mongodb_uri, database_name, queue_name)


# -- helpers ----------------------------------------------------------------------------------


def running_on(task_store: TaskStore, queue: str, workers: set[str]) -> Callable[[], bool]:
    """A probe: whether some task of `queue` is recorded running on one of `workers`."""

    def probe() -> bool:
        running = task_store.list(queue=queue, state=TaskState.RUNNING, limit=50)
        return any(doc.get("worker") in workers for doc in running)

    return probe


@dataclass(frozen=True)
class Replacement:
    """How a lost node's pods were replaced, in seconds after the loss."""

    tainted_s: float
    """until the node carried the `unreachable` taint"""
    ready_s: float
    """until the TaskQueue had its pods Ready again, none of them a lost one"""

    def report(self, how: str) -> str:
        return (
            f"unreachable taint {self.tainted_s:.1f} s after {how}; replacement pods Ready "
            f"{self.ready_s - self.tainted_s:.1f} s after the taint ({self.ready_s:.1f} s after {how})"
        )


def wait_replaced(
    cluster: Any, namespace: str, instance: str, victim: str, lost_pods: set[str], count: int, lost_at: float
) -> Replacement:
    """After node `victim` was lost at `lost_at` (monotonic): wait for its unreachable taint, then for
    `count` Ready pods of `instance`, none of them in `lost_pods`."""
    poll(
        lambda: "node.kubernetes.io/unreachable" in node_taints(cluster, victim),
        timeout=60,
        what=f"{victim} tainted unreachable",
        interval=0.5,
    )
    tainted = time.monotonic()

    def replaced() -> dict[str, str] | None:
        now = ready_pods(cluster, namespace, instance)
        return now if len(now) == count and not set(now) & lost_pods else None

    poll(replaced, timeout=120, what=f"the pods of {victim} Ready elsewhere", interval=0.5)
    return Replacement(tainted - lost_at, time.monotonic() - lost_at)


def executions(mongodb_uri: str, database: str) -> list[dict[str, Any]]:
    """The `journal` task's records: one per execution that ran to its end, from any pod."""
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongodb_uri, serverSelectionTimeoutMS=10_000)
    try:
        return list(client[database][EXECUTIONS_COLLECTION].find({}, {"_id": 0}))
    finally:
        client.close()


def counted_redeliveries(document: dict[str, Any], attempt: int) -> int:
    """How many redeliveries of `attempt` a worker counted in the task's document (`redeliveries.a<n>`)."""
    counts = document.get("redeliveries") or {}
    return int(counts.get(f"a{attempt}", 0))


def container_status(cluster: Any, namespace: str, pod: str) -> dict[str, Any]:
    body = json.loads(cluster.kubectl("get", "pod", "-n", namespace, pod, "-o", "json").stdout)
    statuses: list[dict[str, Any]] = body["status"].get("containerStatuses") or [{}]
    return statuses[0]


# -- tests ------------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_workers_are_admitted_under_restricted_and_run_hardened(
    cluster: Any,
    real_nodes: RealNodes,
    namespace: str,
    operator: Path,
    secrets: tuple[str, str],
    services: QueueServices,
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

    scaling = {"minReplicas": 1, "maxReplicas": 1}
    apply(cluster, real_node_taskqueue("hardened", namespace, services.queue, secrets, services.database, scaling))
    placed = poll(lambda: ready_pods(cluster, namespace, "hardened"), timeout=120, what="a Ready worker pod on a real node")
    pod, node = next(iter(placed.items()))
    assert node in real_nodes.names()

    uid = cluster.kubectl("exec", "-n", namespace, pod, "--", "id", "-u").stdout.strip()
    assert uid != "0" and uid == "10001"
    written = cluster.kubectl("exec", "-n", namespace, pod, "--", "sh", "-c", "echo x > /probe", check=False)
    assert written.returncode != 0 and "Read-only file system" in written.stderr, written.stderr
    capabilities = cluster.kubectl("exec", "-n", namespace, pod, "--", "grep", "CapEff", "/proc/1/status").stdout
    assert capabilities.split()[-1] == "0000000000000000"

    services.submit([{"name": "echo", "args": [i]} for i in range(20)])
    with services.store() as task_store:
        services.wait_succeeded(task_store, 20, timeout=120, what="the pod to run 20 echo tasks", interval=1)
        workers = {doc["worker"] for doc in task_store.list(queue=services.queue, limit=100)}
        assert workers == {pod}, workers
    cluster.kubectl("delete", "-n", namespace, "tq", "hardened")


@pytest.mark.timeout(900)
def test_burst_scales_real_pods_up_drains_and_back_to_min(
    cluster: Any,
    real_nodes: RealNodes,
    namespace: str,
    operator: Path,
    secrets: tuple[str, str],
    services: QueueServices,
) -> None:
    scaling = {"minReplicas": 0, "maxReplicas": 4, "tasksPerReplica": 50, "scaleDown": {"stabilizationWindowSeconds": 10}}
    apply(cluster, real_node_taskqueue("burst", namespace, services.queue, secrets, services.database, scaling))
    poll(lambda: replicas(cluster, namespace, "burst-worker") == 0, timeout=60, what="the Deployment at 0 replicas")

    total = 400
    services.submit([{"name": "sleep", "kwargs": {"seconds": 0.1}} for _ in range(total)])
    poll(lambda: replicas(cluster, namespace, "burst-worker") == 4, timeout=30, what="4 replicas for 400 tasks at 50 per replica")
    ready = poll(
        lambda: at_least_ready(cluster, namespace, "burst", 2),
        timeout=180,
        what="worker pods Ready (readiness probe answered by each pod's /readyz)",
        interval=1,
    )
    assert set(ready.values()) <= set(real_nodes.names())
    # Readiness is the kubelet's probe result: each pod turned Ready after its container started.
    for pod in worker_pods(cluster, namespace, "burst"):
        if pod["metadata"]["name"] in ready:
            started = parse_time(pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"])
            ready_at = next(parse_time(c["lastTransitionTime"]) for c in pod["status"]["conditions"] if c["type"] == "Ready")
            assert ready_at >= started

    with services.store() as task_store:
        counts = services.wait_succeeded(task_store, total, timeout=600, what="the worker pods to finish all 400 tasks")
        assert sum(counts.values()) == total, counts
    poll(lambda: replicas(cluster, namespace, "burst-worker") == 0, timeout=90, what="scale-down to 0 after the 10 s window")
    poll(lambda: not worker_pods(cluster, namespace, "burst"), timeout=90, what="the worker pods to terminate", interval=1)
    cluster.kubectl("delete", "-n", namespace, "tq", "burst")


@pytest.mark.timeout(900)
def test_killed_node_container_reschedules_its_pods_and_loses_no_task(
    cluster: Any,
    real_nodes: RealNodes,
    namespace: str,
    operator: Path,
    secrets: tuple[str, str],
    services: QueueServices,
) -> None:
    scaling = {"minReplicas": 2, "maxReplicas": 2, "scaleDown": {"stabilizationWindowSeconds": 0}}
    apply(cluster, real_node_taskqueue("sturdy", namespace, services.queue, secrets, services.database, scaling))
    placement = poll(
        lambda: at_least_ready(cluster, namespace, "sturdy", 2, exactly=True), timeout=180, what="2 Ready worker pods"
    )
    total = 80
    with services.store() as task_store:
        services.submit([{"name": "sleep", "kwargs": {"seconds": 1.0}} for _ in range(total)])
        victim = sorted(placement.values())[0]
        lost_pods = {pod for pod, node in placement.items() if node == victim}
        poll(running_on(task_store, services.queue, lost_pods), timeout=120, what=f"tasks running on {victim}")
        killed = time.monotonic()
        real_nodes.kill(victim)

        replacement = wait_replaced(cluster, namespace, "sturdy", victim, lost_pods, 2, killed)
        sys.stderr.write(f"\nnode loss: {replacement.report('docker kill')}\n")
        # Evicted at the end of the 10 s toleration; a few seconds more for scheduling, start and readiness.
        assert replacement.ready_s - replacement.tainted_s <= NODE_LOSS_TOLERATION_S + 20

        counts = services.wait_succeeded(task_store, total, timeout=600, what="every task to succeed after the node loss")
        assert counts["succeeded"] == total and sum(counts.values()) == total, counts
    cluster.kubectl("delete", "-n", namespace, "tq", "sturdy")


@pytest.mark.timeout(900)
def test_paused_node_loses_no_task_and_every_second_run_is_a_counted_redelivery(
    cluster: Any,
    real_nodes: RealNodes,
    namespace: str,
    operator: Path,
    secrets: tuple[str, str],
    services: QueueServices,
) -> None:
    """`docker pause` freezes a node with work in flight (its processes stop, nothing dies): the node
    turns unreachable, its pods are replaced elsewhere, the broker hands the frozen worker's unacked
    deliveries to the others once its heartbeats stop. After `docker unpause` the frozen worker
    resumes and finishes what it held, late. Every task must succeed once in the store, and every
    execution beyond a task's first (the `journal` task records each one that ran to its end) must
    be a redelivery a worker counted in the task's document."""
    scaling = {"minReplicas": 2, "maxReplicas": 2, "scaleDown": {"stabilizationWindowSeconds": 0}}
    body = real_node_taskqueue("frozen", namespace, services.queue, secrets, services.database, scaling, {"prefetch": 4})
    apply(cluster, body)
    placement = poll(
        lambda: at_least_ready(cluster, namespace, "frozen", 2, exactly=True), timeout=180, what="2 Ready worker pods"
    )
    total = 60
    with services.store() as task_store:
        ids = services.submit([{"name": "journal", "kwargs": {"seconds": 2.0}} for _ in range(total)])
        victim = sorted(placement.values())[0]
        lost_pods = {pod for pod, node in placement.items() if node == victim}
        poll(running_on(task_store, services.queue, lost_pods), timeout=120, what=f"tasks running on {victim}")
        paused = time.monotonic()
        real_nodes.pause(victim)
        try:
            replacement = wait_replaced(cluster, namespace, "frozen", victim, lost_pods, 2, paused)
            sys.stderr.write(f"\nnode pause: {replacement.report('docker pause')}\n")
            assert replacement.ready_s - replacement.tainted_s <= NODE_LOSS_TOLERATION_S + 20
            # Stay partitioned until the others have done everything (the broker closes the frozen
            # worker's connection after missed heartbeats and redelivers what it held), or 150 s.
            try:
                services.wait_succeeded(task_store, total, timeout=150, what="every task to succeed during the pause")
                done_while_paused: float | None = time.monotonic() - paused
            except WaitTimeout:
                done_while_paused = None
        finally:
            real_nodes.unpause(victim)
        unpaused = time.monotonic()
        counts = services.wait_succeeded(task_store, total, timeout=300, what="every task to succeed after the unpause")
        # The frozen pods were evicted while paused: after the unpause their kubelet stops them.
        poll(
            lambda: not lost_pods & {p["metadata"]["name"] for p in worker_pods(cluster, namespace, "frozen")},
            timeout=120,
            what="the paused node's pods to exit",
            interval=1,
        )
        gone = time.monotonic() - unpaused
        documents = {doc["_id"]: doc for doc in task_store.list(queue=services.queue, limit=1000)}
    counts_after = {state: n for state, n in counts.items() if n}
    runs = Counter((record["task_id"], record["attempt"]) for record in executions(services.mongodb_uri, services.database))
    when = f"{done_while_paused:.1f} s after the pause, while paused" if done_while_paused else "only after the unpause"
    counted = sum(counted_redeliveries(d, int(d.get("attempts") or 1)) for d in documents.values())
    sys.stderr.write(
        f"node pause: every task succeeded {when}; the paused pods exited {gone:.1f} s after the unpause; "
        f"states {counts_after}; {sum(1 for n in runs.values() if n > 1)} task(s) ran twice, {counted} redelivery(ies) counted\n"
    )
    assert counts["succeeded"] == total and sum(counts.values()) == total, counts
    assert set(documents) == set(ids)
    assert {task for task, _ in runs} == set(ids), "a succeeded task has no execution recorded"
    unexplained = [
        (task, attempt, n, documents[task].get("redeliveries"), documents[task].get("worker"))
        for (task, attempt), n in runs.items()
        if n - 1 > counted_redeliveries(documents[task], attempt)
    ]
    assert not unexplained, f"executions beyond the first without a counted redelivery: {unexplained}"
    cluster.kubectl("delete", "-n", namespace, "tq", "frozen")


@dataclass
class MemoryHogRun:
    """What became of a 600 MiB `allocate` task on a one-pod TaskQueue with a 256 MiB limit."""

    document: dict[str, Any]  # the hog's task document once `dead`
    seconds: float  # from submission to `dead`
    pod: str
    status: dict[str, Any]  # the worker container's status afterwards
    finished_by: set[str]  # the workers that ran the 10 echo tasks submitted after it


def _run_memory_hog(
    cluster: Any, namespace: str, secrets: tuple[str, str], services: QueueServices, name: str, pool: str, **submit: Any
) -> MemoryHogRun:
    worker = {
        "pool": pool,
        "concurrency": 1,
        "prefetch": 1,
        "resources": {"requests": {"memory": "256Mi"}, "limits": {"memory": "256Mi"}},
    }
    scaling = {"minReplicas": 1, "maxReplicas": 1}
    tasks = {"maxDeliveries": 2}
    apply(cluster, real_node_taskqueue(name, namespace, services.queue, secrets, services.database, scaling, worker, tasks))
    placed = poll(lambda: ready_pods(cluster, namespace, name), timeout=120, what="a Ready worker pod")
    pod = next(iter(placed))
    (hog,) = services.submit([{"name": "allocate", "kwargs": {"mib": 600, "hold_s": 5}, **submit}])
    others = services.submit([{"name": "echo", "args": [i]} for i in range(10)])
    with services.store() as task_store:
        started = time.monotonic()
        document = poll(
            lambda: (d := task_store.get(hog)) is not None and d["state"] == "dead" and d,
            timeout=300,
            what="the memory hog to end dead",
            interval=1,
        )
        seconds = time.monotonic() - started
        poll(
            lambda: all((d := task_store.get(t)) is not None and d["state"] == "succeeded" for t in others),
            timeout=180,
            what="the other 10 tasks to succeed",
            interval=1,
        )
        finished_by = {task_store.get(t)["worker"] for t in others}  # type: ignore[index]
    return MemoryHogRun(document, seconds, pod, container_status(cluster, namespace, pod), finished_by)


@pytest.mark.timeout(900)
def test_worker_over_its_memory_limit_is_oom_killed_and_its_task_ends_at_the_delivery_limit(
    cluster: Any,
    real_nodes: RealNodes,
    namespace: str,
    operator: Path,
    secrets: tuple[str, str],
    services: QueueServices,
) -> None:
    """A task allocating past the pod's memory limit: the kernel OOM-kills the worker (thread pool, so
    the task runs in the worker's own process), the broker redelivers the task, the restarted
    container counts the redelivery and runs it again, until the delivery limit (2) buries it `dead`.
    The same pod then serves the next tasks."""
    run = _run_memory_hog(cluster, namespace, secrets, services, "hungry", "thread")
    document, status, pod = run.document, run.status, run.pod
    terminated = (status.get("lastState") or {}).get("terminated") or {}
    sys.stderr.write(
        f"\nOOM: the hog was dead {run.seconds:.1f} s after submission; pod {pod} restarted {status.get('restartCount')} "
        f"times, last termination {terminated.get('reason')} (exit {terminated.get('exitCode')}); "
        f"error {document['error']['message']!r}\n"
    )
    assert document["error"]["type"] == "DeliveryLimit"
    assert "delivered 3 times (limit 2)" in document["error"]["message"]
    assert counted_redeliveries(document, 1) == 2
    assert terminated.get("reason") == "OOMKilled" and terminated.get("exitCode") == 137, status
    assert int(status.get("restartCount") or 0) >= 2
    assert run.finished_by == {pod}, run.finished_by
    # Its readiness probe (every 5 s) turns the restarted container Ready again.
    poll(lambda: pod in ready_pods(cluster, namespace, "hungry"), timeout=60, what="the restarted pod Ready", interval=1)
    cluster.kubectl("delete", "-n", namespace, "tq", "hungry")


@pytest.mark.timeout(900)
def test_process_pool_child_over_the_memory_limit_is_oom_killed_alone_and_the_error_says_so(
    cluster: Any,
    real_nodes: RealNodes,
    namespace: str,
    operator: Path,
    secrets: tuple[str, str],
    services: QueueServices,
) -> None:
    """The process pool (the default): the kernel OOM-kills the child that runs the hog, not the worker.
    The container is not restarted, the attempt is recorded `WorkerLost` naming the OOM killer, the
    retry meets the same end and the task ends `dead`; the other tasks succeed on the same pod."""
    run = _run_memory_hog(cluster, namespace, secrets, services, "greedy", "process", max_retries=1)
    document, status, pod = run.document, run.status, run.pod
    sys.stderr.write(
        f"\nOOM (process pool): the hog ended dead {run.seconds:.1f} s after submission after {document.get('attempts')} "
        f"attempts; pod {pod} restarted {status.get('restartCount')} times; error {document['error']!r}\n"
    )
    assert document["error"]["type"] == "WorkerLost", document["error"]
    assert "SIGKILL" in document["error"]["message"] and "OOM killer" in document["error"]["message"], document["error"]
    assert document.get("attempts") == 2
    assert int(status.get("restartCount") or 0) == 0, status  # only the child died
    assert run.finished_by == {pod}, run.finished_by
    assert pod in ready_pods(cluster, namespace, "greedy")
    cluster.kubectl("delete", "-n", namespace, "tq", "greedy")


@pytest.mark.timeout(900)
def test_scale_down_sigterm_lets_running_tasks_finish_within_the_grace_period(
    cluster: Any,
    real_nodes: RealNodes,
    namespace: str,
    operator: Path,
    secrets: tuple[str, str],
    services: QueueServices,
) -> None:
    scaling = {"minReplicas": 2, "maxReplicas": 2, "scaleDown": {"stabilizationWindowSeconds": 0}}
    apply(
        cluster, real_node_taskqueue("graceful", namespace, services.queue, secrets, services.database, scaling, {"prefetch": 2})
    )
    placement = poll(
        lambda: at_least_ready(cluster, namespace, "graceful", 2, exactly=True), timeout=180, what="2 Ready worker pods"
    )
    total = 8
    with services.store() as task_store:
        services.submit([{"name": "sleep", "kwargs": {"seconds": 8.0}} for _ in range(total)])

        def running_on_each() -> dict[str, int] | None:
            running = task_store.list(queue=services.queue, state=TaskState.RUNNING, limit=50)
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
            lambda: stopped not in {p["metadata"]["name"] for p in worker_pods(cluster, namespace, "graceful")},
            timeout=60,
            what=f"{stopped} to exit",
            interval=0.5,
        )
        exited = time.monotonic()
        assert exited - scaled_down < 30, "the stopped pod outlived its terminationGracePeriodSeconds"

        services.wait_succeeded(task_store, total, timeout=300, what="every task to succeed", interval=1)
        documents = task_store.list(queue=services.queue, limit=50)
        finished_by_stopped = [d for d in documents if d.get("worker") == stopped]
        assert finished_by_stopped, "the stopped pod finished none of its running tasks"
        assert all(d["attempts"] == 1 for d in documents), [(d["_id"], d["attempts"]) for d in documents]
    cluster.kubectl("delete", "-n", namespace, "tq", "graceful")
