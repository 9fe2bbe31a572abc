"""The Deployment builder: ownership, labels, hardening, Secret refs, tolerations, probes, grace."""

from __future__ import annotations

import json

from taskq_dev.manifests import example as taskqueue
from taskq_operator.core.deployment import build_deployment, grace_seconds, selector_string
from taskq_operator.core.spec import parse_taskqueue


def _build(**changes: object) -> dict:  # type: ignore[type-arg]
    return build_deployment(parse_taskqueue(taskqueue(**changes)), replicas=3)


def _env(deployment: dict) -> dict:  # type: ignore[type-arg]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {item["name"]: item for item in container["env"]}


def test_owner_labels_and_selector() -> None:
    deployment = _build()
    meta = deployment["metadata"]
    assert (meta["name"], meta["namespace"]) == ("emails-worker", "jobs")
    assert meta["ownerReferences"] == [{
        "apiVersion": "taskq.io/v1alpha1", "kind": "TaskQueue", "name": "emails", "uid": "0000-1111",
        "controller": True, "blockOwnerDeletion": True,
    }]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels == {
        "app.kubernetes.io/name": "taskq-worker",
        "app.kubernetes.io/instance": "emails",
        "app.kubernetes.io/managed-by": "taskq-operator",
        "taskq.io/queue": "emails",
    }
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert deployment["spec"]["replicas"] == 3
    assert selector_string(parse_taskqueue(taskqueue())) == (
        "app.kubernetes.io/instance=emails,app.kubernetes.io/name=taskq-worker"
    )


def test_hardened_pod_security() -> None:
    pod = _build()["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["automountServiceAccountToken"] is False


def test_credentials_are_secret_refs_only() -> None:
    env = _env(_build())
    assert env["TASKQ_AMQP_URL"] == {"name": "TASKQ_AMQP_URL",
                                     "valueFrom": {"secretKeyRef": {"name": "rabbit", "key": "amqp-url"}}}
    assert env["TASKQ_MONGODB_URI"]["valueFrom"]["secretKeyRef"] == {"name": "mongo", "key": "mongodb-uri"}
    assert "value" not in env["TASKQ_AMQP_URL"] and "value" not in env["TASKQ_MONGODB_URI"]
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_worker_settings_from_spec() -> None:
    env = _env(_build())
    values = {name: item.get("value") for name, item in env.items()}
    assert values["TASKQ_QUEUE"] == "emails"
    assert values["TASKQ_TASK_MODULES"] == "taskq.examples,app.tasks"
    assert values["TASKQ_CONCURRENCY"] == "8"
    assert values["TASKQ_TASK_TIMEOUT"] == "60"
    assert values["TASKQ_RETRY_INITIAL"] == "0.5"
    assert values["TASKQ_RETRY_MAX"] == "300"
    assert values["TASKQ_DATABASE"] == "prod"
    assert values["LOG_LEVEL"] == "debug"
    assert int(values["TASKQ_GRACE_SECONDS"]) < 330


def test_worker_runtime_defaults() -> None:
    values = {name: item.get("value") for name, item in _env(_build()).items()}
    assert values["TASKQ_POOL"] == "process"
    assert values["TASKQ_MAX_TASKS_PER_CHILD"] == "0"
    assert values["TASKQ_MAX_MEMORY_PER_CHILD_MB"] == "0"
    assert values["TASKQ_QUEUE_TYPE"] == "classic"
    assert values["TASKQ_MAX_DELIVERIES"] == "5"
    assert values["TASKQ_MAX_RETRIES"] == "3"
    assert values["TASKQ_MAX_PRIORITY"] == "10"
    assert "TASKQ_PREFETCH" not in values  # the worker's own default: concurrency plus a look-ahead


def test_worker_runtime_fields_become_env() -> None:
    deployment = _build(
        worker={"image": "w", "pool": "process", "concurrency": 2, "prefetch": 3,
                "maxTasksPerChild": 1000, "maxMemoryPerChildMiB": 256},
        tasks={"queueType": "quorum", "maxDeliveries": 7, "maxRetries": 4, "timeoutSeconds": 90,
               "retryBackoff": {"initialSeconds": 2, "maxSeconds": 60, "factor": 1.5}},
    )
    values = {name: item.get("value") for name, item in _env(deployment).items()}
    assert {key: values[key] for key in (
        "TASKQ_POOL", "TASKQ_CONCURRENCY", "TASKQ_PREFETCH", "TASKQ_MAX_TASKS_PER_CHILD",
        "TASKQ_MAX_MEMORY_PER_CHILD_MB", "TASKQ_QUEUE_TYPE", "TASKQ_MAX_DELIVERIES", "TASKQ_MAX_RETRIES",
        "TASKQ_TASK_TIMEOUT", "TASKQ_RETRY_INITIAL", "TASKQ_RETRY_MAX", "TASKQ_RETRY_FACTOR",
    )} == {
        "TASKQ_POOL": "process", "TASKQ_CONCURRENCY": "2", "TASKQ_PREFETCH": "3",
        "TASKQ_MAX_TASKS_PER_CHILD": "1000", "TASKQ_MAX_MEMORY_PER_CHILD_MB": "256",
        "TASKQ_QUEUE_TYPE": "quorum", "TASKQ_MAX_DELIVERIES": "7", "TASKQ_MAX_RETRIES": "4",
        "TASKQ_TASK_TIMEOUT": "90", "TASKQ_RETRY_INITIAL": "2", "TASKQ_RETRY_MAX": "60", "TASKQ_RETRY_FACTOR": "1.5",
    }


def test_asyncio_pool_env() -> None:
    values = {name: item.get("value") for name, item in _env(_build(worker={"image": "w", "pool": "asyncio"})).items()}
    assert values["TASKQ_POOL"] == "asyncio"


def test_user_env_cannot_set_prefetch_behind_the_spec() -> None:
    unset = _build(worker={"image": "w", "env": [{"name": "TASKQ_PREFETCH", "value": "1"}]})
    assert "TASKQ_PREFETCH" not in _env(unset)
    pinned = _build(worker={"image": "w", "prefetch": 12, "env": [{"name": "TASKQ_PREFETCH", "value": "1"}]})
    names = [item["name"] for item in pinned["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert names.count("TASKQ_PREFETCH") == 1 and _env(pinned)["TASKQ_PREFETCH"]["value"] == "12"


def test_user_env_cannot_override_reserved_settings() -> None:
    deployment = _build(worker={"image": "w", "env": [{"name": "TASKQ_QUEUE", "value": "other"}]})
    names = [item["name"] for item in deployment["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert names.count("TASKQ_QUEUE") == 1
    assert _env(deployment)["TASKQ_QUEUE"]["value"] == "emails"


def test_short_node_loss_tolerations_and_spread() -> None:
    pod = _build()["spec"]["template"]["spec"]
    by_key = {t["key"]: t for t in pod["tolerations"]}
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
        assert by_key[key]["effect"] == "NoExecute"
        assert by_key[key]["tolerationSeconds"] <= 30
    spread = pod["topologySpreadConstraints"][0]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert pod["nodeSelector"] == {"pool": "workers"}


def test_probes_and_grace() -> None:
    spec = parse_taskqueue(taskqueue())
    pod = build_deployment(spec, 1)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["name"] == "worker" and container["command"] == ["taskq-worker"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "health"}
    assert container["ports"][0] == {"name": "health", "containerPort": 8080, "protocol": "TCP"}
    assert pod["terminationGracePeriodSeconds"] == 330
    assert 0 < grace_seconds(spec) < 330


def test_spec_change_changes_the_pod_template() -> None:
    before = _build()["spec"]["template"]
    after = _build(tasks={"timeoutSeconds": 120})["spec"]["template"]
    assert json.dumps(before, sort_keys=True) != json.dumps(after, sort_keys=True)


def test_queue_label_is_a_valid_label_value() -> None:
    labels = _build(queue="orders-" + "x" * 150)["spec"]["template"]["metadata"]["labels"]
    assert labels["taskq.io/queue"] == ("orders-" + "x" * 150)[:63]
