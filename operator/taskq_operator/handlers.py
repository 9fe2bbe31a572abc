"""kopf handlers: thin glue between Kubernetes events and the operator's parts.

- start-up: settings (annotation-based progress, no finalizers, one active replica), the scaler loop;
- watch events on TaskQueues and on the worker Deployments fill the in-memory cache the scaler reads;
- create/update(spec)/resume: declare the queue topology and create or update the Deployment;
- probe: `/healthz` reports how many TaskQueues are tracked and the age of the last scaler tick.

Imported by `taskq_operator.main` (registration happens at import).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import kopf

from taskq.errors import TaskqError
from taskq_operator.adapters.kube import ClusterError, Kube, load_api_client
from taskq_operator.cache import WatchCache
from taskq_operator.core.deployment import MANAGED_BY
from taskq_operator.core.spec import GROUP, PLURAL, VERSION, SpecError, parse_taskqueue
from taskq_operator.reconcile import apply_deployment, declare_topology
from taskq_operator.scaler import Scaler

RETRY_DELAY_S = 5


@dataclass
class Runtime:
    """The operator's live parts, created at start-up."""

    cache: WatchCache
    scaler: Scaler
    stopped: asyncio.Event
    task: asyncio.Task[None]


RUNTIME: dict[str, Runtime] = {}
CACHE = WatchCache()


def _runtime() -> Runtime:
    runtime = RUNTIME.get("current")
    if runtime is None:
        raise kopf.TemporaryError("operator still starting", delay=1)
    return runtime


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="taskq.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="taskq.io", key="last-handled-configuration"
    )
    settings.persistence.finalizer = "taskq.io/finalizer"
    settings.posting.level = logging.WARNING
    settings.peering.standalone = True
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = 8
    try:
        api = await asyncio.to_thread(load_api_client)
    except ClusterError as exc:
        raise kopf.PermanentError(str(exc)) from None
    scaler = Scaler(CACHE, Kube(api))
    stopped = asyncio.Event()
    task = asyncio.create_task(scaler.run(stopped), name="taskq-scaler")
    RUNTIME["current"] = Runtime(CACHE, scaler, stopped, task)
    logger.info("taskq operator started")


@kopf.on.cleanup()
async def stop(logger: logging.Logger, **_: Any) -> None:
    runtime = RUNTIME.pop("current", None)
    if runtime is None:
        return
    runtime.stopped.set()
    try:
        await asyncio.wait_for(runtime.task, timeout=10)
    except asyncio.TimeoutError:
        runtime.task.cancel()
    await asyncio.to_thread(runtime.scaler.observers.close)
    logger.info("taskq operator stopped")


@kopf.on.event(GROUP, VERSION, PLURAL)
def track_taskqueue(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
    if event.get("type") == "DELETED":
        CACHE.remove_taskqueue(WatchCache.key(dict(body)))
        return
    CACHE.upsert_taskqueue(dict(body))
    runtime = RUNTIME.get("current")
    if runtime is not None and event.get("type") == "ADDED":
        runtime.scaler.wake.set()


@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": MANAGED_BY})
def track_deployment(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
    if event.get("type") == "DELETED":
        CACHE.remove_deployment(WatchCache.key(dict(body)))
    else:
        CACHE.upsert_deployment(dict(body))


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def reconcile(body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
    """Declare the queues and create/update the Deployment; invalid specs fail permanently."""
    try:
        spec = parse_taskqueue(dict(body))
    except SpecError as exc:
        raise kopf.PermanentError(f"invalid TaskQueue: {exc}") from None
    runtime = _runtime()
    scaler = runtime.scaler
    try:
        await asyncio.to_thread(declare_topology, spec, scaler.secrets, scaler.observers)
    except TaskqError as exc:
        logger.warning("queue %s not declared yet: %s", spec.queue, exc)
    try:
        deployment = await asyncio.to_thread(apply_deployment, spec, scaler.kube)
    except ClusterError as exc:
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY_S) from None
    CACHE.upsert_deployment(deployment)
    scaler.wake.set()


@kopf.on.probe(id="taskqueues")
def count_taskqueues(**_: Any) -> int:
    return len(CACHE.taskqueues)
