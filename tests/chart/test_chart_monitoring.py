"""The chart's Grafana dashboard and Prometheus Operator objects, rendered offline by `helm template`.

Off by default; when enabled, the dashboard ConfigMap carries the sidecar's label and a dashboard whose
every query names only metrics the operator and the workers export (read from their source), and the
PodMonitor/ServiceMonitor scrape the ports the worker Deployment and the operator pod declare.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from taskq_dev import manifests
from taskq_operator.core.deployment import build_deployment
from taskq_operator.core.spec import parse_taskqueue

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "taskq"
Render = Callable[..., Any]
ALL_ON = {
    "grafana": {"dashboard": {"enabled": True}},
    "metrics": {"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": True}},
}


def exported_metrics() -> set[str]:
    """Every metric name the operator and the worker define with prometheus_client, with a histogram's series."""
    names: set[str] = set()
    pattern = re.compile(r"\b(Counter|Gauge|Histogram)\(\s*\"(taskq_[a-z_]+)\"", re.S)
    for root in (REPO / "operator", REPO / "worker"):
        for path in root.rglob("*.py"):
            for kind, name in pattern.findall(path.read_text()):
                names.add(name)
                if kind == "Histogram":
                    names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
    return names


def dashboard(render: Render) -> dict[str, Any]:
    rendered = render(values={"grafana": {"dashboard": {"enabled": True, "folder": "queues"}}})
    assert rendered.returncode == 0, rendered.stderr
    config_map = rendered.one("ConfigMap", "-grafana-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"]["grafana_folder"] == "queues"
    parsed: dict[str, Any] = json.loads(config_map["data"]["taskq.json"])
    return parsed


def test_nothing_is_rendered_by_default(render: Render) -> None:
    kinds = {obj["kind"] for obj in render().objects}
    assert not kinds & {"ConfigMap", "PodMonitor", "ServiceMonitor", "Service"}


def test_dashboard_queries_use_only_exported_metrics(render: Render) -> None:
    board = dashboard(render)
    exported = exported_metrics()
    assert {"taskq_tasks_total", "taskq_task_duration_seconds_bucket", "taskq_operator_backlog_ready"} <= exported
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in board["templating"]["list"] if "definition" in v]
    used = {name for q in queries for name in re.findall(r"\b(taskq_[a-z_]+)\b", q)}
    assert used and used <= exported, sorted(used - exported)
    outcomes = {o for q in queries for o in re.findall(r'outcome=~?"([^"]+)"', q)}
    # outcome labels are the committer's events without their prefix (taskq.worker.health)
    assert {"succeeded", "retrying|retry_resent", "dead|delivery_limit|undeliverable|malformed|unrecordable"} <= outcomes


def test_dashboard_covers_what_operators_watch(render: Render) -> None:
    titles = {p["title"] for p in dashboard(render)["panels"]}
    for wanted in ("Backlog", "Replicas", "Task rates by outcome", "Task duration", "Retries", "Dead letters"):
        assert wanted in titles, wanted
    ids = [p["id"] for p in dashboard(render)["panels"]]
    assert len(ids) == len(set(ids))


def test_monitors_scrape_the_declared_ports(render: Render) -> None:
    rendered = render(values={**ALL_ON, "operator": {"watchNamespaces": ["jobs"]}})
    assert rendered.returncode == 0, rendered.stderr
    pod_monitor = rendered.one("PodMonitor", "-workers")
    worker = build_deployment(parse_taskqueue(manifests.taskqueue("q", worker={"image": "w"})), 1)
    labels = worker["spec"]["template"]["metadata"]["labels"]
    container = worker["spec"]["template"]["spec"]["containers"][0]
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] in {p["name"] for p in container["ports"]}
    assert pod_monitor["spec"]["namespaceSelector"] == {"matchNames": ["taskq-system", "jobs"]}
    service = rendered.one("Service", "-operator-metrics")
    operator = rendered.one("Deployment", "-operator")["spec"]["template"]
    assert service["spec"]["selector"].items() <= operator["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in operator["spec"]["containers"][0]["ports"]}
    monitor = rendered.one("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True


def test_cluster_wide_pod_monitor_selects_any_namespace(render: Render) -> None:
    rendered = render(values={**ALL_ON, "rbac": {"clusterWide": True}})
    assert rendered.one("PodMonitor")["spec"]["namespaceSelector"] == {"any": True}


@pytest.mark.parametrize(
    "bad", [{"grafana": {"dashboard": {"enabled": "yes"}}}, {"metrics": {"podMonitor": {"interval": "soon"}}}]
)
def test_schema_refuses_bad_monitoring_values(render: Render, bad: dict[str, Any]) -> None:
    assert render(values=bad).returncode != 0


def test_lint_with_monitoring_on(helm_bin: str, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(json.dumps(ALL_ON))
    result = subprocess.run(
        [helm_bin, "lint", "--strict", str(CHART), "--values", str(values)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
