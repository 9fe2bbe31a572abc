"""Scaling benchmark of taskq-operator (`make bench-scaling`), written to bench/results/scaling.json.

Measures, against a real API server (KUBECONFIG, e.g. from `taskq-dev cluster up`; `KUBECTL` may name
the kubectl to use) and RabbitMQ/store on loopback (AMQP_URL / MONGODB_URI, or private ones started here):
1. reaction time: a backlog appears on an idle TaskQueue (minReplicas 0, default 2 s poll) -> the
   Deployment's spec.replicas is patched; >= 20 trials at random phases; p50/p95;
2. the KEDA-like baseline from its defaults (30 s polling drives 0 -> 1; the HPA syncs every 15 s),
   sampled at the same kind of random phases;
3. operator CPU and RSS with 500 TaskQueues on one broker at a 2 s poll, in steady state;
4. a PNG of backlog and replicas over time for one burst drained by a consumer at a fixed rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pika

from taskq.broker.admin import queue_depth
from taskq_dev import manifests
from taskq_dev.operator_process import running_operator
from taskq_dev.ports import poll
from taskq_dev.tools import kube_binary
from taskq_operator.adapters.kube import Kube, load_api_client

RESULTS = Path(__file__).resolve().parent / "results"
CRD = Path(__file__).resolve().parents[1] / "crds" / "taskqueue.yaml"
KEDA_POLL_S = 30.0
HPA_SYNC_S = 15.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[bench-scaling {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


# -- services and cluster ------------------------------------------------------------------------


def _wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    return poll(check, timeout=timeout, what=what, interval=interval)


@contextmanager
def services() -> Iterator[tuple[str, str, str]]:
    """(amqp_url, management_url, mongodb_uri): from the environment, or private nodes started here."""
    if os.environ.get("AMQP_URL") and os.environ.get("MONGODB_URI"):
        amqp = os.environ["AMQP_URL"]
        management = os.environ.get("MANAGEMENT_URL", "")
        if not management:
            from taskq_dev.rabbitmq import management_url_for
            management = management_url_for(amqp)
        yield amqp, management, os.environ["MONGODB_URI"]
        return
    from taskq_dev.mongo import PrivateMongo, choose_layout
    from taskq_dev.rabbitmq import PrivateRabbitMQ, RabbitNodeLayout
    base = Path(tempfile.mkdtemp(prefix="taskq-bench-"))
    rabbit = PrivateRabbitMQ(RabbitNodeLayout.allocate(base / "rabbitmq"))
    store = PrivateMongo(choose_layout(base / "store"))
    log("starting a private RabbitMQ and store")
    rabbit.start()
    store.start()
    try:
        yield rabbit.amqp_url, rabbit.management_url, store.uri
    finally:
        rabbit.close()
        store.close()


class Kubectl:
    def __init__(self) -> None:
        if not os.environ.get("KUBECONFIG"):
            raise SystemExit("bench-scaling needs a control plane: run `taskq-dev cluster up` and export KUBECONFIG")
        self.binary = os.environ.get("KUBECTL") or str(kube_binary("kubectl"))

    def __call__(self, *args: str, input: str | None = None, check: bool = True) -> str:
        result = subprocess.run([self.binary, *args], input=input, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args[:3])} failed: {result.stderr.strip()}")
        return result.stdout


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def taskqueue(name: str, namespace: str, queue: str, scaling: dict[str, Any]) -> dict[str, Any]:
    return manifests.taskqueue(
        name, namespace, queue=queue, broker_secret="bench-broker", store_secret="bench-store", database="bench", scaling=scaling
    )


# -- measurements ---------------------------------------------------------------------------------


class Broker:
    def __init__(self, amqp_url: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        self.channel = self.connection.channel()

    def publish(self, queue: str, count: int) -> None:
        for _ in range(count):
            self.channel.basic_publish("", queue, b"{}", pika.BasicProperties(delivery_mode=2))
        self.connection.process_data_events(0)

    def ready(self, queue: str) -> int:
        depth = queue_depth(self.connection, queue)
        return depth.messages if depth is not None else 0

    def purge(self, queue: str) -> None:
        self.channel.queue_purge(queue)

    def close(self) -> None:
        self.connection.close()


def replicas(kube: Kube, namespace: str, name: str) -> int:
    deployment = kube.get_deployment(namespace, name)
    return -1 if deployment is None else int(deployment["spec"].get("replicas") or 0)


def reaction_trials(kube: Kube, broker: Broker, namespace: str, trials: int) -> list[float]:
    deployment, queue = "react-worker", "bench-react"
    samples: list[float] = []
    for trial in range(trials):
        broker.purge(queue)
        _wait_for(lambda: replicas(kube, namespace, deployment) == 0, 30, "replicas back at 0")
        time.sleep(random.uniform(0.5, 2.5))  # a random phase relative to the operator's poll slots
        broker.publish(queue, 200)
        appeared = time.monotonic()
        _wait_for(lambda: replicas(kube, namespace, deployment) > 0, 30, "the Deployment to be scaled", 0.01)
        samples.append(time.monotonic() - appeared)
        log(f"trial {trial + 1}/{trials}: {samples[-1]:.2f} s")
    broker.purge(queue)
    return samples


def keda_baseline(trials: int) -> dict[str, Any]:
    """Reaction of a KEDA ScaledObject with its defaults, sampled at random phases like our trials.

    From zero, KEDA's own polling loop (pollingInterval 30 s) activates 0 -> 1, so the wait is the time to
    the next poll: uniform in [0, 30) s. Beyond one replica the HPA reads the metric at its 15 s sync:
    uniform in [0, 15) s after the backlog grows.
    """
    rng = random.Random(4)
    from_zero = [rng.uniform(0, KEDA_POLL_S) for _ in range(max(trials, 1000))]
    scale_out = [rng.uniform(0, HPA_SYNC_S) for _ in range(max(trials, 1000))]
    return {
        "p50": round(statistics.median(from_zero), 2),
        "p95": round(percentile(from_zero, 0.95), 2),
        "scale_out_p50": round(statistics.median(scale_out), 2),
        "scale_out_p95": round(percentile(scale_out, 0.95), 2),
        "model": "KEDA defaults: pollingInterval 30 s activates 0->1; HPA sync 15 s for 1->N (uniform phase)",
    }


def burst_timeline(kube: Kube, amqp_url: str, broker: Broker, namespace: str, png: Path) -> None:
    """Publish 1000 messages, drain them with a consumer at ~60 msg/s, and plot backlog and replicas."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    queue, deployment = "bench-plot", "plot-worker"
    broker.purge(queue)
    _wait_for(lambda: replicas(kube, namespace, deployment) == 0, 60, "plot TaskQueue idle")
    stop = threading.Event()

    def drain() -> None:
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        channel = connection.channel()
        while not stop.is_set():
            method, _, _ = channel.basic_get(queue)
            if method is not None:
                channel.basic_ack(method.delivery_tag)
            time.sleep(1 / 60)
        connection.close()

    times: list[float] = []
    backlog: list[int] = []
    replica_counts: list[int] = []
    started = time.monotonic()
    broker.publish(queue, 1000)
    consumer = threading.Thread(target=drain, daemon=True)
    consumer.start()
    deadline = started + 90
    while time.monotonic() < deadline:
        times.append(time.monotonic() - started)
        backlog.append(broker.ready(queue))
        replica_counts.append(replicas(kube, namespace, deployment))
        if backlog[-1] == 0 and replica_counts[-1] == 0 and times[-1] > 10:
            break
        time.sleep(0.25)
    stop.set()
    consumer.join(timeout=5)

    figure, left = plt.subplots(figsize=(8, 4))
    left.plot(times, backlog, color="tab:blue", label="backlog (ready)")
    left.set_xlabel("seconds since the burst")
    left.set_ylabel("ready messages", color="tab:blue")
    right = left.twinx()
    right.step(times, replica_counts, where="post", color="tab:red", label="Deployment spec.replicas")
    right.set_ylabel("replicas", color="tab:red")
    right.set_ylim(0, max(replica_counts + [1]) + 1)
    left.set_title("taskq-operator: 1000-task burst, 100 tasks/replica, 2 s poll, 10 s scale-down window")
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    plt.close(figure)


def load_cost(kubectl: Kubectl, namespace: str, count: int, process: subprocess.Popen[bytes],
              window_s: float) -> tuple[float, float]:
    """Create `count` TaskQueues, let the operator settle, then measure its CPU share and RSS."""
    items = [taskqueue(f"load-{i:03d}", namespace, f"bench-load-{i:03d}", {"pollIntervalSeconds": 2})
             for i in range(count)]
    for start in range(0, count, 100):
        kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                       "items": items[start:start + 100]}))
    _wait_for(lambda: len(kubectl("get", "deployments", "-n", namespace, "-o", "name").split()) >= count + 2,
             600, f"{count} worker Deployments", 2)
    log(f"{count} TaskQueues reconciled; settling (first statuses, Deployment events)")
    time.sleep(60)
    before_cpu, before = cpu_seconds(process.pid), time.monotonic()
    time.sleep(window_s)
    share = (cpu_seconds(process.pid) - before_cpu) / (time.monotonic() - before) * 100
    return share, rss_mb(process.pid)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--taskqueues", type=int, default=500)
    parser.add_argument("--cpu-window", type=float, default=60.0)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="Unverified HTTPS request")

    kubectl = Kubectl()
    namespace = f"tq-bench-{uuid.uuid4().hex[:6]}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    kubectl("apply", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/taskqueues.taskq.io")
    kubectl("create", "namespace", namespace)
    kube = Kube(load_api_client())
    server_version = json.loads(kubectl("get", "--raw", "/version")).get("gitVersion")
    try:
        with services() as (amqp_url, management_url, mongodb_uri):
            secrets = [
                {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bench-broker", "namespace": namespace},
                 "stringData": {"amqp-url": amqp_url, "management-url": management_url}},
                {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bench-store", "namespace": namespace},
                 "stringData": {"mongodb-uri": mongodb_uri}},
                taskqueue("react", namespace, "bench-react",
                          {"minReplicas": 0, "scaleDown": {"stabilizationWindowSeconds": 0}}),
                taskqueue("plot", namespace, "bench-plot",
                          {"minReplicas": 0, "tasksPerReplica": 100, "scaleDown": {"stabilizationWindowSeconds": 10}}),
            ]
            kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": secrets}))
            with running_operator(namespace, RESULTS / "scaling-operator.log") as process:
                _wait_for(lambda: replicas(kube, namespace, "react-worker") == 0, 60, "react Deployment", 0.2)
                _wait_for(lambda: replicas(kube, namespace, "plot-worker") == 0, 60, "plot Deployment", 0.2)
                broker = Broker(amqp_url)
                try:
                    samples = reaction_trials(kube, broker, namespace, args.trials)
                    burst_timeline(kube, amqp_url, broker, namespace, RESULTS / "scaling.png")
                finally:
                    broker.close()
                cpu_pct, rss = load_cost(kubectl, namespace, args.taskqueues, process, args.cpu_window)
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)

    result = {
        "reaction_s": {
            "p50": round(statistics.median(samples), 3),
            "p95": round(percentile(samples, 0.95), 3),
            "trials": len(samples),
            "samples": [round(s, 3) for s in samples],
            "poll_interval_s": 2,
        },
        "baseline_reaction_s": keda_baseline(args.trials),
        "operator_cpu_pct": round(cpu_pct, 2),
        "operator_rss_mb": round(rss, 1),
        "taskqueues": args.taskqueues,
        "poll_interval_s": 2,
        "plot": "bench/results/scaling.png",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        },
        "kubernetes": server_version,
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (RESULTS / "scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    log(f"reaction p50 {result['reaction_s']['p50']} s, p95 {result['reaction_s']['p95']} s; "
        f"{args.taskqueues} TaskQueues: {result['operator_cpu_pct']} % CPU, {result['operator_rss_mb']} MiB")


if __name__ == "__main__":
    main()
