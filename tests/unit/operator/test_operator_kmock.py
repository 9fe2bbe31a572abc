"""Handler behaviour against KMock (the kopf author's Kubernetes API emulator): reconcile and scaler ticks.

The broker/store observation is replaced by fixed readings through the operator's own `Observers`
seam (no RabbitMQ or MongoDB is imitated); everything Kubernetes-side goes over HTTP to KMock.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import inspect
import threading
import time
from collections.abc import Callable
from typing import Any

import kopf
import pytest
from kubernetes.client import ApiClient, Configuration

from taskq_dev.manifests import example as taskqueue
from taskq_operator import handlers
from taskq_operator.adapters.kube import Kube
from taskq_operator.adapters.store import WorkerLoad
from taskq_operator.cache import WatchCache
from taskq_operator.core.policy import Observation
from taskq_operator.core.spec import parse_taskqueue
from taskq_operator.liveness import TickHealth
from taskq_operator.observe import Observers, Reading, Target
from taskq_operator.reconcile import apply_deployment
from taskq_operator.scaler import Scaler

NS = "jobs"
DEPLOYMENTS = "apps/v1/deployments"
TASKQUEUES = "taskq.io/v1alpha1/taskqueues"


class FixedReadings(Observers):
    """The operator's observation seam returning readings set by the test."""

    def __init__(self) -> None:
        super().__init__()
        self.readings: dict[str, Reading] = {}
        self.asked: list[list[str]] = []

    def read(self, targets: Any) -> dict[Any, Reading]:
        self.asked.append([t.queue for t in targets])
        return {(t.broker_key, t.queue): self.readings[t.queue] for t in targets if t.queue in self.readings}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def _kube(kmock: Any) -> Kube:
    return Kube(ApiClient(Configuration(host=str(kmock.url).rstrip("/"))))


def _seed(kmock: Any, body: dict[str, Any]) -> None:
    kmock.objects[TASKQUEUES, NS, "emails"] = body
    kmock.objects["v1/secrets", NS, "rabbit"] = _secret("rabbit", {"amqp-url": "amqp://u:secretpw@127.0.0.1:1/%2F"})
    kmock.objects["v1/secrets", NS, "mongo"] = _secret("mongo", {"mongodb-uri": "mongodb://127.0.0.1:1/"})


def _requests(kmock: Any, method: str, fragment: str) -> list[Any]:
    return [r for r in kmock if str(r.method).upper().endswith(method) and fragment in str(r.url)]


def _scalings(kmock: Any) -> list[int]:
    """The replica counts the operator patched into the Deployment, in order (annotation-only patches left out)."""
    return [r.data["spec"]["replicas"] for r in _requests(kmock, "PATCH", "deployments/emails-worker")
            if "replicas" in (r.data.get("spec") or {})]


def _scaler(kmock: Any, body: dict[str, Any], replicas: int) -> tuple[Scaler, FixedReadings, Clock]:
    cache = WatchCache()
    cache.upsert_taskqueue(body)
    owner = {"kind": "TaskQueue", "name": "emails", "uid": body["metadata"]["uid"], "controller": True}
    deployment = {"metadata": {"name": "emails-worker", "namespace": NS, "ownerReferences": [owner]},
                  "spec": {"replicas": replicas}, "status": {"replicas": replicas, "readyReplicas": replicas}}
    kmock.objects[DEPLOYMENTS, NS, "emails-worker"] = deployment
    cache.upsert_deployment(deployment)
    readings, clock = FixedReadings(), Clock()
    return Scaler(cache, _kube(kmock), readings, clock=clock), readings, clock


def _observed(ready: int, unacked: int = 0, loads: dict[str, int] | None = None) -> Reading:
    return Reading(Observation(ready, unacked, 1), "amqp+heartbeats", None, WorkerLoad(loads or {}))


@pytest.mark.asyncio
async def test_reconcile_creates_owned_deployment_then_keeps_replicas(kmock: Any) -> None:
    body = taskqueue()
    _seed(kmock, body)
    spec = parse_taskqueue(body)
    kube = _kube(kmock)
    await asyncio.to_thread(apply_deployment, spec, kube)
    created = kmock.objects[DEPLOYMENTS, NS, "emails-worker"]
    assert created["metadata"]["ownerReferences"][0]["uid"] == "0000-1111"
    assert created["spec"]["replicas"] == 0

    await asyncio.to_thread(kube.scale_deployment, NS, "emails-worker", 5)
    changed = parse_taskqueue(taskqueue(tasks={"timeoutSeconds": 120}))
    await asyncio.to_thread(apply_deployment, changed, kube)
    patch = _requests(kmock, "PATCH", "deployments/emails-worker")[-1].data
    assert "replicas" not in patch["spec"]
    env = {e["name"]: e.get("value") for e in patch["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TASKQ_TASK_TIMEOUT"] == "120"


@pytest.mark.asyncio
async def test_backlog_scales_up_with_event_and_status_once(kmock: Any) -> None:
    body = taskqueue()
    _seed(kmock, body)
    scaler, readings, clock = _scaler(kmock, body, replicas=0)
    readings.readings["emails"] = _observed(ready=180)

    await scaler.tick_once()
    assert _scalings(kmock)[-1] == 4
    events = [r.data for r in _requests(kmock, "POST", "/events")]
    assert [(e["reason"], e["type"]) for e in events] == [("ScaleUp", "Normal")]
    assert "backlog 180" in events[0]["message"]
    status_patches = _requests(kmock, "PATCH", "/status")
    assert status_patches[-1].data["status"]["desiredReplicas"] == 4
    assert status_patches[-1].data["status"]["backlog"]["ready"] == 180
    assert status_patches[-1].data["status"]["lastScaleReason"].startswith("ScaleUp")

    clock.now += 2  # next poll slot, same backlog: steady, nothing to patch
    await scaler.tick_once()
    assert len(_requests(kmock, "PATCH", "/status")) == len(status_patches)
    assert len(_scalings(kmock)) == 1


@pytest.mark.asyncio
async def test_ticks_follow_the_poll_interval(kmock: Any) -> None:
    body = taskqueue(scaling={"pollIntervalSeconds": 5})
    _seed(kmock, body)
    scaler, readings, clock = _scaler(kmock, body, replicas=1)
    readings.readings["emails"] = _observed(ready=10)
    pause = (await scaler.tick_once()).pause_s
    assert 0 < pause <= 5
    clock.now += 1
    await scaler.tick_once()
    assert len(readings.asked) == 1
    clock.now += 5
    await scaler.tick_once()
    assert len(readings.asked) == 2


@pytest.mark.asyncio
async def test_unreachable_broker_holds_replicas_and_says_so(kmock: Any) -> None:
    body = taskqueue()
    _seed(kmock, body)
    scaler, readings, clock = _scaler(kmock, body, replicas=3)
    readings.readings["emails"] = _observed(ready=150)
    await scaler.tick_once()
    readings.readings["emails"] = Reading(None, "none", "broker at amqp://u:***@127.0.0.1:1/ unreachable")
    clock.now += 2
    await scaler.tick_once()

    assert _scalings(kmock) == []
    status = _requests(kmock, "PATCH", "/status")[-1].data["status"]
    reachable = next(c for c in status["conditions"] if c["type"] == "BrokerReachable")
    assert reachable["status"] == "False" and "unreachable" in reachable["message"]
    assert status["desiredReplicas"] == 3
    events = [r.data for r in _requests(kmock, "POST", "/events")]
    assert events[-1]["reason"] == "BrokerUnreachable" and events[-1]["type"] == "Warning"
    assert all("secretpw" not in str(r.data) for r in kmock)


@pytest.mark.asyncio
async def test_scale_down_marks_busy_pods_expensive_first(kmock: Any) -> None:
    body = taskqueue(scaling={"maxReplicas": 20, "tasksPerReplica": 50,
                              "scaleDown": {"stabilizationWindowSeconds": 0}})
    _seed(kmock, body)
    scaler, readings, _ = _scaler(kmock, body, replicas=2)
    for pod in ("emails-worker-a", "emails-worker-b"):
        kmock.objects["v1/pods", NS, pod] = {"metadata": {"name": pod, "namespace": NS,
                                                         "labels": {"app.kubernetes.io/instance": "emails"}}}
    readings.readings["emails"] = _observed(ready=0, unacked=3, loads={"emails-worker-a": 3})
    await scaler.tick_once()

    annotations = {str(r.url).rsplit("/", 1)[-1]: r.data["metadata"]["annotations"]
                   for r in _requests(kmock, "PATCH", "/pods/")}
    assert annotations == {
        "emails-worker-a": {"controller.kubernetes.io/pod-deletion-cost": "3"},
        "emails-worker-b": {"controller.kubernetes.io/pod-deletion-cost": "0"},
    }
    order = [str(r.url) for r in kmock if str(r.method).upper().endswith("PATCH")]
    assert order.index(next(u for u in order if "deployments" in u)) > max(
        order.index(u) for u in order if "/pods/" in u)
    assert _scalings(kmock)[-1] == 1


@pytest.mark.asyncio
async def test_missing_secret_key_is_reported_not_fatal(kmock: Any) -> None:
    body = taskqueue()
    _seed(kmock, body)
    kmock.objects["v1/secrets", NS, "rabbit"] = _secret("rabbit", {"management-url": "http://x"})
    scaler, readings, _ = _scaler(kmock, body, replicas=1)
    await scaler.tick_once()
    assert readings.asked == []
    status = _requests(kmock, "PATCH", "/status")[-1].data["status"]
    reachable = next(c for c in status["conditions"] if c["type"] == "BrokerReachable")
    assert "Secret jobs/rabbit has no key amqp-url" in reachable["message"]


def test_target_keys_are_per_broker_and_store() -> None:
    a = Target("q1", "amqp://h/%2F", None, "mongodb://m/", "db")
    b = Target("q2", "amqp://h/%2F", None, "mongodb://m/", "db")
    assert a.broker_key == b.broker_key and a.store_key == b.store_key


# --- state in kopf's memo, the tick on a snapshot, the liveness probe -------------------------------


class BlockingReadings(FixedReadings):
    """Readings whose `read` waits for the test to release it: a stalled tick."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def read(self, targets: Any) -> dict[Any, Reading]:
        self.entered.set()
        if not self.release.wait(timeout=30):
            raise AssertionError("the test never released the stalled tick")
        return super().read(targets)


def _memo(state: handlers.OperatorState) -> kopf.Memo:
    return kopf.Memo({handlers.MEMO_KEY: state})


async def _until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def test_handlers_that_touch_the_cache_run_on_the_event_loop() -> None:
    for handler in (handlers.track_taskqueue, handlers.track_deployment, handlers.reconcile,
                    handlers.count_taskqueues, handlers.scaler_tick_age):
        assert inspect.iscoroutinefunction(handler), handler.__name__
    assert not {"CACHE", "RUNTIME"} & set(vars(handlers)), "runtime state lives in kopf's memo, not in module globals"


@pytest.mark.asyncio
async def test_watch_handlers_fill_the_cache_in_the_memo() -> None:
    state = handlers.OperatorState()
    memo = _memo(state)
    await handlers.track_taskqueue(event={"type": "ADDED"}, body=kopf.Body(taskqueue()), memo=memo)
    deployment = {"metadata": {"name": "emails-worker", "namespace": NS}, "spec": {"replicas": 2}, "status": {}}
    await handlers.track_deployment(event={"type": "MODIFIED"}, body=kopf.Body(deployment), memo=memo)
    assert set(state.cache.taskqueues) == {(NS, "emails")}
    assert state.cache.deployments[(NS, "emails-worker")].replicas == 2
    assert await handlers.count_taskqueues(memo=copy.copy(memo)) == 1  # a resource memo: same state
    await handlers.track_taskqueue(event={"type": "DELETED"}, body=kopf.Body(taskqueue()), memo=memo)
    assert state.cache.taskqueues == {}


@pytest.mark.asyncio
async def test_tick_works_on_a_snapshot_and_hands_the_replicas_back(kmock: Any) -> None:
    body = taskqueue()
    _seed(kmock, body)
    scaler, readings, _ = _scaler(kmock, body, replicas=0)
    readings.readings["emails"] = _observed(ready=180)
    original = readings.read

    def read_while_the_cache_changes(targets: Any) -> dict[Any, Reading]:
        scaler.cache.taskqueues.clear()  # what a DELETED event would do while the tick runs
        return original(targets)

    readings.read = read_while_the_cache_changes  # type: ignore[method-assign]
    result = await scaler.tick_once()
    assert result.scaled == {(NS, "emails-worker"): 4}
    assert _scalings(kmock)[-1] == 4
    assert scaler.cache.deployments[(NS, "emails-worker")].replicas == 4
    assert (await scaler.tick_once()).scaled == {} and scaler.states == {}


@pytest.mark.asyncio
async def test_liveness_probe_fails_while_the_tick_stalls_and_recovers(kmock: Any) -> None:
    body = taskqueue()
    _seed(kmock, body)
    scaler, _, _ = _scaler(kmock, body, replicas=1)
    blocking = BlockingReadings()
    blocking.readings["emails"] = _observed(ready=10)
    scaler.observers = blocking
    state = handlers.OperatorState(cache=scaler.cache, health=TickHealth(stall_after_s=0.3))
    scaler.health = state.health
    memo = _memo(state)

    assert (await handlers.scaler_tick_age(memo=memo))["ticks"] == 0  # fresh start-up: healthy
    stopped = asyncio.Event()
    loop = asyncio.create_task(scaler.run(stopped))
    try:
        await asyncio.to_thread(blocking.entered.wait, 10)
        await asyncio.sleep(0.5)
        with pytest.raises(kopf.PermanentError, match=r"no scaler tick completed [0-9.]+ s ago \(limit 0.3 s\)"):
            await handlers.scaler_tick_age(memo=memo)
        blocking.release.set()
        await _until(lambda: state.health.completed >= 1)
        report = await handlers.scaler_tick_age(memo=memo)
        assert report["ticks"] >= 1 and report["last_tick_age_s"] < 0.3
    finally:
        blocking.release.set()
        stopped.set()
        await asyncio.wait_for(loop, timeout=10)


def _late(broker: str = "broker at amqp://u:***@127.0.0.1:1/") -> Reading:
    """What `Observers.read` hands back for a broker whose batch was still running when the tick stopped waiting."""
    return Reading(None, "none", f"{broker} did not answer within 2 s", late=True)


@pytest.mark.asyncio
async def test_a_late_broker_read_is_no_outage_until_it_stays_late(kmock: Any) -> None:
    """A broker batch that outlasts one tick's wait (a loaded operator, a broker busy for a moment) says nothing
    about reachability: no Event, no status patch, replicas kept. Only three late ticks in a row (KEDA's
    fallback `failureThreshold` default) count as unreachable. Before, every late tick flipped every
    TaskQueue of that broker to `BrokerReachable=False` and back at the next tick: two Events and two status
    patches per TaskQueue, which at 2,000 TaskQueues made the next tick later still."""
    body = taskqueue()
    _seed(kmock, body)
    scaler, readings, clock = _scaler(kmock, body, replicas=3)
    readings.readings["emails"] = _observed(ready=150)
    await scaler.tick_once()
    patches, events = len(_requests(kmock, "PATCH", "/status")), len(_requests(kmock, "POST", "/events"))

    for _ in range(2):  # late twice, then answered: as if nothing happened
        readings.readings["emails"] = _late()
        clock.now += 2
        await scaler.tick_once()
    readings.readings["emails"] = _observed(ready=150)
    clock.now += 2
    await scaler.tick_once()
    assert len(_requests(kmock, "PATCH", "/status")) == patches
    assert len(_requests(kmock, "POST", "/events")) == events
    assert _scalings(kmock) == []

    for _ in range(3):  # late three times in a row: now it is an outage
        readings.readings["emails"] = _late()
        clock.now += 2
        await scaler.tick_once()
    status = _requests(kmock, "PATCH", "/status")[-1].data["status"]
    reachable = next(c for c in status["conditions"] if c["type"] == "BrokerReachable")
    assert reachable["status"] == "False" and "did not answer within 2 s" in reachable["message"]
    assert status["desiredReplicas"] == 3
    assert [r.data["reason"] for r in _requests(kmock, "POST", "/events")][events:] == ["BrokerUnreachable"]
    assert _scalings(kmock) == []
