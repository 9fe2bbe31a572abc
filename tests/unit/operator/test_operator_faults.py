"""The operator under faults, against KMock: unattributed work holds scale-downs, a deleted Deployment comes back,
a foreign Deployment is refused, the stabilization history survives a restart, a standby replica does not act.

The broker/store observation is the operator's `Observers` seam with fixed readings (as in
`test_operator_kmock.py`); everything Kubernetes-side goes over HTTP to KMock.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kopf
import kubernetes
import pytest
import yaml
from test_operator_kmock import DEPLOYMENTS, NS, TASKQUEUES, Clock, _observed, _requests, _scaler, _scalings, _seed

from taskq_dev.manifests import example as taskqueue
from taskq_operator import handlers
from taskq_operator.adapters.store import WorkerLoad
from taskq_operator.core.policy import Observation
from taskq_operator.observe import Reading
from taskq_operator.reconcile import apply_deployment
from taskq_operator.scaler import Scaler

COST = "controller.kubernetes.io/pod-deletion-cost"
PEERINGS = "kopf.dev/v1/kopfpeerings"


def _pods(kmock: Any, costs: dict[str, str]) -> None:
    for pod, cost in costs.items():
        kmock.objects["v1/pods", NS, pod] = {"metadata": {
            "name": pod, "namespace": NS, "labels": {"app.kubernetes.io/instance": "emails"},
            "annotations": {COST: cost}}}


def _status(kmock: Any) -> dict[str, Any]:
    status: dict[str, Any] = _requests(kmock, "PATCH", "/status")[-1].data["status"]
    return status


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def _events(kmock: Any) -> list[tuple[str, str, str]]:
    return [(r.data["type"], r.data["reason"], r.data["message"]) for r in _requests(kmock, "POST", "/events")]


DOWN_AT_ONCE = {"maxReplicas": 20, "tasksPerReplica": 50, "scaleDown": {"stabilizationWindowSeconds": 0}}


# -- 1. unattributed work holds the scale-down ----------------------------------------------------


@pytest.mark.asyncio
async def test_missing_heartbeats_hold_scale_down_and_keep_deletion_costs(kmock: Any) -> None:
    body = taskqueue(scaling=DOWN_AT_ONCE)
    _seed(kmock, body)
    scaler, readings, _ = _scaler(kmock, body, replicas=3)
    _pods(kmock, {"emails-worker-a": "2", "emails-worker-b": "0", "emails-worker-c": "0"})
    # Three consumers hold deliveries (management API: 2 unacked), but no worker has a fresh heartbeat:
    # nobody can say which pods hold them.
    readings.readings["emails"] = Reading(Observation(0, 2, 3), "amqp+management", None, WorkerLoad({}))
    await scaler.tick_once()

    assert _scalings(kmock) == []
    assert _requests(kmock, "PATCH", "/pods/") == []
    held = _condition(_status(kmock), "ScaleDownHeld")
    assert held["status"] == "True" and held["reason"] == "HeartbeatsMissing"
    assert "3 of 3 consumers" in held["message"]
    assert [(t, r) for t, r, _ in _events(kmock)] == [("Warning", "ScaleDownHeld")]


@pytest.mark.asyncio
async def test_store_outage_holds_scale_down_then_resumes(kmock: Any) -> None:
    body = taskqueue(scaling=DOWN_AT_ONCE)
    _seed(kmock, body)
    scaler, readings, clock = _scaler(kmock, body, replicas=3)
    _pods(kmock, {"emails-worker-a": "2", "emails-worker-b": "0", "emails-worker-c": "0"})
    readings.readings["emails"] = Reading(
        Observation(0, 0, 3), "amqp", None, WorkerLoad({}),
        store_error="store at mongodb://127.0.0.1:1/ unavailable while reading heartbeats")
    await scaler.tick_once()
    assert _scalings(kmock) == []
    assert _requests(kmock, "PATCH", "/pods/") == []
    held = _condition(_status(kmock), "ScaleDownHeld")
    assert held["status"] == "True" and held["reason"] == "StoreUnavailable"

    clock.now += 2  # the store is back: every consumer reports, one holds work
    readings.readings["emails"] = Reading(Observation(0, 2, 3), "amqp+heartbeats", None,
                                          WorkerLoad({"emails-worker-a": 2, "emails-worker-b": 0, "emails-worker-c": 0}))
    await scaler.tick_once()
    assert _scalings(kmock)[-1] == 1
    assert _condition(_status(kmock), "ScaleDownHeld")["status"] == "False"


# -- 4. a Deployment deleted by hand is recreated -----------------------------------------------


def _running(scaler: Scaler) -> handlers.OperatorState:
    state = handlers.OperatorState(cache=scaler.cache, health=scaler.health)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    state.running = handlers.Running(scaler, asyncio.Event(), done)  # type: ignore[arg-type]
    return state


@pytest.mark.asyncio
async def test_deployment_deleted_by_hand_is_recreated_at_the_next_tick(kmock: Any) -> None:
    body = taskqueue()
    _seed(kmock, body)
    scaler, readings, clock = _scaler(kmock, body, replicas=3)
    readings.readings["emails"] = _observed(ready=150)
    scaler.create_deployment = lambda spec, replicas: apply_deployment(spec, scaler.kube, replicas)
    state = _running(scaler)
    memo = kopf.Memo({handlers.MEMO_KEY: state})
    owned = {"metadata": {"name": "emails-worker", "namespace": NS,
                          "labels": {"app.kubernetes.io/managed-by": "taskq-operator"},
                          "ownerReferences": [{"kind": "TaskQueue", "name": "emails", "uid": "0000-1111",
                                               "controller": True}]},
             "spec": {"replicas": 3}, "status": {}}
    await scaler.tick_once()
    del kmock.objects[DEPLOYMENTS, NS, "emails-worker"]
    await handlers.track_deployment(event={"type": "DELETED"}, body=kopf.Body(owned), memo=memo)
    assert scaler.wake.is_set()
    clock.now += 0.1  # woken, same poll slot
    await scaler.tick_once()

    created = _requests(kmock, "POST", "/deployments")
    assert len(created) == 1
    assert created[0].data["metadata"]["ownerReferences"][0]["uid"] == "0000-1111"
    assert created[0].data["spec"]["replicas"] == 3
    assert scaler.cache.deployments[(NS, "emails-worker")].replicas == 3
    clock.now += 2
    await scaler.tick_once()
    assert len(_requests(kmock, "POST", "/deployments")) == 1


# -- 5. a Deployment the TaskQueue does not own is refused --------------------------------------


@pytest.mark.asyncio
async def test_foreign_deployment_with_the_workers_name_is_refused(kmock: Any) -> None:
    body = taskqueue()
    _seed(kmock, body)
    scaler, readings, clock = _scaler(kmock, body, replicas=0)
    foreign = {"metadata": {"name": "emails-worker", "namespace": NS, "labels": {"app": "someone-else"}},
               "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "web", "image": "nginx"}]}}}}
    kmock.objects[DEPLOYMENTS, NS, "emails-worker"] = foreign
    scaler.cache.deployments.clear()
    state = _running(scaler)
    memo = kopf.Memo({handlers.MEMO_KEY: state})

    with pytest.raises(kopf.TemporaryError, match="not owned"):
        await handlers.reconcile(body=kopf.Body(body), memo=memo, logger=logging.getLogger("test"))
    assert _requests(kmock, "PATCH", "deployments/emails-worker") == []
    assert _requests(kmock, "POST", "/deployments") == []
    readings.readings["emails"] = _observed(ready=180)
    await scaler.tick_once()
    assert [(t, r) for t, r, _ in _events(kmock)] == [("Warning", "DeploymentNotOwned")]
    owned = _condition(_status(kmock), "DeploymentOwned")
    assert owned["status"] == "False" and owned["reason"] == "DeploymentNotOwned"
    assert "not owned" in owned["message"]

    # A labelled impostor the watch picks up is never scaled either.
    impostor = {**foreign, "metadata": {**foreign["metadata"], "labels": {"app.kubernetes.io/managed-by": "taskq-operator"}}}
    await handlers.track_deployment(event={"type": "ADDED"}, body=kopf.Body(impostor), memo=memo)
    with pytest.raises(kopf.TemporaryError):  # refused again on retry, and no second Event
        await handlers.reconcile(body=kopf.Body(body), memo=memo, logger=logging.getLogger("test"))
    clock.now += 2
    await scaler.tick_once()
    assert _requests(kmock, "PATCH", "deployments/emails-worker") == []
    assert kmock.objects[DEPLOYMENTS, NS, "emails-worker"]["spec"]["replicas"] == 1
    assert len(_events(kmock)) == 1


# -- 7. stabilization history survives a restart; a standby replica does not act ------------------


@pytest.mark.asyncio
async def test_stabilization_history_survives_an_operator_restart(kmock: Any) -> None:
    body = taskqueue(scaling={"maxReplicas": 20, "tasksPerReplica": 50, "scaleDown": {"stabilizationWindowSeconds": 60}})
    _seed(kmock, body)
    scaler, readings, clock = _scaler(kmock, body, replicas=0)
    scaler.wall_clock = lambda: clock.now + 1.8e9
    readings.readings["emails"] = _observed(ready=200)
    await scaler.tick_once()
    assert scaler.cache.deployments[(NS, "emails-worker")].replicas == 4
    clock.now += 2
    readings.readings["emails"] = _observed(ready=0, loads={"emails-worker-a": 0})
    await scaler.tick_once()  # recommends 0; 4 stays for the 60 s window
    stored = kmock.objects[DEPLOYMENTS, NS, "emails-worker"]
    annotation = stored["metadata"]["annotations"]["taskq.io/scale-down-history"]
    assert len(annotation) < 64, annotation

    # A new operator process: fresh memory, the Deployment as the API server has it.
    clock.now += 20
    restarted, readings2, _ = _scaler(kmock, body, replicas=4)
    restarted.clock = clock
    restarted.wall_clock = lambda: clock.now + 1.8e9
    restarted.cache.upsert_deployment({**stored, "spec": {**stored["spec"], "replicas": 4}})
    readings2.readings["emails"] = _observed(ready=0, loads={"emails-worker-a": 0})
    patches = len(_scalings(kmock))
    await restarted.tick_once()
    assert len(_scalings(kmock)) == patches, "scaled down inside the window"
    assert _status(kmock)["desiredReplicas"] == 4
    clock.now += 45  # past the window that began before the restart
    await restarted.tick_once()
    assert _scalings(kmock)[-1] == 0


def _kubeconfig(kmock: Any, path: Path) -> Path:
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "kmock",
              "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
              "users": [{"name": "kmock", "user": {"token": "test"}}],
              "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}]}
    path.write_text(yaml.safe_dump(config))
    return path


def _peer(priority: int, seen: datetime) -> dict[str, Any]:
    return {"priority": priority, "lastseen": seen.isoformat(), "lifetime": 10}


@pytest.mark.asyncio
async def test_a_standby_replica_under_peering_does_not_act(
        kmock: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = taskqueue(scaling={"maxReplicas": 20, "fallbackReplicas": 2, "pollIntervalSeconds": 1})
    _seed(kmock, body)
    kmock.objects[DEPLOYMENTS, NS, "emails-worker"] = {
        "metadata": {"name": "emails-worker", "namespace": NS,
                     "ownerReferences": [{"kind": "TaskQueue", "name": "emails", "uid": "0000-1111", "controller": True}]},
        "spec": {"replicas": 0}, "status": {}}
    kubeconfig = _kubeconfig(kmock, tmp_path / "kubeconfig")
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("TASKQ_PEERING", "taskq")
    state = handlers.OperatorState(named_namespaces=True)
    memo = kopf.Memo({handlers.MEMO_KEY: state})
    settings = kopf.OperatorSettings()
    settings.peering.clusterwide = False
    await handlers.start(settings=settings, memo=memo, logger=logging.getLogger("test"))
    try:
        own = settings.peering.priority
        now = datetime.now(UTC)
        kmock.objects[PEERINGS, NS, "taskq"] = {"metadata": {"name": "taskq", "namespace": NS},
                                                "status": {"older@pod-a": _peer(own + 1, now)}}
        state.cache.upsert_taskqueue(body)
        state.cache.upsert_deployment(kmock.objects[DEPLOYMENTS, NS, "emails-worker"])
        assert state.running is not None
        state.running.scaler.wake.set()
        deadline = time.monotonic() + 20  # two ticks as the standby (broker unreachable: fallbackReplicas would apply)
        while state.health.completed < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert state.health.completed >= 2, "a standby is alive: its ticks complete"
        assert _requests(kmock, "PATCH", "deployments/emails-worker") == []
        assert _requests(kmock, "POST", "/events") == []

        kmock.objects[PEERINGS, NS, "taskq"] = {  # the active replica's record expired: this one takes over
            "metadata": {"name": "taskq", "namespace": NS},
            "status": {"older@pod-a": _peer(own + 1, now - timedelta(seconds=30))}}
        deadline = time.monotonic() + 10
        while not _scalings(kmock) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert _scalings(kmock)[0] == 2
    finally:
        await handlers.stop(memo=memo, logger=logging.getLogger("test"))


# -- 3. the liveness endpoint kopf serves fails while the tick stalls ------------------------------


@pytest.mark.asyncio
async def test_liveness_endpoint_answers_500_while_the_tick_stalls() -> None:
    import aiohttp
    from kopf._core.engines.indexing import OperatorIndexers
    from kopf._core.engines.probing import health_reporter

    from taskq_dev.ports import free_port
    from taskq_operator.liveness import TickHealth

    clock = Clock()
    state = handlers.OperatorState(health=TickHealth(stall_after_s=30, clock=clock))
    port = free_port()
    ready = asyncio.Event()
    server = asyncio.create_task(health_reporter(
        f"http://127.0.0.1:{port}/healthz", memo=kopf.Memo({handlers.MEMO_KEY: state}),
        indices=OperatorIndexers().indices, registry=kopf.get_default_registry(),
        settings=kopf.OperatorSettings(), ready_flag=ready))
    try:
        await asyncio.wait_for(ready.wait(), timeout=10)
        async with aiohttp.ClientSession() as http:
            clock.now += 31  # no tick completed for longer than the limit
            async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 500
            state.health.tick_completed()
            async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200
                assert (await response.json())["scaler"]["ticks"] == 1
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server


# -- 2. a slow API call for one TaskQueue holds up no other ---------------------------------------


@pytest.mark.asyncio
async def test_a_slow_api_call_for_one_taskqueue_holds_up_no_other(kmock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from taskq_operator import scaler as scaler_module

    monkeypatch.setattr(scaler_module, "PHASE_TIMEOUT_S", 1.0, raising=False)
    body = taskqueue()
    _seed(kmock, body)
    scaler, readings, clock = _scaler(kmock, body, replicas=0)
    other = copy.deepcopy(body)
    other["metadata"].update(name="pressing", uid="2222-3333")
    other["spec"]["queue"] = "pressing"
    kmock.objects[TASKQUEUES, NS, "pressing"] = other
    deployment = {"metadata": {"name": "pressing-worker", "namespace": NS, "ownerReferences": [
        {"kind": "TaskQueue", "name": "pressing", "uid": "2222-3333", "controller": True}]},
        "spec": {"replicas": 0}, "status": {}}
    kmock.objects[DEPLOYMENTS, NS, "pressing-worker"] = deployment
    scaler.cache.upsert_taskqueue(other)
    scaler.cache.upsert_deployment(deployment)
    readings.readings["emails"] = _observed(ready=180)
    readings.readings["pressing"] = _observed(ready=120)

    async def slow(_: Any) -> dict[str, Any]:
        await asyncio.sleep(4)  # the API server takes 4 s over this one TaskQueue's status
        return {}

    kmock[f"patch /apis/taskq.io/v1alpha1/namespaces/{NS}/taskqueues/emails/status"] << slow
    started = time.monotonic()
    await scaler.tick_once()
    assert time.monotonic() - started < 2.5, "the tick waited for one TaskQueue's slow status patch"
    pressing = [r for r in _requests(kmock, "PATCH", "/taskqueues/pressing/status")]
    assert pressing and pressing[-1].data["status"]["desiredReplicas"] == 3

    clock.now += 2  # emails is still being reported: left out; pressing goes on at once
    readings.readings["pressing"] = _observed(ready=300)
    started = time.monotonic()
    await scaler.tick_once()
    assert time.monotonic() - started < 1.0
    assert [r.data["spec"]["replicas"] for r in _requests(kmock, "PATCH", "deployments/pressing-worker")
            if "replicas" in (r.data.get("spec") or {})] == [3, 6]
