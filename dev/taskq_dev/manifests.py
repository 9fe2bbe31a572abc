"""TaskQueue manifests for tests, benchmarks and the demo: one builder, so every caller writes the same shape.

`taskqueue(name, namespace, ...)` returns a `taskq.io/v1alpha1` TaskQueue body. Each spec section a
caller passes (`worker`, `scaling`, `tasks`, or any other) is used as given, in place of the default;
sections left out get `DEFAULT_WORKER` (the image the harness builds, the example tasks) or nothing.
Callers that only add to the default worker write `worker={**DEFAULT_WORKER, "concurrency": 2}`.

`example(**sections)` is one fully populated TaskQueue (`jobs/emails`, fixed uid and generation) for
tests that check how every field is read; sections passed replace its own.

Called by the operator's unit tests (`example`), the operator cluster tests and `bench/scaling.py`.
"""

from __future__ import annotations

import copy
from typing import Any

API_VERSION = "taskq.io/v1alpha1"
KIND = "TaskQueue"
DEFAULT_WORKER: dict[str, Any] = {"image": "taskq:dev", "taskModules": ["taskq.examples"]}
"""The worker section when a caller gives none: the harness's image and the example tasks."""


def taskqueue(
    name: str,
    namespace: str | None = None,
    *,
    queue: str | None = None,
    broker_secret: str = "rabbit",
    store_secret: str = "mongo",
    database: str | None = None,
    uid: str | None = None,
    generation: int | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """A TaskQueue body; `sections` are spec sections (`worker=`, `scaling=`, `tasks=`, ...), each used as given."""
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    if uid is not None:
        metadata["uid"] = uid
    if generation is not None:
        metadata["generation"] = generation
    store: dict[str, Any] = {"secretRef": {"name": store_secret}}
    if database is not None:
        store["database"] = database
    spec: dict[str, Any] = {}
    if queue is not None:
        spec["queue"] = queue
    spec["broker"] = {"secretRef": {"name": broker_secret}}
    spec["store"] = store
    spec["worker"] = copy.deepcopy(DEFAULT_WORKER)
    spec.update(copy.deepcopy(sections))
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}


EXAMPLE_SECTIONS: dict[str, Any] = {
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
}


def example(**sections: Any) -> dict[str, Any]:
    """The populated example TaskQueue `jobs/emails` (Secrets `rabbit`, `mongo`, database `prod`); `sections` replace its own."""
    return taskqueue(
        "emails",
        "jobs",
        database="prod",
        uid="0000-1111",
        generation=3,
        **{**EXAMPLE_SECTIONS, **sections},
    )
