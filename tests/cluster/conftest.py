"""Fixtures for tests against a real Kubernetes API: the local control plane and the worker bridge.

`cluster` (session): the harness's own control plane (etcd, kube-apiserver, controller-manager,
scheduler, 3 kwok nodes), started once and torn down at the end even when tests fail; or, with
`TASKQ_USE_EXISTING_CLUSTER=1`, the cluster `$KUBECONFIG` names. Nodes a test loses are restored after
it. `bridge` (per test): a running `WorkerBridge`, stopped (children killed) after the test. Every test
in this folder gets the `cluster` marker.

`real_nodes` (session; `TASKQ_REAL_NODES=0` skips its tests): two real nodes (Docker containers running
containerd and a kubelet) joined to that cluster, revived after a test that killed or paused one;
`pod_services`: the test services' URLs as pods on them see them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskq_dev import docker, paths
from taskq_dev.bridge import WorkerBridge
from taskq_dev.cluster import LocalCluster, sweep_orphaned_sessions
from taskq_dev.kubeaccess import ClusterAccess
from taskq_dev.pod_services import PodServiceUrls, for_pods
from taskq_dev.realnodes import RealNodes, cluster_key

HERE = Path(__file__).parent
REAL_NODE_COUNT = 2
REAL_NODES_SWITCH = "TASKQ_REAL_NODES"
"""`0` skips the real-node tests (they run by default, also in `make test`)."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"realnodes: runs pods on the harness's real nodes (Docker containers with containerd and a kubelet); "
        f"{REAL_NODES_SWITCH}=0 skips them",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterAccess]:
    if os.environ.get("TASKQ_USE_EXISTING_CLUSTER") == "1":
        yield ClusterAccess.existing()
        return
    sessions = paths.state_dir("pytest-cluster")
    sweep_orphaned_sessions(sessions)
    local = LocalCluster(sessions / str(os.getpid()))
    local.up()
    try:
        yield ClusterAccess(kubeconfig=local.kubeconfig, local=local)
    finally:
        local.down()


@pytest.fixture(autouse=True)
def _restore_lost_nodes(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that took nodes away, bring them back so the next test has all of them."""
    yield
    if "cluster" in request.fixturenames:
        access: ClusterAccess = request.getfixturevalue("cluster")
        access.restore_all_nodes()


@pytest.fixture
def bridge(cluster: ClusterAccess, tmp_path: Path) -> Iterator[WorkerBridge]:
    if not cluster.simulated:
        pytest.skip("the worker bridge needs the harness's kwok nodes (TASKQ_USE_EXISTING_CLUSTER is set)")
    running = WorkerBridge(cluster.kubeconfig, tmp_path / "bridge").start()
    cluster.node_loss_listeners.append(running.node_lost)
    try:
        yield running
    finally:
        cluster.node_loss_listeners.remove(running.node_lost)
        running.stop()


@pytest.fixture(scope="session")
def real_nodes(cluster: ClusterAccess) -> Iterator[RealNodes]:
    """Two real nodes (containerd + kubelet in Docker containers) joined to the session's cluster, with
    the current tree's `taskq:dev` image imported; removed at the end of the session."""
    if os.environ.get(REAL_NODES_SWITCH) == "0":
        pytest.skip(f"real-node tests switched off ({REAL_NODES_SWITCH}=0)")
    if cluster.local is None or cluster.local.layout is None:
        pytest.skip("real nodes join the harness's own control plane (TASKQ_USE_EXISTING_CLUSTER is set)")
    docker.build_image()
    nodes = RealNodes(cluster.local.root, cluster.local.layout.apiserver_port)
    nodes.start(REAL_NODE_COUNT)
    try:
        yield nodes
    finally:
        nodes.remove_all()


@pytest.fixture(autouse=True)
def _revive_real_nodes(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that killed or paused real nodes, start them again and wait until they are Ready."""
    yield
    if "real_nodes" in request.fixturenames:
        nodes: RealNodes = request.getfixturevalue("real_nodes")
        nodes.revive_all()


@pytest.fixture(scope="session")
def pod_services(real_nodes: RealNodes, rabbitmq: Any, mongodb_uri: str) -> PodServiceUrls:
    """RabbitMQ and the store as pods on the real nodes reach them (gateway address, a pod broker user)."""
    return for_pods(
        rabbitmq.amqp_url, rabbitmq.management_url, rabbitmq.management_base, rabbitmq.management_auth,
        rabbitmq.vhost, mongodb_uri, cluster_key(real_nodes.root),
    )

