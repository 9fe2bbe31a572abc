"""Parsing TaskQueue objects: defaults mirror the CRD, errors name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from taskq_operator.core.spec import SpecError, parse_taskqueue

from operator_manifests import taskqueue

CRD = Path(__file__).resolve().parents[3] / "crds" / "taskqueue.yaml"


def test_parses_a_full_object() -> None:
    spec = parse_taskqueue(taskqueue())
    assert spec.queue == "emails"
    assert (spec.namespace, spec.uid, spec.generation) == ("jobs", "0000-1111", 3)
    assert (spec.broker_secret, spec.store_secret, spec.database) == ("rabbit", "mongo", "prod")
    assert spec.worker.task_modules == ("taskq.examples", "app.tasks")
    assert spec.scaling.max_replicas == 20 and spec.scaling.tasks_per_replica == 50
    assert spec.tasks.retry_backoff.initial_s == 0.5


def _schema_default(path: list[str]) -> Any:
    node = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for key in path:
        node = node["properties"][key]
    return node["default"]


@pytest.mark.parametrize(
    ("path", "attribute"),
    [
        (["spec", "scaling", "minReplicas"], lambda s: s.scaling.min_replicas),
        (["spec", "scaling", "maxReplicas"], lambda s: s.scaling.max_replicas),
        (["spec", "scaling", "tasksPerReplica"], lambda s: s.scaling.tasks_per_replica),
        (["spec", "scaling", "pollIntervalSeconds"], lambda s: s.scaling.poll_interval_s),
        (["spec", "scaling", "activationBacklog"], lambda s: s.scaling.activation_backlog),
        (["spec", "scaling", "scaleDown", "stabilizationWindowSeconds"],
         lambda s: s.scaling.scale_down.stabilization_window_s),
        (["spec", "scaling", "scaleUp", "maxStepPods"], lambda s: s.scaling.scale_up.max_step_pods),
        (["spec", "tasks", "timeoutSeconds"], lambda s: s.tasks.timeout_s),
        (["spec", "tasks", "maxRetries"], lambda s: s.tasks.max_retries),
        (["spec", "tasks", "maxPriority"], lambda s: s.tasks.max_priority),
        (["spec", "tasks", "retryBackoff", "factor"], lambda s: s.tasks.retry_backoff.factor),
        (["spec", "worker", "prefetch"], lambda s: s.worker.prefetch),
        (["spec", "worker", "concurrency"], lambda s: s.worker.concurrency),
        (["spec", "worker", "terminationGracePeriodSeconds"], lambda s: s.worker.termination_grace_s),
        (["spec", "store", "database"], lambda s: s.database),
    ],
)
def test_parser_defaults_match_the_crd(path: list[str], attribute: Any) -> None:
    minimal = {
        "metadata": {"name": "q"},
        "spec": {
            "broker": {"secretRef": {"name": "b"}},
            "store": {"secretRef": {"name": "s"}},
            "worker": {"image": "w"},
        },
    }
    assert attribute(parse_taskqueue(minimal)) == _schema_default(path)


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
    ],
)
def test_errors_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        parse_taskqueue(taskqueue(**changes))
