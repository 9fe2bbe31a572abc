"""Simulated nodes for the local control plane: the Node objects and one kwok process per node.

One kwok process per node (`--manage-single-node`) plays that node's kubelet: it keeps the node Ready
(lease heartbeats) and moves its pods to Running. Killing the process is a real node loss: the lease
stops, the node lifecycle controller marks the node unreachable and evicts its pods. Called by
`taskq_dev.cluster`; the bridge reads `KWOK_NODE_ANNOTATION` to recognise simulated nodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_LABEL = "taskq.io/kwok-node"
NODE_LEASE_SECONDS = 10
"""Lease duration kwok uses; it renews at a fraction of it, well inside the controller's grace period."""

NODE_CPU = "8"
NODE_MEMORY = "32Gi"
NODE_PODS = "110"
ZONES = ("zone-a", "zone-b", "zone-c")


def node_name(index: int) -> str:
    return f"kwok-node-{index}"


def node_manifest(name: str, index: int) -> dict[str, Any]:
    """A Node with realistic capacity, a zone label (for topology spread) and the kwok annotation."""
    resources = {"cpu": NODE_CPU, "memory": NODE_MEMORY, "pods": NODE_PODS, "ephemeral-storage": "100Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/role": "agent",
                "node-role.kubernetes.io/agent": "",
                "topology.kubernetes.io/zone": ZONES[index % len(ZONES)],
                KWOK_NODE_LABEL: "true",
                "type": "kwok",
            },
        },
        "spec": {},
        "status": {
            "allocatable": resources,
            "capacity": resources,
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "kwok",
                "kubeProxyVersion": "kwok",
            },
            "phase": "Running",
        },
    }


def kwok_argv(kwok: Path, kubeconfig: Path, name: str, index: int, config: Path) -> list[str]:
    """The command line of the kwok process that plays `name`'s kubelet."""
    return [
        str(kwok),
        f"--kubeconfig={kubeconfig}",
        f"--config={config}",
        f"--manage-single-node={name}",
        f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}",
        f"--cidr=10.244.{index}.1/24",
        f"--node-ip=10.240.0.{index + 10}",
        "--v=WARN",
    ]
