"""Scaling benchmark of taskq-operator (`make bench-scaling`), written to bench/results/scaling.json.

Measures, against a real API server (KUBECONFIG, e.g. from `taskq-dev cluster up`; `KUBECTL` may name
the kubectl to use) and RabbitMQ/store on loopback (AMQP_URL / MONGODB_URI, or private ones started here):
1. reaction time: a backlog appears on an idle TaskQueue (minReplicas 0, default 2 s poll) -> the
   Deployment's spec.replicas is patched; >= 20 trials at random phases; p50/p95;
2. the KEDA-like baseline from its defaults (30 s polling drives 0 -> 1; the HPA syncs every 15 s),
   sampled at the same kind of random phases;
3. operator CPU and RSS with 2,000 TaskQueues on one broker at a 2 s poll, in steady state
   (`--operator-cost-only`: this part alone at 500 and 2,000, to bench/results/operator-cost.json);
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pika

from taskq.broker.admin import queue_depth
from taskq_dev import keda, manifests, versions
from taskq_dev.gobuild import GoBuildError
from taskq_dev.operator_process import running_operator
from taskq_dev.ports import poll
from taskq_dev.tools import kube_binary
from taskq_operator.adapters.kube import Kube, load_api_client

RESULTS = Path(__file__).resolve().parent / "results"
CRD = Path(__file__).resolve().parents[1] / "crds" / "taskqueue.yaml"
KEDA_POLL_S = 30.0
HPA_SYNC_S = 15.0
KEDA_LANES = 5
"""Parallel ScaledObjects (each its own queue and Deployment) the KEDA trials are spread over."""
DRAIN_TASKS = 2000
DRAIN_MAX_REPLICAS = 10
DRAIN_CONCURRENCY = 4
DRAIN_PER_REPLICA = 100
DRAIN_TIMEOUT_S = 420.0
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


def _wait_replicas(kube: Kube, namespace: str, name: str, check: Callable[[int], bool], timeout: float,
                   what: str, interval: float) -> None:
    _wait_for(lambda: check(replicas(kube, namespace, name)), timeout, what, interval)


def keda_lane_trials(amqp_url: str, namespace: str, deployment: str, queue: str, poll_s: float, trials: int,
                     deadline: float, samples: list[float], lock: threading.Lock) -> None:
    """Reaction trials on one ScaledObject: back at 0 (KEDA scales to zero at a poll tick), wait a random
    phase in [0, pollingInterval), publish 200, time until spec.replicas > 0."""
    kube = Kube(load_api_client())
    broker = Broker(amqp_url)
    rng = random.Random(f"{deployment}-{poll_s}")
    timeout = 2 * poll_s + 45
    try:
        for _ in range(trials):
            if time.monotonic() + 2 * poll_s + 5 > deadline:
                break
            broker.purge(queue)
            _wait_replicas(kube, namespace, deployment, lambda n: n == 0, timeout, f"{deployment} back at 0", 0.05)
            time.sleep(rng.uniform(0, poll_s))
            broker.publish(queue, 200)
            appeared = time.monotonic()
            _wait_replicas(kube, namespace, deployment, lambda n: n > 0, timeout, f"KEDA to scale {deployment}", 0.02)
            with lock:
                samples.append(time.monotonic() - appeared)
                log(f"keda poll {poll_s:.0f} s, {deployment}: trial {len(samples)}: {samples[-1]:.2f} s")
        broker.purge(queue)
    finally:
        broker.close()


def worker_copy(kubectl: Kubectl, namespace: str, source: str, name: str) -> dict[str, Any]:
    """A Deployment with the pod spec of the operator's `source` Deployment, its own name and selector,
    at 0 replicas (so KEDA scales the same workers, without the taskq operator owning them)."""
    original = json.loads(kubectl("get", "deployment", source, "-n", namespace, "-o", "json"))
    labels = {"app.kubernetes.io/name": name, "bench.taskq.io/scaler": "keda"}
    template = original["spec"]["template"]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels, "annotations": template["metadata"].get("annotations", {})},
                              "spec": template["spec"]}},
    }


def scaled_object(name: str, namespace: str, deployment: str, queue: str, amqp_url: str, *,
                  polling_s: int | None, cooldown_s: int | None, max_replicas: int) -> dict[str, Any]:
    """A ScaledObject on `deployment`: RabbitMQ trigger in QueueLength mode, 100 messages per replica
    (taskq's tasksPerReplica); pollingInterval / cooldownPeriod left at KEDA's defaults when None."""
    spec: dict[str, Any] = {
        "scaleTargetRef": {"name": deployment},
        "minReplicaCount": 0,
        "maxReplicaCount": max_replicas,
        "triggers": [{"type": "rabbitmq", "metadata": {
            "protocol": "amqp", "host": amqp_url, "queueName": queue, "mode": "QueueLength",
            "value": str(DRAIN_PER_REPLICA)}}],
    }
    if polling_s is not None:
        spec["pollingInterval"] = polling_s
    if cooldown_s is not None:
        spec["cooldownPeriod"] = cooldown_s
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def summary(samples: list[float], **extra: Any) -> dict[str, Any]:
    if not samples:
        return {"trials": 0, **extra}
    return {"p50": round(statistics.median(samples), 3), "p95": round(percentile(samples, 0.95), 3),
            "trials": len(samples), "samples": [round(s, 3) for s in samples], **extra}


def demo_task_seconds(count: int) -> list[float]:
    """Task lengths of the demo's mix (`taskq_dev.demo.demo_tasks`): sleeps as given, cpu tasks 50 ms, echoes 5 ms."""
    from taskq_dev.demo import demo_tasks

    lengths = []
    for task in demo_tasks(count):
        if task["name"] == "sleep":
            lengths.append(float(task["kwargs"]["seconds"]))
        else:
            lengths.append(0.05 if task["name"] == "cpu" else 0.005)
    return lengths


def drain_run(kube: Kube, amqp_url: str, namespace: str, deployment: str, queue: str,
              lengths: list[float]) -> dict[str, Any]:
    """Publish `lengths` as tasks and run them on simulated worker slots: DRAIN_CONCURRENCY per ready pod
    of `deployment` (kwok pods run nothing). Returns the drain time (publish start -> last ack) and more."""
    broker = Broker(amqp_url)
    broker.purge(queue)
    _wait_replicas(kube, namespace, deployment, lambda n: n == 0, 120, f"{deployment} idle", 0.2)
    stop = threading.Event()
    active = [0]
    done = [0]
    lock = threading.Lock()
    timeline: list[tuple[float, int, int]] = []

    def slot(index: int) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        channel = connection.channel()
        try:
            while not stop.is_set():
                if index >= active[0]:
                    time.sleep(0.1)
                    continue
                method, _, body = channel.basic_get(queue)
                if method is None:
                    time.sleep(0.1)
                    continue
                time.sleep(json.loads(body)["s"])
                channel.basic_ack(method.delivery_tag)
                with lock:
                    done[0] += 1
        finally:
            connection.close()

    def follow(started: float) -> None:
        watcher = Kube(load_api_client())
        while not stop.is_set():
            found = watcher.get_deployment(namespace, deployment) or {}
            ready = int(found.get("status", {}).get("readyReplicas") or 0)
            active[0] = ready * DRAIN_CONCURRENCY
            timeline.append((round(time.monotonic() - started, 2), int(found.get("spec", {}).get("replicas") or 0), ready))
            time.sleep(0.25)

    threads = [threading.Thread(target=slot, args=(i,), daemon=True)
               for i in range(DRAIN_MAX_REPLICAS * DRAIN_CONCURRENCY)]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    follower = threading.Thread(target=follow, args=(started,), daemon=True)
    follower.start()
    for length in lengths:
        broker.channel.basic_publish("", queue, json.dumps({"s": length}).encode(), pika.BasicProperties(delivery_mode=2))
    broker.connection.process_data_events(0)
    published = time.monotonic() - started
    deadline = started + DRAIN_TIMEOUT_S
    while done[0] < len(lengths) and time.monotonic() < deadline:
        time.sleep(0.1)
    drained = time.monotonic() - started
    stop.set()
    for thread in [*threads, follower]:
        thread.join(timeout=10)
    broker.purge(queue)
    broker.close()
    first_ready = next((t for t, _, ready in timeline if ready > 0), None)
    peak = max((ready for _, _, ready in timeline), default=0)
    at_peak = next((t for t, _, ready in timeline if ready >= DRAIN_MAX_REPLICAS), None)
    replica_seconds = sum(ready * 0.25 for t, _, ready in timeline if t <= drained)
    ideal = sum(lengths) / (DRAIN_MAX_REPLICAS * DRAIN_CONCURRENCY) + (first_ready or 0.0)
    result = {
        "drain_s": round(drained, 1), "completed": done[0], "tasks": len(lengths),
        "task_seconds": round(sum(lengths), 1), "publish_s": round(published, 2),
        "first_ready_s": first_ready, "max_replicas_at_s": at_peak, "peak_ready": peak,
        "ready_replica_seconds": round(replica_seconds, 1),
        "ideal_s": round(ideal, 1), "vs_ideal": round(drained / ideal, 2),
    }
    log(f"drain {deployment}: {result}")
    return result


def keda_part(kubectl: Kubectl, kube: Kube, amqp_url: str, namespace: str, trials: int, budget_s: float,
              lengths: list[float], wait_s: float) -> dict[str, Any]:
    """Reaction trials (pollingInterval 2 s, then KEDA's default 30 s) and drains under real KEDA."""
    out: dict[str, Any] = {"version": versions.KEDA}
    started = time.monotonic()
    binaries = keda.cached_binaries()
    if binaries is None and keda.build_in_progress():
        log(f"a KEDA build is compiling; waiting up to {wait_s:.0f} s for it")
        while binaries is None and time.monotonic() - started < wait_s:
            time.sleep(10)
            binaries = keda.cached_binaries()
        if binaries is None:
            raise keda.KedaError(
                f"the cold build of KEDA {versions.KEDA} (cmd/operator + cmd/adapter, ~3,700 packages) was still "
                f"compiling after a {wait_s:.0f} s wait; it finishes into the tool cache and the next run uses it")
    if binaries is None:
        binaries = keda.keda_binaries()  # no build running: compile now (cold: tens of minutes)
    out["build_or_cache_s"] = round(time.monotonic() - started, 1)
    log(f"KEDA {versions.KEDA}: {binaries['keda']} ({out['build_or_cache_s']} s to build or find)")
    channel = Broker(amqp_url)
    lanes = [(f"keda-react-{i}", f"bench-keda-react-{i}") for i in range(KEDA_LANES)]
    for _, queue in [*lanes, ("", "bench-keda-drain")]:
        channel.channel.queue_declare(queue, durable=True)
    channel.close()
    workers = [worker_copy(kubectl, namespace, "react-worker", name) for name, _ in lanes]
    workers.append(worker_copy(kubectl, namespace, "drain-worker", "keda-drain"))
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": workers}))
    kubeconfig = Path(os.environ["KUBECONFIG"])
    with keda.running_keda(kubeconfig, kubectl, Path(tempfile.mkdtemp(prefix="taskq-keda-")),
                           watch_namespace=namespace) as run:
        log("KEDA operator and metrics server up; APIService external.metrics.k8s.io Available")
        for label, poll_s, budget in (("poll_2s", 2, budget_s / 3), ("defaults", None, budget_s)):
            objects = [scaled_object(name, namespace, name, queue, amqp_url, polling_s=poll_s, cooldown_s=1,
                                     max_replicas=DRAIN_MAX_REPLICAS) for name, queue in lanes]
            kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
            interval = float(poll_s or KEDA_POLL_S)
            samples: list[float] = []
            lock = threading.Lock()
            deadline = time.monotonic() + budget
            per_lane = -(-trials // KEDA_LANES)
            threads = [threading.Thread(target=keda_lane_trials,
                                        args=(amqp_url, namespace, name, queue, interval, per_lane, deadline, samples, lock))
                       for name, queue in lanes]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=budget + 4 * interval + 120)
            out[label] = summary(samples, pollingInterval_s=interval, cooldownPeriod_s=1, lanes=KEDA_LANES,
                                 time_budget_s=round(budget), trials_wanted=trials)
            kubectl("delete", "scaledobjects.keda.sh", "-n", namespace, *[name for name, _ in lanes], "--wait=true",
                    "--timeout=60s", check=False)
        drains: dict[str, Any] = {}
        for label, poll_s in (("defaults", None), ("poll_2s", 2)):
            kubectl("scale", "deployment", "keda-drain", "-n", namespace, "--replicas=0")
            body = scaled_object("keda-drain", namespace, "keda-drain", "bench-keda-drain", amqp_url,
                                 polling_s=poll_s, cooldown_s=None, max_replicas=DRAIN_MAX_REPLICAS)
            kubectl("apply", "-f", "-", input=json.dumps(body))
            time.sleep(3)  # the ScaledObject's HPA exists and its first (idle) poll is done
            drains[label] = drain_run(kube, amqp_url, namespace, "keda-drain", "bench-keda-drain", lengths)
            kubectl("delete", "scaledobject.keda.sh", "keda-drain", "-n", namespace, "--wait=true", "--timeout=60s",
                    check=False)
        out["drain"] = drains
        out["hpa"] = kubectl("get", "hpa", "-n", namespace, "-o", "name", check=False).split()
        out["operator_log"] = str(run.logs["operator"])
    return out


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
    def load_deployments() -> int:
        names = kubectl("get", "deployments", "-n", namespace, "-o", "name").split()
        return sum(1 for name in names if name.startswith("deployment.apps/load-"))

    _wait_for(lambda: load_deployments() >= count, 600, f"{count} worker Deployments", 2)
    log(f"{count} TaskQueues reconciled; settling (first statuses, Deployment events)")
    time.sleep(60)
    before_cpu, before = cpu_seconds(process.pid), time.monotonic()
    time.sleep(window_s)
    share = (cpu_seconds(process.pid) - before_cpu) / (time.monotonic() - before) * 100
    return share, rss_mb(process.pid)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--taskqueues", type=int, default=2000)
    parser.add_argument("--cpu-window", type=float, default=60.0)
    parser.add_argument("--keda-budget", type=float, default=330.0,
                        help="seconds the KEDA trials at defaults may take (30 s poll: about 60 s per trial per lane)")
    parser.add_argument("--keda-build-wait", type=float, default=120.0,
                        help="seconds to wait for a KEDA build another process is compiling before recording an error")
    parser.add_argument("--no-keda", action="store_true", help="skip real KEDA (the modelled baseline stays)")
    parser.add_argument("--operator-cost-only", action="store_true",
                        help="only part 3, at each of --cost-steps, to bench/results/operator-cost.json (bench/operator_cost.py)")
    parser.add_argument("--cost-steps", default="500,2000")
    args = parser.parse_args(argv)
    if args.operator_cost_only:
        from operator_cost import main as operator_cost  # bench/ is on sys.path when this file runs

        operator_cost(["--steps", args.cost_steps, "--cpu-window", str(args.cpu_window)])
        return
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
                manifests.taskqueue(
                    "drain", namespace, queue="bench-drain", broker_secret="bench-broker", store_secret="bench-store",
                    database="bench", worker={**manifests.DEFAULT_WORKER, "concurrency": DRAIN_CONCURRENCY},
                    scaling={"minReplicas": 0, "maxReplicas": DRAIN_MAX_REPLICAS, "tasksPerReplica": DRAIN_PER_REPLICA}),
            ]
            kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": secrets}))
            with running_operator(namespace, RESULTS / "scaling-operator.log") as process:
                _wait_for(lambda: replicas(kube, namespace, "react-worker") == 0, 60, "react Deployment", 0.2)
                _wait_for(lambda: replicas(kube, namespace, "plot-worker") == 0, 60, "plot Deployment", 0.2)
                _wait_for(lambda: replicas(kube, namespace, "drain-worker") == 0, 60, "drain Deployment", 0.2)
                broker = Broker(amqp_url)
                declared = ("bench-react", "bench-plot", "bench-drain")
                _wait_for(lambda: all(queue_depth(broker.connection, q) is not None for q in declared), 60,
                          "the operator to declare the bench queues", 0.5)
                try:
                    samples = reaction_trials(kube, broker, namespace, args.trials)
                    burst_timeline(kube, amqp_url, broker, namespace, RESULTS / "scaling.png")
                finally:
                    broker.close()
                lengths = demo_task_seconds(DRAIN_TASKS)
                taskq_drain = drain_run(kube, amqp_url, namespace, "drain-worker", "bench-drain", lengths)
                keda_run: dict[str, Any] = {"version": versions.KEDA, "error": "skipped (--no-keda)"}
                if not args.no_keda:
                    try:
                        keda_run = keda_part(kubectl, kube, amqp_url, namespace, args.trials, args.keda_budget, lengths,
                                             args.keda_build_wait)
                    except (GoBuildError, keda.KedaError, RuntimeError) as exc:
                        log(f"KEDA could not be run: {exc}")
                        keda_run = {"version": versions.KEDA, "error": str(exc)}
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
        "keda_reaction_s": {
            "version": keda_run["version"],
            **({"error": keda_run["error"]} if "error" in keda_run else
               {"defaults": keda_run["defaults"], "poll_2s": keda_run["poll_2s"], "hpa_sync_s": HPA_SYNC_S,
                "binaries_ready_s": keda_run["build_or_cache_s"],
                "setup": "ScaledObject per lane (rabbitmq trigger, amqp, QueueLength, value 100, min 0); "
                         "cooldownPeriod 1 s so trials restart from 0 quickly (it affects scale-down only); "
                         "reaction = publish of 200 messages on an idle queue -> Deployment spec.replicas > 0"}),
        },
        "baseline_reaction_s": keda_baseline(args.trials),
        "drain_s": {
            "taskq": taskq_drain["drain_s"],
            "keda": keda_run["drain"]["defaults"]["drain_s"] if "drain" in keda_run else None,
            "keda_poll_2s": keda_run["drain"]["poll_2s"]["drain_s"] if "drain" in keda_run else None,
            "ideal": taskq_drain["ideal_s"],
            "workload": f"{DRAIN_TASKS} tasks of the demo's lengths, {DRAIN_CONCURRENCY} simulated slots per ready pod, "
                        f"max {DRAIN_MAX_REPLICAS} replicas, {DRAIN_PER_REPLICA} tasks per replica; KEDA at defaults "
                        "except maxReplicaCount 10 (its default is 100)",
            "details": {"taskq": taskq_drain, **({f"keda_{k}": v for k, v in keda_run["drain"].items()}
                                                 if "drain" in keda_run else {})},
        },
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
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    # --- SLO scaling (bench/slo.py: tasksPerReplica vs targetWaitSeconds; alone: make bench-slo) ---
    from slo import run as slo_run

    result["slo"] = slo_run()
    # --- end SLO scaling ---
    (RESULTS / "scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    log(f"reaction p50 {result['reaction_s']['p50']} s, p95 {result['reaction_s']['p95']} s; "
        f"{args.taskqueues} TaskQueues: {result['operator_cpu_pct']} % CPU, {result['operator_rss_mb']} MiB")


if __name__ == "__main__":
    main()
