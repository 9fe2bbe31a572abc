"""The operator process on the real control plane under faults: a Deployment deleted by hand comes back,
a foreign Deployment with the worker's name is refused and left alone, a blackholed broker does not stop
another TaskQueue from scaling, a restarted operator keeps the scale-down window it had, and a replica
kopf's peering pauses stops scaling until it resumes.

RabbitMQ and the store are the test services on 127.0.0.1; no workers run (no bridge), so a backlog stays.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from taskq.client import Client
from taskq.settings import Settings
from taskq_dev import manifests
from taskq_dev.operator_process import running_operator
from taskq_dev.ports import poll

pytestmark = [pytest.mark.cluster, pytest.mark.services, pytest.mark.slow]

CRD = Path(__file__).resolve().parents[2] / "crds" / "taskqueue.yaml"


class Blackhole:
    """A loopback listener that accepts every connection and never sends a byte."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                self._held.append(self._listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        for connection in [*self._held, self._listener]:
            with contextlib.suppress(OSError):
                connection.close()


@pytest.fixture(scope="module")
def namespace(cluster: Any) -> Iterator[str]:
    cluster.kubectl("apply", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/taskqueues.taskq.io")
    name = f"tq-rec-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def operator(cluster: Any, namespace: str, tmp_path: Path) -> Iterator[Path]:
    """`taskq-operator --namespace <ns>` for one test; yields its log file."""
    log_path = tmp_path / "operator.log"
    try:
        with running_operator(namespace, log_path, env={"KUBECONFIG": str(cluster.kubeconfig)},
                              start_timeout=30, stop_timeout=15):
            yield log_path
    finally:
        sys.stderr.write(log_path.read_text(errors="replace")[-3000:])


def _apply(cluster: Any, body: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))


def _secrets(cluster: Any, namespace: str, suffix: str, amqp_url: str, management_url: str,
             mongodb_uri: str) -> tuple[str, str]:
    broker, store = f"rabbit-{suffix}", f"mongo-{suffix}"
    for name, data in ((broker, {"amqp-url": amqp_url, "management-url": management_url}),
                       (store, {"mongodb-uri": mongodb_uri})):
        _apply(cluster, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
                         "stringData": data})
    return broker, store


def _taskqueue(name: str, namespace: str, queue: str, broker: str, store: str, database: str,
               scaling: dict[str, Any]) -> dict[str, Any]:
    return manifests.taskqueue(name, namespace, queue=queue, broker_secret=broker, store_secret=store,
                               database=database, tasks={"timeoutSeconds": 30},
                               scaling={"pollIntervalSeconds": 1, **scaling})


def _get(cluster: Any, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    result = cluster.kubectl("get", "-n", namespace, kind, name, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def _condition(cluster: Any, namespace: str, name: str, type_: str) -> dict[str, Any] | None:
    body = _get(cluster, namespace, "taskqueue", name) or {}
    return next((c for c in (body.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def _events(cluster: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    listing = json.loads(cluster.kubectl(
        "get", "events", "-n", namespace, "-o", "json",
        f"--field-selector=involvedObject.kind=TaskQueue,involvedObject.name={name}").stdout)
    return sorted(listing["items"], key=lambda e: e["metadata"]["name"])


def _replicas(cluster: Any, namespace: str, name: str) -> int | None:
    body = _get(cluster, namespace, "deployment", name)
    return None if body is None else int(body["spec"].get("replicas") or 0)


def _submit(amqp_url: str, mongodb_uri: str, database: str, queue: str, count: int) -> None:
    settings = Settings(amqp_url=amqp_url, mongodb_uri=mongodb_uri, database=database, queue=queue)
    with Client(settings) as client:
        client.submit_many([{"name": "noop"} for _ in range(count)])


def test_deployment_deleted_by_hand_is_recreated_within_seconds(
        cluster: Any, namespace: str, operator: Path, amqp_url: str, rabbitmq: Any, mongodb_uri: str,
        database_name: str, queue_name: str) -> None:
    broker, store = _secrets(cluster, namespace, "a", amqp_url, rabbitmq.management_url, mongodb_uri)
    _apply(cluster, _taskqueue("phoenix", namespace, queue_name, broker, store, database_name, {"minReplicas": 2}))
    first = poll(lambda: (d := _get(cluster, namespace, "deployment", "phoenix-worker")) and
                 d["spec"].get("replicas") == 2 and d, timeout=30, what="the Deployment at 2 replicas", interval=0.5)
    cluster.kubectl("delete", "-n", namespace, "deployment", "phoenix-worker")
    deleted = time.monotonic()
    again = poll(lambda: (d := _get(cluster, namespace, "deployment", "phoenix-worker")) and
                 d["metadata"]["uid"] != first["metadata"]["uid"] and d,
                 timeout=30, what="the Deployment to be recreated", interval=0.2)
    took = time.monotonic() - deleted
    assert took < 10, f"recreated after {took:.1f} s"
    assert again["spec"]["replicas"] == 2
    assert again["metadata"]["ownerReferences"][0]["name"] == "phoenix"
    cluster.kubectl("delete", "-n", namespace, "tq", "phoenix")


def test_foreign_deployment_with_the_workers_name_is_refused_and_left_alone(
        cluster: Any, namespace: str, operator: Path, amqp_url: str, rabbitmq: Any, mongodb_uri: str,
        database_name: str, queue_name: str) -> None:
    foreign = {"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "squatted-worker", "namespace": namespace, "labels": {"app": "web"}},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "web", "image": "web:1"}]}}}}
    _apply(cluster, foreign)
    before = _get(cluster, namespace, "deployment", "squatted-worker")
    assert before is not None
    broker, store = _secrets(cluster, namespace, "b", amqp_url, rabbitmq.management_url, mongodb_uri)
    _apply(cluster, _taskqueue("squatted", namespace, queue_name, broker, store, database_name, {"minReplicas": 3}))
    owned = poll(lambda: (c := _condition(cluster, namespace, "squatted", "DeploymentOwned")) and
                 c["status"] == "False" and c, timeout=30, what="DeploymentOwned=False", interval=0.5)
    assert owned["reason"] == "DeploymentNotOwned" and "not owned" in owned["message"]
    assert any(e["type"] == "Warning" and e["reason"] == "DeploymentNotOwned"
               for e in _events(cluster, namespace, "squatted"))
    time.sleep(3)
    after = _get(cluster, namespace, "deployment", "squatted-worker")
    assert after is not None
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], "the foreign Deployment changed"
    assert "ownerReferences" not in after["metadata"] and after["spec"]["replicas"] == 1
    cluster.kubectl("delete", "-n", namespace, "tq", "squatted")
    cluster.kubectl("delete", "-n", namespace, "deployment", "squatted-worker")


@pytest.mark.timeout(300)
def test_blackholed_broker_of_one_taskqueue_does_not_stop_another_from_scaling(
        cluster: Any, namespace: str, operator: Path, amqp_url: str, rabbitmq: Any, mongodb_uri: str,
        database_name: str, queue_name: str) -> None:
    hole = Blackhole()
    try:
        void_broker, store = _secrets(cluster, namespace, "void", f"amqp://guest:guest@127.0.0.1:{hole.port}/%2F",
                                      f"http://guest:guest@127.0.0.1:{hole.port}", mongodb_uri)
        broker, _ = _secrets(cluster, namespace, "calm", amqp_url, rabbitmq.management_url, mongodb_uri)
        _apply(cluster, _taskqueue("void", namespace, f"{queue_name}-void", void_broker, store, database_name,
                                   {"minReplicas": 1}))
        _apply(cluster, _taskqueue("calm", namespace, queue_name, broker, store, database_name,
                                   {"minReplicas": 0, "maxReplicas": 10, "tasksPerReplica": 100}))
        poll(lambda: _get(cluster, namespace, "deployment", "calm-worker"), timeout=30, what="calm's Deployment",
             interval=0.5)
        _submit(amqp_url, mongodb_uri, database_name, queue_name, 300)
        submitted = time.monotonic()
        poll(lambda: _replicas(cluster, namespace, "calm-worker") == 3, timeout=30, what="calm at 3 replicas",
             interval=0.25)
        took = time.monotonic() - submitted
        assert took < 15, f"calm scaled {took:.1f} s after the submission"
        unreachable = poll(lambda: (c := _condition(cluster, namespace, "void", "BrokerReachable")) and
                           c["status"] == "False" and c, timeout=30, what="void: BrokerReachable=False", interval=0.5)
        assert "guest:guest" not in unreachable["message"]
        assert _replicas(cluster, namespace, "void-worker") == 1
    finally:
        hole.close()
        for name in ("void", "calm"):
            cluster.kubectl("delete", "-n", namespace, "tq", name, check=False)


def test_restarted_operator_keeps_the_scale_down_window(
        cluster: Any, namespace: str, amqp_url: str, rabbitmq: Any, mongodb_uri: str, database_name: str,
        queue_name: str, tmp_path: Path) -> None:
    broker, store = _secrets(cluster, namespace, "e", amqp_url, rabbitmq.management_url, mongodb_uri)
    scaling = {"minReplicas": 0, "maxReplicas": 10, "tasksPerReplica": 100,
               "scaleDown": {"stabilizationWindowSeconds": 40}}
    env = {"KUBECONFIG": str(cluster.kubeconfig)}
    with running_operator(namespace, tmp_path / "first.log", env=env, start_timeout=30, stop_timeout=15):
        _apply(cluster, _taskqueue("steady", namespace, queue_name, broker, store, database_name, scaling))
        poll(lambda: _get(cluster, namespace, "deployment", "steady-worker"), timeout=30, what="the Deployment",
             interval=0.5)
        _submit(amqp_url, mongodb_uri, database_name, queue_name, 200)
        poll(lambda: _replicas(cluster, namespace, "steady-worker") == 2, timeout=30, what="2 replicas", interval=0.25)
        purge = Settings(amqp_url=amqp_url, mongodb_uri=mongodb_uri, database=database_name, queue=queue_name)
        with Client(purge) as client:
            client.purge(queue_name)
        emptied = time.monotonic()
        poll(lambda: ((_get(cluster, namespace, "deployment", "steady-worker") or {}).get("metadata", {})
                      .get("annotations", {}).get("taskq.io/scale-down-history", "").count("=") >= 1),
             timeout=20, what="the history annotation to record the drop", interval=0.25)
    with running_operator(namespace, tmp_path / "second.log", env=env, start_timeout=30, stop_timeout=15):
        while time.monotonic() - emptied < 30:  # inside the 40 s window that began before the restart
            assert _replicas(cluster, namespace, "steady-worker") == 2, "scaled down inside the window after a restart"
            time.sleep(0.5)
        poll(lambda: _replicas(cluster, namespace, "steady-worker") == 0, timeout=30,
             what="scale-down once the window has passed", interval=0.5)
    cluster.kubectl("delete", "-n", namespace, "tq", "steady")


PEERING_CRD = Path(__file__).resolve().parents[2] / "charts" / "taskq" / "crds" / "kopf-peering.yaml"


def _peering_status(cluster: Any, namespace: str, entries: dict[str, Any]) -> None:
    cluster.kubectl("patch", "-n", namespace, "kopfpeering", "taskq-ha", "--type=merge",
                    "-p", json.dumps({"status": entries}))


@pytest.mark.timeout(300)
def test_replica_paused_by_peering_stops_scaling_until_it_resumes(
        cluster: Any, namespace: str, amqp_url: str, rabbitmq: Any, mongodb_uri: str, database_name: str,
        queue_name: str, tmp_path: Path) -> None:
    """A replica that was active and is then outranked (kopf pauses its handlers) must stop acting too."""
    cluster.kubectl("apply", "-f", str(PEERING_CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/kopfpeerings.kopf.dev")
    _apply(cluster, {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
                     "metadata": {"name": "taskq-ha", "namespace": namespace}})
    broker, store = _secrets(cluster, namespace, "p", amqp_url, rabbitmq.management_url, mongodb_uri)
    log_path = tmp_path / "operator.log"
    env = {"KUBECONFIG": str(cluster.kubeconfig), "TASKQ_PEERING": "taskq-ha"}
    with running_operator(namespace, log_path, env=env, start_timeout=30, stop_timeout=15):
        _apply(cluster, _taskqueue("paired", namespace, queue_name, broker, store, database_name,
                                   {"minReplicas": 0, "maxReplicas": 10, "tasksPerReplica": 100}))
        poll(lambda: _get(cluster, namespace, "deployment", "paired-worker"), timeout=40,
             what="the active replica to create the Deployment", interval=0.5)
        seen = datetime.now(UTC).isoformat()
        _peering_status(cluster, namespace, {"intruder@elsewhere": {"priority": 2**62, "lastseen": seen, "lifetime": 120}})
        poll(lambda: b"Pausing operations in favour of" in log_path.read_bytes(), timeout=30,
             what="kopf to pause this replica", interval=0.25)
        _submit(amqp_url, mongodb_uri, database_name, queue_name, 300)
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:  # kopf's handlers are paused: so is the scaler
            assert _replicas(cluster, namespace, "paired-worker") == 0, "a paused replica scaled"
            time.sleep(0.5)
        _peering_status(cluster, namespace, {"intruder@elsewhere": None})
        poll(lambda: _replicas(cluster, namespace, "paired-worker") == 3, timeout=40,
             what="the resumed replica to scale", interval=0.5)
    cluster.kubectl("delete", "-n", namespace, "tq", "paired")
