"""A valid TaskQueue object for the operator's unit tests."""

from __future__ import annotations

import copy
from typing import Any

TASKQUEUE: dict[str, Any] = {
    "apiVersion": "taskq.io/v1alpha1",
    "kind": "TaskQueue",
    "metadata": {"name": "emails", "namespace": "jobs", "uid": "0000-1111", "generation": 3},
    "spec": {
        "broker": {"secretRef": {"name": "rabbit"}},
        "store": {"secretRef": {"name": "mongo"}, "database": "prod"},
        "worker": {
            "image": "registry.local/taskq-worker:1",
            "taskModules": ["taskq.examples", "app.tasks"],
            "concurrency": 8,
            "env": [{"name": "LOG_LEVEL", "value": "debug"}],
            "nodeSelector": {"pool": "workers"},
            "resources": {"requests": {"cpu": "100m"}},
        },
        "scaling": {"maxReplicas": 20, "tasksPerReplica": 50},
        "tasks": {"timeoutSeconds": 60, "retryBackoff": {"initialSeconds": 0.5}},
    },
}


def taskqueue(**spec_changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(TASKQUEUE)
    body["spec"].update(spec_changes)
    return body
