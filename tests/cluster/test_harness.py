"""Tests of the local control plane itself: CEL validation, Deployments on kwok nodes with garbage
collection, the worker bridge under node loss, and `helm install --wait`.

One session cluster serves all of them (tests/cluster/conftest.py); each test works in its own namespace.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
import yaml
from kubernetes import client as k8s

from taskq.broker.admin import queue_depth
from taskq_dev.bridge import WorkerBridge
from taskq_dev.kubeaccess import ClusterAccess
from taskq_dev.ports import poll

HERE = Path(__file__).parent

CEL_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: ranges.harness.taskq.io
spec:
  group: harness.taskq.io
  scope: Namespaced
  names: {plural: ranges, singular: range, kind: Range}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - rule: "self.low <= self.high"
              message: "low must not exceed high"
            properties:
              low: {type: integer}
              high: {type: integer}
"""

LOST_NODE_TOLERATIONS = [
    {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
]


@pytest.fixture
def namespace(cluster: ClusterAccess) -> Iterator[str]:
    name = f"harness-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


def deployment(name: str, replicas: int, container: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [container],
                    "tolerations": LOST_NODE_TOLERATIONS,
                    "terminationGracePeriodSeconds": 5,
                },
            },
        },
    }


def pods(cluster: ClusterAccess, namespace: str, selector: str) -> list[dict[str, Any]]:
    listed = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout)
    items: list[dict[str, Any]] = listed["items"]
    return items


def running_pods(cluster: ClusterAccess, namespace: str, selector: str) -> dict[str, str]:
    """`{pod: node}` of Running pods that are not being deleted."""
    return {
        pod["metadata"]["name"]: pod["spec"].get("nodeName", "")
        for pod in pods(cluster, namespace, selector)
        if pod["status"].get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp")
    }


def test_cel_rule_rejects_an_object_with_the_rules_message(cluster: ClusterAccess, namespace: str) -> None:
    cluster.kubectl("apply", "-f", "-", input=CEL_CRD)
    try:
        cluster.kubectl("wait", "--for=condition=Established", "crd/ranges.harness.taskq.io", "--timeout=30s")
        good = {"apiVersion": "harness.taskq.io/v1", "kind": "Range", "metadata": {"name": "good"},
                "spec": {"low": 1, "high": 2}}
        bad = {**good, "metadata": {"name": "bad"}, "spec": {"low": 3, "high": 2}}
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(good))
        rejected = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(bad), check=False)
        assert rejected.returncode != 0
        assert "low must not exceed high" in rejected.stderr
        assert cluster.kubectl("get", "range", "bad", "-n", namespace, check=False).returncode != 0
    finally:
        cluster.kubectl("delete", "crd", "ranges.harness.taskq.io", "--wait=false")


def test_deployment_becomes_available_on_kwok_nodes_and_is_garbage_collected(
    cluster: ClusterAccess, namespace: str
) -> None:
    owner = json.loads(cluster.kubectl("create", "configmap", "owner", "-n", namespace, "-o", "json").stdout)
    labels = {"app": "web"}
    body = deployment("web", 3, {"name": "web", "image": "web:local"}, labels)
    body["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    ]
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))
    cluster.kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=60s")
    available = json.loads(cluster.kubectl("get", "deployment", "web", "-n", namespace, "-o", "json").stdout)
    assert available["status"]["availableReplicas"] == 3
    placed = running_pods(cluster, namespace, "app=web")
    assert len(placed) == 3 and set(placed.values()) <= set(cluster.node_names())

    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)

    def collected() -> bool:
        left = cluster.kubectl("get", "deployments,replicasets,pods", "-n", namespace, "-o", "name").stdout
        return not left.strip()

    poll(collected, timeout=60, what="the garbage collector to delete the Deployment, ReplicaSet and pods", interval=0.5)


def test_bridge_runs_a_process_per_pod_and_node_loss_kills_and_replaces_it(
    cluster: ClusterAccess, bridge: WorkerBridge, namespace: str, amqp_url: str, queue_name: str
) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.queue_declare(queue_name, durable=True)
    for number in range(3):
        channel.basic_publish("", queue_name, f"message-{number}".encode())
    cluster.kubectl("create", "secret", "generic", "broker", "-n", namespace, f"--from-literal=amqp-url={amqp_url}")
    cluster.kubectl("create", "configmap", "settings", "-n", namespace, f"--from-literal=queue={queue_name}")
    container = {
        "name": "worker",
        "image": "taskq:dev",
        "command": [sys.executable, str(HERE / "bridge_consumer.py")],
        "env": [
            {"name": "TASKQ_AMQP_URL", "valueFrom": {"secretKeyRef": {"name": "broker", "key": "amqp-url"}}},
            {"name": "TASKQ_QUEUE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "queue"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        ],
    }
    labels = {"app.kubernetes.io/name": "taskq-worker", "app.kubernetes.io/instance": "bridged"}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(deployment("bridged", 3, container, labels)))
    selector = "app.kubernetes.io/instance=bridged"

    def consumers() -> int:
        depth = queue_depth(connection, queue_name)
        return depth.consumers if depth is not None else 0

    placement = poll(
        lambda: (lambda p: p if len(p) == 3 else None)(running_pods(cluster, namespace, selector)),
        timeout=60,
        what="3 Running pods",
        interval=0.5,
    )
    poll(lambda: set(bridge.processes()) == set(placement), timeout=30, what="a bridged process per pod", interval=0.5)
    poll(lambda: consumers() == 3, timeout=30, what="3 consumers on the queue", interval=0.5)
    log_of = {pod: bridge.log_dir / f"{namespace}_{pod}.log" for pod in placement}
    for pod, node in placement.items():
        poll(lambda: "holding message-" in log_of[pod].read_text(), timeout=15, what=f"{pod} to hold a message", interval=0.5)
        assert f"as {pod} on {node}" in log_of[pod].read_text()

    victim_pod, victim_node = sorted(placement.items())[0]
    victim_pid = bridge.processes()[victim_pod]
    cluster.lose_node(victim_node)

    assert not Path(f"/proc/{victim_pid}").exists(), "the lost node's process must die at once"
    assert victim_pod not in bridge.processes()
    poll(lambda: consumers() == 2, timeout=15, what="the broker to drop the dead consumer", interval=0.5)

    def replaced() -> dict[str, str] | None:
        now = running_pods(cluster, namespace, selector)
        return now if len(now) == 3 and victim_pod not in now else None

    after = poll(replaced, timeout=90, what=f"a replacement for {victim_pod} off node {victim_node}", interval=1.0)
    assert victim_node not in after.values()
    (replacement,) = set(after) - set(placement)
    poll(lambda: replacement in bridge.processes(), timeout=30, what="a process for the replacement pod", interval=0.5)
    poll(lambda: consumers() == 3, timeout=30, what="the replacement to consume", interval=0.5)
    replacement_log = bridge.log_dir / f"{namespace}_{replacement}.log"
    poll(
        lambda: "holding message-" in replacement_log.read_text(),
        timeout=15,
        what="the dead consumer's message to be redelivered to the replacement",
        interval=0.5,
    )
    connection.close()


def test_helm_install_wait_of_a_trivial_chart(cluster: ClusterAccess, namespace: str, tmp_path: Path) -> None:
    chart = tmp_path / "trivial"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(yaml.safe_dump({"apiVersion": "v2", "name": "trivial", "version": "0.1.0"}))
    container = {"name": "app", "image": "trivial:local"}
    manifest = deployment("{{ .Release.Name }}-app", 2, container, {"app": "trivial"})
    (chart / "templates" / "deployment.yaml").write_text(yaml.safe_dump(manifest))
    cluster.helm("install", "trivial", str(chart), "--namespace", namespace, "--wait", "--timeout", "60s")
    status = json.loads(cluster.helm("status", "trivial", "--namespace", namespace, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    ready = json.loads(cluster.kubectl("get", "deployment", "trivial-app", "-n", namespace, "-o", "json").stdout)
    assert ready["status"]["readyReplicas"] == 2
    cluster.helm("uninstall", "trivial", "--namespace", namespace, "--wait")


def token_kubeconfig(cluster: ClusterAccess, token: str, path: Path) -> ClusterAccess:
    """A handle on the same cluster that authenticates with `token` only (no admin client cert)."""
    admin = json.loads(cluster.kubectl("config", "view", "--raw", "--minify", "--flatten", "-o", "json").stdout)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": "token", "user": {"token": token}}],
        "contexts": [{"name": "token", "context": {"cluster": admin["clusters"][0]["name"], "user": "token"}}],
        "current-context": "token",
    }
    path.write_text(json.dumps(config))
    return ClusterAccess(kubeconfig=path)


def test_service_account_tokens_authenticate_and_rbac_authorizes(
    cluster: ClusterAccess, namespace: str, tmp_path: Path
) -> None:
    """A token signed with the cluster's service-account key is accepted, and RBAC decides what it may do."""
    token = cluster.kubectl("create", "token", "default", "-n", namespace, "--duration=10m").stdout.strip()
    account = token_kubeconfig(cluster, token, tmp_path / "token.kubeconfig")
    who = json.loads(account.kubectl("auth", "whoami", "-o", "json").stdout)
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:default"
    denied = account.kubectl("get", "secrets", "-n", namespace, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    cluster.kubectl("create", "role", "read-secrets", "--verb=list", "--resource=secrets", "-n", namespace)
    cluster.kubectl("create", "rolebinding", "read-secrets", "--role=read-secrets",
                    f"--serviceaccount={namespace}:default", "-n", namespace)
    poll(
        lambda: account.kubectl("get", "secrets", "-n", namespace, check=False).returncode == 0,
        timeout=15,
        what="the new RoleBinding to take effect",
        interval=0.5,
    )
    listed = k8s.CoreV1Api(cluster.api_client()).list_namespace().items
    assert {"default", "kube-system", namespace} <= {item.metadata.name for item in listed if item.metadata}
