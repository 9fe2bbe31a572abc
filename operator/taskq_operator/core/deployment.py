"""Build the worker Deployment for a TaskQueue: a pure function from the parsed spec to a manifest dict.

The manifest carries the owner reference (garbage collection on delete), the labels from
`docs/architecture.md`, hardened pod security, credentials only as Secret references, short
not-ready/unreachable tolerations, topology spread and worker probes. Called by the handlers
(create and spec changes) and tested in `tests/unit/operator/test_operator_deployment.py`.
"""

from __future__ import annotations

from typing import Any

from taskq_operator.core.spec import GROUP, KIND, VERSION, TaskQueueSpec

CONTAINER = "worker"
HEALTH_PORT = 8080
NODE_LOSS_TOLERATION_S = 10
DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
MANAGED_BY = "taskq-operator"


def deployment_name(spec: TaskQueueSpec) -> str:
    return f"{spec.name}-worker"[:63].rstrip("-.")


def selector_labels(spec: TaskQueueSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "taskq-worker",
        "app.kubernetes.io/instance": spec.name,
    }


def pod_labels(spec: TaskQueueSpec) -> dict[str, str]:
    return {
        **selector_labels(spec),
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "taskq.io/queue": label_value(spec.queue),
    }


def label_value(value: str) -> str:
    """`value` made into a valid label value (':' becomes '_', at most 63 characters)."""
    return value.replace(":", "_")[:63].strip("-_.")


def selector_string(spec: TaskQueueSpec) -> str:
    """The label selector as `kubectl` and the scale subresource want it."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(spec).items()))


def owner_reference(spec: TaskQueueSpec) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": spec.name,
        "uid": spec.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _secret_env(name: str, secret: str, key: str, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def _value(name: str, value: object) -> dict[str, Any]:
    return {"name": name, "value": str(value)}


def grace_seconds(spec: TaskQueueSpec) -> int:
    """The worker's drain budget: a little below the pod's grace period so it exits before SIGKILL."""
    period = spec.worker.termination_grace_s
    return max(1, period - max(2, period // 10))


PREFETCH_ENV = "TASKQ_PREFETCH"


def worker_env(spec: TaskQueueSpec) -> list[dict[str, Any]]:
    """Environment of the worker container: settings from the spec, credentials as Secret references.

    Every variable the operator can set is reserved: `spec.worker.env` cannot override it, even when
    the operator leaves it out (`TASKQ_PREFETCH` without `spec.worker.prefetch`: the worker's default).
    """
    tasks = spec.tasks
    worker = spec.worker
    backoff = tasks.retry_backoff
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        _secret_env("TASKQ_AMQP_URL", spec.broker_secret, "amqp-url"),
        _secret_env("TASKQ_MONGODB_URI", spec.store_secret, "mongodb-uri"),
        _value("TASKQ_DATABASE", spec.database),
        _value("TASKQ_QUEUE", spec.queue),
        _value("TASKQ_QUEUE_TYPE", tasks.queue_type),
        _value("TASKQ_TASK_MODULES", ",".join(worker.task_modules)),
        _value("TASKQ_POOL", worker.pool),
        _value("TASKQ_CONCURRENCY", worker.concurrency),
        *([_value(PREFETCH_ENV, worker.prefetch)] if worker.prefetch is not None else []),
        _value("TASKQ_MAX_TASKS_PER_CHILD", worker.max_tasks_per_child),
        _value("TASKQ_MAX_MEMORY_PER_CHILD_MB", worker.max_memory_per_child_mib),
        _value("TASKQ_MAX_RETRIES", tasks.max_retries),
        _value("TASKQ_TASK_TIMEOUT", tasks.timeout_s),
        _value("TASKQ_MAX_DELIVERIES", tasks.max_deliveries),
        _value("TASKQ_RETRY_INITIAL", _number(backoff.initial_s)),
        _value("TASKQ_RETRY_MAX", _number(backoff.max_s)),
        _value("TASKQ_RETRY_FACTOR", _number(backoff.factor)),
        _value("TASKQ_MAX_PRIORITY", tasks.max_priority),
        _value("TASKQ_GRACE_SECONDS", grace_seconds(spec)),
        _value("TASKQ_HEALTH_PORT", HEALTH_PORT),
    ]
    reserved = {item["name"] for item in env} | {PREFETCH_ENV}
    env += [dict(item) for item in worker.env if item.get("name") not in reserved]
    return env


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _tolerations(spec: TaskQueueSpec) -> list[dict[str, Any]]:
    own = [dict(t) for t in spec.worker.tolerations]
    keys = {t.get("key") for t in own}
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
        if key not in keys:
            own.append(
                {
                    "key": key,
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": NODE_LOSS_TOLERATION_S,
                }
            )
    return own


def _probe(path: str, period_s: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "health"},
        "periodSeconds": period_s,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _container(spec: TaskQueueSpec) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.worker.image,
        "command": ["taskq-worker"],
        "env": worker_env(spec),
        "ports": [{"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"}],
        "readinessProbe": _probe("/readyz", 5, 2),
        "livenessProbe": _probe("/livez", 10, 3),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if spec.worker.resources:
        container["resources"] = {k: dict(v) for k, v in spec.worker.resources.items()}
    return container


def build_deployment(spec: TaskQueueSpec, replicas: int) -> dict[str, Any]:
    """The Deployment that runs `replicas` workers for this TaskQueue."""
    labels = pod_labels(spec)
    pod_spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": spec.worker.termination_grace_s,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(spec)],
        "volumes": [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}],
        "tolerations": _tolerations(spec),
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector_labels(spec)},
            }
        ],
    }
    if spec.worker.node_selector:
        pod_spec["nodeSelector"] = dict(spec.worker.node_selector)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(spec),
            "namespace": spec.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(spec)],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(spec)},
            "revisionHistoryLimit": 3,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": labels},
                "spec": pod_spec,
            },
        },
    }
