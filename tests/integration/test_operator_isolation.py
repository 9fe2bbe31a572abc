"""One bad TaskQueue never holds up the others: a blackholed broker, a replica-set store URI nobody answers.

The operator's real observers read a real RabbitMQ and store for the healthy TaskQueue; the broken ones
point at a loopback listener that accepts connections and never answers (AMQP and management HTTP), and
at a replica-set URI whose hosts refuse. Kubernetes is KMock.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import threading
import time
from typing import Any

import pytest
from kubernetes.client import ApiClient, Configuration
from queue_support import delete, fill

from taskq_dev.manifests import taskqueue
from taskq_operator.adapters.kube import Kube
from taskq_operator.cache import WatchCache
from taskq_operator.observe import Observers
from taskq_operator.scaler import Scaler

pytestmark = pytest.mark.services

NS = "jobs"
DEPLOYMENTS = "apps/v1/deployments"
TASKQUEUES = "taskq.io/v1alpha1/taskqueues"


class Blackhole:
    """A loopback listener that accepts every connection and never sends a byte."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._closed.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(connection)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        for connection in [*self._held, self._listener]:
            with contextlib.suppress(OSError):
                connection.close()


def _secret(kmock: Any, name: str, data: dict[str, str]) -> None:
    kmock.objects["v1/secrets", NS, name] = {
        "metadata": {"name": name, "namespace": NS},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def _taskqueue(kmock: Any, cache: WatchCache, name: str, queue: str, broker: str, store: str, database: str) -> None:
    body = taskqueue(name, NS, queue=queue, broker_secret=broker, store_secret=store, database=database,
                     uid=f"uid-{name}", generation=1,
                     scaling={"maxReplicas": 20, "tasksPerReplica": 50, "pollIntervalSeconds": 1})
    kmock.objects[TASKQUEUES, NS, name] = body
    deployment = {"metadata": {"name": f"{name}-worker", "namespace": NS,
                               "ownerReferences": [{"kind": "TaskQueue", "name": name, "uid": f"uid-{name}",
                                                    "controller": True}]},
                  "spec": {"replicas": 0}, "status": {}}
    kmock.objects[DEPLOYMENTS, NS, f"{name}-worker"] = deployment
    cache.upsert_taskqueue(body)
    cache.upsert_deployment(deployment)


def _status_patched(kmock: Any, taskqueue_name: str) -> bool:
    return any(str(r.method).upper().endswith("PATCH") and str(r.url).endswith(f"/taskqueues/{taskqueue_name}/status")
               for r in kmock)


def _scale_patches(kmock: Any, deployment: str) -> list[int]:
    """Replica counts patched into `deployment`, in order."""
    return [r.data["spec"]["replicas"] for r in kmock
            if str(r.method).upper().endswith("PATCH") and str(r.url).endswith(f"/deployments/{deployment}")
            and "replicas" in (r.data.get("spec") or {})]


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_blackholed_broker_and_replica_set_store_never_hold_up_another_taskqueue(
        kmock: Any, amqp_url: str, rabbitmq: Any, mongodb_uri: str, database_name: str, queue_name: str) -> None:
    hole, management_hole = Blackhole(), Blackhole()
    cache = WatchCache()
    _secret(kmock, "rabbit", {"amqp-url": amqp_url, "management-url": rabbitmq.management_url})
    _secret(kmock, "mongo", {"mongodb-uri": mongodb_uri})
    _secret(kmock, "hole", {"amqp-url": f"amqp://guest:guest@127.0.0.1:{hole.port}/%2F",
                            "management-url": f"http://guest:guest@127.0.0.1:{management_hole.port}"})
    _secret(kmock, "mongo-rs", {"mongodb-uri": "mongodb://127.0.0.1:1,127.0.0.1:2,127.0.0.1:3/?replicaSet=rs0"})
    _taskqueue(kmock, cache, "healthy", queue_name, "rabbit", "mongo", database_name)
    _taskqueue(kmock, cache, "stuck", f"{queue_name}-stuck", "hole", "mongo", database_name)
    _taskqueue(kmock, cache, "replicas", f"{queue_name}-rs", "rabbit", "mongo-rs", database_name)
    fill(amqp_url, {queue_name: 180}, durable=True)
    scaler = Scaler(cache, Kube(ApiClient(Configuration(host=str(kmock.url).rstrip("/")))), Observers())
    try:
        started = time.monotonic()
        await scaler.tick_once()
        first_tick_s = time.monotonic() - started
        assert _scale_patches(kmock, "healthy-worker") == [4]
        assert first_tick_s < 5.0, f"the first tick took {first_tick_s:.1f} s"

        fill(amqp_url, {queue_name: 120}, durable=True)  # 300 ready: 6 replicas
        ticks: list[float] = []
        deadline = time.monotonic() + 30
        # Until healthy has scaled again and stuck is reported (its reads are late for a few ticks first,
        # which counts as unreachable only when it lasts: scaler.LATE_READS_BEFORE_UNREACHABLE).
        while (len(_scale_patches(kmock, "healthy-worker")) < 2 or not _status_patched(kmock, "stuck")) \
                and time.monotonic() < deadline:
            started = time.monotonic()
            pause = (await scaler.tick_once()).pause_s
            ticks.append(time.monotonic() - started)
            await asyncio.sleep(pause)
        assert _scale_patches(kmock, "healthy-worker")[-1] == 6
        assert max(ticks) < 5.0, ticks

        statuses = {str(r.url).rsplit("/", 2)[-2]: r.data["status"] for r in kmock
                    if str(r.method).upper().endswith("PATCH") and str(r.url).endswith("/status")}
        stuck = next(c for c in statuses["stuck"]["conditions"] if c["type"] == "BrokerReachable")
        assert stuck["status"] == "False" and "guest:guest" not in stuck["message"], stuck
        assert "replicas" in statuses  # its store never answers; it is observed and reported all the same
        assert _scale_patches(kmock, "stuck-worker") == []
    finally:
        hole.close()
        management_hole.close()
        scaler.observers.close()
        delete(amqp_url, queue_name)
