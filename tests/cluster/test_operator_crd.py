"""The TaskQueue CRD on a real API server: defaults, subresources, and invalid objects rejected with
messages that name the field (schema ranges and patterns, CEL rules, immutability)."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from taskq_dev import manifests
from taskq_operator.core.deployment import build_deployment
from taskq_operator.core.spec import parse_taskqueue

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "taskqueue.yaml"

VALID: dict[str, Any] = manifests.taskqueue("emails", worker={"image": "taskq:dev"})


def _with(path: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(VALID)
    node = body
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return body


def _without(path: str) -> dict[str, Any]:
    body = copy.deepcopy(VALID)
    node = body
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[key]
    del node[keys[-1]]
    return body


INVALID = [
    ("min above max", _with("spec.scaling", {"minReplicas": 5, "maxReplicas": 2}),
     "spec.scaling.minReplicas must be <= spec.scaling.maxReplicas"),
    ("tasksPerReplica zero", _with("spec.scaling", {"tasksPerReplica": 0}), "spec.scaling.tasksPerReplica"),
    ("maxReplicas zero", _with("spec.scaling", {"maxReplicas": 0}), "spec.scaling.maxReplicas"),
    ("negative minReplicas", _with("spec.scaling", {"minReplicas": -1}), "spec.scaling.minReplicas"),
    ("poll interval zero", _with("spec.scaling", {"pollIntervalSeconds": 0}), "spec.scaling.pollIntervalSeconds"),
    ("fallback above max", _with("spec.scaling", {"maxReplicas": 3, "fallbackReplicas": 4}),
     "spec.scaling.fallbackReplicas must be <= spec.scaling.maxReplicas"),
    ("paused not boolean", _with("spec.scaling", {"paused": "yes"}), "spec.scaling.paused"),
    ("grace below task timeout", _with("spec.tasks", {"timeoutSeconds": 600}),
     "terminationGracePeriodSeconds must be >= spec.tasks.timeoutSeconds"),
    ("bad broker secret name", _with("spec.broker.secretRef.name", "Bad_Name"), "must be a valid Secret name"),
    ("store secret missing", _without("spec.store"), "spec.store"),
    ("image missing", _without("spec.worker.image"), "spec.worker.image"),
    ("reserved queue name", _with("spec.queue", "amq.orders"), "must not start with 'amq.'"),
    ("queue name with spaces", _with("spec.queue", "my queue"), "spec.queue"),
    ("prefetch zero", _with("spec.worker.prefetch", 0), "spec.worker.prefetch"),
    ("priority above 255", _with("spec.tasks", {"maxPriority": 300}), "spec.tasks.maxPriority"),
    ("backoff initial above max", _with("spec.tasks", {"retryBackoff": {"initialSeconds": 60, "maxSeconds": 10}}),
     "initialSeconds must be <= maxSeconds"),
    ("backoff factor below 1", _with("spec.tasks", {"retryBackoff": {"factor": 0.5}}),
     "spec.tasks.retryBackoff.factor"),
    ("env overrides credentials", _with("spec.worker.env", [{"name": "TASKQ_AMQP_URL", "value": "amqp://x"}]),
     "must not set TASKQ_AMQP_URL"),
    ("bad task module", _with("spec.worker.taskModules", ["1bad-module"]), "spec.worker.taskModules"),
    ("negative retries", _with("spec.tasks", {"maxRetries": -1}), "spec.tasks.maxRetries"),
    ("misspelt field", _with("spec.scaling", {"maxReplica": 3}), "unknown field"),
    ("backoff initial zero", _with("spec.tasks", {"retryBackoff": {"initialSeconds": 0}}),
     "spec.tasks.retryBackoff.initialSeconds"),
    # the worker runtime's fields
    ("unknown pool", _with("spec.worker.pool", "gevent"), "spec.worker.pool"),
    ("negative maxTasksPerChild", _with("spec.worker.maxTasksPerChild", -1), "spec.worker.maxTasksPerChild"),
    ("negative maxMemoryPerChildMiB", _with("spec.worker.maxMemoryPerChildMiB", -1),
     "spec.worker.maxMemoryPerChildMiB"),
    ("maxTasksPerChild with the thread pool", _with("spec.worker", {"image": "w", "pool": "thread", "maxTasksPerChild": 100}),
     "spec.worker.maxTasksPerChild applies to pool 'process' only"),
    ("maxMemoryPerChildMiB with the asyncio pool",
     _with("spec.worker", {"image": "w", "pool": "asyncio", "maxMemoryPerChildMiB": 512}),
     "spec.worker.maxMemoryPerChildMiB applies to pool 'process' only"),
    ("prefetch below concurrency", _with("spec.worker", {"image": "w", "concurrency": 8, "prefetch": 4}),
     "spec.worker.prefetch must be >= spec.worker.concurrency"),
    ("prefetch above the worker's limit", _with("spec.worker.prefetch", 10_001), "spec.worker.prefetch"),
    ("unknown queue type", _with("spec.tasks", {"queueType": "stream"}), "spec.tasks.queueType"),
    ("maxDeliveries zero", _with("spec.tasks", {"maxDeliveries": 0}), "spec.tasks.maxDeliveries"),
    ("maxDeliveries above 100", _with("spec.tasks", {"maxDeliveries": 101}), "spec.tasks.maxDeliveries"),
    ("maxPriority on a quorum queue", _with("spec.tasks", {"queueType": "quorum", "maxPriority": 5}),
     "spec.tasks.maxPriority must stay at its default (10) with queueType quorum"),
]

EVERY_RUNTIME_FIELD = _with("spec.worker", {
    "image": "taskq:dev", "pool": "process", "concurrency": 4, "prefetch": 6,
    "maxTasksPerChild": 1000, "maxMemoryPerChildMiB": 512,
})
EVERY_RUNTIME_FIELD["spec"]["tasks"] = {"queueType": "quorum", "maxDeliveries": 100, "maxRetries": 3, "timeoutSeconds": 60}


@pytest.fixture(scope="module")
def namespace(cluster: Any) -> Iterator[str]:
    cluster.kubectl("apply", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/taskqueues.taskq.io")
    name = f"tq-crd-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _apply(cluster: Any, namespace: str, body: dict[str, Any], *extra: str) -> Any:
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", *extra, input=json.dumps(body), check=False)


@pytest.mark.parametrize(("body", "message"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_taskqueue_is_rejected_naming_the_field(cluster: Any, namespace: str, body: dict[str, Any],
                                                        message: str) -> None:
    result = _apply(cluster, namespace, body, "--dry-run=server")
    assert result.returncode != 0, f"accepted: {json.dumps(body)}"
    assert message in result.stderr, result.stderr


def test_at_least_fifteen_invalid_cases() -> None:
    assert len(INVALID) >= 15


def test_defaults_are_filled_by_the_api_server(cluster: Any, namespace: str) -> None:
    result = cluster.kubectl("create", "-n", namespace, "--dry-run=server", "-o", "json", "-f", "-",
                             input=json.dumps(VALID))
    spec = json.loads(result.stdout)["spec"]
    assert spec["scaling"]["minReplicas"] == 0 and spec["scaling"]["maxReplicas"] == 10
    assert spec["scaling"]["pollIntervalSeconds"] == 2
    assert spec["scaling"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert spec["tasks"]["timeoutSeconds"] == 300 and spec["tasks"]["retryBackoff"]["factor"] == 2
    assert spec["worker"]["terminationGracePeriodSeconds"] == 330
    assert spec["store"]["database"] == "taskq"
    worker, tasks = spec["worker"], spec["tasks"]
    assert (worker["pool"], worker["maxTasksPerChild"], worker["maxMemoryPerChildMiB"]) == ("process", 0, 0)
    assert "prefetch" not in worker  # the worker's own default applies
    assert (tasks["queueType"], tasks["maxDeliveries"], tasks["maxPriority"]) == ("classic", 5, 10)


def test_every_worker_runtime_field_accepted_and_usable(cluster: Any, namespace: str) -> None:
    result = cluster.kubectl("create", "-n", namespace, "--dry-run=server", "-o", "json", "-f", "-",
                             input=json.dumps(EVERY_RUNTIME_FIELD))
    stored = json.loads(result.stdout)
    env = {e["name"]: e.get("value") for e in
           build_deployment(parse_taskqueue(stored), 1)["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["TASKQ_POOL"], env["TASKQ_PREFETCH"], env["TASKQ_MAX_TASKS_PER_CHILD"]) == ("process", "6", "1000")
    assert (env["TASKQ_MAX_MEMORY_PER_CHILD_MB"], env["TASKQ_QUEUE_TYPE"], env["TASKQ_MAX_DELIVERIES"]) == ("512", "quorum", "100")
    for pool in ("thread", "asyncio"):
        other = copy.deepcopy(VALID)
        other["spec"]["worker"].update({"pool": pool, "maxTasksPerChild": 0, "concurrency": 16, "prefetch": 16})
        assert _apply(cluster, namespace, other, "--dry-run=server").returncode == 0


def _documented_taskqueues() -> list[tuple[str, dict[str, Any]]]:
    """The TaskQueues users copy: the example file and the YAML blocks of README.md and docs/operator.md."""
    found = [("examples/taskqueue.yaml", yaml.safe_load((ROOT / "examples" / "taskqueue.yaml").read_text()))]
    for doc in ("README.md", "docs/operator.md"):
        blocks = (ROOT / doc).read_text().split("```yaml\n")[1:]
        found += [(doc, body) for body in (yaml.safe_load(b.split("```")[0]) for b in blocks)
                  if isinstance(body, dict) and body.get("kind") == "TaskQueue"]
    return found


def test_documented_taskqueues_are_accepted_and_usable(cluster: Any, namespace: str) -> None:
    documented = _documented_taskqueues()
    assert {where for where, _ in documented} == {"examples/taskqueue.yaml", "README.md", "docs/operator.md"}
    for where, body in documented:
        body = copy.deepcopy(body)
        body["metadata"].pop("namespace", None)
        result = cluster.kubectl("create", "-n", namespace, "--dry-run=server", "-o", "json", "-f", "-",
                                 input=json.dumps(body), check=False)
        assert result.returncode == 0, f"{where}: {result.stderr}"
        build_deployment(parse_taskqueue(json.loads(result.stdout)), 1)


def test_queue_type_is_immutable(cluster: Any, namespace: str) -> None:
    body = _with("metadata.name", "typed")
    assert _apply(cluster, namespace, body).returncode == 0
    same = _with("metadata.name", "typed")
    same["spec"]["tasks"] = {"queueType": "classic", "maxRetries": 5}
    assert _apply(cluster, namespace, same).returncode == 0, "an unchanged queueType must not block other changes"
    changed = _with("metadata.name", "typed")
    changed["spec"]["tasks"] = {"queueType": "quorum"}
    result = _apply(cluster, namespace, changed)
    assert result.returncode != 0 and "spec.tasks.queueType is immutable" in result.stderr, result.stderr
    cluster.kubectl("delete", "-n", namespace, "taskqueue", "typed")


def test_queue_is_immutable(cluster: Any, namespace: str) -> None:
    body = _with("metadata.name", "immutable")
    assert _apply(cluster, namespace, body).returncode == 0
    changed = _with("metadata.name", "immutable")
    changed["spec"]["queue"] = "elsewhere"
    result = _apply(cluster, namespace, changed)
    assert result.returncode != 0 and "spec.queue is immutable" in result.stderr, result.stderr
    cluster.kubectl("delete", "-n", namespace, "taskqueue", "immutable")


def test_crd_serves_short_name_status_and_scale(cluster: Any, namespace: str) -> None:
    body = _with("metadata.name", "scalable")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))
    cluster.kubectl("scale", "-n", namespace, "tq/scalable", "--replicas=3")
    got = json.loads(cluster.kubectl("get", "-n", namespace, "tq", "scalable", "-o", "json").stdout)
    assert got["spec"]["replicas"] == 3
    crd = yaml.safe_load(CRD.read_text())
    columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns == ["Queue", "Queued", "Unacked", "Replicas", "Desired", "Min", "Max", "Ready", "Age"]
    header = cluster.kubectl("get", "-n", namespace, "tq").stdout.splitlines()[0].split()
    assert header == [c.upper() for c in ["Name", *columns]]
    cluster.kubectl("delete", "-n", namespace, "tq", "scalable")
