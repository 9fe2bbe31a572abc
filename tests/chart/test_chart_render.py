"""The Helm chart offline: lint, what `helm template` renders, and what the values schema refuses.

Needs only the helm binary (built once by the harness); validation against the Kubernetes API's own
schemas happens in tests/cluster/test_chart.py (server-side dry run).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "taskq"
DEV_VALUES = REPO / "examples" / "values-dev.yaml"
PRODUCTION_VALUES = REPO / "examples" / "values-production.yaml"

Render = Callable[..., Any]  # conftest.render: returns a Rendered (returncode, objects, stderr)


@pytest.mark.parametrize("values_file", [None, DEV_VALUES, PRODUCTION_VALUES], ids=["defaults", "dev", "production"])
def test_helm_lint_passes_strict(helm_bin: str, values_file: Any) -> None:
    command = [helm_bin, "lint", "--strict", str(CHART)]
    if values_file is not None:
        command += ["--values", str(values_file)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_defaults_render_only_the_operator_and_its_rbac(render: Render) -> None:
    rendered = render()
    assert rendered.returncode == 0, rendered.stderr
    kinds = sorted(obj["kind"] for obj in rendered.objects)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Role", "RoleBinding", "ServiceAccount"]


def test_operator_pod_runs_taskq_operator_as_non_root(render: Render) -> None:
    deployment = render().one("Deployment", "-operator")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "taskq-operator"
    assert container["command"] == ["taskq-operator"]
    assert container["image"] == "taskq:0.1.0"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["serviceAccountName"] == "taskq-operator"
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert "--health-port=8081" in container["args"] and "--metrics-port=9090" in container["args"]


def _operator_args(rendered: Any) -> list[str]:
    return list(rendered.one("Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]["args"])


@pytest.mark.parametrize("cluster_wide", [False, True], ids=["namespaced", "cluster-wide"])
def test_rbac_is_least_privilege(render: Render, cluster_wide: bool) -> None:
    rendered = render(values={"rbac": {"clusterWide": cluster_wide}})
    assert rendered.returncode == 0, rendered.stderr
    rules = [rule for kind in ("Role", "ClusterRole") for role in rendered.of_kind(kind) for rule in role["rules"]]
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"], rule
        assert "delete" not in rule["verbs"] and "deletecollection" not in rule["verbs"], rule
    secrets = [rule for rule in rules if "secrets" in rule["resources"]]
    assert [rule["verbs"] for rule in secrets] == [["get"]], "Secrets: read by name only, never listed"
    granted = {(group, resource) for rule in rules for group in rule["apiGroups"] for resource in rule["resources"]}
    assert granted == {
        ("taskq.io", "taskqueues"), ("taskq.io", "taskqueues/status"), ("apps", "deployments"), ("", "pods"),
        ("", "secrets"), ("", "events"), ("events.k8s.io", "events"),
        ("apiextensions.k8s.io", "customresourcedefinitions"),
    }


def test_rbac_is_namespaced_by_default(render: Render) -> None:
    rendered = render()
    cluster_roles = rendered.of_kind("ClusterRole")
    assert [role["metadata"]["name"] for role in cluster_roles] == ["taskq-operator-crds"]
    assert [rule["resources"] for role in cluster_roles for rule in role["rules"]] == [["customresourcedefinitions"]]
    role = rendered.one("Role", "-operator")
    binding = rendered.one("RoleBinding", "-operator")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "taskq-system"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "taskq-operator"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "taskq-operator", "namespace": "taskq-system"}]
    args = _operator_args(rendered)
    assert [a for a in args if "namespace" in a] == ["--namespace=taskq-system"]


def test_watch_namespaces_get_a_role_each_and_are_watched(render: Render) -> None:
    rendered = render(values={"operator": {"watchNamespaces": ["team-a", "taskq-system", "team-b"]}})
    assert rendered.returncode == 0, rendered.stderr
    for kind in ("Role", "RoleBinding"):
        assert sorted(o["metadata"]["namespace"] for o in rendered.of_kind(kind)) == ["taskq-system", "team-a", "team-b"]
    for binding in rendered.of_kind("RoleBinding"):
        assert binding["subjects"][0]["namespace"] == "taskq-system"  # the operator's own ServiceAccount
    assert [b["metadata"]["name"] for b in rendered.of_kind("ClusterRoleBinding")] == ["taskq-operator-crds"]
    args = _operator_args(rendered)
    assert [a for a in args if "namespace" in a] == ["--namespace=taskq-system", "--namespace=team-a", "--namespace=team-b"]


def test_cluster_wide_is_an_explicit_opt_in(render: Render) -> None:
    rendered = render(values={"rbac": {"clusterWide": True}})
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.of_kind("Role") == [] and rendered.of_kind("RoleBinding") == []
    assert sorted(r["metadata"]["name"] for r in rendered.of_kind("ClusterRole")) == ["taskq-operator", "taskq-operator-crds"]
    binding = rendered.one("ClusterRoleBinding", "taskq-operator")
    assert binding["roleRef"]["kind"] == "ClusterRole" and binding["subjects"][0]["namespace"] == "taskq-system"
    args = _operator_args(rendered)
    assert "--all-namespaces" in args and not [a for a in args if a.startswith("--namespace")]


def test_cluster_wide_with_watch_namespaces_fails_loudly(render: Render) -> None:
    rendered = render(values={"rbac": {"clusterWide": True}, "operator": {"watchNamespaces": ["team-a"]}})
    assert rendered.returncode != 0
    assert "operator.watchNamespaces lists namespaces, but rbac.clusterWide=true watches all of them" in rendered.stderr


@pytest.mark.parametrize(
    ("values", "kind", "namespaces", "resource"),
    [
        ({"operator": {"replicas": 2, "watchNamespaces": ["team-a"]}}, "KopfPeering", ["taskq-system", "team-a"], "kopfpeerings"),
        ({"operator": {"replicas": 2}, "rbac": {"clusterWide": True}}, "ClusterKopfPeering", [None], "clusterkopfpeerings"),
    ],
    ids=["namespaced", "cluster-wide"],
)
def test_peering_objects_and_rules_follow_the_scope(
    render: Render, values: dict[str, Any], kind: str, namespaces: list[str | None], resource: str
) -> None:
    rendered = render(values=values)
    assert rendered.returncode == 0, rendered.stderr
    peerings = rendered.of_kind("KopfPeering") + rendered.of_kind("ClusterKopfPeering")
    assert {p["kind"] for p in peerings} == {kind}
    assert sorted((p["metadata"].get("namespace") for p in peerings), key=str) == namespaces
    rules = [rule for k in ("Role", "ClusterRole") for role in rendered.of_kind(k) for rule in role["rules"]]
    assert {r for rule in rules if rule["apiGroups"] == ["kopf.dev"] for r in rule["resources"]} == {resource}


def test_dev_values_bundle_rabbitmq_and_mongodb_with_a_connection_secret(render: Render) -> None:
    rendered = render(files=[DEV_VALUES])
    assert rendered.returncode == 0, rendered.stderr
    statefulsets = {s["metadata"]["name"] for s in rendered.of_kind("StatefulSet")}
    assert statefulsets == {"taskq-rabbitmq", "taskq-mongodb"}
    connection = rendered.one("Secret", "taskq-connection")["stringData"]
    assert connection["amqp-url"] == "amqp://taskq:taskq-dev-only@taskq-rabbitmq.taskq-system.svc:5672/%2F"
    assert connection["management-url"] == "http://taskq:taskq-dev-only@taskq-rabbitmq.taskq-system.svc:15672"
    assert connection["mongodb-uri"].startswith("mongodb://taskq:taskq-dev-only@taskq-mongodb.taskq-system.svc:27017/")
    config = rendered.one("ConfigMap", "taskq-rabbitmq")["data"]
    assert "collect_statistics_interval = 1000" in config["20-taskq.conf"]
    assert "rabbitmq_management" in config["enabled_plugins"]


def test_connection_secret_from_given_urls(render: Render) -> None:
    rendered = render(values={"connection": {
        "create": True, "amqpUrl": "amqp://u:p@mq:5672/%2F", "mongodbUri": "mongodb://u:p@db:27017/",
    }})
    assert rendered.returncode == 0, rendered.stderr
    data = rendered.one("Secret", "taskq-connection")["stringData"]
    assert data == {"amqp-url": "amqp://u:p@mq:5672/%2F", "mongodb-uri": "mongodb://u:p@db:27017/"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rabbitmq": {"enabled": True}}, "rabbitmq.password is required when rabbitmq.enabled is true"),
        ({"mongodb": {"enabled": True}, "connection": {"amqpUrl": "amqp://mq/"}}, "mongodb.password is required when mongodb.enabled is true"),
        ({"connection": {"create": True, "mongodbUri": "mongodb://db/"}}, "connection.amqpUrl is required"),
        ({"connection": {"create": True, "amqpUrl": "amqp://mq/"}}, "connection.mongodbUri is required"),
        ({"serviceAccount": {"create": False}}, "serviceAccount.name is required when serviceAccount.create is false"),
    ],
    ids=["rabbitmq-password", "mongodb-password", "amqp-url", "mongodb-uri", "service-account"],
)
def test_missing_required_values_fail_loudly(render: Render, values: dict[str, Any], message: str) -> None:
    rendered = render(values=values)
    assert rendered.returncode != 0
    assert message in rendered.stderr


@pytest.mark.parametrize(
    ("values", "fragments"),
    [
        ({"operator": {"replicas": "two"}}, ["/operator/replicas", "got string, want integer"]),
        ({"operator": {"verbose": "yes"}}, ["/operator/verbose", "got string, want boolean"]),
        ({"image": {"pullPolicy": "Sometimes"}}, ["/image/pullPolicy", "Always"]),
        ({"operatr": {"replicas": 1}}, ["additional properties 'operatr' not allowed"]),
        ({"rabbitmq": {"enabled": True, "password": "p@ss/word"}}, ["/rabbitmq/password"]),
        ({"rbac": {"clusterWide": "yes"}}, ["/rbac/clusterWide", "got string, want boolean"]),
    ],
    ids=["wrong-type-integer", "wrong-type-boolean", "not-in-enum", "unknown-key", "unsafe-password", "cluster-wide-type"],
)
def test_schema_rejects_mistyped_or_unknown_values(render: Render, values: dict[str, Any], fragments: list[str]) -> None:
    rendered = render(values=values)
    assert rendered.returncode != 0
    assert "values don't meet the specifications of the schema" in rendered.stderr
    for fragment in fragments:
        assert fragment in rendered.stderr, rendered.stderr
