"""The CR is the contract: every TaskQueue the API server accepts works, walked limit by limit.

For each limit of `taskq.core.limits` (the one table the CRD, the operator's spec parser, the worker's
settings and the producer share), a TaskQueue just inside it is accepted by the real API server (a
server-side dry run) AND parsed by the operator's spec parser AND yields a worker environment
`taskq.settings.Settings` accepts (with the retry and queue arithmetic the worker derives from it) AND a
Deployment, and a Pod from its template, that the API server accepts. A TaskQueue just outside is
rejected by the API server with a message naming the field; when one is accepted the failure says which
later step breaks on it. tests/unit/test_limits_crd.py checks the schema's constants without a cluster.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from taskq.core import limits, topology
from taskq.core.message import utcnow
from taskq.core.retry import delay_bucket_ms
from taskq.settings import Settings
from taskq.submission import build_message
from taskq_dev import manifests
from taskq_operator.core.deployment import CONTAINER, build_deployment
from taskq_operator.core.spec import GROUP, PLURAL, VERSION, parse_taskqueue

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "taskqueue.yaml"
NAME = "contract"
BASE: dict[str, Any] = manifests.taskqueue(NAME, worker={"image": "taskq:dev", "taskModules": ["taskq.examples"]})
RABBITMQ_MAX_TTL_MS = 2**32 - 1
RABBITMQ_MAX_QUEUE_NAME = 255
SMALLEST_STEP = 0.001
"""How far inside an exclusive lower bound a number is taken (seconds)."""

COMPANIONS: dict[str, dict[str, Any]] = {
    "spec.worker.prefetch": {"spec.worker.concurrency": limits.CONCURRENCY.low},
    "spec.worker.terminationGracePeriodSeconds": {"spec.tasks.timeoutSeconds": limits.TASKQUEUE_TIMEOUT_S.low},
    "spec.tasks.timeoutSeconds": {"spec.worker.terminationGracePeriodSeconds": limits.TERMINATION_GRACE_S.high},
    "spec.scaling.minReplicas": {"spec.scaling.maxReplicas": limits.MAX_REPLICAS.high},
    "spec.scaling.fallbackReplicas": {"spec.scaling.maxReplicas": limits.MAX_REPLICAS.high},
    "spec.tasks.retryBackoff.initialSeconds": {"spec.tasks.retryBackoff.maxSeconds": limits.RETRY_DELAY_S.high},
    "spec.tasks.retryBackoff.maxSeconds": {"spec.tasks.retryBackoff.initialSeconds": SMALLEST_STEP},
}
"""Other fields a value needs (a prefetch of 1 needs a concurrency of 1), so only the limit under test decides."""


def with_fields(changes: dict[str, Any], base: dict[str, Any] = BASE) -> dict[str, Any]:
    """`base` with each dotted path set to its value."""
    body = copy.deepcopy(base)
    for path, value in changes.items():
        at = body
        *parents, last = path.split(".")
        for key in parents:
            at = at.setdefault(key, {})
        at[last] = value
    return body


def inside_values(bounds: limits.IntRange | limits.NumberRange) -> list[float]:
    if isinstance(bounds, limits.IntRange):
        return [bounds.low, bounds.high]
    return [bounds.low + SMALLEST_STEP if bounds.low_exclusive else bounds.low, bounds.high]


def outside_values(bounds: limits.IntRange | limits.NumberRange) -> list[float]:
    if isinstance(bounds, limits.IntRange):
        return [bounds.low - 1, bounds.high + 1]
    return [bounds.low if bounds.low_exclusive else bounds.low - 0.5, bounds.high + 0.5]


def _range_cases(values: Any) -> list[tuple[str, dict[str, Any], str]]:
    cases = []
    for path, bounds in limits.TASKQUEUE_RANGES.items():
        for value in values(bounds):
            cases.append((f"{path}={value}", with_fields({**COMPANIONS.get(path, {}), path: value}), path))
    return cases


SUBDOMAIN_253 = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
LONGEST_NAME = "n" * limits.TASKQUEUE_NAME_MAX_LENGTH
IMAGE = "spec.worker.image"
ENV = "spec.worker.env"
NODES = "spec.worker.nodeSelector"
TOLERATIONS = "spec.worker.tolerations"
RESOURCES = "spec.worker.resources"


def _env(*items: dict[str, Any]) -> dict[str, Any]:
    return {ENV: list(items)}


INSIDE: list[tuple[str, dict[str, Any]]] = [
    ("longest name", with_fields({"metadata.name": LONGEST_NAME})),
    ("one-letter name", with_fields({"metadata.name": "a"})),
    ("name with digits and dashes", with_fields({"metadata.name": "0-orders-eu-1"})),
    ("longest queue", with_fields({"spec.queue": "q" * limits.QUEUE_NAME_MAX_LENGTH})),
    ("queue with '_', '-' and capitals", with_fields({"spec.queue": "Orders_EU-1"})),
    ("longest database", with_fields({"spec.store.database": "d" * limits.DATABASE_MAX_LENGTH})),
    ("longest secret name", with_fields({"spec.broker.secretRef.name": SUBDOMAIN_253})),
    ("image with registry, port, tag", with_fields({IMAGE: "registry.local:5000/team/taskq-worker:1.2.3"})),
    ("image by digest", with_fields({IMAGE: "registry.local/taskq@sha256:" + "0" * 64})),
    ("image with tag and digest", with_fields({IMAGE: "taskq:dev@sha256:" + "a" * 64})),
    ("image with separators", with_fields({IMAGE: "a__b/c-d.e_f:T_1.x-y"})),
    ("most task modules", with_fields({"spec.worker.taskModules": [f"pkg.mod{i}" for i in range(limits.MAX_TASK_MODULES)]})),
    ("plain env", with_fields(_env({"name": "LOG_LEVEL", "value": "debug"}, {"name": "my.env-name", "value": ""}))),
    ("most env entries", with_fields(_env(*({"name": f"APP_{i}", "value": str(i)} for i in range(limits.MAX_ENV))))),
    (
        "env from a Secret and a ConfigMap",
        with_fields(
            _env(
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "app-secret", "key": "token.txt", "optional": True}}},
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "mode"}}},
            )
        ),
    ),
    (
        "env from the downward API",
        with_fields(
            _env(
                *({"name": f"F{i}", "valueFrom": {"fieldRef": {"fieldPath": p}}} for i, p in enumerate(limits.ENV_FIELD_PATHS)),
                *(
                    {"name": f"R{i}", "valueFrom": {"resourceFieldRef": {"resource": r, "containerName": CONTAINER}}}
                    for i, r in enumerate(limits.ENV_RESOURCE_FIELDS)
                ),
            )
        ),
    ),
    (
        "node selector",
        with_fields(
            {
                NODES: {
                    "taskq.io/real-node": "true",
                    "empty": "",
                    "v": "x" * 63,
                    f"{SUBDOMAIN_253}/{'k' * 63}": "a.b_c-d",
                }
            }
        ),
    ),
    ("most node selector entries", with_fields({NODES: {f"k{i}": "v" for i in range(limits.MAX_NODE_SELECTOR)}})),
    (
        "tolerations",
        with_fields(
            {
                TOLERATIONS: [
                    {"key": "taskq.io/real-node", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
                    {"operator": "Exists"},
                    {"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5},
                    {"key": "k2", "value": "v", "effect": ""},
                    {"key": f"{SUBDOMAIN_253}/{'t' * 63}", "effect": "PreferNoSchedule"},
                ]
            }
        ),
    ),
    (
        "most tolerations",
        with_fields({TOLERATIONS: [{"key": f"k{i}", "operator": "Exists"} for i in range(limits.MAX_TOLERATIONS)]}),
    ),
    (
        "resources",
        with_fields(
            {
                RESOURCES: {
                    "requests": {"cpu": "100m", "memory": "128Mi", "ephemeral-storage": "1Gi", "example.com/gpu": 1},
                    "limits": {"cpu": 2, "memory": "1.5Gi", "ephemeral-storage": "2G", "example.com/gpu": "1"},
                }
            }
        ),
    ),
    (
        "requests equal to limits",
        with_fields({RESOURCES: {"requests": {"cpu": "1", "memory": "1e9"}, "limits": {"cpu": "1000m", "memory": "1G"}}}),
    ),
    ("only limits", with_fields({RESOURCES: {"limits": {"cpu": "+0.5", "memory": "0"}}})),
    ("quorum queue at its one priority", with_fields({"spec.tasks": {"queueType": "quorum", "maxPriority": 10}})),
]

OUTSIDE: list[tuple[str, dict[str, Any], str]] = [
    ("name one too long", with_fields({"metadata.name": LONGEST_NAME + "n"}), "metadata.name must be a DNS-1123 label"),
    ("name with a dot", with_fields({"metadata.name": "orders.eu"}), "metadata.name must be a DNS-1123 label"),
    ("queue with a dot", with_fields({"spec.queue": "orders.eu"}), "spec.queue must be letters, digits"),
    ("queue with a colon", with_fields({"spec.queue": "orders:eu"}), "spec.queue must be letters, digits"),
    ("queue named like a dead-letter queue", with_fields({"spec.queue": "orders.dead"}), "spec.queue must be letters"),
    ("queue named like a retry queue", with_fields({"spec.queue": "orders.retry.1000"}), "spec.queue must be letters"),
    ("queue one too long", with_fields({"spec.queue": "q" * (limits.QUEUE_NAME_MAX_LENGTH + 1)}), "spec.queue"),
    ("queue starting with '-'", with_fields({"spec.queue": "-orders"}), "spec.queue must be letters, digits"),
    ("database one too long", with_fields({"spec.store.database": "d" * 64}), "spec.store.database"),
    ("image with a leading space", with_fields({IMAGE: " taskq:dev"}), "spec.worker.image must be an image reference"),
    ("image with a trailing space", with_fields({IMAGE: "taskq:dev "}), "spec.worker.image must be an image reference"),
    ("image in capitals", with_fields({IMAGE: "Taskq:dev"}), "spec.worker.image must be an image reference"),
    ("image with an empty tag", with_fields({IMAGE: "taskq:"}), "spec.worker.image must be an image reference"),
    ("image with a space inside", with_fields({IMAGE: "taskq worker:1"}), "spec.worker.image must be an image reference"),
    (
        "env sets a worker setting",
        with_fields(_env({"name": "TASKQ_CONCURRENCY", "value": "64"})),
        "spec.worker.env must not set TASKQ_CONCURRENCY",
    ),
    (
        "env sets the worker id",
        with_fields(_env({"name": "TASKQ_WORKER_ID", "value": "same-for-all"})),
        "spec.worker.env must not set TASKQ_WORKER_ID",
    ),
    ("env sets the prefetch", with_fields(_env({"name": "TASKQ_PREFETCH", "value": "1"})), "must not set TASKQ_PREFETCH"),
    ("env sets POD_NAME", with_fields(_env({"name": "POD_NAME", "value": "x"})), "must not set POD_NAME"),
    ("env name with '='", with_fields(_env({"name": "A=B", "value": "x"})), "spec.worker.env[0].name"),
    ("env name starting with a digit", with_fields(_env({"name": "1ABC", "value": "x"})), "spec.worker.env[0].name"),
    ("env value not a string", with_fields(_env({"name": "N", "value": 5})), "spec.worker.env[0].value"),
    (
        "env with value and valueFrom",
        with_fields(_env({"name": "N", "value": "x", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})),
        "value or valueFrom, not both",
    ),
    ("env valueFrom empty", with_fields(_env({"name": "N", "valueFrom": {}})), "spec.worker.env[0].valueFrom"),
    (
        "env valueFrom with two sources",
        with_fields(
            _env(
                {
                    "name": "N",
                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}, "secretKeyRef": {"name": "s", "key": "k"}},
                }
            )
        ),
        "spec.worker.env[0].valueFrom",
    ),
    (
        "env Secret key with '/'",
        with_fields(_env({"name": "N", "valueFrom": {"secretKeyRef": {"name": "s", "key": "a/b"}}})),
        "spec.worker.env[0].valueFrom.secretKeyRef.key",
    ),
    (
        "env Secret without a key",
        with_fields(_env({"name": "N", "valueFrom": {"secretKeyRef": {"name": "s"}}})),
        "spec.worker.env[0].valueFrom.secretKeyRef.key",
    ),
    (
        "env field path not offered",
        with_fields(_env({"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels"}}})),
        "spec.worker.env[0].valueFrom.fieldRef.fieldPath",
    ),
    (
        "env resource of another container",
        with_fields(
            _env({"name": "N", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "containerName": "sidecar"}}})
        ),
        "spec.worker.env[0].valueFrom.resourceFieldRef.containerName",
    ),
    ("too many env entries", with_fields(_env(*({"name": f"A{i}", "value": ""} for i in range(limits.MAX_ENV + 1)))), ENV),
    (
        "node selector key with a space",
        with_fields({NODES: {"bad key": "v"}}),
        "spec.worker.nodeSelector keys must be label keys",
    ),
    ("node selector key prefix too long", with_fields({NODES: {f"{SUBDOMAIN_253}x/k": "v"}}), "must be label keys"),
    ("node selector key name too long", with_fields({NODES: {"k" * 64: "v"}}), "must be label keys"),
    ("node selector value with a space", with_fields({NODES: {"k": "a b"}}), "spec.worker.nodeSelector.k"),
    ("node selector value too long", with_fields({NODES: {"k": "v" * 64}}), "spec.worker.nodeSelector.k"),
    (
        "toleration operator unknown",
        with_fields({TOLERATIONS: [{"key": "k", "operator": "Bogus"}]}),
        "spec.worker.tolerations[0].operator",
    ),
    ("toleration without key or Exists", with_fields({TOLERATIONS: [{"value": "v"}]}), "without a key"),
    (
        "toleration Exists with a value",
        with_fields({TOLERATIONS: [{"key": "k", "operator": "Exists", "value": "v"}]}),
        "with operator Exists has no value",
    ),
    (
        "toleration seconds without NoExecute",
        with_fields({TOLERATIONS: [{"key": "k", "operator": "Exists", "tolerationSeconds": 5}]}),
        "tolerationSeconds applies to effect NoExecute only",
    ),
    (
        "toleration effect unknown",
        with_fields({TOLERATIONS: [{"key": "k", "effect": "NoRun"}]}),
        "spec.worker.tolerations[0].effect",
    ),
    (
        "toleration key invalid",
        with_fields({TOLERATIONS: [{"key": "a b", "operator": "Exists"}]}),
        "spec.worker.tolerations[0].key",
    ),
    ("negative cpu string", with_fields({RESOURCES: {"limits": {"cpu": "-1"}}}), "must be a non-negative quantity"),
    ("negative cpu integer", with_fields({RESOURCES: {"requests": {"cpu": -1}}}), "must be a non-negative quantity"),
    ("not a quantity", with_fields({RESOURCES: {"requests": {"memory": "lots"}}}), "must be a non-negative quantity"),
    ("resource name not standard", with_fields({RESOURCES: {"limits": {"gpu": 1}}}), "resource names are cpu, memory"),
    ("resource in kubernetes.io", with_fields({RESOURCES: {"limits": {"kubernetes.io/thing": 1}}}), "resource names are cpu"),
    ("huge pages", with_fields({RESOURCES: {"limits": {"hugepages-2Mi": "2Mi", "memory": "1Gi"}}}), "resource names are cpu"),
    (
        "request above limit",
        with_fields({RESOURCES: {"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}}}),
        "must not exceed the limit",
    ),
    (
        "extended resource without a limit",
        with_fields({RESOURCES: {"requests": {"example.com/gpu": 1}}}),
        "needs a limit equal to it",
    ),
    (
        "extended resource request below limit",
        with_fields({RESOURCES: {"requests": {"example.com/gpu": 1}, "limits": {"example.com/gpu": 2}}}),
        "needs a limit equal to it",
    ),
    ("extended resource not whole", with_fields({RESOURCES: {"limits": {"example.com/gpu": "1.5"}}}), "whole numbers"),
    (
        "too many resources",
        with_fields({RESOURCES: {"limits": {f"example.com/r{i}": 1 for i in range(limits.MAX_RESOURCES + 1)}}}),
        "spec.worker.resources.limits",
    ),
]


@pytest.fixture(scope="module")
def api(cluster: Any) -> k8s.ApiClient:
    cluster.kubectl("apply", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/taskqueues.taskq.io")
    return cluster.api_client()


@pytest.fixture(scope="module")
def namespace(cluster: Any, api: k8s.ApiClient) -> Iterator[str]:
    name = f"tq-contract-{uuid.uuid4().hex[:6]}"
    core = k8s.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # pods need the namespace's default ServiceAccount
        if any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items):
            break
        time.sleep(0.2)
    yield name
    core.delete_namespace(name)


def create_taskqueue(api: k8s.ApiClient, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """The TaskQueue as the API server would store it (defaults applied); ApiException when rejected."""
    stored: dict[str, Any] = k8s.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body, dry_run="All", field_validation="Strict"
    )
    return stored


def rejection(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body).get("message", exc.body))
    except (TypeError, ValueError):
        return str(exc.body)


def worker_settings(deployment: dict[str, Any]) -> Settings:
    """The settings `taskq-worker` reads from the Deployment's environment (Secret values stood in for)."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    prefix = str(Settings.model_config.get("env_prefix", ""))
    stand_ins = {"TASKQ_AMQP_URL": "amqp://u:p@broker:5672/%2F", "TASKQ_MONGODB_URI": "mongodb://store:27017/"}
    values: dict[str, Any] = {}
    for item in container["env"]:
        name = item["name"]
        if not name.startswith(prefix):
            continue
        key = name[len(prefix) :].lower()
        assert key in Settings.model_fields, f"the operator sets {name}, which no worker setting reads"
        values[key] = item["value"] if "value" in item else stand_ins[name]
    return Settings(**values)


def check_worker_accepts(settings: Settings) -> None:
    """What the worker derives at start (its retry policy, its queues' names and arguments), and a producer's message."""
    policy = settings.retry_policy()
    longest_wait_ms = delay_bucket_ms(policy.ceiling(settings.max_retries + 1))
    assert longest_wait_ms <= RABBITMQ_MAX_TTL_MS
    assert delay_bucket_ms(policy.max_s) <= RABBITMQ_MAX_TTL_MS
    for name in (topology.dead_queue(settings.queue), topology.retry_queue(settings.queue, delay_bucket_ms(policy.max_s))):
        assert len(name.encode()) <= RABBITMQ_MAX_QUEUE_NAME, name
    arguments = topology.work_queue_arguments(
        settings.queue,
        max_priority=settings.max_priority,
        task_timeout_s=settings.task_timeout,
        queue_type=settings.queue_type,
        max_deliveries=settings.max_deliveries,
    )
    assert 0 < arguments["x-consumer-timeout"] <= RABBITMQ_MAX_TTL_MS
    assert settings.effective_prefetch <= 65_535  # AMQP's prefetch-count is 16 bits
    # a producer configured like the worker can submit to its queue
    build_message("noop", queue=settings.queue, max_retries=None, timeout=None, now=utcnow())


def check_usable(cluster: Any, stored: dict[str, Any]) -> None:
    """Parsed by the operator, accepted by the worker's settings, its Deployment and Pod accepted by the API server.

    The Deployment goes to the API server as the operator sends it (JSON as built, not through a typed client),
    together with a Pod from its template: a Pod's own validation (e.g. of the image) is stricter than a
    template's, and a template it refuses would leave the Deployment without pods.
    """
    spec = parse_taskqueue(stored)
    deployment = build_deployment(spec, 1)
    meta = deployment["metadata"]
    assert meta["name"] == spec.name + limits.WORKER_DEPLOYMENT_SUFFIX, "the Deployment's name was cut (names could collide)"
    assert meta["labels"]["app.kubernetes.io/instance"] == spec.name
    check_worker_accepts(worker_settings(deployment))
    template = deployment["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "spec": template["spec"],
        "metadata": {"name": f"{meta['name']}-0", "namespace": spec.namespace, "labels": template["metadata"]["labels"]},
    }
    objects = {"apiVersion": "v1", "kind": "List", "items": [deployment, pod]}
    result = cluster.kubectl("create", "--dry-run=server", "-o", "name", "-f", "-", input=json.dumps(objects), check=False)
    if result.returncode != 0:
        raise Refused(result.stderr.strip())


class Refused(Exception):
    """The API server refused the Deployment or the Pod."""


def what_breaks(cluster: Any, stored: dict[str, Any]) -> str:
    """For a TaskQueue the API server should have refused: the first later step that fails on it."""
    try:
        check_usable(cluster, stored)
    except Refused as exc:
        return f"the API server refuses its Deployment or Pod: {str(exc)[:400]}"
    except Exception as exc:  # noqa: BLE001 - the report names whatever broke
        return f"{type(exc).__name__}: {str(exc)[:400]}"
    return "nothing downstream fails (the limit is policy)"


@pytest.mark.parametrize(
    ("body", "field"), [c[1:] for c in _range_cases(inside_values)], ids=[c[0] for c in _range_cases(inside_values)]
)
def test_number_just_inside_its_limit_works(
    cluster: Any, api: k8s.ApiClient, namespace: str, body: dict[str, Any], field: str
) -> None:
    check_usable(cluster, create_taskqueue(api, namespace, body))


@pytest.mark.parametrize(
    ("body", "field"), [c[1:] for c in _range_cases(outside_values)], ids=[c[0] for c in _range_cases(outside_values)]
)
def test_number_just_outside_its_limit_is_rejected(
    cluster: Any, api: k8s.ApiClient, namespace: str, body: dict[str, Any], field: str
) -> None:
    expect_rejected(cluster, api, namespace, body, field)


@pytest.mark.parametrize("body", [c[1] for c in INSIDE], ids=[c[0] for c in INSIDE])
def test_inside_the_limits_works(cluster: Any, api: k8s.ApiClient, namespace: str, body: dict[str, Any]) -> None:
    check_usable(cluster, create_taskqueue(api, namespace, body))


@pytest.mark.parametrize(("body", "message"), [c[1:] for c in OUTSIDE], ids=[c[0] for c in OUTSIDE])
def test_outside_the_limits_is_rejected(
    cluster: Any, api: k8s.ApiClient, namespace: str, body: dict[str, Any], message: str
) -> None:
    expect_rejected(cluster, api, namespace, body, message)


def expect_rejected(cluster: Any, api: k8s.ApiClient, namespace: str, body: dict[str, Any], message: str) -> None:
    try:
        stored = create_taskqueue(api, namespace, body)
    except ApiException as exc:
        assert exc.status == 422, rejection(exc)
        assert message in rejection(exc), rejection(exc)
        return
    pytest.fail(f"accepted; then {what_breaks(cluster, stored)}")


def test_the_walk_covers_every_limit() -> None:
    covered = {c[2] for c in _range_cases(outside_values)}
    assert covered == set(limits.TASKQUEUE_RANGES)
    assert len(INSIDE) >= 20 and len(OUTSIDE) >= 40


def test_kubectl_scale_is_held_to_the_replica_limit(cluster: Any, namespace: str) -> None:
    """`spec.replicas` is mostly written through the scale subresource; it keeps the same limit."""
    body = with_fields({"metadata.name": "scaled", "metadata.namespace": namespace})
    cluster.kubectl("create", "-f", "-", input=json.dumps(body))
    try:
        top = limits.REPLICAS.high
        cluster.kubectl("scale", "-n", namespace, "tq/scaled", f"--replicas={top}")
        refused = cluster.kubectl("scale", "-n", namespace, "tq/scaled", f"--replicas={top + 1}", check=False)
        assert refused.returncode != 0 and "spec.replicas" in refused.stderr, refused.stderr
        stored = json.loads(cluster.kubectl("get", "-n", namespace, "tq/scaled", "-o", "json").stdout)
        assert parse_taskqueue(stored).scaling.manual_replicas == top
    finally:
        cluster.kubectl("delete", "-n", namespace, "tq/scaled", "--wait=false", check=False)
