"""The operator's outbox sweep (`taskq_operator.sweep.Sweeper`) on a real RabbitMQ and store.

A task recorded without a confirmed publish and older than the grace is republished to its TaskQueue's
queue (declared as the operator declares it) and counted; a fresh one is left; a store is swept at
most once per interval; the scaler's tick starts it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from worker_procs import Services, drain_queue, taskqueue_body

from taskq.core.message import TaskMessage, utcnow
from taskq.store.mongo import TaskStore
from taskq_operator.cache import CacheSnapshot
from taskq_operator.core.spec import TaskQueueSpec, parse_taskqueue
from taskq_operator.observe import Target
from taskq_operator.scaler import Scaler
from taskq_operator.sweep import Sweeper

pytestmark = pytest.mark.services


def _body(svc: Services) -> dict[str, Any]:
    return taskqueue_body(svc, "ns-sweep")


def _spec_and_target(svc: Services) -> tuple[TaskQueueSpec, Target]:
    return parse_taskqueue(_body(svc)), Target(svc.queue, svc.amqp_url, None, svc.mongodb_uri, svc.database)


def _republished_metric() -> float:
    value = REGISTRY.get_sample_value("taskq_operator_republished_total", {"namespace": "ns-sweep", "taskqueue": "tq"})
    return value or 0.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_operator_sweeps_each_store_at_most_once_per_interval(svc: Services, store: TaskStore) -> None:
    spec, target = _spec_and_target(svc)
    now = utcnow()
    old = TaskMessage(id="op-old", name="noop", queue=svc.queue, created_at=now)
    fresh = TaskMessage(id="op-fresh", name="noop", queue=svc.queue, created_at=now)
    store.insert_queued([old], now - timedelta(seconds=120))
    store.insert_queued([fresh], now)
    clock = Clock()
    sweeper = Sweeper(interval_s=30, grace_s=60, limit=10, clock=clock)
    before = _republished_metric()
    try:
        sweeper.offer([(spec, target)])
        assert sweeper.wait(timeout=60) == 1
        assert [props.message_id for props, _ in drain_queue(svc.amqp_url, svc.queue)] == ["op-old"]
        assert _republished_metric() == before + 1
        assert [d["_id"] for d in store.outbox.find({})] == ["op-fresh"]

        store.insert_queued(
            [TaskMessage(id="op-late", name="noop", queue=svc.queue, created_at=now)], now - timedelta(seconds=120)
        )
        sweeper.offer([(spec, target)])  # the same store within the interval: no sweep started
        assert sweeper.wait(timeout=60) == 1 and store.outbox.count_documents({"_id": "op-late"}) == 1
        clock.now += 30
        sweeper.offer([(spec, target)])
        assert sweeper.wait(timeout=60) == 1
        assert [props.message_id for props, _ in drain_queue(svc.amqp_url, svc.queue)] == ["op-late"]
    finally:
        sweeper.close()


class RecordingKube:
    """The scaler's Kubernetes side, recorded: Secrets from the test's servers, status patches and Events kept."""

    def __init__(self, svc: Services) -> None:
        self.secrets = {"b": {"amqp-url": svc.amqp_url}, "s": {"mongodb-uri": svc.mongodb_uri}}
        self.statuses: list[dict[str, Any]] = []

    def read_secret(self, namespace: str, name: str) -> dict[str, str]:
        return self.secrets[name]

    def patch_taskqueue_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.statuses.append(status)

    def post_event(self, *args: Any) -> None:
        pass


def test_the_scaler_tick_starts_the_sweep_for_the_taskqueues_it_observed(svc: Services, store: TaskStore) -> None:
    now = utcnow()
    store.insert_queued([TaskMessage(id="tick-old", name="noop", queue=svc.queue, created_at=now)], now - timedelta(seconds=120))
    body = _body(svc)
    kube = RecordingKube(svc)
    sweeper = Sweeper(grace_s=60)
    scaler = Scaler(cache=None, kube=kube, sweeper=sweeper)  # type: ignore[arg-type]  # tick() reads only the snapshot
    try:
        scaler.tick(CacheSnapshot(taskqueues={("ns-sweep", "tq"): body}, deployments={}))
        assert sweeper.wait(timeout=60) == 1
        assert [props.message_id for props, _ in drain_queue(svc.amqp_url, svc.queue)] == ["tick-old"]
        assert kube.statuses  # the tick scaled and reported as usual
    finally:
        sweeper.close()
        scaler.observers.close()
