"""The dashboard's replicas column on a real API server: a TaskQueue whose status says desired 3 / ready 2
shows so on the queues page of a `taskq-api` given the cluster's kubeconfig, and follows a status
change without a reload. No operator runs: the test writes the status subresource itself (what the
operator would). Browser, API process and helpers are those of tests/integration/test_dashboard.py.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from kube_support import apply, fresh_namespace  # noqa: E402
from playwright.sync_api import Browser, expect  # noqa: E402
from test_dashboard import READ_ONLY, _login, _running_api, _shot, browser  # noqa: E402, F401 (browser: a fixture)
from worker_procs import Services  # noqa: E402

from taskq.client import Client  # noqa: E402
from taskq.settings import Settings  # noqa: E402
from taskq_dev import manifests  # noqa: E402

pytestmark = [pytest.mark.services, pytest.mark.slow]


@pytest.fixture
def svc(amqp_url: str, mongodb_uri: str, database_name: str, queue_name: str) -> Services:
    return Services(amqp_url=amqp_url, mongodb_uri=mongodb_uri, database=database_name, queue=queue_name)


@pytest.fixture
def namespace(cluster: Any) -> Iterator[str]:
    with fresh_namespace(cluster, "dash") as name:
        yield name


def _set_status(cluster: Any, namespace: str, name: str, status: dict[str, Any]) -> None:
    patch = json.dumps({"status": status})
    cluster.kubectl("patch", "taskqueue", name, "-n", namespace, "--subresource=status", "--type=merge", "-p", patch)


def test_queues_page_shows_taskqueue_replicas(
    cluster: Any,
    namespace: str,
    svc: Services,
    tmp_path: Path,
    browser: Browser,  # noqa: F811
) -> None:
    name = "dash-replicas"
    apply(cluster, manifests.taskqueue(name, namespace, queue=svc.queue, database=svc.database))
    _set_status(cluster, namespace, name, {"replicas": 3, "desiredReplicas": 3, "readyReplicas": 2})
    settings = Settings(amqp_url=svc.amqp_url, mongodb_uri=svc.mongodb_uri, database=svc.database, queue=svc.queue)
    with Client(settings) as client:
        client.submit("echo", args=[1], task_id="replicas-1")  # no worker: the queue has a task, so a row
    extra = {"KUBECONFIG": str(cluster.kubeconfig), "TASKQ_DASHBOARD_KUBERNETES": "1"}
    with _running_api(svc, tmp_path, "replicas", **extra) as server:
        page = browser.new_page(viewport={"width": 1400, "height": 600})
        _login(page, server.base, READ_ONLY, "/")
        cell = page.locator(f"tr[data-queue='{svc.queue}'] [data-field=replicas]")
        expect(page.locator("#replicas-head")).to_have_count(1)
        expect(cell).to_have_text("3 / 2")
        expect(cell).to_have_attribute("title", f"TaskQueue {namespace}/{name}: desired / ready")
        _shot(page, "12-queues-replicas")
        page.evaluate("window.__notReloaded = true")
        _set_status(cluster, namespace, name, {"readyReplicas": 3})
        expect(cell).to_have_text("3 / 3")
        assert page.evaluate("window.__notReloaded") is True
