"""kopf handlers: thin glue between Kubernetes events and the operator's parts.

- start-up: settings (annotation-based progress, no finalizers, one active replica), the scaler loop;
- watch events on TaskQueues and on the worker Deployments fill the in-memory cache the scaler reads;
  a TaskQueue's Deployment deleted by hand is noted for the scaler, which recreates it at once;
- create/update(spec)/resume: create or update the Deployment, then declare the queue topology; a
  Deployment of that name the TaskQueue does not control is refused (never adopted): the scaler shows it
  in the `DeploymentOwned` condition and a Warning Event, and kopf retries every 30 s;
- under kopf peering the scaler's loop, which kopf does not pause, checks the peering object itself
  (`taskq_operator.peering`), so a standby replica neither patches nor posts Events;
- a timer per TaskQueue with `spec.schedules` submits the due slots of its periodic tasks and reports
  them in `status.schedules` (`taskq_operator.schedules`); kopf runs timers on the active replica only,
  and the timer also stands by while the scaler does;
- probes: `/healthz` reports how many TaskQueues are tracked and the age of the last completed scaler
  tick, and fails when that tick has stalled (`taskq_operator.liveness`).

State: everything lives in one `OperatorState` in kopf's operator memo (`memo.taskq`), made by
`taskq_operator.main` (or at start-up when run otherwise); kopf shallow-copies the memo into each
resource's memo, so every handler reaches the same object. Threads: every handler that touches the
watch cache or wakes the scaler is `async def` and runs on kopf's event loop, where the scaler loop
also lives; blocking work (secrets, declares, Deployment writes) goes to worker threads with
`asyncio.to_thread` and comes back to the loop before the cache is touched.

Imported by `taskq_operator.main` (registration happens at import).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from taskq.errors import TaskqError
from taskq_operator.adapters.kube import ClusterError, ForeignDeployment, Kube, load_api_client
from taskq_operator.cache import WatchCache
from taskq_operator.core.deployment import MANAGED_BY
from taskq_operator.core.spec import GROUP, PLURAL, VERSION, SpecError, parse_taskqueue
from taskq_operator.liveness import TickHealth, TickStalled
from taskq_operator.peering import PeeringGate
from taskq_operator.reconcile import apply_deployment, declare_topology
from taskq_operator.scaler import Scaler
from taskq_operator.schedules import Scheduler
from taskq_operator.sweep import Sweeper

RETRY_DELAY_S = 5
CONFLICT_RETRY_DELAY_S = 30
STOP_TIMEOUT_S = 10.0
SCHEDULE_INTERVAL_S = float(os.environ.get("TASKQ_SCHEDULE_INTERVAL_SECONDS", "10"))
"""How often each TaskQueue's schedules are looked at: a slot is enqueued at most this late (plus the tick)."""
MEMO_KEY = "taskq"


@dataclass
class Running:
    """The scaler and its loop task, from start-up to cleanup."""

    scaler: Scaler
    stopped: asyncio.Event
    task: asyncio.Task[None]
    scheduler: Scheduler | None = None


@dataclass
class OperatorState:
    """The operator's runtime state: the watch cache, tick health and, once started, the scaler."""

    cache: WatchCache = field(default_factory=WatchCache)
    health: TickHealth = field(default_factory=TickHealth)
    running: Running | None = None
    named_namespaces: bool = False  # watching listed namespaces (the chart's namespaced default), not all


def state_of(memo: Any) -> OperatorState:
    """The `OperatorState` in a kopf memo (operator or per-resource: both hold the same object)."""
    state = memo.get(MEMO_KEY) if hasattr(memo, "get") else None
    if not isinstance(state, OperatorState):
        raise kopf.TemporaryError("operator still starting", delay=1)
    return state


def _scaler(memo: Any) -> Scaler:
    running = state_of(memo).running
    if running is None:
        raise kopf.TemporaryError("operator still starting", delay=1)
    return running.scaler


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="taskq.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="taskq.io", key="last-handled-configuration")
    settings.persistence.finalizer = "taskq.io/finalizer"
    settings.posting.level = logging.WARNING
    # Peering (the chart sets TASKQ_PEERING for operator.replicas >= 2): paused until the peering
    # object shows no live peer of higher priority; the oldest replica has the highest, so a new pod
    # never preempts the active one; a lost leader's record expires after `lifetime` seconds.
    peering = os.environ.get("TASKQ_PEERING", "")
    settings.peering.standalone = not peering
    if peering:
        settings.peering.name, settings.peering.mandatory, settings.peering.lifetime = peering, True, 10
        settings.peering.priority = -(time.time_ns() // 1000)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = 8
    state = memo.get(MEMO_KEY)
    if not isinstance(state, OperatorState):  # not started through taskq_operator.main (e.g. `kopf run`)
        state = memo[MEMO_KEY] = OperatorState()
    # Listed namespaces are exact names: no namespace scanning. Scanning lists every namespace first,
    # which the namespaced RBAC forbids, and kopf falls back to the names only after ~55 s of retries.
    settings.scanning.disabled = state.named_namespaces
    try:
        api = await asyncio.to_thread(load_api_client)
    except ClusterError as exc:
        raise kopf.PermanentError(str(exc)) from None
    kube = Kube(api)
    gate = None
    if peering:  # the scaler's loop is no kopf handler: it asks the peering object itself (one actor)
        gate = PeeringGate(kube, peering, settings.peering.priority, settings.peering.clusterwide)
    scaler = Scaler(state.cache, kube, health=state.health, sweeper=Sweeper.from_env(), peering=gate)
    scaler.create_deployment = lambda spec, replicas: apply_deployment(spec, kube, replicas)
    stopped = asyncio.Event()
    task = asyncio.create_task(scaler.run(stopped), name="taskq-scaler")
    state.running = Running(scaler, stopped, task, Scheduler(scaler.secrets, scaler.observers))
    logger.info("taskq operator started")


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    state = memo.get(MEMO_KEY)
    if not isinstance(state, OperatorState) or state.running is None:
        return
    running, state.running = state.running, None
    running.stopped.set()
    try:
        await asyncio.wait_for(running.task, timeout=STOP_TIMEOUT_S)
    except TimeoutError:
        running.task.cancel()
    await asyncio.to_thread(running.scaler.close)
    if running.scheduler is not None:
        await asyncio.to_thread(running.scheduler.close)
    if running.scaler.sweeper is not None:
        await asyncio.to_thread(running.scaler.sweeper.close)
    logger.info("taskq operator stopped")


@kopf.on.event(GROUP, VERSION, PLURAL)
async def track_taskqueue(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    state = state_of(memo)
    if event.get("type") == "DELETED":
        state.cache.remove_taskqueue(WatchCache.key(body))
        return
    state.cache.upsert_taskqueue(body)
    if state.running is not None and event.get("type") == "ADDED":
        state.running.scaler.wake.set()


@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": MANAGED_BY})
async def track_deployment(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    state = state_of(memo)
    if event.get("type") != "DELETED":
        state.cache.upsert_deployment(body)
    elif state.cache.deployment_deleted(body) is not None and state.running is not None:
        state.running.scaler.wake.set()  # a TaskQueue's own Deployment was deleted: recreate it now


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def reconcile(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Create/update the Deployment, then declare the queues; invalid specs fail permanently.

    The Deployment comes first: a broker that never answers (pika waits out its 15 s handshake timeout)
    delays only the declare, which the workers also do themselves.
    """
    try:
        spec = parse_taskqueue(dict(body))
    except SpecError as exc:
        raise kopf.PermanentError(f"invalid TaskQueue: {exc}") from None
    scaler = _scaler(memo)
    cache = state_of(memo).cache
    key = (spec.namespace, spec.name)
    try:
        deployment = await asyncio.to_thread(apply_deployment, spec, scaler.kube)
    except ForeignDeployment as exc:  # never adopted: the scaler reports it (condition, Event); retried later
        cache.conflicts[key] = str(exc)
        scaler.wake.set()
        raise kopf.TemporaryError(str(exc), delay=CONFLICT_RETRY_DELAY_S) from None
    except ClusterError as exc:
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY_S) from None
    cache.upsert_deployment(deployment)  # back on the loop
    cache.conflicts.pop(key, None)
    scaler.wake.set()
    try:
        await asyncio.to_thread(declare_topology, spec, scaler.secrets, scaler.observers)
    except TaskqError as exc:
        logger.warning("queue %s not declared yet: %s", spec.queue, exc)


def _has_schedules(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    return bool(spec.get("schedules")) or bool(status.get("schedules"))


@kopf.timer(GROUP, VERSION, PLURAL, interval=SCHEDULE_INTERVAL_S, sharp=True, when=_has_schedules)
async def enqueue_schedules(body: kopf.Body, memo: kopf.Memo, patch: kopf.Patch, **_: Any) -> None:
    """Submit the due slots of this TaskQueue's schedules; `status.schedules` shows the last and next slot."""
    try:
        spec = parse_taskqueue(dict(body))
    except SpecError:
        return  # reported by the reconcile handler
    running = state_of(memo).running
    if running is None or running.scheduler is None or running.scaler.standby is not None:
        return
    status = dict(body.get("status") or {})
    entries = await asyncio.to_thread(running.scheduler.tick, spec, status, datetime.now(UTC))
    if entries is not None:
        patch.status["schedules"] = entries


@kopf.on.probe(id="taskqueues")
async def count_taskqueues(memo: kopf.Memo, **_: Any) -> int:
    return len(state_of(memo).cache.taskqueues)


@kopf.on.probe(id="scaler")
async def scaler_tick_age(memo: kopf.Memo, **_: Any) -> dict[str, float | int]:
    """The last completed tick's age; a stalled tick fails the probe (kopf answers /healthz with an error)."""
    try:
        return state_of(memo).health.report()
    except TickStalled as exc:
        raise kopf.PermanentError(str(exc)) from None
