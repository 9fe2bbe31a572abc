"""Parsing TaskQueue objects: defaults mirror the CRD, errors name the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from taskq_dev.manifests import example as taskqueue
from taskq_operator.core.spec import SpecError, parse_taskqueue

CRD = Path(__file__).resolve().parents[3] / "crds" / "taskqueue.yaml"
MINIMAL: dict[str, Any] = {
    "metadata": {"name": "q"},
    "spec": {
        "broker": {"secretRef": {"name": "b"}},
        "store": {"secretRef": {"name": "s"}},
        "worker": {"image": "w"},
    },
}


def test_parses_a_full_object() -> None:
    spec = parse_taskqueue(taskqueue())
    assert spec.queue == "emails"
    assert (spec.namespace, spec.uid, spec.generation) == ("jobs", "0000-1111", 3)
    assert (spec.broker_secret, spec.store_secret, spec.database) == ("rabbit", "mongo", "prod")
    assert spec.worker.task_modules == ("taskq.examples", "app.tasks")
    assert spec.scaling.max_replicas == 20 and spec.scaling.tasks_per_replica == 50
    assert spec.tasks.retry_backoff.initial_s == 0.5


def test_parses_the_worker_runtime_fields() -> None:
    spec = parse_taskqueue(taskqueue(
        worker={"image": "w", "pool": "process", "concurrency": 4, "prefetch": 6,
                "maxTasksPerChild": 500, "maxMemoryPerChildMiB": 300},
        tasks={"queueType": "quorum", "maxDeliveries": 100},
    ))
    assert (spec.worker.pool, spec.worker.prefetch, spec.worker.concurrency) == ("process", 6, 4)
    assert (spec.worker.max_tasks_per_child, spec.worker.max_memory_per_child_mib) == (500, 300)
    assert (spec.tasks.queue_type, spec.tasks.max_deliveries) == ("quorum", 100)


def test_prefetch_below_concurrency_from_an_older_object_is_raised_to_concurrency() -> None:
    # The CRD rejects prefetch < concurrency now; an object stored under the old default (prefetch 64)
    # with concurrency 100 is ratcheted by the API server and must still run.
    spec = parse_taskqueue(taskqueue(worker={"image": "w", "concurrency": 100, "prefetch": 64}))
    assert (spec.worker.prefetch, spec.worker.concurrency) == (100, 100)


def test_thread_and_asyncio_pools_without_recycling() -> None:
    for pool in ("thread", "asyncio"):
        spec = parse_taskqueue(taskqueue(worker={"image": "w", "pool": pool, "maxTasksPerChild": 0}))
        assert spec.worker.pool == pool and spec.worker.max_tasks_per_child == 0


def _schema(path: list[str]) -> Any:
    node = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for key in path:
        node = node["properties"][key]
    return node


def _schema_default(path: list[str]) -> Any:
    return _schema(path)["default"]


def test_prefetch_has_no_default_so_the_worker_picks_it() -> None:
    assert "default" not in _schema(["spec", "worker", "prefetch"])
    assert parse_taskqueue(MINIMAL).worker.prefetch is None


@pytest.mark.parametrize(
    ("path", "attribute"),
    [
        (["spec", "scaling", "minReplicas"], lambda s: s.scaling.min_replicas),
        (["spec", "scaling", "maxReplicas"], lambda s: s.scaling.max_replicas),
        (["spec", "scaling", "pollIntervalSeconds"], lambda s: s.scaling.poll_interval_s),
        (["spec", "scaling", "activationBacklog"], lambda s: s.scaling.activation_backlog),
        (["spec", "scaling", "scaleDown", "stabilizationWindowSeconds"],
         lambda s: s.scaling.scale_down.stabilization_window_s),
        (["spec", "scaling", "scaleUp", "maxStepPods"], lambda s: s.scaling.scale_up.max_step_pods),
        (["spec", "tasks", "timeoutSeconds"], lambda s: s.tasks.timeout_s),
        (["spec", "tasks", "maxRetries"], lambda s: s.tasks.max_retries),
        (["spec", "tasks", "maxPriority"], lambda s: s.tasks.max_priority),
        (["spec", "tasks", "retryBackoff", "factor"], lambda s: s.tasks.retry_backoff.factor),
        (["spec", "tasks", "queueType"], lambda s: s.tasks.queue_type),
        (["spec", "tasks", "maxDeliveries"], lambda s: s.tasks.max_deliveries),
        (["spec", "worker", "concurrency"], lambda s: s.worker.concurrency),
        (["spec", "worker", "pool"], lambda s: s.worker.pool),
        (["spec", "worker", "maxTasksPerChild"], lambda s: s.worker.max_tasks_per_child),
        (["spec", "worker", "maxMemoryPerChildMiB"], lambda s: s.worker.max_memory_per_child_mib),
        (["spec", "worker", "terminationGracePeriodSeconds"], lambda s: s.worker.termination_grace_s),
        (["spec", "store", "database"], lambda s: s.database),
    ],
)
def test_parser_defaults_match_the_crd(path: list[str], attribute: Any) -> None:
    assert attribute(parse_taskqueue(MINIMAL)) == _schema_default(path)


@pytest.mark.parametrize(
    ("section", "key"),
    [("worker", "prefetch"), ("worker", "maxTasksPerChild"), ("worker", "maxMemoryPerChildMiB"),
     ("worker", "concurrency"), ("tasks", "maxDeliveries"), ("tasks", "maxRetries")],
)
def test_parser_ranges_match_the_crd(section: str, key: str) -> None:
    schema = _schema(["spec", section, key])
    low, high = schema["minimum"], schema["maximum"]
    base = {"worker": {"image": "w", "concurrency": 1}, "tasks": {}}

    def body(value: int) -> dict[str, Any]:
        changes = copy.deepcopy(base)
        changes[section][key] = value
        return {**MINIMAL, "spec": {**MINIMAL["spec"], **changes}}

    for good in (low, high):
        parse_taskqueue(body(good))
    for bad in (low - 1, high + 1):
        with pytest.raises(SpecError, match=rf"spec\.{section}\.{key}"):
            parse_taskqueue(body(bad))


@pytest.mark.parametrize(("section", "key"), [("worker", "pool"), ("tasks", "queueType")])
def test_parser_choices_match_the_crd(section: str, key: str) -> None:
    for choice in _schema(["spec", section, key])["enum"]:
        changes = {"worker": {"image": "w"}, "tasks": {}}
        changes[section][key] = choice
        parse_taskqueue({**MINIMAL, "spec": {**MINIMAL["spec"], **changes}})


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"scaling": {"minReplicas": 5, "maxReplicas": 2}}, "spec.scaling.minReplicas"),
        ({"scaling": {"tasksPerReplica": 0}}, "spec.scaling.tasksPerReplica"),
        ({"scaling": {"maxReplicas": "ten"}}, "spec.scaling.maxReplicas"),
        ({"scaling": {"fallbackReplicas": 50}}, "spec.scaling.fallbackReplicas"),
        ({"worker": {"image": ""}}, "spec.worker.image"),
        ({"broker": {"secretRef": {}}}, "spec.broker.secretRef.name"),
        ({"queue": "amq.gen"}, "spec.queue"),
        ({"tasks": {"timeoutSeconds": 900}}, "spec.worker.terminationGracePeriodSeconds"),
        ({"tasks": {"retryBackoff": {"initialSeconds": 10, "maxSeconds": 5}}}, "initialSeconds"),
        ({"tasks": {"retryBackoff": {"initialSeconds": 0}}}, "spec.tasks.retryBackoff.initialSeconds"),
        ({"worker": {"image": "w", "pool": "gevent"}}, "spec.worker.pool"),
        ({"worker": {"image": "w", "prefetch": 10_001}}, "spec.worker.prefetch"),
        ({"worker": {"image": "w", "pool": "thread", "maxTasksPerChild": 100}}, "spec.worker.maxTasksPerChild"),
        ({"worker": {"image": "w", "pool": "asyncio", "maxMemoryPerChildMiB": 512}},
         "spec.worker.maxMemoryPerChildMiB"),
        ({"tasks": {"queueType": "stream"}}, "spec.tasks.queueType"),
        ({"tasks": {"maxDeliveries": 0}}, "spec.tasks.maxDeliveries"),
        ({"tasks": {"queueType": "quorum", "maxPriority": 5}}, "spec.tasks.maxPriority"),
    ],
)
def test_errors_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        parse_taskqueue(taskqueue(**changes))
