"""Fixtures for tests against a real Kubernetes API: the local control plane and the worker bridge.

`cluster` (session): the harness's own control plane (etcd, kube-apiserver, controller-manager,
scheduler, 3 kwok nodes), started once and torn down at the end even when tests fail; or, with
`TASKQ_USE_EXISTING_CLUSTER=1`, the cluster `$KUBECONFIG` names. Nodes a test loses are restored after
it. `bridge` (per test): a running `WorkerBridge`, stopped (children killed) after the test. Every test
in this folder gets the `cluster` marker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskq_dev import paths
from taskq_dev.bridge import WorkerBridge
from taskq_dev.cluster import LocalCluster, sweep_orphaned_sessions
from taskq_dev.kubeaccess import ClusterAccess

HERE = Path(__file__).parent


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

