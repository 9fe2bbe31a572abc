"""Kubernetes reads and writes the operator needs, as plain dicts, through the `kubernetes` client.

Deployments (create or merge-patch, scale, annotate), pods (list, deletion-cost annotation), Secrets
(read), TaskQueue status (merge-patch on the status subresource), Events, kopf's peering objects
(read). Blocking: the handlers and the
scaler call it in worker threads. Errors become `ClusterError` with the verb, the object and the HTTP
status; Secret values never appear in messages.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import kubernetes
from kubernetes.client import ApiClient, ApiException

from taskq.errors import TaskqError
from taskq_operator.core.spec import GROUP, KIND, PLURAL, VERSION

MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT_S = 10.0
"""Per request; the scaler also bounds each TaskQueue's share of a tick (`taskq_operator.bounded`)."""
COMPONENT = "taskq-operator"


class ClusterError(TaskqError):
    """A Kubernetes API call failed; `status` is the HTTP status (0 when the API was unreachable)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class ForeignDeployment(ClusterError):
    """A Deployment with the worker Deployment's name exists and the TaskQueue does not control it."""


def load_api_client() -> ApiClient:
    """An API client from the pod's service account, or else from `KUBECONFIG` / `~/.kube/config`."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        try:
            kubernetes.config.load_kube_config()
        except (kubernetes.config.ConfigException, OSError) as exc:
            raise ClusterError(f"no Kubernetes credentials (not in a pod, and KUBECONFIG unusable: {exc})") from None
    return ApiClient()


def _api_message(raw: bytes | None) -> str:
    """The `message` of a Kubernetes `Status` body (never contains Secret values)."""
    try:
        return str(json.loads(raw or b"{}").get("message") or "")[:500]
    except (ValueError, AttributeError):
        return ""


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kube:
    """Thin dict-in, dict-out calls; one instance shares the client's connection pool."""

    def __init__(self, api: ApiClient) -> None:
        self._api = api

    def _call(
        self,
        method: str,
        path: str,
        what: str,
        body: Any = None,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
        timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> dict[str, Any]:
        try:
            verb, url, headers, payload, form = self._api.param_serialize(
                method,
                path,
                query_params=list((query or {}).items()),
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._api.call_api(
                verb, url, header_params=headers, body=payload, post_params=form, _request_timeout=timeout_s
            )
            raw = response.read()
        except ApiException as exc:
            raise ClusterError(f"Kubernetes refused to {what}: {exc.status} {exc.reason}", exc.status or 0) from None
        except Exception as exc:  # urllib3 raises its own hierarchy (MaxRetryError, ProtocolError...)
            if isinstance(exc, OSError) or type(exc).__module__.startswith("urllib3"):
                raise ClusterError(f"Kubernetes API unreachable while trying to {what}: {type(exc).__name__}") from None
            raise
        if not 200 <= response.status < 300:
            raise ClusterError(f"Kubernetes refused to {what}: {response.status} {_api_message(raw)}", response.status)
        result: dict[str, Any] = json.loads(raw) if raw else {}
        return result

    # -- Secrets ------------------------------------------------------------------------------

    def read_secret(self, namespace: str, name: str) -> dict[str, str]:
        """The Secret's data, decoded. Values are credentials: never log them."""
        secret = self._call("GET", f"/api/v1/namespaces/{namespace}/secrets/{quote(name)}", f"read Secret {namespace}/{name}")
        data = secret.get("data") or {}
        decoded = {key: base64.b64decode(value).decode() for key, value in data.items()}
        decoded.update(secret.get("stringData") or {})
        return decoded

    # -- Deployments --------------------------------------------------------------------------

    def _deployment_path(self, namespace: str, name: str = "") -> str:
        base = f"/apis/apps/v1/namespaces/{namespace}/deployments"
        return f"{base}/{quote(name)}" if name else base

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", self._deployment_path(namespace, name), f"read Deployment {namespace}/{name}")
        except ClusterError as exc:
            if exc.status == 404:
                return None
            raise

    def apply_deployment(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create the Deployment, or bring an existing one to `manifest` keeping its replica count."""
        meta = manifest["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        existing = self.get_deployment(namespace, name)
        if existing is None:
            return self._call("POST", self._deployment_path(namespace), f"create Deployment {namespace}/{name}", manifest)
        spec = {key: value for key, value in manifest["spec"].items() if key != "replicas"}
        patch = {
            "metadata": {"labels": meta["labels"], "ownerReferences": meta["ownerReferences"]},
            "spec": spec,
        }
        return self._call(
            "PATCH", self._deployment_path(namespace, name), f"update Deployment {namespace}/{name}", patch, MERGE_PATCH
        )

    def scale_deployment(
        self, namespace: str, name: str, replicas: int, annotations: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Set the replica count (and, in the same patch, `annotations` when given)."""
        patch: dict[str, Any] = {"spec": {"replicas": replicas}}
        if annotations:
            patch["metadata"] = {"annotations": annotations}
        return self._call(
            "PATCH", self._deployment_path(namespace, name), f"scale Deployment {namespace}/{name}", patch, MERGE_PATCH
        )

    def annotate_deployment(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        self._call(
            "PATCH",
            self._deployment_path(namespace, name),
            f"annotate Deployment {namespace}/{name}",
            {"metadata": {"annotations": annotations}},
            MERGE_PATCH,
        )

    # -- kopf peering -------------------------------------------------------------------------

    def get_peering(self, namespace: str | None, name: str) -> dict[str, Any] | None:
        """kopf's peering object (`KopfPeering` in `namespace`, `ClusterKopfPeering` when None), None if missing."""
        if namespace is None:
            path, where = f"/apis/kopf.dev/v1/clusterkopfpeerings/{quote(name)}", name
        else:
            path, where = f"/apis/kopf.dev/v1/namespaces/{namespace}/kopfpeerings/{quote(name)}", f"{namespace}/{name}"
        try:
            return self._call("GET", path, f"read the peering object {where}", timeout_s=5)
        except ClusterError as exc:
            if exc.status == 404:
                return None
            raise

    # -- Pods ---------------------------------------------------------------------------------

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        listing = self._call(
            "GET", f"/api/v1/namespaces/{namespace}/pods", f"list pods in {namespace}", query={"labelSelector": selector}
        )
        return list(listing.get("items") or [])

    def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        self._call(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/{quote(name)}",
            f"annotate pod {namespace}/{name}",
            {"metadata": {"annotations": annotations}},
            MERGE_PATCH,
        )

    # -- TaskQueues ---------------------------------------------------------------------------

    def patch_taskqueue_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{quote(name)}/status"
        self._call("PATCH", path, f"update the status of TaskQueue {namespace}/{name}", {"status": status}, MERGE_PATCH)

    def post_event(self, namespace: str, name: str, uid: str, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about a TaskQueue (shown by `kubectl describe tq` and `kubectl get events`)."""
        stamp = now_iso()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{time.time_ns():x}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": name,
                "namespace": namespace,
                "uid": uid,
            },
            "reason": reason,
            "message": message[:1000],
            "type": type_,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        self._call("POST", f"/api/v1/namespaces/{namespace}/events", f"post an Event about {namespace}/{name}", event)
