"""The operator on the real control plane: a TaskQueue gets its Deployment, the backlog scales it up,
bridged workers drain it, it scales back down after the window, events explain each step, deleting the
TaskQueue removes the Deployment, a vanished broker holds replicas, and a lost node loses no task.

The operator runs as a `taskq-operator` subprocess; RabbitMQ and the store are the test services on
127.0.0.1, reached through the URLs in the Secrets (the bridged workers run on this host too).
"""

from __future__ import annotations

import json
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from kube_support import (
    QueueServices,
    apply,
    connection_secrets,
    fresh_namespace,
    get,
    operator_process,
    pods,
    replicas,
    taskqueue,
    taskqueue_events,
)

from taskq_dev import manifests
from taskq_dev.ports import poll

pytestmark = [pytest.mark.cluster, pytest.mark.services, pytest.mark.slow]


class TcpRelay:
    """Forward a loopback port to another; `close()` makes the target vanish for whoever used the relay."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._peers: dict[socket.socket, socket.socket] = {}
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed.is_set():
            for key, _ in self._selector.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    client, _ = self._listener.accept()
                    try:
                        upstream = socket.create_connection(self._target, timeout=2)
                    except OSError:
                        client.close()
                        continue
                    for a, b in ((client, upstream), (upstream, client)):
                        self._peers[a] = b
                        self._selector.register(a, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if data:
                    try:
                        self._peers[sock].sendall(data)
                        continue
                    except OSError:
                        pass
                self._drop(sock)
        for sock in list(self._peers):
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        other = self._peers.pop(sock, None)
        for s in (sock, other):
            if s is None:
                continue
            self._peers.pop(s, None)
            try:
                self._selector.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self._selector.unregister(self._listener)
        self._listener.close()


def _relayed(url: str, relay: TcpRelay) -> str:
    parts = urlsplit(url)
    auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit((parts.scheme, f"{auth}127.0.0.1:{relay.port}", parts.path, parts.query, parts.fragment))


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def namespace(cluster: Any) -> Iterator[str]:
    with fresh_namespace(cluster, "tq-op") as name:
        yield name


@pytest.fixture(scope="module")
def operator(cluster: Any, namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`taskq-operator --namespace <ns>` as a subprocess; yields its log file."""
    with operator_process(cluster, namespace, tmp_path_factory, log_tail=4000) as log_path:
        yield log_path


def _taskqueue(name: str, namespace: str, queue: str, broker: str, store: str, database: str,
               scaling: dict[str, Any], worker: dict[str, Any] | None = None) -> dict[str, Any]:
    return taskqueue(
        name, namespace, queue, (broker, store), database, scaling,
        worker={**manifests.DEFAULT_WORKER, "prefetch": 4, "concurrency": 2, **(worker or {})},
        tasks={"timeoutSeconds": 30},
    )


def _condition(cluster: Any, namespace: str, name: str, type_: str) -> dict[str, Any] | None:
    body = get(cluster, namespace, "taskqueue", name) or {}
    for condition in (body.get("status") or {}).get("conditions") or []:
        if condition["type"] == type_:
            return condition
    return None


# -- tests ------------------------------------------------------------------------------------


def test_taskqueue_gets_a_hardened_owned_deployment_and_spec_changes_roll_it(
        cluster: Any, namespace: str, operator: Path, amqp_url: str, rabbitmq: Any, mongodb_uri: str,
        database_name: str, queue_name: str) -> None:
    broker, store = connection_secrets(cluster, namespace, "a", amqp_url, rabbitmq.management_url, mongodb_uri)
    body = _taskqueue("shape", namespace, queue_name, broker, store, database_name, {"minReplicas": 1})
    apply(cluster, body)
    deployment = poll(
        lambda: get(cluster, namespace, "deployment", "shape-worker"),
        timeout=30,
        what="the Deployment",
        interval=0.5,
    )
    owner = deployment["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("TaskQueue", "shape", True)
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["TASKQ_AMQP_URL"]["valueFrom"]["secretKeyRef"] == {"name": broker, "key": "amqp-url"}
    assert env["TASKQ_QUEUE"]["value"] == queue_name
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert {t["key"]: t["tolerationSeconds"] for t in pod["tolerations"]}["node.kubernetes.io/unreachable"] <= 30
    assert poll(lambda: replicas(cluster, namespace, "shape-worker") == 1, timeout=20, what="minReplicas 1", interval=0.5)

    generation = deployment["metadata"]["generation"]
    cluster.kubectl("patch", "-n", namespace, "tq", "shape", "--type=merge",
                    "-p", json.dumps({"spec": {"worker": {"concurrency": 3}}}))

    def rolled() -> dict[str, Any] | None:
        current = get(cluster, namespace, "deployment", "shape-worker") or {}
        if current.get("metadata", {}).get("generation", 0) > generation:
            return current
        return None

    rolled_out = poll(rolled, timeout=30, what="the Deployment template to change", interval=0.5)
    env = {e["name"]: e.get("value") for e in rolled_out["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TASKQ_CONCURRENCY"] == "3"
    assert rolled_out["spec"]["replicas"] == 1

    cluster.kubectl("delete", "-n", namespace, "tq", "shape")
    poll(
        lambda: get(cluster, namespace, "deployment", "shape-worker") is None,
        timeout=60,
        what="garbage collection of the Deployment",
        interval=0.5,
    )
    secrets = cluster.kubectl("get", "-n", namespace, "events", "-o", "json").stdout
    assert "guest:guest" not in secrets and "mongodb://" not in secrets


@pytest.mark.timeout(900)
def test_backlog_scales_up_workers_drain_and_it_scales_back_down(
        cluster: Any, bridge: Any, namespace: str, operator: Path, amqp_url: str, rabbitmq: Any,
        mongodb_uri: str, database_name: str, queue_name: str) -> None:
    broker, store = connection_secrets(cluster, namespace, "b", amqp_url, rabbitmq.management_url, mongodb_uri)
    scaling = {"minReplicas": 0, "maxReplicas": 10, "tasksPerReplica": 100,
               "scaleDown": {"stabilizationWindowSeconds": 10}}
    body = _taskqueue("burst", namespace, queue_name, broker, store, database_name, scaling)
    apply(cluster, body)
    poll(lambda: get(cluster, namespace, "deployment", "burst-worker"), timeout=30, what="the Deployment", interval=0.5)
    assert replicas(cluster, namespace, "burst-worker") == 0

    services = QueueServices(amqp_url, mongodb_uri, database_name, queue_name)
    services.submit([{"name": "noop"} for _ in range(1000)])

    seen: list[int] = []

    def at_ten() -> bool:
        now = replicas(cluster, namespace, "burst-worker") or 0
        seen.append(now)
        return now == 10

    poll(at_ten, timeout=30, what="10 replicas for 1000 tasks at 100 per replica", interval=0.25)
    assert seen == sorted(seen), f"replicas went down while the backlog was high: {seen}"

    table = cluster.kubectl("get", "-n", namespace, "tq", "burst").stdout.splitlines()
    assert table[0].split() == ["NAME", "QUEUE", "QUEUED", "UNACKED", "REPLICAS", "DESIRED", "MIN", "MAX",
                                "READY", "AGE"]
    assert table[1].split()[1] == queue_name

    with services.store() as task_store:
        services.wait_succeeded(task_store, 1000, timeout=600, what="the bridged workers to finish all 1000 tasks")
    poll(
        lambda: replicas(cluster, namespace, "burst-worker") == 0,
        timeout=60,
        what="scale-down to minReplicas after the 10 s window",
        interval=0.5,
    )

    events = taskqueue_events(cluster, namespace, "burst")
    reasons = [e["reason"] for e in events]
    assert "ScaleUp" in reasons and reasons[-1] == "ScaleDown", reasons
    assert all("backlog" in e["message"] for e in events if e["reason"] in ("ScaleUp", "ScaleDown"))
    status = (get(cluster, namespace, "tq", "burst") or {})["status"]
    assert status["tasks"]["succeeded"] == 1000
    assert status["lastScaleReason"].startswith("ScaleDown")


def test_vanished_broker_sets_condition_and_holds_replicas(
        cluster: Any, namespace: str, operator: Path, amqp_url: str, rabbitmq: Any, mongodb_uri: str,
        database_name: str, queue_name: str) -> None:
    amqp, management = urlsplit(amqp_url), urlsplit(rabbitmq.management_url)
    amqp_relay = TcpRelay(amqp.hostname or "127.0.0.1", amqp.port or 5672)
    management_relay = TcpRelay(management.hostname or "127.0.0.1", management.port or 15672)
    try:
        broker, store = connection_secrets(cluster, namespace, "c", _relayed(amqp_url, amqp_relay),
                                 _relayed(rabbitmq.management_url, management_relay), mongodb_uri)
        body = _taskqueue("fragile", namespace, queue_name, broker, store, database_name,
                          {"minReplicas": 2, "maxReplicas": 5, "scaleDown": {"stabilizationWindowSeconds": 0}})
        apply(cluster, body)
        poll(lambda: replicas(cluster, namespace, "fragile-worker") == 2, timeout=30, what="2 replicas", interval=0.5)
        poll(
            lambda: (_condition(cluster, namespace, "fragile", "BrokerReachable") or {}).get("status") == "True",
            timeout=20,
            what="BrokerReachable=True",
            interval=0.5,
        )
    finally:
        amqp_relay.close()
        management_relay.close()
    unreachable = poll(
        lambda: (c := _condition(cluster, namespace, "fragile", "BrokerReachable")) and c["status"] == "False" and c,
        timeout=20,
        what="BrokerReachable=False",
        interval=0.5,
    )
    assert "unreachable" in unreachable["message"] or "lost" in unreachable["message"]
    assert "guest:guest" not in unreachable["message"]
    time.sleep(3)
    assert replicas(cluster, namespace, "fragile-worker") == 2
    assert any(e["reason"] == "BrokerUnreachable" and e["type"] == "Warning"
               for e in taskqueue_events(cluster, namespace, "fragile"))
    cluster.kubectl("delete", "-n", namespace, "tq", "fragile")


@pytest.mark.timeout(900)
def test_node_loss_with_work_in_flight_loses_no_task(
        cluster: Any, bridge: Any, namespace: str, operator: Path, amqp_url: str, rabbitmq: Any,
        mongodb_uri: str, database_name: str, queue_name: str) -> None:
    broker, store = connection_secrets(cluster, namespace, "d", amqp_url, rabbitmq.management_url, mongodb_uri)
    scaling = {"minReplicas": 3, "maxReplicas": 3, "scaleDown": {"stabilizationWindowSeconds": 0}}
    body = _taskqueue("sturdy", namespace, queue_name, broker, store, database_name, scaling)
    apply(cluster, body)
    selector = "app.kubernetes.io/instance=sturdy"

    def running_pods() -> dict[str, str] | None:
        placed = {p["metadata"]["name"]: p["spec"].get("nodeName", "") for p in pods(cluster, namespace, selector)
                  if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")}
        return placed if len(placed) == 3 else None

    placement = poll(running_pods, timeout=60, what="3 running worker pods", interval=0.5)
    total = 120
    services = QueueServices(amqp_url, mongodb_uri, database_name, queue_name)
    with services.store() as task_store:
        services.submit([{"name": "sleep", "kwargs": {"seconds": 0.5}} for _ in range(total)])
        poll(
            lambda: task_store.counts_by_state(queue_name).get("running", 0) >= 3,
            timeout=60,
            what="tasks in flight",
            interval=0.5,
        )
        victim = sorted(placement.values())[0]
        lost_pods = {pod for pod, node in placement.items() if node == victim}
        cluster.lose_node(victim)

        def rescheduled() -> dict[str, str] | None:
            now = running_pods()
            if now and not set(now) & lost_pods and victim not in now.values():
                return now
            return None

        poll(rescheduled, timeout=90, what=f"the pods of lost node {victim} to run elsewhere", interval=1)
        counts = services.wait_succeeded(task_store, total, timeout=600, what="every task to succeed after the node loss")
        assert counts["succeeded"] == total and sum(counts.values()) == total, counts
