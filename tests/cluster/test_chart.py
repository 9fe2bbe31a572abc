"""The Helm chart on the harness cluster: server-side validation of what it renders, `helm install
--wait`, the operator working with the chart's RBAC (and nothing more), schema errors, and an
uninstall that leaves nothing behind but the CRD (the chart's documented choice).

The install uses the chart's defaults, so it is namespaced: `kubectl auth can-i` shows the operator's
ServiceAccount can read Secrets in the release namespace and nothing in another one, and a TaskQueue
outside the release namespace is left alone while the one inside gets its worker Deployment.

The harness runs a real `taskq-operator` process for the operator pod, with a token of the chart's
ServiceAccount, so the RBAC below is exercised for real.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from taskq_dev import ports, versions
from taskq_dev.ports import poll

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "taskq"
EXAMPLE_TASKQUEUE = REPO / "examples" / "taskqueue.yaml"
DEV_VALUES = REPO / "examples" / "values-dev.yaml"
RELEASE = f"taskq-{uuid.uuid4().hex[:6]}"  # unique: the chart's ClusterRoles are cluster-wide names
IMAGE_VALUES = ["--set", "image.repository=taskq", "--set", "image.tag=dev", "--set", "image.pullPolicy=Never"]
WAIT_S = 90.0
INSTALL_OUTPUT: dict[str, str] = {}
"""What `helm install` printed (NOTES.txt included), by release."""


@pytest.fixture(scope="module")
def namespace(cluster: Any) -> Iterator[str]:
    name = f"taskq-chart-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def other_namespace(cluster: Any) -> Iterator[str]:
    """A namespace the chart was not told about: the operator must neither see nor touch it."""
    name = f"taskq-other-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def release(cluster: Any, namespace: str) -> Iterator[str]:
    """The chart installed with `--wait` (CRD from the chart's crds/ folder when not there yet).

    The operator's ports are free ones: on the harness its pod runs as a process on this machine.
    """
    operator_ports = ["--set", f"operator.metricsPort={ports.free_port()}", "--set", f"operator.healthPort={ports.free_port()}"]
    started = time.monotonic()
    installed = cluster.helm("install", RELEASE, str(CHART), "--namespace", namespace, "--wait", "--timeout", "120s",
                             *IMAGE_VALUES, *operator_ports)
    print(f"\nhelm install --wait: {time.monotonic() - started:.1f} s")
    INSTALL_OUTPUT[RELEASE] = installed.stdout
    yield RELEASE
    cluster.helm("uninstall", RELEASE, "--namespace", namespace, "--wait", check=False)


@pytest.fixture()
def operator_pod_runs(cluster: Any, request: pytest.FixtureRequest) -> None:
    """On the harness, the worker bridge runs the operator pod as a process (token of the chart's
    ServiceAccount); on a real cluster (kind) the pod runs by itself."""
    if cluster.simulated:
        request.getfixturevalue("bridge")


def _server_dry_run(cluster: Any, namespace: str, *helm_args: str) -> subprocess.CompletedProcess[str]:
    rendered = cluster.helm(
        "template", RELEASE, str(CHART), "--namespace", namespace, "--kube-version", versions.KUBERNETES, *helm_args
    ).stdout
    return cluster.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-f", "-", input=rendered, check=False  # objects name their namespaces
    )


@pytest.mark.parametrize(
    "helm_args",
    [
        [],
        ["--values", str(DEV_VALUES)],
        ["--set", "operator.watchNamespaces={default}", "--set", "connection.create=true",
         "--set", "connection.amqpUrl=amqp://u:p@mq:5672/%2F", "--set", "connection.mongodbUri=mongodb://u:p@db/"],
        ["--set", "rbac.clusterWide=true"],
        ["--set", "api.enabled=true"],
        ["--set", "api.enabled=true", "--set", "rbac.clusterWide=true", "--set", "api.auth.existingSecret=mine"],
    ],
    ids=["defaults", "dev-bundle", "namespaced-with-secret", "cluster-wide", "api", "api-cluster-wide"],
)
def test_rendered_manifests_pass_the_api_servers_own_validation(
    cluster: Any, namespace: str, helm_args: list[str]
) -> None:
    result = _server_dry_run(cluster, namespace, *helm_args)
    assert result.returncode == 0, result.stderr
    assert "(server dry run)" in result.stdout


def test_helm_install_wait_brings_the_operator_up(cluster: Any, namespace: str, release: str) -> None:
    status = json.loads(cluster.helm("status", release, "--namespace", namespace, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    deployment = json.loads(cluster.kubectl("get", "-n", namespace, "deployment", f"{release}-operator", "-o", "json").stdout)
    assert deployment["status"].get("readyReplicas") == 1
    cluster.kubectl("get", "crd", "taskqueues.taskq.io")


def test_install_notes_tell_the_user_what_to_do_next(namespace: str, release: str) -> None:
    notes = INSTALL_OUTPUT[release].split("NOTES:", 1)[1]
    assert f"kubectl -n {namespace} get pods -l app.kubernetes.io/name=taskq-operator,app.kubernetes.io/instance={release}" in notes
    assert "kubectl -n <namespace> create secret generic taskq-connection" in notes
    assert "kind: TaskQueue" in notes and "image: taskq:dev" in notes
    assert "kubectl delete crd taskqueues.taskq.io" in notes
    assert f"The operator watches TaskQueues in {namespace} only" in notes


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("get", "secrets", True), ("list", "secrets", False), ("delete", "secrets", False),
        ("patch", "taskqueues.taskq.io", True), ("delete", "taskqueues.taskq.io", False),
        ("create", "deployments.apps", True), ("delete", "deployments.apps", False),
        ("patch", "pods", True), ("delete", "pods", False), ("create", "pods", False),
        ("create", "events", True), ("list", "configmaps", False), ("create", "clusterroles", False),
    ],
)
def test_operator_service_account_has_least_privilege(
    cluster: Any, namespace: str, release: str, verb: str, resource: str, allowed: bool
) -> None:
    account = f"system:serviceaccount:{namespace}:{release}-operator"
    result = cluster.kubectl("auth", "can-i", verb, resource, "-n", namespace, "--as", account, check=False)
    assert result.stdout.strip() == ("yes" if allowed else "no"), result.stdout + result.stderr


@pytest.mark.parametrize(
    ("verb", "resource"),
    [
        ("get", "secrets"), ("list", "secrets"), ("watch", "taskqueues.taskq.io"), ("patch", "taskqueues.taskq.io"),
        ("create", "deployments.apps"), ("list", "pods"), ("create", "events"),
    ],
)
def test_operator_can_do_nothing_outside_its_namespace(
    cluster: Any, namespace: str, other_namespace: str, release: str, verb: str, resource: str
) -> None:
    account = f"system:serviceaccount:{namespace}:{release}-operator"
    for elsewhere in (other_namespace, "default"):
        result = cluster.kubectl("auth", "can-i", verb, resource, "-n", elsewhere, "--as", account, check=False)
        assert result.stdout.strip() == "no", f"{verb} {resource} in {elsewhere}: {result.stdout}{result.stderr}"
    everywhere = cluster.kubectl("auth", "can-i", verb, resource, "--all-namespaces", "--as", account, check=False)
    assert everywhere.stdout.strip() == "no", everywhere.stdout + everywhere.stderr


def test_the_operator_watches_only_its_namespace(cluster: Any, namespace: str, release: str) -> None:
    deployment = json.loads(cluster.kubectl("get", "-n", namespace, "deployment", f"{release}-operator", "-o", "json").stdout)
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if "namespace" in a] == [f"--namespace={namespace}"]


def _worker_deployments(cluster: Any, namespace: str) -> list[dict[str, Any]]:
    listing = json.loads(cluster.kubectl(
        "get", "deployments", "-n", namespace, "-o", "json",
        "-l", "app.kubernetes.io/managed-by=taskq-operator,app.kubernetes.io/instance=demo",
    ).stdout)
    return list(listing["items"])


def test_operator_runs_the_example_taskqueue_with_the_chart_rbac(
    cluster: Any, namespace: str, other_namespace: str, release: str, operator_pod_runs: None, amqp_url: str,
    mongodb_uri: str,
) -> None:
    # On kind (dev/kind-e2e.sh) pods reach the services by their in-cluster names, not our loopback.
    pod_amqp_url = os.environ.get("TASKQ_E2E_CLUSTER_AMQP_URL", amqp_url)
    pod_mongodb_uri = os.environ.get("TASKQ_E2E_CLUSTER_MONGODB_URI", mongodb_uri)
    example = yaml.safe_load(EXAMPLE_TASKQUEUE.read_text())
    for where in (other_namespace, namespace):  # the one outside first: it has had longer to be (wrongly) picked up
        cluster.kubectl(
            "create", "secret", "generic", "taskq-connection", "-n", where,
            f"--from-literal=amqp-url={pod_amqp_url}", f"--from-literal=mongodb-uri={pod_mongodb_uri}",
        )
        cluster.kubectl("apply", "-n", where, "-f", "-", input=json.dumps(example))
    try:
        def worker_deployment() -> bool:
            return bool(_worker_deployments(cluster, namespace))

        poll(
            worker_deployment,
            timeout=WAIT_S,
            what="the operator (chart ServiceAccount) to create the worker Deployment",
            interval=0.5,
        )

        def status_written() -> bool:
            body = json.loads(cluster.kubectl("get", "tq", "demo", "-n", namespace, "-o", "json").stdout)
            return bool(body.get("status", {}).get("conditions"))

        poll(status_written, timeout=WAIT_S, what="the operator to write the TaskQueue status", interval=0.5)

        # The TaskQueue outside the watched namespace: no Deployment, no status, none of the operator's
        # progress annotations (which the one inside carries) and no finalizer.
        time.sleep(3.0)  # a few more ticks of the operator, which is demonstrably running
        def progress_marks(where: str) -> list[str]:
            body = json.loads(cluster.kubectl("get", "tq", "demo", "-n", where, "-o", "json").stdout)
            marks = [k for k in body["metadata"].get("annotations", {}) if k.startswith("taskq.io/")]
            return marks + list(body["metadata"].get("finalizers") or []) + list(body.get("status", {}).get("conditions") or [])

        assert progress_marks(namespace), "the handled TaskQueue should carry the operator's marks"
        assert _worker_deployments(cluster, other_namespace) == []
        assert progress_marks(other_namespace) == []
    finally:
        for where in (namespace, other_namespace):
            cluster.kubectl("delete", "tq", "demo", "-n", where, "--wait=true", "--timeout=60s", check=False)
            cluster.kubectl("delete", "secret", "taskq-connection", "-n", where, check=False)


def test_a_namespaced_operator_serves_its_namespace_within_seconds_of_starting(
    cluster: Any, namespace: str, release: str, operator_pod_runs: None, amqp_url: str, mongodb_uri: str
) -> None:
    # The chart's namespaced RBAC cannot list namespaces; kopf's namespace scanning used to retry that
    # listing for ~55 s before it fell back to the listed names, and handled nothing meanwhile.
    started = time.monotonic()  # the operator process starts with this test (operator_pod_runs)
    cluster.kubectl(
        "create", "secret", "generic", "taskq-connection", "-n", namespace,
        f"--from-literal=amqp-url={amqp_url}", f"--from-literal=mongodb-uri={mongodb_uri}",
    )
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(yaml.safe_load(EXAMPLE_TASKQUEUE.read_text())))
    try:
        poll(lambda: bool(_worker_deployments(cluster, namespace)), timeout=30, what="the worker Deployment", interval=0.5)
        print(f"\nworker Deployment {time.monotonic() - started:.1f} s after the operator started")
    finally:
        cluster.kubectl("delete", "tq", "demo", "-n", namespace, "--wait=true", "--timeout=60s", check=False)
        cluster.kubectl("delete", "secret", "taskq-connection", "-n", namespace, check=False)


def test_mistyped_value_fails_install_with_a_schema_error(cluster: Any, namespace: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad-values.yaml"
    bad.write_text("operator:\n  replicas: one\n")
    result = cluster.helm(
        "install", "taskq-bad", str(CHART), "--namespace", namespace, "--values", str(bad), *IMAGE_VALUES, check=False
    )
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert "/operator/replicas" in result.stderr and "got string, want integer" in result.stderr
    listed = json.loads(cluster.helm("list", "--namespace", namespace, "--all", "-o", "json").stdout)
    assert "taskq-bad" not in [item["name"] for item in listed]


def test_uninstall_leaves_nothing_but_the_crd(cluster: Any, namespace: str, release: str) -> None:
    cluster.helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout", "60s")
    leftovers_query = ["get", "all,configmaps,secrets,serviceaccounts,roles,rolebindings,persistentvolumeclaims",
                       "-n", namespace, "-o", "name"]
    expected = {"configmap/kube-root-ca.crt", "serviceaccount/default"}

    def namespace_is_clean() -> bool:
        return set(cluster.kubectl(*leftovers_query).stdout.split()) <= expected

    poll(namespace_is_clean, timeout=WAIT_S, what=f"namespace {namespace} to hold nothing of the release", interval=0.5)
    cluster_scoped = cluster.kubectl(
        "get", "clusterroles,clusterrolebindings", "-l", f"app.kubernetes.io/instance={release}", "-o", "name"
    ).stdout.split()
    assert cluster_scoped == []
    cluster.kubectl("get", "crd", "taskqueues.taskq.io")  # kept on purpose: deleting it would delete every TaskQueue
