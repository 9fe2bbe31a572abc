"""What the operator's watches have seen: TaskQueue objects and their Deployments' replica counts.

Filled by the kopf event handlers in `taskq_operator.handlers`; read by the scaler every tick, so a tick
needs no Kubernetes reads. Also caches Secrets (credentials stay in memory only) for a short time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Key = tuple[str, str]


@dataclass(frozen=True)
class DeploymentView:
    """The replica figures of one worker Deployment."""

    replicas: int
    ready_replicas: int
    status_replicas: int


class WatchCache:
    """TaskQueue bodies and Deployment views by (namespace, name)."""

    def __init__(self) -> None:
        self.taskqueues: dict[Key, dict[str, Any]] = {}
        self.deployments: dict[Key, DeploymentView] = {}

    @staticmethod
    def key(body: dict[str, Any]) -> Key:
        meta = body.get("metadata") or {}
        return str(meta.get("namespace") or "default"), str(meta.get("name"))

    def upsert_taskqueue(self, body: dict[str, Any]) -> None:
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            self.taskqueues.pop(self.key(body), None)
            return
        self.taskqueues[self.key(body)] = body

    def remove_taskqueue(self, key: Key) -> None:
        self.taskqueues.pop(key, None)

    def upsert_deployment(self, body: dict[str, Any]) -> None:
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        replicas = spec.get("replicas")
        self.deployments[self.key(body)] = DeploymentView(
            replicas=int(replicas) if replicas is not None else 1,
            ready_replicas=int(status.get("readyReplicas") or 0),
            status_replicas=int(status.get("replicas") or 0),
        )

    def remove_deployment(self, key: Key) -> None:
        self.deployments.pop(key, None)


class SecretCache:
    """Secret data by (namespace, name), re-read after `ttl_s` so rotated credentials are picked up."""

    def __init__(self, read: Callable[[str, str], dict[str, str]], ttl_s: float = 30.0) -> None:
        self._read = read
        self._ttl_s = ttl_s
        self._entries: dict[Key, tuple[float, dict[str, str]]] = {}

    def get(self, namespace: str, name: str) -> dict[str, str]:
        now = time.monotonic()
        entry = self._entries.get((namespace, name))
        if entry is not None and now - entry[0] < self._ttl_s:
            return entry[1]
        data = self._read(namespace, name)
        self._entries[(namespace, name)] = (now, data)
        return data

    def forget(self, namespace: str, name: str) -> None:
        self._entries.pop((namespace, name), None)
