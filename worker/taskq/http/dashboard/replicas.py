"""Desired and ready worker replicas per queue, from the TaskQueues a Kubernetes API lists (optional).

Read with one list call per refresh of the queues overview (inside its snapshot). Used when the
`kubernetes` package is installed, credentials are found (the pod's service account, else
`KUBECONFIG` / `~/.kube/config`) and `TASKQ_DASHBOARD_KUBERNETES` is not `0`; the list covers the
namespace `TASKQ_DASHBOARD_NAMESPACE` names, else every namespace. A queue
maps to the TaskQueues whose `spec.queue` (default: the object's name) is its name. When nothing can
be read the page hides the column (None); a failed list is logged once per kind of failure.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("taskq.http.dashboard")

SWITCH = "TASKQ_DASHBOARD_KUBERNETES"
NAMESPACE = "TASKQ_DASHBOARD_NAMESPACE"
GROUP, VERSION, PLURAL = "taskq.io", "v1alpha1", "taskqueues"
LIST_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Replicas:
    """What the TaskQueues of one queue report: desired and ready replicas (summed when several share the queue)."""

    desired: int | None
    ready: int | None
    taskqueues: tuple[str, ...]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _plus(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else a + b


def by_queue(items: list[dict[str, Any]]) -> dict[str, Replicas]:
    """Queue name -> the replicas its TaskQueues' status reports (objects listed by the API, as dicts)."""
    found: dict[str, Replicas] = {}
    for item in items:
        meta = item.get("metadata") or {}
        spec = item.get("spec") or {}
        status = item.get("status") or {}
        name = str(meta.get("name") or "")
        queue = spec.get("queue") or name
        if not isinstance(queue, str) or not queue:
            continue
        before = found.get(queue, Replicas(None, None, ()))
        found[queue] = Replicas(
            desired=_plus(before.desired, _int(status.get("desiredReplicas"))),
            ready=_plus(before.ready, _int(status.get("readyReplicas"))),
            taskqueues=(*before.taskqueues, f"{meta.get('namespace') or ''}/{name}"),
        )
    return found


class ReplicaReader:
    """Lists TaskQueues when a Kubernetes API is configured; `read()` is None when there is none to read."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        environ = os.environ if env is None else env
        self._enabled = environ.get(SWITCH, "1").strip() != "0"
        self._namespace = environ.get(NAMESPACE, "").strip() or None
        self._api: Any = None
        self._lock = threading.Lock()
        self._logged: set[str] = set()

    def _note(self, kind: str, text: str) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning("dashboard: TaskQueue replicas not shown: %s", text)

    def _custom_objects(self) -> Any:
        """The CustomObjectsApi, made once; None (and the reader off) without the package or credentials."""
        with self._lock:
            if self._api is None and self._enabled:
                try:
                    import kubernetes  # the operator's extra: absent from an API-only install
                except ImportError:
                    self._enabled = False
                    return None
                try:
                    configuration = kubernetes.client.Configuration()
                    try:
                        kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
                    except kubernetes.config.ConfigException:
                        kubernetes.config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
                except (kubernetes.config.ConfigException, OSError, ValueError, TypeError) as exc:
                    self._enabled = False
                    self._note("config", f"no Kubernetes credentials ({type(exc).__name__})")
                    return None
                configuration.retries = 0  # one try per refresh: a dead API server costs at most LIST_TIMEOUT_S
                self._api = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(configuration))
            return self._api

    def read(self) -> dict[str, Replicas] | None:
        """Replicas by queue from one list call, or None when no API is configured or the list failed."""
        api = self._custom_objects()
        if api is None:
            return None
        try:
            if self._namespace:
                answer = api.list_namespaced_custom_object(
                    GROUP, VERSION, self._namespace, PLURAL, _request_timeout=LIST_TIMEOUT_S
                )
            else:
                answer = api.list_cluster_custom_object(GROUP, VERSION, PLURAL, _request_timeout=LIST_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - any failure (HTTP status, connection, TLS, decoding) hides the column
            status = getattr(exc, "status", None)
            self._note(f"list-{status}", f"listing TaskQueues failed ({type(exc).__name__}{f' {status}' if status else ''})")
            return None
        items = answer.get("items") if isinstance(answer, dict) else None
        return by_queue([i for i in items if isinstance(i, dict)]) if isinstance(items, list) else None
