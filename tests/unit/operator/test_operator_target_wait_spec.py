"""Parsing `spec.scaling.targetWaitSeconds` (and `tasksPerReplica`, which lost its CRD default for it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from taskq.core import limits
from taskq_operator.core.spec import SpecError, parse_taskqueue

CRD = Path(__file__).resolve().parents[3] / "crds" / "taskqueue.yaml"


def body(scaling: dict[str, Any], worker: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "orders", "namespace": "default"},
        "spec": {
            "broker": {"secretRef": {"name": "b"}},
            "store": {"secretRef": {"name": "s"}},
            "worker": {"image": "taskq:dev", **(worker or {})},
            "scaling": scaling,
        },
    }


def test_neither_field_means_the_default_tasks_per_replica() -> None:
    scaling = parse_taskqueue(body({})).scaling
    assert (scaling.tasks_per_replica, scaling.target_wait_s) == (limits.DEFAULT_TASKS_PER_REPLICA, None)


def test_target_wait_alone_drops_tasks_per_replica() -> None:
    scaling = parse_taskqueue(body({"targetWaitSeconds": 7.5}, {"concurrency": 8})).scaling
    assert (scaling.tasks_per_replica, scaling.target_wait_s, scaling.slots_per_replica) == (None, 7.5, 8)


def test_both_fields_are_kept() -> None:
    scaling = parse_taskqueue(body({"targetWaitSeconds": 30, "tasksPerReplica": 20})).scaling
    assert (scaling.tasks_per_replica, scaling.target_wait_s) == (20, 30.0)


@pytest.mark.parametrize("value", [0, -1, 86_400.5, "10", True])
def test_bad_target_waits_name_the_field(value: object) -> None:
    with pytest.raises(SpecError, match=r"spec\.scaling\.targetWaitSeconds"):
        parse_taskqueue(body({"targetWaitSeconds": value}))


@pytest.mark.parametrize("value", [0.001, 1, 86_400])
def test_target_waits_in_range_parse(value: float) -> None:
    assert parse_taskqueue(body({"targetWaitSeconds": value})).scaling.target_wait_s == float(value)


def test_the_crd_defaults_neither_field() -> None:
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    scaling = schema["properties"]["spec"]["properties"]["scaling"]["properties"]
    assert "default" not in scaling["tasksPerReplica"] and "default" not in scaling["targetWaitSeconds"]
    assert scaling["targetWaitSeconds"]["type"] == "number"
