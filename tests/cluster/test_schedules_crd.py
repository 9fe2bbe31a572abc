"""`spec.schedules` on a real API server: valid schedules are stored with their defaults and parse; an invalid
cron expression, time zone, name, missed-slots policy or a repeated name is rejected with a message naming it."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from taskq_dev import manifests
from taskq_operator.core.schedules import Schedule
from taskq_operator.core.spec import GROUP, PLURAL, VERSION, parse_taskqueue

pytestmark = pytest.mark.cluster

CRD = Path(__file__).resolve().parents[2] / "crds" / "taskqueue.yaml"
BASE: dict[str, Any] = manifests.taskqueue("sched", worker={"image": "taskq:dev", "taskModules": ["taskq.examples"]})


@pytest.fixture(scope="module")
def api(cluster: Any) -> k8s.ApiClient:
    cluster.kubectl("apply", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/taskqueues.taskq.io")
    return cluster.api_client()


@pytest.fixture(scope="module")
def namespace(api: k8s.ApiClient) -> Iterator[str]:
    name = f"tq-sched-{uuid.uuid4().hex[:6]}"
    core = k8s.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


def create(api: k8s.ApiClient, namespace: str, schedules: list[dict[str, Any]]) -> dict[str, Any]:
    body = copy.deepcopy(BASE)
    body["spec"]["schedules"] = schedules
    stored: dict[str, Any] = k8s.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body, dry_run="All", field_validation="Strict"
    )
    return stored


def test_valid_schedules_are_stored_with_defaults_and_parse(api: k8s.ApiClient, namespace: str) -> None:
    stored = create(
        api,
        namespace,
        [
            {"name": "every-5", "cron": "*/5 * * * *", "task": "echo", "args": [1, {"a": "b"}], "kwargs": {"x": [1]}},
            {
                "name": "nightly",
                "cron": "0 3 * * mon-fri",
                "task": "sleep",
                "timeZone": "Europe/Berlin",
                "missedSlots": "catchUp",
            },
        ],
    )
    first = stored["spec"]["schedules"][0]
    assert first["timeZone"] == "UTC" and first["missedSlots"] == "skip" and first["kwargs"] == {"x": [1]}
    assert parse_taskqueue(stored).schedules[1] == Schedule(
        "nightly", "0 3 * * mon-fri", "sleep", "Europe/Berlin", (), {}, "catchUp"
    )


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ({"name": "a", "cron": "* * *", "task": "echo"}, "cron must be a 5-field cron expression"),
        ({"name": "a", "cron": "61 * * * *", "task": "echo"}, "cron must be a 5-field cron expression"),
        ({"name": "a", "cron": "0 0 * 13 *", "task": "echo"}, "cron must be a 5-field cron expression"),
        ({"name": "a", "cron": "every day", "task": "echo"}, "cron must be a 5-field cron expression"),
        ({"name": "a", "cron": "* * * * *", "task": "echo", "timeZone": "Europe/../etc"}, "spec.schedules[0].timeZone"),
        ({"name": "Bad_Name", "cron": "* * * * *", "task": "echo"}, "spec.schedules[0].name"),
        ({"name": "a", "cron": "* * * * *", "task": "echo", "missedSlots": "all"}, "spec.schedules[0].missedSlots"),
        ({"name": "a", "cron": "* * * * *"}, "spec.schedules[0].task"),
    ],
    ids=["fields", "minute", "month", "words", "zone", "name", "missed", "task"],
)
def test_invalid_schedule_is_rejected(api: k8s.ApiClient, namespace: str, schedule: dict[str, Any], message: str) -> None:
    with pytest.raises(ApiException) as caught:
        create(api, namespace, [schedule])
    assert caught.value.status == 422
    assert message in json.loads(caught.value.body)["message"]


def test_repeated_schedule_names_are_rejected(api: k8s.ApiClient, namespace: str) -> None:
    twice = {"name": "a", "cron": "* * * * *", "task": "echo"}
    with pytest.raises(ApiException) as caught:
        create(api, namespace, [twice, twice])
    assert "spec.schedules[].name must be unique" in json.loads(caught.value.body)["message"]
