"""The local control plane's API server as its admin sees it: an HTTP client with the harness's
certificates, and the nodes it lists as Ready.

One copy for `taskq_dev.cluster` (start-up waits for the kwok nodes) and `taskq_dev.realnodes` (waits
for the real nodes' kubelets); both pass the cluster's `pki/` folder and the API server URL.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx


def admin_client(pki_dir: Path, server: str, timeout: float = 5.0) -> httpx.Client:
    """An httpx client for `server` that trusts the cluster CA and presents the admin certificate."""
    context = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
    context.load_cert_chain(str(pki_dir / "admin.crt"), str(pki_dir / "admin.key"))
    return httpx.Client(base_url=server, verify=context, timeout=timeout)


def ready_nodes(pki_dir: Path, server: str, label_selector: str | None = None) -> set[str]:
    """The names of the nodes (matching `label_selector`, if given) whose Ready condition is True;
    empty when the API server does not answer."""
    params = {"labelSelector": label_selector} if label_selector else None
    try:
        with admin_client(pki_dir, server) as client:
            answer = client.get("/api/v1/nodes", params=params)
    except httpx.HTTPError:
        return set()
    if answer.status_code != 200:
        return set()
    ready = set()
    for node in answer.json().get("items", []):
        for condition in node.get("status", {}).get("conditions") or []:
            if condition.get("type") == "Ready" and condition.get("status") == "True":
                ready.add(node["metadata"]["name"])
    return ready
