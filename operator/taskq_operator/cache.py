"""What the operator's watches have seen: TaskQueue objects and their Deployments' replica counts.

`WatchCache` is owned by the event loop: the kopf watch handlers in `taskq_operator.handlers` (async,
on the loop) write it, and the scaler's loop (`taskq_operator.scaler.Scaler.tick_once`, also on the
loop) takes an immutable `CacheSnapshot` before each tick and hands only the snapshot to the tick's
worker thread, so a tick needs no Kubernetes reads and never sees a dict change under it. Replica
counts the tick set are written back on the loop (`record_scaled`). It also holds what the handlers
found for the tick to act on: Deployments deleted by hand (`recreate`, filled by `deployment_deleted`)
and Deployment names taken by objects a TaskQueue does not own (`conflicts`).

`SecretCache` keeps Secret data (credentials stay in memory only) for a short time; the tick thread and
the reconcile threads both read it, so it is guarded by a lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from taskq_operator.core.history import ANNOTATION as HISTORY_ANNOTATION

Key = tuple[str, str]


def controller_uid(body: Mapping[str, Any], kind: str) -> str | None:
    """The uid in `body`'s controlling ownerReference when its kind is `kind`, else None."""
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == kind:
            return str(ref.get("uid"))
    return None


@dataclass(frozen=True)
class DeploymentView:
    """The replica figures of one worker Deployment."""

    replicas: int
    ready_replicas: int
    status_replicas: int
    owner_uid: str | None = None
    """The uid of its controlling owner (a TaskQueue's, when it is ours); None: no controller."""
    history: str | None = None
    """The scale-down stabilization history annotation (`taskq_operator.core.history`)."""


@dataclass(frozen=True)
class CacheSnapshot:
    """The cache at one moment, read-only. The bodies are the watch events' own dicts, which no one mutates."""

    taskqueues: Mapping[Key, dict[str, Any]]
    deployments: Mapping[Key, DeploymentView]
    recreate: Mapping[Key, int] = field(default_factory=lambda: MappingProxyType({}))
    """TaskQueues whose Deployment was deleted by hand, with the replicas it had."""
    conflicts: Mapping[Key, str] = field(default_factory=lambda: MappingProxyType({}))
    """TaskQueues whose Deployment name is taken by a Deployment they do not own, and the refusal."""


class WatchCache:
    """TaskQueue bodies and Deployment views by (namespace, name). Event-loop only: no locks."""

    def __init__(self) -> None:
        self.taskqueues: dict[Key, dict[str, Any]] = {}
        self.deployments: dict[Key, DeploymentView] = {}
        self.recreate: dict[Key, int] = {}
        self.conflicts: dict[Key, str] = {}

    @staticmethod
    def key(body: Mapping[str, Any]) -> Key:
        meta = body.get("metadata") or {}
        return str(meta.get("namespace") or "default"), str(meta.get("name"))

    def snapshot(self) -> CacheSnapshot:
        return CacheSnapshot(
            MappingProxyType(dict(self.taskqueues)),
            MappingProxyType(dict(self.deployments)),
            MappingProxyType(dict(self.recreate)),
            MappingProxyType(dict(self.conflicts)),
        )

    def upsert_taskqueue(self, body: Mapping[str, Any]) -> None:
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            self.taskqueues.pop(self.key(body), None)
            return
        self.taskqueues[self.key(body)] = dict(body)

    def remove_taskqueue(self, key: Key) -> None:
        self.taskqueues.pop(key, None)
        self.recreate.pop(key, None)
        self.conflicts.pop(key, None)

    def upsert_deployment(self, body: Mapping[str, Any]) -> None:
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        replicas = spec.get("replicas")
        meta = body.get("metadata") or {}
        self.deployments[self.key(body)] = DeploymentView(
            replicas=int(replicas) if replicas is not None else 1,
            ready_replicas=int(status.get("readyReplicas") or 0),
            status_replicas=int(status.get("replicas") or 0),
            owner_uid=controller_uid(body, "TaskQueue"),
            history=(meta.get("annotations") or {}).get(HISTORY_ANNOTATION),
        )

    def remove_deployment(self, key: Key) -> None:
        self.deployments.pop(key, None)

    def deployment_deleted(self, body: Mapping[str, Any]) -> Key | None:
        """Forget a deleted Deployment; when a TaskQueue here owned it, note it for recreation and return its key."""
        key = self.key(body)
        view = self.deployments.pop(key, None)
        owner = controller_uid(body, "TaskQueue")
        for tq_key, tq in self.taskqueues.items():
            tq_meta = tq.get("metadata") or {}
            if tq_key[0] == key[0] and owner is not None and tq_meta.get("uid") == owner:
                replicas = (body.get("spec") or {}).get("replicas")
                self.recreate[tq_key] = int(replicas) if replicas is not None else (view.replicas if view else 0)
                return tq_key
        return None

    def record_scaled(self, scaled: Mapping[Key, int]) -> None:
        """Replica counts a tick just patched, so the next tick starts from them before the watch event comes."""
        for key, replicas in scaled.items():
            view = self.deployments.get(key)
            if view is not None:
                self.deployments[key] = replace(view, replicas=replicas)


class SecretCache:
    """Secret data by (namespace, name), re-read after `ttl_s` so rotated credentials are picked up."""

    def __init__(self, read: Callable[[str, str], dict[str, str]], ttl_s: float = 30.0) -> None:
        self._read = read
        self._ttl_s = ttl_s
        self._entries: dict[Key, tuple[float, dict[str, str]]] = {}
        self._lock = threading.Lock()

    def get(self, namespace: str, name: str) -> dict[str, str]:
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get((namespace, name))
        if entry is not None and now - entry[0] < self._ttl_s:
            return entry[1]
        data = self._read(namespace, name)  # outside the lock: a slow read never blocks the other thread
        with self._lock:
            self._entries[(namespace, name)] = (now, data)
        return data

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._entries.pop((namespace, name), None)
