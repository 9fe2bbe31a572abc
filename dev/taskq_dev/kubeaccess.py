"""One handle on a cluster for tests, benchmarks and the demo: kubectl, helm, a Python API client, and
node loss when the cluster is the local one.

`ClusterAccess(kubeconfig, local=LocalCluster)` wraps the harness's own control plane;
`ClusterAccess.existing()` wraps `$KUBECONFIG` (then nodes cannot be lost and the bridge is pointless).
Called by the pytest `cluster` fixture (tests/cluster/conftest.py) and `taskq-dev`.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from taskq_dev import paths, ports, tools
from taskq_dev.cluster import ClusterError, LocalCluster

COMMAND_TIMEOUT = 300.0
NODE_READY_TIMEOUT = 30.0


class CommandFailed(subprocess.CalledProcessError):
    """kubectl or helm exited non-zero; unlike its base class, the message carries stderr."""

    def __str__(self) -> str:
        tail = "\n".join((self.stderr or "").strip().splitlines()[-20:])
        return f"{super().__str__()}\n{tail}"


@dataclass
class ClusterAccess:
    """A cluster reachable through `kubeconfig`; `local` is set when the harness runs it."""

    kubeconfig: Path
    local: LocalCluster | None = None
    node_loss_listeners: list[Callable[[str], object]] = field(default_factory=list)
    """Called with a node's name when `lose_node` takes it away (the worker bridge kills its processes)."""
    lost_nodes: set[str] = field(default_factory=set)

    @classmethod
    def existing(cls) -> ClusterAccess:
        """The cluster `$KUBECONFIG` (or `~/.kube/config`) points at."""
        configured = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
        return cls(kubeconfig=Path(configured.split(os.pathsep)[0]))

    @property
    def simulated(self) -> bool:
        """Whether the nodes are the harness's kwok nodes (so they can be lost and bridged)."""
        return self.local is not None

    def api_client(self) -> k8s.ApiClient:
        return k8s_config.new_client_from_config(config_file=str(self.kubeconfig))

    def _run(
        self, argv: list[str], input: str | None, check: bool, env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(argv, input=input, capture_output=True, text=True, env=env, timeout=timeout)
        if check and result.returncode != 0:
            raise CommandFailed(result.returncode, argv, result.stdout, result.stderr)
        return result

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; raise CommandFailed (with stderr) if `check` and it fails."""
        argv = [str(tools.kube_binary("kubectl")), f"--kubeconfig={self.kubeconfig}", *args]
        return self._run(argv, input, check, dict(os.environ), timeout)

    def helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run helm against this cluster, with its cache and config kept in the harness state."""
        home = paths.state_dir("helm")
        env = dict(
            os.environ,
            KUBECONFIG=str(self.kubeconfig),
            HELM_CACHE_HOME=str(home / "cache"),
            HELM_CONFIG_HOME=str(home / "config"),
            HELM_DATA_HOME=str(home / "data"),
        )
        return self._run([str(tools.helm_binary()), *args], input, check, env, timeout)

    def node_names(self) -> list[str]:
        nodes = json.loads(self.kubectl("get", "nodes", "-o", "json").stdout)
        return sorted(node["metadata"]["name"] for node in nodes["items"])

    def node_ready(self, name: str) -> bool:
        node = json.loads(self.kubectl("get", "node", name, "-o", "json").stdout)
        conditions = node.get("status", {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def lose_node(self, name: str) -> None:
        """Take node `name` away: its bridged processes are SIGKILLed and its kubelet (kwok) stops, so
        the node lifecycle controller marks it unreachable and evicts its pods."""
        if self.local is None:
            raise ClusterError("losing a node needs the harness's local cluster (not TASKQ_USE_EXISTING_CLUSTER)")
        for listener in list(self.node_loss_listeners):
            listener(name)
        self.local.lose_node(name)
        self.lost_nodes.add(name)

    def restore_node(self, name: str, timeout: float = NODE_READY_TIMEOUT) -> None:
        """Bring a lost node back and wait until it is Ready (its evicted pods are then deleted)."""
        if self.local is None:
            raise ClusterError("restoring a node needs the harness's local cluster")
        self.local.restore_node(name)
        try:
            ports.wait_until(lambda: self.node_ready(name), timeout=timeout, what=f"node {name} to be Ready")
        except ports.WaitTimeout as exc:
            raise ClusterError(str(exc)) from None
        self.lost_nodes.discard(name)

    def restore_all_nodes(self) -> None:
        for name in sorted(self.lost_nodes):
            self.restore_node(name)
