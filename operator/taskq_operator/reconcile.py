"""Bring a TaskQueue's owned objects to its spec: the queue topology on the broker and the Deployment.

Called by the kopf create/update/resume handlers in `taskq_operator.handlers` (in a worker thread:
everything here blocks). Keeps the Deployment's current replica count, which the scaler owns.
"""

from __future__ import annotations

import logging
from typing import Any

from taskq_operator.adapters.kube import Kube
from taskq_operator.cache import SecretCache
from taskq_operator.core.deployment import build_deployment, deployment_name
from taskq_operator.core.spec import TaskQueueSpec
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


def apply_deployment(spec: TaskQueueSpec, kube: Kube) -> dict[str, Any]:
    """Create the worker Deployment, or update its template and keep its replicas."""
    existing = kube.get_deployment(spec.namespace, deployment_name(spec))
    replicas = spec.scaling.min_replicas if existing is None else int((existing.get("spec") or {}).get("replicas") or 0)
    deployment = kube.apply_deployment(build_deployment(spec, replicas))
    log.info(
        "TaskQueue %s/%s: Deployment %s %s",
        spec.namespace,
        spec.name,
        deployment_name(spec),
        "created" if existing is None else "updated",
    )
    return deployment
