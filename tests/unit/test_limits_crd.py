"""The TaskQueue CRD and `taskq.core.limits` agree: every bound, pattern, enum and reserved name of the
schema is the constant the operator's parser, the worker's settings and the producer use.

Pure: reads crds/taskqueue.yaml (and the chart's copy). tests/cluster/test_crd_contract.py walks the
same limits on a real API server.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from taskq.core import limits, topology
from taskq.core.limits import IntRange, NumberRange
from taskq.settings import Settings
from taskq_dev import manifests
from taskq_operator.core import deployment
from taskq_operator.core.schedules import MISSED_POLICIES
from taskq_operator.core.spec import POOLS, QUEUE_TYPES, ScalingSpec, TasksSpec, WorkerSpec, parse_taskqueue

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "crds" / "taskqueue.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

RANGES = limits.TASKQUEUE_RANGES

PATTERNS: dict[str, tuple[str, int]] = {
    "spec.store.database": (limits.DATABASE_PATTERN, limits.DATABASE_MAX_LENGTH),
    "spec.worker.taskModules[]": (limits.TASK_MODULE_PATTERN, limits.TASK_MODULE_MAX_LENGTH),
    "spec.worker.env[].name": (limits.ENV_NAME_PATTERN, limits.ENV_NAME_MAX_LENGTH),
    "spec.worker.env[].valueFrom.secretKeyRef.key": (limits.CONFIG_KEY_PATTERN, limits.CONFIG_KEY_MAX_LENGTH),
    "spec.worker.nodeSelector{}": (limits.LABEL_VALUE_PATTERN, limits.LABEL_VALUE_MAX_LENGTH),
    "spec.worker.tolerations[].value": (limits.LABEL_VALUE_PATTERN, limits.LABEL_VALUE_MAX_LENGTH),
    "spec.schedules[].name": (limits.SCHEDULE_NAME_PATTERN, limits.SCHEDULE_NAME_MAX_LENGTH),
    "spec.schedules[].timeZone": (limits.TIMEZONE_PATTERN, limits.TIMEZONE_MAX_LENGTH),
}
"""String fields checked by an OpenAPI `pattern` and `maxLength`."""

CEL_PATTERNS: dict[str, tuple[str, int]] = {
    "spec.queue": (limits.QUEUE_NAME_PATTERN, limits.QUEUE_NAME_MAX_LENGTH),
    "spec.worker.image": (limits.IMAGE_PATTERN, limits.IMAGE_MAX_LENGTH),
    "spec.broker.secretRef.name": (limits.DNS_SUBDOMAIN_PATTERN, limits.DNS_SUBDOMAIN_MAX_LENGTH),
    "spec.store.secretRef.name": (limits.DNS_SUBDOMAIN_PATTERN, limits.DNS_SUBDOMAIN_MAX_LENGTH),
    "spec.worker.env[].valueFrom.configMapKeyRef.name": (limits.DNS_SUBDOMAIN_PATTERN, limits.DNS_SUBDOMAIN_MAX_LENGTH),
    "spec.schedules[].cron": (limits.CRON_PATTERN, limits.CRON_MAX_LENGTH),
}
"""String fields checked by a CEL rule (`self.matches(r'...')`, for a message that says why) and `maxLength`."""

MAX_ITEMS = {
    "spec.worker.env": limits.MAX_ENV,
    "spec.worker.tolerations": limits.MAX_TOLERATIONS,
    "spec.worker.taskModules": limits.MAX_TASK_MODULES,
    "spec.schedules": limits.MAX_SCHEDULES,
}
MAX_PROPERTIES = {
    "spec.worker.nodeSelector": limits.MAX_NODE_SELECTOR,
    "spec.worker.resources.limits": limits.MAX_RESOURCES,
    "spec.worker.resources.requests": limits.MAX_RESOURCES,
}


def node(path: str) -> dict[str, Any]:
    """The schema at a dotted path: `x[]` is an array's items, `x{}` a map's values."""
    at: dict[str, Any] = SCHEMA
    for part in path.split("."):
        key = part.rstrip("[]{}")
        at = at["properties"][key]
        if part.endswith("[]"):
            at = at["items"]
        elif part.endswith("{}"):
            at = at["additionalProperties"]
    return at


def rules(schema: dict[str, Any]) -> list[str]:
    return [" ".join(r["rule"].split()) for r in schema.get("x-kubernetes-validations", [])]


def cel_regex(regex: str) -> str:
    """How a rule spells a match against `regex`: a CEL raw string."""
    return f".matches(r'{regex}')"


def every_number_field(schema: dict[str, Any], path: str = "spec") -> list[str]:
    found: list[str] = []
    for key, child in schema.get("properties", {}).items():
        if child.get("type") in ("integer", "number"):
            found.append(f"{path}.{key}")
        found += every_number_field(child, f"{path}.{key}")
    return found


def test_every_number_field_has_its_range_in_the_table() -> None:
    assert sorted(every_number_field(SCHEMA["properties"]["spec"])) == sorted(RANGES)


@pytest.mark.parametrize("path", sorted(RANGES))
def test_number_bounds_are_the_shared_limits(path: str) -> None:
    schema, bounds = node(path), RANGES[path]
    assert (schema["minimum"], schema["maximum"]) == (bounds.low, bounds.high), path
    exclusive = isinstance(bounds, NumberRange) and bounds.low_exclusive
    assert bool(schema.get("exclusiveMinimum", False)) is exclusive, path
    assert schema["type"] == ("integer" if isinstance(bounds, IntRange) else "number"), path


@pytest.mark.parametrize("path", sorted(PATTERNS))
def test_string_patterns_are_the_shared_limits(path: str) -> None:
    schema = node(path)
    assert (schema["pattern"], schema["maxLength"]) == PATTERNS[path], path


@pytest.mark.parametrize("path", sorted(CEL_PATTERNS))
def test_cel_patterns_are_the_shared_limits(path: str) -> None:
    schema = node(path)
    regex, longest = CEL_PATTERNS[path]
    assert schema["maxLength"] == longest, path
    assert any(cel_regex(regex) in rule for rule in rules(schema)), (path, rules(schema))


def test_collection_sizes() -> None:
    for path, most in MAX_ITEMS.items():
        assert node(path)["maxItems"] == most, path
    for path, most in MAX_PROPERTIES.items():
        assert node(path)["maxProperties"] == most, path


def test_taskqueue_name_fits_the_deployment_and_its_labels() -> None:
    name_rules = [r for r in rules(SCHEMA) if "metadata.name" in r and "oldSelf" not in r]
    assert name_rules == [
        f"size(self.metadata.name) <= {limits.TASKQUEUE_NAME_MAX_LENGTH} && "
        f"self.metadata.name{cel_regex(limits.DNS_LABEL_PATTERN)}"
    ]
    assert limits.TASKQUEUE_NAME_MAX_LENGTH + len(limits.WORKER_DEPLOYMENT_SUFFIX) == limits.LABEL_VALUE_MAX_LENGTH
    # Every name and queue name the CRD accepts is a queue name too (the queue defaults to the name).
    longest = "a" * limits.TASKQUEUE_NAME_MAX_LENGTH
    assert limits.valid_taskqueue_name(longest) and limits.valid_queue_name(longest)
    assert not limits.valid_taskqueue_name(longest + "a")


def test_queue_names_cannot_collide_with_taskqs_own_queues() -> None:
    for own in (topology.dead_queue("q"), topology.retry_queue("q", 1000), "amq.gen-1", "orders:eu"):
        assert not limits.valid_queue_name(own), own
    # the longest queue still leaves its side queues within RabbitMQ's 255 bytes
    longest = "q" * limits.QUEUE_NAME_MAX_LENGTH
    assert len(topology.retry_queue(longest, 2**40)) <= 255


def test_reserved_env_names() -> None:
    name_rules = rules(node("spec.worker.env[].name"))
    prefix_rule = f"!self.startsWith('{limits.RESERVED_ENV_PREFIX}')"
    names_rule = "!(self in [" + ", ".join(f"'{n}'" for n in limits.RESERVED_ENV_NAMES) + "])"
    assert name_rules == [f"{prefix_rule} && {names_rule}"]
    # every worker setting, and every variable the operator sets, is reserved
    assert all(limits.reserved_env_name(name) for name in _settings_env_names())
    operator_sets = [
        item["name"] for item in deployment.worker_env(parse_taskqueue(manifests.taskqueue("q", worker={"image": "w"})))
    ]
    assert all(limits.reserved_env_name(name) for name in [*operator_sets, deployment.PREFETCH_ENV])
    assert not limits.reserved_env_name("LOG_LEVEL")


def _settings_env_names() -> list[str]:
    prefix = Settings.model_config.get("env_prefix", "")
    return [f"{prefix}{name}".upper() for name in Settings.model_fields]


def test_env_value_sources_are_what_pods_accept() -> None:
    value_from = node("spec.worker.env[].valueFrom")
    assert (value_from["minProperties"], value_from["maxProperties"]) == (1, 1)
    assert node("spec.worker.env[].valueFrom.fieldRef.fieldPath")["enum"] == list(limits.ENV_FIELD_PATHS)
    assert node("spec.worker.env[].valueFrom.resourceFieldRef.resource")["enum"] == list(limits.ENV_RESOURCE_FIELDS)
    assert node("spec.worker.env[].valueFrom.resourceFieldRef.containerName")["enum"] == [deployment.CONTAINER]


def test_enums_are_the_ones_the_worker_and_the_operator_know() -> None:
    assert node("spec.worker.pool")["enum"] == list(POOLS) == list(typing.get_args(Settings.model_fields["pool"].annotation))
    queue_types = list(typing.get_args(Settings.model_fields["queue_type"].annotation))
    assert node("spec.tasks.queueType")["enum"] == list(QUEUE_TYPES) == list(topology.QUEUE_TYPES) == queue_types
    assert node("spec.worker.tolerations[].operator")["enum"] == list(limits.TOLERATION_OPERATORS)
    assert node("spec.worker.tolerations[].effect")["enum"] == list(limits.TAINT_EFFECTS)
    assert node("spec.schedules[].missedSlots")["enum"] == list(limits.MISSED_SLOTS) == list(MISSED_POLICIES)


def test_quorum_priority_rule_uses_the_shared_value() -> None:
    assert any(f"self.maxPriority == {limits.QUORUM_MAX_PRIORITY}" in r for r in rules(node("spec.tasks")))


def test_label_and_resource_names() -> None:
    qualified = cel_regex(limits.QUALIFIED_NAME_PATTERN)
    assert any(
        qualified in r and cel_regex(limits.QUALIFIED_PREFIX_LENGTH_PATTERN) in r for r in rules(node("spec.worker.nodeSelector"))
    )
    key = node("spec.worker.tolerations[].key")
    assert key["pattern"] == limits.QUALIFIED_NAME_PATTERN
    assert rules(key) == [f"self{cel_regex(limits.QUALIFIED_PREFIX_LENGTH_PATTERN)}"]
    names = rules(node("spec.worker.resources.limits"))[0]
    assert qualified in names and "[" + ", ".join(f"'{n}'" for n in limits.STANDARD_RESOURCES) + "]" in names
    values = rules(node("spec.worker.resources.limits{}"))
    assert node("spec.worker.resources.limits{}")["maxLength"] == limits.QUANTITY_MAX_LENGTH
    assert any(f"string(self){cel_regex(limits.QUANTITY_PATTERN)}" in r for r in values)
    assert node("spec.worker.resources.requests") == node("spec.worker.resources.limits")


def test_defaults_are_the_shared_ones() -> None:
    assert node("spec.worker.concurrency")["default"] == limits.DEFAULT_CONCURRENCY == WorkerSpec.concurrency
    assert Settings.model_fields["concurrency"].default == limits.DEFAULT_CONCURRENCY
    grace = node("spec.worker.terminationGracePeriodSeconds")["default"]
    assert grace == limits.DEFAULT_TERMINATION_GRACE_S == WorkerSpec.termination_grace_s
    assert node("spec.tasks.maxPriority")["default"] == limits.QUORUM_MAX_PRIORITY == TasksSpec.max_priority
    assert node("spec.scaling.maxReplicas")["default"] == ScalingSpec.max_replicas


def test_patterns_are_full_matches_in_python_and_go() -> None:
    """Each pattern is anchored and uses only syntax RE2 (the API server) and Python read alike."""
    for name in dir(limits):
        if name.endswith("_PATTERN"):
            regex = getattr(limits, name)
            assert regex.startswith("^") and regex.endswith("$"), name
            assert not re.search(r"\\[wdsWDS]|\(\?[=!<]", regex), name  # no classes that differ, no lookaround
            re.compile(regex)


def test_image_pattern() -> None:
    good = ["taskq:dev", "registry.local/taskq-worker:1", "localhost:5000/team/app:1.0", "ghcr.io/a/b@sha256:" + "0" * 64]
    bad = ["Taskq:dev", " taskq:dev", "taskq:dev ", "taskq :dev", "taskq:", "a..b", "taskq:" + "t" * 129, "-a"]
    assert all(re.fullmatch(limits.IMAGE_PATTERN, i) for i in good)
    assert not any(re.fullmatch(limits.IMAGE_PATTERN, i) for i in bad)
