"""The chart's optional `taskq-api` (`api.enabled`), offline with `helm template`: the objects it
adds, the pod's security fields (what Pod Security Admission `restricted` requires, and a read-only
root filesystem), the env it passes, the auth Secret, and the RBAC of the dashboard's replicas column.
On real nodes the same release is installed in tests/cluster/test_real_nodes_ha.py."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

import pytest

from taskq.http.auth import TokenSet

Render = Callable[..., Any]  # conftest.render: returns a Rendered (returncode, objects, stderr)
API = {"api": {"enabled": True}}


def _pod(rendered: Any) -> dict[str, Any]:
    pod: dict[str, Any] = rendered.one("Deployment", "-api")["spec"]["template"]["spec"]
    return pod


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_off_by_default(render: Render) -> None:
    rendered = render()
    assert rendered.returncode == 0, rendered.stderr
    assert not [o for o in rendered.objects if "-api" in o["metadata"]["name"]]


def test_enabled_adds_the_deployment_service_account_secret_and_a_role(render: Render) -> None:
    rendered = render(values=API)
    assert rendered.returncode == 0, rendered.stderr
    api = sorted((o["kind"], o["metadata"]["name"]) for o in rendered.objects if o["metadata"]["name"].startswith("taskq-api"))
    assert api == [
        ("Deployment", "taskq-api"),
        ("Role", "taskq-api"),
        ("RoleBinding", "taskq-api"),
        ("Secret", "taskq-api-auth"),
        ("Service", "taskq-api"),
        ("ServiceAccount", "taskq-api"),
    ]
    deployment = rendered.one("Deployment", "-api")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "taskq-api"
    service = rendered.one("Service", "-api")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert all(service["spec"]["selector"][k] == v for k, v in labels.items() if k in service["spec"]["selector"])
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]


def test_the_pod_is_hardened_for_pod_security_restricted(render: Render) -> None:
    pod = _pod(render(values=API))
    (container,) = pod["containers"]
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    assert all("hostPath" not in volume for volume in pod["volumes"])
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/etc/taskq/api-tokens", "/tmp"}


def test_the_container_runs_taskq_api_with_probes_and_the_connection_secret(render: Render) -> None:
    pod = _pod(render(values={"api": {"enabled": True, "port": 8123, "logLevel": "debug"}}))
    (container,) = pod["containers"]
    assert container["command"] == ["taskq-api"]
    assert container["args"] == ["--host=0.0.0.0", "--port=8123", "--log-level=debug"]
    assert container["image"] == "taskq:0.1.0"
    assert container["ports"] == [{"name": "http", "containerPort": 8123}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["resources"]["limits"]["memory"] == "256Mi"
    env = _env(container)
    assert env["TASKQ_AMQP_URL"] == {"secretKeyRef": {"name": "taskq-connection", "key": "amqp-url"}}
    assert env["TASKQ_MONGODB_URI"] == {"secretKeyRef": {"name": "taskq-connection", "key": "mongodb-uri"}}
    management = {"name": "taskq-connection", "key": "management-url", "optional": True}
    assert env["TASKQ_MANAGEMENT_URL"] == {"secretKeyRef": management}
    assert env["TASKQ_DATABASE"] == "taskq"
    assert env["TASKQ_API_TOKENS_FILE"] == "/etc/taskq/api-tokens"
    assert "TASKQ_API_AUTH" not in env  # never disabled by the chart
    assert env["TASKQ_DASHBOARD_KUBERNETES"] == "1" and env["TASKQ_DASHBOARD_NAMESPACE"] == "taskq-system"
    tokens = next(v for v in pod["volumes"] if v["name"] == "tokens")
    assert tokens["secret"]["secretName"] == "taskq-api-auth"


def test_the_generated_token_file_is_what_taskq_api_accepts(render: Render) -> None:
    first = render(values=API).one("Secret", "-api-auth")
    text = base64.b64decode(first["data"]["tokens"]).decode()
    (token,) = TokenSet(TokenSet.parse(text, "tokens")).tokens
    assert token.scopes == {"submit", "read"}
    assert re.fullmatch(r"[A-Za-z0-9]{48}", text.split()[-1])
    # Offline there is nothing to look up: every render makes a new one (a cluster keeps the first).
    again = render(values=API).one("Secret", "-api-auth")
    assert again["data"]["tokens"] != first["data"]["tokens"]


def test_an_existing_auth_secret_is_mounted_and_none_is_made(render: Render) -> None:
    rendered = render(values={"api": {"enabled": True, "auth": {"existingSecret": "my-tokens"}}})
    assert rendered.returncode == 0, rendered.stderr
    assert not [s for s in rendered.of_kind("Secret") if s["metadata"]["name"].endswith("-api-auth")]
    tokens = next(v for v in _pod(rendered)["volumes"] if v["name"] == "tokens")
    assert tokens["secret"]["secretName"] == "my-tokens"


def test_without_the_replicas_column_no_token_and_no_role(render: Render) -> None:
    rendered = render(values={"api": {"enabled": True, "dashboard": {"readTaskQueues": False}}})
    assert rendered.returncode == 0, rendered.stderr
    pod = _pod(rendered)
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "taskq-api"
    assert _env(pod["containers"][0])["TASKQ_DASHBOARD_KUBERNETES"] == "0"
    assert not [r for k in ("Role", "ClusterRole") for r in rendered.of_kind(k) if r["metadata"]["name"] == "taskq-api"]


@pytest.mark.parametrize(
    ("values", "kind", "namespace", "env_namespace"),
    [
        ({}, "Role", "taskq-system", "taskq-system"),
        ({"api": {"dashboard": {"taskQueueNamespace": "team-a"}}}, "Role", "team-a", "team-a"),
        ({"rbac": {"clusterWide": True}}, "ClusterRole", None, None),
    ],
    ids=["release-namespace", "named-namespace", "cluster-wide"],
)
def test_the_replicas_column_may_only_list_taskqueues(
    render: Render, values: dict[str, Any], kind: str, namespace: str | None, env_namespace: str | None
) -> None:
    merged = {**values, "api": {"enabled": True, **values.get("api", {})}}
    rendered = render(values=merged)
    assert rendered.returncode == 0, rendered.stderr
    role = next(r for r in rendered.of_kind(kind) if r["metadata"]["name"] == "taskq-api")
    binding = next(b for b in rendered.of_kind(f"{kind}Binding") if b["metadata"]["name"] == "taskq-api")
    assert role["rules"] == [{"apiGroups": ["taskq.io"], "resources": ["taskqueues"], "verbs": ["list"]}]
    assert role["metadata"].get("namespace") == namespace == binding["metadata"].get("namespace")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "taskq-api", "namespace": "taskq-system"}]
    pod = _pod(rendered)
    assert pod["automountServiceAccountToken"] is True
    assert _env(pod["containers"][0]).get("TASKQ_DASHBOARD_NAMESPACE") == env_namespace


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"api": {"enabled": "yes"}}, "/api/enabled"),
        ({"api": {"port": 80}}, "/api/port"),
        ({"api": {"service": {"type": "Ingress"}}}, "/api/service/type"),
        ({"api": {"auth": {"token": "x"}}}, "additional properties 'token' not allowed"),
    ],
    ids=["enabled-type", "privileged-port", "service-type", "unknown-auth-key"],
)
def test_schema_rejects_bad_api_values(render: Render, values: dict[str, Any], fragment: str) -> None:
    rendered = render(values=values)
    assert rendered.returncode != 0 and fragment in rendered.stderr, rendered.stderr
