"""Bring a TaskQueue's owned objects to its spec: the queue topology on the broker and the Deployment.

Called by the kopf create/update/resume handlers in `taskq_operator.handlers` (in a worker thread:
everything here blocks), and by the scaler's tick to recreate a Deployment deleted by hand. Keeps the
Deployment's current replica count, which the scaler owns; refuses a Deployment it does not own.
"""

from __future__ import annotations

import logging
from typing import Any

from taskq_operator.adapters.kube import ForeignDeployment, Kube
from taskq_operator.cache import SecretCache, controller_uid
from taskq_operator.core.deployment import build_deployment, deployment_name
from taskq_operator.core.spec import KIND, TaskQueueSpec
from taskq_operator.observe import Observers, target_for

log = logging.getLogger("taskq_operator.reconcile")


def declare_topology(spec: TaskQueueSpec, secrets: SecretCache, observers: Observers) -> None:
    """Declare the work queue and its dead-letter queue (idempotent; existing queues are left alone)."""
    target = target_for(
        spec.queue,
        spec.namespace,
        spec.broker_secret,
        secrets.get(spec.namespace, spec.broker_secret),
        spec.store_secret,
        secrets.get(spec.namespace, spec.store_secret),
        spec.database,
    )
    observers.broker(target).declare(
        spec.queue,
        max_priority=spec.tasks.max_priority,
        task_timeout_s=spec.tasks.timeout_s,
        queue_type=spec.tasks.queue_type,
        max_deliveries=spec.tasks.max_deliveries,
    )


def apply_deployment(spec: TaskQueueSpec, kube: Kube, replicas: int | None = None) -> dict[str, Any]:
    """Create the worker Deployment (with `replicas`, default minReplicas), or update its template and keep its replicas.

    A Deployment of that name that is not controlled by this TaskQueue (no controller ownerReference
    with its uid) is never adopted or changed: `ForeignDeployment`.
    """
    name = deployment_name(spec)
    existing = kube.get_deployment(spec.namespace, name)
    if existing is not None and controller_uid(existing, KIND) != spec.uid:
        raise ForeignDeployment(
            f"Deployment {spec.namespace}/{name} exists and is not owned by TaskQueue {spec.namespace}/{spec.name} "
            f"(no controller ownerReference to uid {spec.uid}); not adopting it: delete or rename it"
        )
    if existing is None:
        replicas = spec.scaling.min_replicas if replicas is None else replicas
    else:
        replicas = int((existing.get("spec") or {}).get("replicas") or 0)
    deployment = kube.apply_deployment(build_deployment(spec, replicas))
    log.info(
        "TaskQueue %s/%s: Deployment %s %s",
        spec.namespace,
        spec.name,
        deployment_name(spec),
        "created" if existing is None else "updated",
    )
    return deployment
