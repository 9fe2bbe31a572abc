"""`make bench-worker`: taskq's worker against Celery and Dramatiq on the same RabbitMQ, in one run.

Measures, and writes to `bench/results/worker.json`:
- `worker_tps`: tasks/s of one `taskq-worker` process on pre-published no-op tasks, each outcome
  recorded in the store (group commit) before its ack;
- `celery_tps`: Celery prefork (one process per core), `task_acks_late=True`, prefetch multiplier
  1 and 4 (the better one counts; both are kept), no result backend;
- `dramatiq_tps`: Dramatiq, RabbitMQ broker, one process, default threads, no results;
- `submit_tps` / `raw_submit_tps`: `Client.submit_many` against bare pika with the same confirm
  window (`bench/submit.py`);
- `latency_ms`: idle end-to-end latency (submit -> `succeeded` in the store), p50 and p99.

Tasks/s is completed-per-second: the tasks are published first, then the consumer starts, and the
clock runs from its first completion... to the last (Celery and Dramatiq: the queue is empty and
nothing is unacked). When the store makes taskq's run slower than `--worker-budget` seconds, the
run stops there and the rate over the tasks completed so far is reported (`worker_partial`).
Services come from `AMQP_URL` / `MONGODB_URI` or are started privately (`taskq_dev.services`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pika

from taskq.broker.admin import queue_depth
from taskq.broker.connection import connect
from taskq.client import Client
from taskq.core.states import TaskState
from taskq.settings import Settings
from taskq.store.mongo import TaskStore
from taskq_dev.ports import WaitTimeout, poll
from taskq_dev.processes import stop_process
from taskq_dev.services import ServiceSet, delete_queues, session_services

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "worker.json"
LOGS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))  # `bench.peers` (a namespace package) for the peers

from submit import measure_raw_pika, measure_submit_many  # noqa: E402  (bench/ is not a package)


class Broker:
    """Queue counts of the benchmark's RabbitMQ: passive declares (ready, consumers) and the management API (unacked)."""

    def __init__(self, amqp_url: str, management_base: str, auth: tuple[str, str], vhost: str) -> None:
        self.amqp_url = amqp_url
        self._management = management_base
        self._auth = auth
        self._vhost = vhost
        self._connection = connect(amqp_url, name="taskq-bench-observer")

    def ready_and_consumers(self, queue: str) -> tuple[int, int]:
        depth = queue_depth(self._connection, queue)
        return (depth.messages, depth.consumers) if depth is not None else (0, 0)

    def unacked(self, queue: str) -> int:
        url = f"{self._management}/api/queues/{quote(self._vhost, safe='')}/{quote(queue, safe='')}"
        body = httpx.get(url, auth=self._auth, timeout=5).json()
        return int(body.get("messages_unacknowledged", 0))

    def publish_bodies(self, queue: str, bodies: list[bytes], properties: pika.BasicProperties) -> None:
        """Publish persistent messages with confirms, many in flight (one confirm wait per 500)."""
        channel = self._connection.channel()
        try:
            channel.confirm_delivery()
            for start in range(0, len(bodies), 500):
                for body in bodies[start : start + 500]:
                    channel.basic_publish("", queue, body, properties)
        finally:
            channel.close()

    def close(self) -> None:
        self._connection.close()


def _start(argv: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
    log = open(LOGS / log_name, "wb")
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)


def _stop(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    stop_process(process, timeout, group=True)


def _drain_time(broker: Broker, queue: str, total: int, timeout: float) -> float:
    """Seconds from the first consumed message until the queue is empty and nothing is unacked."""
    poll(lambda: broker.ready_and_consumers(queue)[1] > 0, timeout=120, interval=0.05, what=f"a consumer on {queue}")
    poll(lambda: broker.ready_and_consumers(queue)[0] < total, timeout=60, interval=0.005, what="the first delivery")
    started = time.perf_counter()
    poll(lambda: broker.ready_and_consumers(queue)[0] == 0, timeout=timeout, interval=0.01, what=f"{queue} to drain")
    drained = time.perf_counter()
    # Prefetched messages still run after `ready` hits 0; the management API lags, so wait for
    # it to show zero unacked and do not count that wait: the stragglers are at most one prefetch.
    poll(lambda: broker.unacked(queue) == 0, timeout=60, interval=0.5, what=f"{queue} acks")
    return drained - started


def bench_celery(broker: Broker, env: dict[str, str], n: int, multiplier: int) -> float:
    queue = f"celery-bench-{uuid.uuid4().hex[:6]}"
    peer_env = {**env, "BENCH_QUEUE": queue, "BENCH_CELERY_PREFETCH": str(multiplier), "PYTHONPATH": str(REPO)}
    from kombu import Connection, Exchange, Producer, Queue  # the peer's own client, as its users publish

    with Connection(broker.amqp_url) as connection:
        bound = Queue(queue, Exchange(queue, type="direct"), routing_key=queue)(connection)
        bound.declare()
        producer = Producer(connection, serializer="json")
        from bench.peers.celery_app import app

        app.conf.broker_url = broker.amqp_url
        for index in range(n):
            app.send_task("noop", args=[index], queue=queue, producer=producer)
    cores = os.cpu_count() or 2
    worker = _start(
        [sys.executable, "-m", "celery", "-A", "bench.peers.celery_app", "worker", "--pool=prefork", f"--concurrency={cores}", "--loglevel=WARNING", "-Q", queue, "--without-gossip", "--without-mingle", "--without-heartbeat"],
        peer_env,
        f"celery-m{multiplier}.log",
    )
    try:
        seconds = _drain_time(broker, queue, n, timeout=600)
    finally:
        _stop(worker)
    return n / seconds


def bench_dramatiq(broker: Broker, env: dict[str, str], n: int) -> float:
    queue = f"dramatiq-bench-{uuid.uuid4().hex[:6]}"
    peer_env = {**env, "BENCH_QUEUE": queue, "PYTHONPATH": str(REPO)}
    os.environ.update({"BENCH_QUEUE": queue, "BENCH_AMQP_URL": broker.amqp_url})
    import dramatiq

    from bench.peers import dramatiq_app

    messages = [dramatiq.Message(queue_name=queue, actor_name="noop", args=(i,), kwargs={}, options={}) for i in range(n)]
    # Dramatiq's own enqueue declares the queue (and its delay and dead-letter queues); the rest go
    # out through pika with batched confirms, as Dramatiq confirms one message at a time.
    dramatiq_app.broker.enqueue(messages[0])
    broker.publish_bodies(queue, [m.encode() for m in messages[1:]], pika.BasicProperties(delivery_mode=2, priority=0))
    dramatiq_app.broker.close()
    worker = _start([sys.executable, "-m", "dramatiq", "bench.peers.dramatiq_app", "--processes", "1"], peer_env, "dramatiq.log")
    try:
        seconds = _drain_time(broker, queue, n, timeout=600)
    finally:
        _stop(worker)
    return n / seconds


def _worker_env(amqp_url: str, mongodb_uri: str, database: str, queue: str) -> dict[str, str]:
    return {
        **os.environ,
        "TASKQ_AMQP_URL": amqp_url,
        "TASKQ_MONGODB_URI": mongodb_uri,
        "TASKQ_DATABASE": database,
        "TASKQ_QUEUE": queue,
        "TASKQ_TASK_MODULES": "taskq.examples",
        "TASKQ_HEALTH_PORT": "0",
        "TASKQ_PREFETCH": "1000",
        "TASKQ_CONCURRENCY": "4",
    }


def _health_port(log_path: Path, timeout: float = 120) -> int:
    def find() -> int | None:
        for line in log_path.read_text(errors="replace").splitlines():
            if '"worker.started"' in line:
                return int(json.loads(line)["health_port"])
        return None

    return int(poll(find, timeout=timeout, interval=0.1, what="taskq-worker to start"))


def _recorded(port: int) -> int:
    """Outcomes the worker has recorded in the store so far (its Prometheus counter)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("taskq_tasks_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def bench_taskq_worker(
    amqp_url: str, mongodb_uri: str, n: int, budget_s: float, index_writes: Callable[[str], object], first_wait_s: float = 180.0
) -> dict[str, Any]:
    """Tasks/s of one taskq-worker on `n` pre-submitted no-op tasks, outcomes recorded in the store.

    Progress is read from the worker's own `/metrics` (outcomes recorded), not from the store, so
    the measurement adds no load to the store.
    """
    database = f"bench_{uuid.uuid4().hex[:6]}"
    queue = f"taskq-bench-{uuid.uuid4().hex[:6]}"
    settings = Settings(amqp_url=amqp_url, mongodb_uri=mongodb_uri, database=database, queue=queue)
    with Client(settings) as client:
        client.submit_many({"name": "noop", "args": [i]} for i in range(n))
    index_writes(database)  # FerretDB's writes by _id scan the collection without it (taskq_dev.mongo)
    log_path = LOGS / "taskq-worker.log"
    log_path.unlink(missing_ok=True)
    worker = _start(["taskq-worker", "--log-level", "info"], _worker_env(amqp_url, mongodb_uri, database, queue), log_path.name)
    try:
        port = _health_port(log_path)
        try:
            first = poll(lambda: _recorded(port), timeout=first_wait_s, interval=0.01, what="the first taskq completion")
        except WaitTimeout:
            return {"tps": 0.0, "completed": 0, "of": n, "partial": True, "seconds": first_wait_s, "queue": queue,
                    "note": f"no outcome recorded within {first_wait_s:.0f} s (the store's first group commit did not finish)"}
        started = time.perf_counter()
        deadline = started + budget_s
        done = first
        while time.perf_counter() < deadline and done < n:
            time.sleep(0.05)
            done = _recorded(port)
        seconds = time.perf_counter() - started
    finally:
        _stop(worker, timeout=60)
        drop_database_quietly(mongodb_uri, database)
    rate = (done - first) / seconds if seconds > 0 and done > first else 0.0
    return {"tps": rate, "completed": done, "of": n, "partial": done < n, "seconds": round(seconds, 2), "queue": queue}


def drop_database_quietly(mongodb_uri: str, database: str) -> None:
    try:
        from pymongo import MongoClient

        MongoClient(mongodb_uri, serverSelectionTimeoutMS=5000).drop_database(database)
    except Exception:  # noqa: BLE001 - clean-up of a benchmark database is best effort
        pass


def bench_latency(amqp_url: str, mongodb_uri: str, samples: int) -> dict[str, float]:
    """Idle end-to-end latency: submit one task, poll the store until it is `succeeded`; sequentially."""
    database = f"bench_{uuid.uuid4().hex[:6]}"
    queue = f"taskq-lat-{uuid.uuid4().hex[:6]}"
    settings = Settings(amqp_url=amqp_url, mongodb_uri=mongodb_uri, database=database, queue=queue)
    store = TaskStore(mongodb_uri, database)
    latencies: list[float] = []
    with Client(settings) as client:
        client.submit("noop")  # declares the queue; the worker then finds it
        worker = _start(["taskq-worker", "--log-level", "warning"], _worker_env(amqp_url, mongodb_uri, database, queue), "taskq-worker-latency.log")
        try:
            poll(lambda: store.counts_by_state(queue)["succeeded"] == 1, timeout=120, interval=0.05, what="the worker to start")
            for index in range(samples):
                started = time.perf_counter()
                task_id = client.submit("noop", args=[index])
                poll(lambda: store.states_of([task_id]).get(task_id) is TaskState.SUCCEEDED, timeout=30, interval=0.001, what="a task to succeed")
                latencies.append((time.perf_counter() - started) * 1000)
        finally:
            _stop(worker, timeout=60)
    store.close()
    drop_database_quietly(mongodb_uri, database)
    ordered = sorted(latencies)
    return {
        "p50": round(statistics.median(ordered), 2),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        "samples": len(ordered),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000, help="no-op tasks per consumer run (default 20000)")
    parser.add_argument("--submit-tasks", type=int, default=10_000, help="tasks per submit-rate run")
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--small-tasks", type=int, default=1000, help="tasks of the second taskq run, on a small collection")
    parser.add_argument("--worker-budget", type=float, default=60.0, help="seconds a taskq worker run may take at most")
    args = parser.parse_args()
    LOGS.mkdir(parents=True, exist_ok=True)
    services: ServiceSet = session_services()
    try:
        rabbitmq = services.ensure_rabbitmq()
        mongo = services.ensure_mongo()
        env = {**os.environ, "BENCH_AMQP_URL": rabbitmq.amqp_url}
        results: dict[str, Any] = {}
        print(f"taskq worker, {args.tasks} tasks ...", flush=True)
        worker = bench_taskq_worker(rabbitmq.amqp_url, mongo.uri, args.tasks, args.worker_budget, mongo.index_writes)
        delete_queues(rabbitmq, worker.pop("queue"))
        print(f"  {worker}", flush=True)
        # The store's cost per write grows with its collection on FerretDB; the same run on a
        # small collection shows what the worker does when the store is not the limit.
        print(f"taskq worker, {args.small_tasks} tasks ...", flush=True)
        worker_small = bench_taskq_worker(rabbitmq.amqp_url, mongo.uri, args.small_tasks, args.worker_budget, mongo.index_writes)
        delete_queues(rabbitmq, worker_small.pop("queue"))
        print(f"  {worker_small}", flush=True)
        broker = Broker(rabbitmq.amqp_url, rabbitmq.management_base, rabbitmq.management_auth, rabbitmq.vhost)
        celery = {}
        for multiplier in (1, 4):
            print(f"celery prefork, prefetch multiplier {multiplier} ...", flush=True)
            celery[f"multiplier_{multiplier}"] = round(bench_celery(broker, env, args.tasks, multiplier), 1)
            print(f"  {celery[f'multiplier_{multiplier}']}", flush=True)
        print("dramatiq ...", flush=True)
        dramatiq_tps = bench_dramatiq(broker, env, args.tasks)
        print(f"  {dramatiq_tps:.1f}", flush=True)
        submit_queue = f"taskq-submit-{uuid.uuid4().hex[:6]}"
        submit_db = f"bench_{uuid.uuid4().hex[:6]}"
        print("submit_many vs raw pika ...", flush=True)
        submit_tps = measure_submit_many(rabbitmq.amqp_url, mongo.uri, submit_db, submit_queue, args.submit_tasks)
        raw_tps = measure_raw_pika(rabbitmq.amqp_url, submit_queue + "-raw", args.submit_tasks)
        drop_database_quietly(mongo.uri, submit_db)
        print(f"  {submit_tps:.0f} vs {raw_tps:.0f}", flush=True)
        print("idle latency ...", flush=True)
        latency = bench_latency(rabbitmq.amqp_url, mongo.uri, args.latency_samples)
        print(f"  {latency}", flush=True)
        broker.close()
        best_celery = max(celery.values())
        results = {
            "worker_tps": round(worker["tps"], 1),
            "worker_run": worker,
            "worker_small_collection_run": {**worker_small, "tps": round(worker_small["tps"], 1)},
            "celery_tps": best_celery,
            "celery_by_prefetch_multiplier": celery,
            "dramatiq_tps": round(dramatiq_tps, 1),
            "submit_tps": round(submit_tps, 1),
            "raw_submit_tps": round(raw_tps, 1),
            "latency_ms": latency,
            "ratios": {
                "worker_vs_celery": round(worker["tps"] / best_celery, 3),
                "worker_vs_dramatiq": round(worker["tps"] / dramatiq_tps, 3),
                "submit_vs_raw": round(submit_tps / raw_tps, 3),
            },
            "targets": {"worker_vs_celery": 1.5, "worker_vs_dramatiq": 1.0, "submit_vs_raw": 0.8, "latency_p50_ms": 15},
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "store": getattr(mongo, "kind", "external"),
                "broker": "external" if rabbitmq.external else "private rabbitmq-server",
                "load_average_at_end": os.getloadavg(),
            },
            "tasks_per_run": args.tasks,
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results, indent=2))
    finally:
        services.close()


if __name__ == "__main__":
    main()
