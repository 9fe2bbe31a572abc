"""Operator HA on real pods: the Helm chart with `operator.replicas=2` on the real nodes, kopf peering
between the replicas, SIGKILL of the active operator's process, the standby taking over (measured),
scaling going on, and one actor at a time. The same release runs `taskq-api` (`api.enabled`) on a
real node in the `restricted` namespace: `/readyz` answers in its pod and a submitted task reads back
through the API with the chart's generated token.

Needs the `real_nodes` fixture (`TASKQ_REAL_NODES=0` skips it). The operator pods reach the API
server through the `kubernetes` Service address (each node DNATs it), RabbitMQ and the store through
the node network's gateway (`pod_services`).
"""

from __future__ import annotations

import base64
import json
import re
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
import yaml
from kube_support import (
    QueueServices,
    apply,
    connection_secrets,
    fresh_namespace,
    real_node_taskqueue,
    replicas,
    taskqueue_events,
    worker_pods,
)

from taskq.client import Client
from taskq.settings import Settings
from taskq_dev.pod_services import PodServiceUrls
from taskq_dev.ports import poll
from taskq_dev.realnodes import REAL_NODE_SELECTOR, REAL_NODE_TOLERATION, RealNodes

pytestmark = [pytest.mark.cluster, pytest.mark.services, pytest.mark.slow, pytest.mark.realnodes]

CHART = Path(__file__).resolve().parents[2] / "charts" / "taskq"
TAKEOVER_TARGET_S = 15.0
RESUMED = "Resuming operations after the pause"
PAUSED = "Pausing operations in favour of"
NAMESPACES_FALLBACK = "Not enough permissions to list namespaces"
STARTED = "taskq operator started"


@pytest.fixture(scope="module")
def namespace(cluster: Any, real_nodes: RealNodes) -> Iterator[str]:
    with fresh_namespace(cluster, "tq-ha", crd=False, restricted=True) as name:  # the chart brings the CRD
        yield name


@pytest.fixture(scope="module")
def api_database() -> str:
    """The database the release's `taskq-api` reads (`api.database`)."""
    return f"tqha{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def release(
    cluster: Any, namespace: str, pod_services: PodServiceUrls, api_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The chart with two operator replicas and `taskq-api` on the real nodes, installed with `--wait`
    (so the API pod was admitted under `restricted` and its `/readyz` probe passed)."""
    name = f"ha-{uuid.uuid4().hex[:6]}"
    on_real_nodes = {"nodeSelector": dict(REAL_NODE_SELECTOR), "tolerations": [dict(REAL_NODE_TOLERATION)]}
    values = {
        "image": {"repository": "taskq", "tag": "dev", "pullPolicy": "Never"},
        "operator": {"replicas": 2, "watchNamespaces": [namespace], **on_real_nodes},
        "connection": {
            "create": True,
            "secretName": "ha-api-connection",
            "amqpUrl": pod_services.amqp_url,
            "managementUrl": pod_services.management_url,
            "mongodbUri": pod_services.mongodb_uri,
        },
        "api": {"enabled": True, "database": api_database, **on_real_nodes},
    }
    values_file = tmp_path_factory.mktemp("ha") / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    cluster.helm("install", name, str(CHART), "--namespace", namespace, "--wait", "--timeout", "180s", "-f", str(values_file))
    yield name
    for pod in operator_pods(cluster, namespace):  # what each replica did, for the test report
        for previous in (True, False):
            text = logs(cluster, namespace, pod["metadata"]["name"], previous=previous)
            (values_file.parent / f"{pod['metadata']['name']}{'-previous' if previous else ''}.log").write_text(text)
            if text:
                tail = "\n".join(
                    [
                        line
                        for line in text.splitlines()
                        if ("taskq_operator" in line or "peering" in line or "Error" in line)
                        and "namespaces is forbidden" not in line
                    ][-40:]
                )
                sys.stderr.write(f"\n--- {pod['metadata']['name']}{' (previous)' if previous else ''}:\n{tail}\n")
    cluster.helm("uninstall", name, "--namespace", namespace, "--wait", check=False)


def api_pods(cluster: Any, namespace: str) -> list[dict[str, Any]]:
    listing = cluster.kubectl("get", "pods", "-n", namespace, "-l", "app.kubernetes.io/name=taskq-api", "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(listing)["items"]
    return items


def in_pod_get(cluster: Any, namespace: str, pod: str, path: str, token: str = "") -> tuple[int, Any]:
    """GET `path` from `taskq-api` on the pod's own loopback (`kubectl exec`, the image's Python): status and JSON body."""
    script = (
        "import json, sys, urllib.request, urllib.error\n"
        "r = urllib.request.Request('http://127.0.0.1:8000' + sys.argv[1])\n"
        "if sys.argv[2]: r.add_header('Authorization', 'Bearer ' + sys.argv[2])\n"
        "try:\n    a = urllib.request.urlopen(r, timeout=10); print(a.status); print(a.read().decode())\n"
        "except urllib.error.HTTPError as e:\n    print(e.code); print(e.read().decode())\n"
    )
    result = cluster.kubectl("exec", "-n", namespace, pod, "--", "python", "-c", script, path, token)
    status, _, body = result.stdout.partition("\n")
    return int(status), json.loads(body or "null")


def operator_pods(cluster: Any, namespace: str) -> list[dict[str, Any]]:
    listing = cluster.kubectl("get", "pods", "-n", namespace, "-l", "app.kubernetes.io/name=taskq-operator", "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(listing)["items"]
    return items


def logs(cluster: Any, namespace: str, pod: str, previous: bool = False) -> str:
    args = ["logs", "-n", namespace, pod] + (["--previous"] if previous else [])
    result = cluster.kubectl(*args, check=False)
    return result.stdout if result.returncode == 0 else ""


def peering_state(text: str) -> str:
    """`resumed` or `paused`: the last peering decision an operator logged (it starts paused)."""
    decisions = [line for line in text.splitlines() if RESUMED in line or PAUSED in line]
    return "resumed" if decisions and RESUMED in decisions[-1] else "paused"


def active_operator(cluster: Any, namespace: str) -> str | None:
    """The one operator pod whose last peering decision is to act; None unless exactly one.

    Replicas starting together may both resume for a moment, before each sees the other's record
    (kopf evaluates the peering object as soon as its first event arrives); then the younger pauses.
    """
    leaders = [
        p["metadata"]["name"]
        for p in operator_pods(cluster, namespace)
        if peering_state(logs(cluster, namespace, p["metadata"]["name"])) == "resumed"
    ]
    return leaders[0] if len(leaders) == 1 else None


def scaling_lines(text: str, taskqueue: str) -> list[str]:
    return [line for line in text.splitlines() if re.search(rf"TaskQueue \S+/{taskqueue}: \w+ \d+ -> \d+: ", line)]


@pytest.mark.timeout(900)
def test_standby_operator_takes_over_when_the_active_one_is_killed(
    cluster: Any,
    real_nodes: RealNodes,
    namespace: str,
    release: str,
    pod_services: PodServiceUrls,
    amqp_url: str,
    mongodb_uri: str,
    database_name: str,
    queue_name: str,
) -> None:
    pods = operator_pods(cluster, namespace)
    assert len(pods) == 2 and all(p["spec"]["nodeName"] in real_nodes.names() for p in pods)
    # Both replicas are up, and neither spent its first minute retrying a namespace listing the
    # chart's RBAC forbids (kopf's namespace scanning is off for listed namespaces).
    poll(
        lambda: all(STARTED in logs(cluster, namespace, p["metadata"]["name"]) for p in pods),
        timeout=120,
        what="both replicas to start",
        interval=2,
    )
    assert not any(NAMESPACES_FALLBACK in logs(cluster, namespace, p["metadata"]["name"]) for p in pods)
    leader = poll(lambda: active_operator(cluster, namespace), timeout=60, what="one operator replica to lead")
    standby = next(p["metadata"]["name"] for p in pods if p["metadata"]["name"] != leader)

    secrets = connection_secrets(
        cluster, namespace, "ha", pod_services.amqp_url, pod_services.management_url, pod_services.mongodb_uri
    )
    scaling = {"minReplicas": 0, "maxReplicas": 3, "tasksPerReplica": 20, "scaleDown": {"stabilizationWindowSeconds": 5}}
    apply(cluster, real_node_taskqueue("ha", namespace, queue_name, secrets, database_name, scaling))
    poll(lambda: replicas(cluster, namespace, "ha-worker") == 0, timeout=60, what="the leader to create the Deployment")

    services = QueueServices(amqp_url, mongodb_uri, database_name, queue_name)
    services.submit([{"name": "sleep", "kwargs": {"seconds": 0.5}} for _ in range(40)])
    poll(lambda: (replicas(cluster, namespace, "ha-worker") or 0) >= 2, timeout=60, what="the leader to scale up")
    assert scaling_lines(logs(cluster, namespace, leader), "ha"), "the leader logged no scaling decision"
    assert not scaling_lines(logs(cluster, namespace, standby), "ha"), "the paused standby scaled too"

    # SIGKILL the leader's process (no chance to leave the peering): its record must expire.
    leader_pod = next(p for p in operator_pods(cluster, namespace) if p["metadata"]["name"] == leader)
    container_id = leader_pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    killed = time.monotonic()
    real_nodes.exec(leader_pod["spec"]["nodeName"], "ctr", "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", container_id)
    poll(
        lambda: peering_state(logs(cluster, namespace, standby)) == "resumed",
        timeout=60,
        what=f"{standby} to take over",
        interval=0.25,
    )
    takeover = time.monotonic() - killed
    sys.stderr.write(f"\noperator HA: standby {standby} resumed {takeover:.1f} s after SIGKILL of {leader}\n")
    assert takeover <= TAKEOVER_TARGET_S

    # Scaling goes on under the new leader: the drained queue scales down, a new burst scales up.
    with services.store() as task_store:
        services.wait_succeeded(task_store, 40, timeout=300, what="the first 40 tasks to succeed", interval=1)
    poll(lambda: replicas(cluster, namespace, "ha-worker") == 0, timeout=120, what="the new leader to scale down to 0")
    # Draining workers keep consuming until they exit; a burst sent before that would be theirs.
    poll(lambda: not worker_pods(cluster, namespace, "ha"), timeout=90, what="the scaled-down workers to exit", interval=1)
    services.submit([{"name": "noop"} for _ in range(60)])
    poll(lambda: replicas(cluster, namespace, "ha-worker") == 3, timeout=60, what="the new leader to scale up again")

    # One actor at a time: the restarted old leader (a younger replica now) stays paused.
    restarted = logs(cluster, namespace, leader)
    assert peering_state(restarted) == "paused" and not scaling_lines(restarted, "ha"), restarted[-2000:]
    assert scaling_lines(logs(cluster, namespace, standby), "ha")
    reasons = [
        e["reason"] for e in sorted(taskqueue_events(cluster, namespace, "ha"), key=lambda e: e["metadata"]["creationTimestamp"])
    ]
    assert "ScaleUp" in reasons and "ScaleDown" in reasons, reasons
    cluster.kubectl("delete", "-n", namespace, "tq", "ha")


@pytest.mark.timeout(300)
def test_the_api_pod_is_admitted_under_restricted_and_serves_a_submitted_task(
    cluster: Any, real_nodes: RealNodes, namespace: str, release: str, amqp_url: str, mongodb_uri: str, api_database: str
) -> None:
    (pod,) = api_pods(cluster, namespace)
    name = pod["metadata"]["name"]
    assert pod["spec"]["nodeName"] in real_nodes.names()
    labels = json.loads(cluster.kubectl("get", "namespace", namespace, "-o", "json").stdout)["metadata"]["labels"]
    assert labels.get("pod-security.kubernetes.io/enforce") == "restricted"
    assert all(c["ready"] for c in pod["status"]["containerStatuses"])  # the kubelet's /readyz probe passed
    uid = cluster.kubectl("exec", "-n", namespace, name, "--", "id", "-u").stdout.strip()
    assert uid == "10001"
    written = cluster.kubectl("exec", "-n", namespace, name, "--", "sh", "-c", "echo x > /probe", check=False)
    assert written.returncode != 0 and "Read-only file system" in written.stderr, written.stderr

    assert in_pod_get(cluster, namespace, name, "/readyz") == (200, {"status": "ready"})
    secret_name = next(v["secret"]["secretName"] for v in pod["spec"]["volumes"] if v["name"] == "tokens")
    assert secret_name == f"{release}-taskq-api-auth"
    secret = json.loads(cluster.kubectl("get", "secret", "-n", namespace, secret_name, "-o", "json").stdout)
    token = base64.b64decode(secret["data"]["tokens"]).decode().split()[-1]
    # An upgrade keeps the generated token (the chart reads it back with `lookup`).
    cluster.helm("upgrade", release, str(CHART), "--namespace", namespace, "--reuse-values", "--wait", "--timeout", "180s")
    again = json.loads(cluster.kubectl("get", "secret", "-n", namespace, secret_name, "-o", "json").stdout)
    assert again["data"] == secret["data"], "helm upgrade replaced the generated API token"
    settings = Settings(amqp_url=amqp_url, mongodb_uri=mongodb_uri, database=api_database, queue="ha-api")
    try:
        with Client(settings) as client:
            task_id = client.submit("echo", ["through the chart's API"])
        status, body = in_pod_get(cluster, namespace, name, f"/v1/tasks/{task_id}", token)
        assert status == 200 and body["id"] == task_id and body["state"] == "queued", body
        assert body["args"] == ["through the chart's API"]
        assert in_pod_get(cluster, namespace, name, f"/v1/tasks/{task_id}")[0] == 401  # no token, no read
        sys.stderr.write(f"\ntaskq-api on {pod['spec']['nodeName']}: /readyz ready, task {task_id} read back\n")
        with Client(settings) as client:
            client.purge("ha-api")
    finally:
        store = pymongo.MongoClient(mongodb_uri, serverSelectionTimeoutMS=5000)
        store.drop_database(api_database)
        store.close()
