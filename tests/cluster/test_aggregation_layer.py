"""The harness API server runs the aggregation layer (front-proxy client cert, requestheader CA),
which `bench/scaling.py` needs to register KEDA's metrics server as `external.metrics.k8s.io`."""

from __future__ import annotations

import json

from taskq_dev.kubeaccess import ClusterAccess


def test_api_server_publishes_requestheader_settings_for_extension_api_servers(cluster: ClusterAccess) -> None:
    found = cluster.kubectl("get", "configmap", "-n", "kube-system", "extension-apiserver-authentication", "-o", "json")
    data = json.loads(found.stdout)["data"]
    assert "BEGIN CERTIFICATE" in data["requestheader-client-ca-file"]
    assert json.loads(data["requestheader-allowed-names"]) == ["front-proxy-client"]
    assert json.loads(data["requestheader-username-headers"]) == ["X-Remote-User"]
