"""The scaler's peering gate: reads kopf's peering objects and applies `taskq_operator.core.peering`.

Under kopf peering (`TASKQ_PEERING`, operator.replicas >= 2) kopf pauses a standby replica's handlers,
but not the scaler's loop, which `taskq_operator.handlers` starts itself. Before each tick the scaler
asks `PeeringGate.holder`: a replica outranked by a live peer, or one whose peering object is missing or
unreadable (kopf keeps such a replica paused too), neither observes nor acts, so Events and patches come
from one replica. Blocking (one GET per watched namespace, or one for the cluster); called in the tick thread.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from taskq_operator.adapters.kube import ClusterError, Kube
from taskq_operator.core.peering import outranked_by


@dataclass
class PeeringGate:
    """kopf's peering name and this replica's priority; `clusterwide` picks ClusterKopfPeering."""

    kube: Kube
    name: str
    priority: int
    clusterwide: bool

    def holder(self, namespaces: Iterable[str]) -> str | None:
        """None when this replica may act; else why it is standing by."""
        now = datetime.now(UTC)
        scopes: list[str | None] = [None] if self.clusterwide else [*sorted(set(namespaces))]
        for namespace in scopes:
            where = self.name if namespace is None else f"{namespace}/{self.name}"
            try:
                body = self.kube.get_peering(namespace, self.name)
            except ClusterError as exc:
                return f"peering object {where} unreadable: {exc}"
            if body is None:
                return f"peering object {where} missing"
            peer = outranked_by(body.get("status") or {}, self.priority, now)
            if peer is not None:
                return f"standby: peer {peer} in {where} is live with a higher priority"
        return None
