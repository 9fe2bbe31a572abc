"""The operator's spec parser holds the same limits as the CRD, for objects the API server never checked
(stored before a rule existed, or built in tests): each range's ends parse, one step beyond raises
`SpecError` naming the field, and names, queues and images follow `taskq.core.limits`."""

from __future__ import annotations

from typing import Any

import pytest

from taskq.core import limits
from taskq_dev import manifests
from taskq_operator.core.spec import SpecError, parse_taskqueue

COMPANIONS: dict[str, dict[str, Any]] = {
    "spec.worker.prefetch": {"spec.worker.concurrency": limits.CONCURRENCY.low},
    "spec.worker.terminationGracePeriodSeconds": {"spec.tasks.timeoutSeconds": limits.TASKQUEUE_TIMEOUT_S.low},
    "spec.tasks.timeoutSeconds": {"spec.worker.terminationGracePeriodSeconds": limits.TERMINATION_GRACE_S.high},
    "spec.scaling.minReplicas": {"spec.scaling.maxReplicas": limits.MAX_REPLICAS.high},
    "spec.scaling.fallbackReplicas": {"spec.scaling.maxReplicas": limits.MAX_REPLICAS.high},
    "spec.tasks.retryBackoff.initialSeconds": {"spec.tasks.retryBackoff.maxSeconds": limits.RETRY_DELAY_S.high},
    "spec.tasks.retryBackoff.maxSeconds": {"spec.tasks.retryBackoff.initialSeconds": 0.001},
}
"""Other fields a value needs, so only the limit under test decides (as in tests/cluster/test_crd_contract.py)."""


def body(changes: dict[str, Any]) -> dict[str, Any]:
    taskqueue = manifests.taskqueue("q", worker={"image": "taskq:dev"})
    for path, value in changes.items():
        at = taskqueue
        *parents, last = path.split(".")
        for key in parents:
            at = at.setdefault(key, {})
        at[last] = value
    return taskqueue


def ends(bounds: limits.IntRange | limits.NumberRange) -> tuple[list[float], list[float]]:
    """Values just inside and just outside `bounds`."""
    if isinstance(bounds, limits.IntRange):
        return [bounds.low, bounds.high], [bounds.low - 1, bounds.high + 1]
    low_in = bounds.low + 0.001 if bounds.low_exclusive else bounds.low
    low_out = bounds.low if bounds.low_exclusive else bounds.low - 0.5
    return [low_in, bounds.high], [low_out, bounds.high + 0.5]


@pytest.mark.parametrize("path", sorted(limits.TASKQUEUE_RANGES))
def test_each_range_parses_at_its_ends_and_not_beyond(path: str) -> None:
    inside, outside = ends(limits.TASKQUEUE_RANGES[path])
    for value in inside:
        parse_taskqueue(body({**COMPANIONS.get(path, {}), path: value}))
    for value in outside:
        with pytest.raises(SpecError, match=path.replace(".", r"\.")):
            parse_taskqueue(body({**COMPANIONS.get(path, {}), path: value}))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"metadata.name": "n" * (limits.TASKQUEUE_NAME_MAX_LENGTH + 1)}, "metadata.name"),
        ({"metadata.name": "orders.eu"}, "metadata.name"),
        ({"spec.queue": "orders.dead"}, "spec.queue"),
        ({"spec.queue": "orders:eu"}, "spec.queue"),
        ({"spec.queue": "q" * (limits.QUEUE_NAME_MAX_LENGTH + 1)}, "spec.queue"),
        ({"spec.worker.image": " taskq:dev"}, "spec.worker.image"),
        ({"spec.worker.image": "Taskq:dev"}, "spec.worker.image"),
    ],
)
def test_names_queues_and_images_beyond_the_limits_are_refused(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        parse_taskqueue(body(changes))


def test_names_queues_and_images_at_the_limits_parse() -> None:
    spec = parse_taskqueue(body({"metadata.name": "n" * limits.TASKQUEUE_NAME_MAX_LENGTH}))
    assert spec.queue == spec.name
    parse_taskqueue(body({"spec.queue": "Q_" + "q" * (limits.QUEUE_NAME_MAX_LENGTH - 2)}))
    parse_taskqueue(body({"spec.worker.image": "registry.local:5000/team/taskq@sha256:" + "0" * 64}))
