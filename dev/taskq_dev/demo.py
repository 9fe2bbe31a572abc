"""`make demo`: taskq on Kubernetes, live, on this machine.

Brings up the local control plane (`taskq-dev cluster`), RabbitMQ and the store (`taskq-dev
services`), the bridge that runs real processes for taskq pods on the simulated nodes, installs the
Helm chart (so the operator runs with the chart's RBAC), applies `examples/taskqueue.yaml`, submits
2000 tasks of varying length, and shows the backlog, desired and ready replicas and task counts live
until the queue has drained and the workers have scaled back down. Ends with a summary and a PNG
plot, and leaves everything running for the user to explore.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from taskq.client import Client
from taskq.core.states import TaskState
from taskq.errors import QueueNotFound, StoreUnavailable
from taskq.settings import Settings
from taskq_dev import bridge_daemon, paths, tools
from taskq_dev.cluster import default_root
from taskq_dev.demo_report import EFFICIENCY_TARGET, Sample, Summary, plot, summarize
from taskq_dev.services import MongoService, cli_services

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "default"
RELEASE = "taskq"
TASKQUEUE = "demo"
DATABASE = "taskq"
TASKS = 2000
DRAIN_TIMEOUT_S = 420.0
SCALE_DOWN_TIMEOUT_S = 120.0
TICK_S = 1.0
console = Console()


def step(text: str) -> None:
    console.print(f"[bold cyan]==>[/] {text}")


def run(*argv: str | Path, env: dict[str, str] | None = None) -> str:
    """Run a command; on failure print its output and stop the demo with its exit code."""
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        console.print(result.stdout[-2000:], result.stderr[-2000:], markup=False)
        console.print(f"[red]failed:[/] {' '.join(str(a) for a in argv[:3])} ... (exit {result.returncode})")
        sys.exit(result.returncode)
    return result.stdout


def install_chart(kubeconfig: Path, amqp_url: str, management_url: str, mongodb_uri: str) -> None:
    """`helm upgrade --install` the chart with a connection Secret pointing at the local services."""
    env = dict(os.environ, KUBECONFIG=str(kubeconfig))
    run(
        tools.helm_binary(), "upgrade", "--install", RELEASE, REPO / "charts" / "taskq",
        "--namespace", NAMESPACE, "--wait", "--timeout", "180s",
        "--set", "connection.create=true",
        "--set-string", f"connection.amqpUrl={amqp_url}",
        "--set-string", f"connection.managementUrl={management_url}",
        "--set-string", f"connection.mongodbUri={mongodb_uri}",
        env=env,
    )


def demo_tasks(count: int, seed: int = 11) -> Iterator[dict[str, Any]]:
    """Tasks of varying length: mostly short sleeps, some long ones, some CPU work, a few echoes."""
    rng = random.Random(seed)
    for i in range(count):
        roll = rng.random()
        if roll < 0.70:
            yield {"name": "sleep", "kwargs": {"seconds": round(rng.uniform(0.05, 0.6), 3)}}
        elif roll < 0.85:
            yield {"name": "sleep", "kwargs": {"seconds": round(rng.uniform(1.0, 3.0), 2)}}
        elif roll < 0.95:
            yield {"name": "cpu", "kwargs": {"n": rng.randint(20_000, 120_000)}}
        else:
            yield {"name": "echo", "args": [i]}


def reset_previous_run(kubectl: Path, kubeconfig: Path, client: Client, mongo: MongoService) -> None:
    """A rerun starts clean: remove the old TaskQueue (its workers go with it), then its queue and tasks."""
    run(kubectl, "--kubeconfig", kubeconfig, "delete", "-n", NAMESPACE, "taskqueue", TASKQUEUE,
        "--ignore-not-found", "--wait=true", "--timeout=90s")
    run(kubectl, "--kubeconfig", kubeconfig, "wait", "-n", NAMESPACE, "pods", "--for=delete",
        "-l", f"app.kubernetes.io/instance={TASKQUEUE}", "--timeout=90s")
    try:
        client.purge(TASKQUEUE, include_documents=False)
    except QueueNotFound:
        pass
    # Dropping is instant, while deleting documents one by one is slow on FerretDB.
    client.store.tasks.drop()
    client.store.ensure_indexes()
    mongo.index_writes(DATABASE)  # FerretDB's writes by _id scan without it (see taskq_dev.mongo)


def read_taskqueue(api: k8s.CustomObjectsApi) -> dict[str, Any]:
    try:
        return api.get_namespaced_custom_object("taskq.io", "v1alpha1", NAMESPACE, "taskqueues", TASKQUEUE)  # type: ignore[no-any-return]
    except ApiException:
        return {}


def sample(t: float, tq: dict[str, Any], counts: dict[str, int]) -> Sample:
    status = tq.get("status") or {}
    backlog = status.get("backlog") or {}
    return Sample(
        t=t,
        ready=int(backlog.get("ready") or 0),
        unacked=int(backlog.get("unacked") or 0),
        desired=int(status.get("desiredReplicas") or 0),
        replicas=int(status.get("replicas") or 0),
        ready_replicas=int(status.get("readyReplicas") or 0),
        final=sum(counts.get(s.value, 0) for s in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.DEAD)),
    )


def view(s: Sample, counts: dict[str, int], reason: str, total: int) -> Group:
    scaling = Table(title=f"TaskQueue {NAMESPACE}/{TASKQUEUE}  t={s.t:5.1f}s", title_justify="left")
    for column in ("ready", "unacked", "desired", "replicas", "ready pods"):
        scaling.add_column(column, justify="right")
    scaling.add_row(str(s.ready), str(s.unacked), str(s.desired), str(s.replicas), str(s.ready_replicas))
    tasks = Table(title=f"tasks: {s.final}/{total} final", title_justify="left")
    for state in TaskState:
        tasks.add_column(state.value, justify="right")
    tasks.add_row(*[str(counts.get(state.value, 0)) for state in TaskState])
    return Group(scaling, tasks, Text(f"last scaling: {reason or '-'}", overflow="fold"))


def record_pods(core: k8s.CoreV1Api, created: dict[str, datetime]) -> None:
    """Note the creation time of every worker pod of the demo TaskQueue (for the pod start in the summary)."""
    try:
        pods = core.list_namespaced_pod(NAMESPACE, label_selector=f"app.kubernetes.io/instance={TASKQUEUE}").items
    except ApiException:
        return
    for pod in pods:
        if pod.metadata.creation_timestamp is not None:
            created.setdefault(pod.metadata.name, pod.metadata.creation_timestamp)


def watch(
    client: Client, api: k8s.CustomObjectsApi, total: int, started: float, pods_created: dict[str, datetime]
) -> list[Sample]:
    """Refresh the live view each tick until every task is final and workers are back at minReplicas."""
    core = k8s.CoreV1Api()
    samples: list[Sample] = []
    counts: dict[str, int] = {}
    drained_at: float | None = None
    with Live(console=console, refresh_per_second=4) as live:
        while True:
            now = time.monotonic() - started
            tq = read_taskqueue(api)
            try:
                counts = client.store.counts_by_state(TASKQUEUE)
            except StoreUnavailable:
                pass  # the store is busy with the workers' writes: keep the last counts this tick
            record_pods(core, pods_created)
            s = sample(now, tq, counts)
            samples.append(s)
            live.update(view(s, counts, (tq.get("status") or {}).get("lastScaleReason", ""), total))
            if drained_at is None and s.final >= total:
                drained_at = now
            if drained_at is not None and (s.replicas == 0 or now - drained_at > SCALE_DOWN_TIMEOUT_S):
                return samples
            if now > DRAIN_TIMEOUT_S:
                console.print("[yellow]stopped watching: the drain took longer than the demo waits[/]")
                return samples
            time.sleep(TICK_S)


def report(summary: Summary, png: Path) -> None:
    table = Table(title="taskq demo summary", show_header=False, title_justify="left")
    table.add_row("tasks", str(summary.tasks))
    table.add_row("states", ", ".join(f"{k} {v}" for k, v in sorted(summary.states.items())))
    table.add_row("throughput", f"{summary.throughput_per_s:.1f} tasks/s")
    table.add_row("task latency p50 / p95", f"{summary.latency_p50_s:.2f} s / {summary.latency_p95_s:.2f} s")
    table.add_row("peak replicas", str(summary.peak_replicas))
    table.add_row("first scale-up after", f"{summary.first_scale_up_s:.1f} s" if summary.first_scale_up_s is not None else "-")
    table.add_row("time to drain", f"{summary.drain_s:.1f} s")
    e = summary.efficiency
    if e is None:
        table.add_row("drain vs ideal", "- (no worker pod ran a task)")
    else:
        verdict = "[green]met[/]" if e.met else "[red]missed[/]"
        table.add_row(
            "drain vs ideal",
            f"{e.ratio:.2f}x (target <= {EFFICIENCY_TARGET}x: {verdict}); ideal {e.ideal_s:.1f} s = "
            f"{e.task_seconds:.0f} task-s / {e.slots} slots + {e.pod_start_s:.1f} s pod start",
        )
    table.add_row("plot", str(png))
    console.print()  # after the live view's last frame (its last line has no newline when output is piped)
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=TASKS)
    args = parser.parse_args(argv)

    step("tools (the first run builds kube binaries, etcd, kwok, helm and FerretDB from Go modules)")
    tools.all_cluster_tools()
    tools.ferretdb_binary()
    step("local control plane: etcd, kube-apiserver, controller-manager, scheduler, 3 kwok nodes")
    console.print(run(sys.executable, "-m", "taskq_dev.cli", "cluster", "up").strip(), markup=False)
    kubeconfig = default_root() / "admin.kubeconfig"
    step("RabbitMQ (management plugin) and the MongoDB-protocol store on loopback")
    services = cli_services()
    rabbitmq = services.ensure_rabbitmq()
    mongo = services.ensure_mongo()
    services.save()
    step("bridge: real taskq-operator / taskq-worker processes for pods on the simulated nodes")
    bridge_daemon.start(kubeconfig)
    step("helm install charts/taskq (operator, RBAC, CRD, connection Secret)")
    install_chart(kubeconfig, rabbitmq.amqp_url, rabbitmq.management_url, mongo.uri)
    kubectl = tools.kube_binary("kubectl")
    k8s_config.load_kube_config(config_file=str(kubeconfig))
    api = k8s.CustomObjectsApi()
    settings = Settings(amqp_url=rabbitmq.amqp_url, mongodb_uri=mongo.uri, database=DATABASE, queue=TASKQUEUE)
    with Client(settings) as client:
        reset_previous_run(kubectl, kubeconfig, client, mongo)
        step("kubectl apply -f examples/taskqueue.yaml")
        run(kubectl, "--kubeconfig", kubeconfig, "apply", "-n", NAMESPACE, "-f", REPO / "examples" / "taskqueue.yaml")
        step(f"submitting {args.tasks} tasks of varying length")
        began = datetime.now(timezone.utc)
        started = time.monotonic()
        with Progress(TextColumn("submit"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
            job = bar.add_task("submit", total=args.tasks)
            client.submit_many(demo_tasks(args.tasks), queue=TASKQUEUE, progress=lambda n: bar.advance(job, n))
        step("watching the operator scale the workers (backlog -> desired -> ready)")
        pods_created: dict[str, datetime] = {}
        samples = watch(client, api, args.tasks, started, pods_created)
        documents = list(
            client.store.tasks.find({"queue": TASKQUEUE}, {"state": 1, "created_at": 1, "timestamps": 1, "worker": 1})
        )
        spec = read_taskqueue(api).get("spec") or {}
    summary = summarize(
        documents,
        samples,
        began,
        max_replicas=int((spec.get("scaling") or {}).get("maxReplicas") or 0),
        concurrency=int((spec.get("worker") or {}).get("concurrency") or 0),
        pods_created=pods_created,
    )
    png = plot(samples, paths.state_dir("demo") / "demo.png", f"taskq demo: {args.tasks} tasks")
    report(summary, png)
    console.print(
        "\nEverything is still running. Try:\n"
        f"  . {Path(sys.executable).parent / 'activate'}   # taskq and taskq-dev (installed by make) on PATH\n"
        f"  export KUBECONFIG={kubeconfig}\n"
        f"  {tools.kube_binary('kubectl')} get tq            # queue, backlog, replicas, min/max\n"
        f"  {tools.kube_binary('kubectl')} describe tq {TASKQUEUE}   # conditions and scaling events\n"
        f"  eval \"$(taskq-dev services env)\" && taskq list --queue {TASKQUEUE} --limit 5 && taskq status <id>\n"
        "  make cluster-down && taskq-dev services down    # stop it all\n",
        markup=False,
    )


if __name__ == "__main__":
    main()
