"""`make bench-worker`: taskq's worker against Celery and Dramatiq on the same RabbitMQ and store, in one run.

Measures, and writes to `bench/results/worker.json`:
- `taskq_process_tps` (= `worker_tps`) and `taskq_thread_tps`: tasks/s of one `taskq-worker` process
  with the process pool (the default; `TASKQ_POOL=process`) and with the thread pool, pool size = cores,
  default prefetch (2 per slot), on pre-submitted no-op tasks, each outcome recorded in the store
  (group commit) before its ack;
- `celery_tps`: Celery prefork (one process per core), `task_acks_late=True`, prefetch multiplier
  1 and 4 (the better one counts; both are kept), no result backend;
- `dramatiq_tps`: Dramatiq, RabbitMQ broker, one process, default threads, no results;
- `cpu_us_per_task`: CPU of the whole worker (the process and all its descendants) per task completed
  in the measured window, for taskq (both pools), Celery (its best multiplier) and Dramatiq;
- `profile`: where the taskq worker *process* (the parent of the pool's children) spends its CPU, from
  a py-spy sample of a separate process-pool run (skipped when py-spy is not installed);
- `submit_tps` / `raw_submit_tps`: `Client.submit_many` against bare pika with the same confirm
  window (`bench/submit.py`);
- `latency_ms`: idle end-to-end latency (submit -> `succeeded` in the store), p50 and p99.

Tasks/s is completed-per-second: the tasks are published first, then the consumer starts, and the
clock runs from its first completion (Celery and Dramatiq: its first delivery) to the last (Celery
and Dramatiq: the queue is empty). When the store makes taskq's run slower than `--worker-budget`
seconds, the run stops there and the rate over the tasks completed so far is reported (`partial`).

CPU per task (`TreeCpu`): at the start and at the end of the same measured window the benchmark sums,
over the worker process and every live descendant (`psutil` `children(recursive=True)`), user + system
CPU plus `children_user` + `children_system` (the CPU of descendants that exited and were reaped by
their parent), and divides the difference by the tasks completed in the window (taskq: outcomes
recorded, from the worker's `/metrics`; Celery/Dramatiq: messages taken from the queue, which differs
from completed by at most one prefetch window). Start-up is outside the window. The store's and the
broker's own CPU are not part of any worker's figure.
Services come from `AMQP_URL` / `MONGODB_URI` or are started privately (`taskq_dev.services`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pika
from pymongo.monitoring import CommandListener

from taskq.broker.admin import queue_depth
from taskq.broker.connection import connect
from taskq.client import Client
from taskq.core.message import new_task_id
from taskq.core.states import TaskState
from taskq.errors import BrokerUnavailable
from taskq.settings import Settings
from taskq.store.mongo import FERRETDB_OPS_PER_BULK, TaskStore
from taskq_dev.ports import WaitTimeout, poll
from taskq_dev.processes import stop_process
from taskq_dev.services import ServiceSet, delete_queues, session_services

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "worker.json"
LOGS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))  # `bench.peers` (a namespace package) for the peers

from ceiling import ceiling_configurations, commands_per_task, measure_ceiling  # noqa: E402
from cpu import CpuSample, TreeCpu, cpu_by_thread_name, profile_parent, py_spy, summarize_collapsed, thread_cpu, thread_names  # noqa: E402  (bench/ is not a package)
from submit import measure_raw_confirm_ms, measure_raw_pika, measure_store_submit, measure_submit_many  # noqa: E402

PROFILE_MAX_BYTES = 1_000_000


class Broker:
    """Queue counts of the benchmark's RabbitMQ: passive declares (ready, consumers) and the management API (unacked)."""

    def __init__(self, amqp_url: str, management_base: str, auth: tuple[str, str], vhost: str) -> None:
        self.amqp_url = amqp_url
        self._management = management_base
        self._auth = auth
        self._vhost = vhost
        self._connection = connect(amqp_url, name="taskq-bench-observer")

    def ready_and_consumers(self, queue: str) -> tuple[int, int]:
        try:
            depth = queue_depth(self._connection, queue)
        except BrokerUnavailable:
            # Idle through a long publish or a peer's start-up, the connection can miss its heartbeats.
            self._reconnect()
            depth = queue_depth(self._connection, queue)
        return (depth.messages, depth.consumers) if depth is not None else (0, 0)

    def _reconnect(self) -> None:
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            self._connection.close()
        self._connection = connect(self.amqp_url, name="taskq-bench-observer")

    def _channel(self) -> Any:
        if not self._connection.is_open:
            self._reconnect()
        try:
            return self._connection.channel()
        except (pika.exceptions.AMQPError, OSError):
            self._reconnect()
            return self._connection.channel()

    def unacked(self, queue: str) -> int:
        url = f"{self._management}/api/queues/{quote(self._vhost, safe='')}/{quote(queue, safe='')}"
        body = httpx.get(url, auth=self._auth, timeout=5).json()
        return int(body.get("messages_unacknowledged", 0))

    def publish_bodies(self, queue: str, bodies: list[bytes], properties: pika.BasicProperties) -> None:
        """Publish persistent messages with confirms, many in flight (one confirm wait per 500)."""
        channel = self._channel()
        try:
            channel.confirm_delivery()
            for start in range(0, len(bodies), 500):
                for body in bodies[start : start + 500]:
                    channel.basic_publish("", queue, body, properties)
        finally:
            channel.close()

    def delete(self, queue: str) -> None:
        """Delete a peer's queue and the exchange of the same name (Celery declares one per queue)."""
        channel = self._channel()
        try:
            channel.queue_delete(queue)
            channel.exchange_delete(queue)
        finally:
            channel.close()

    def close(self) -> None:
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            self._connection.close()


def _start(argv: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
    with open(LOGS / log_name, "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)


def _stop(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    stop_process(process, timeout, group=True)


@dataclass(frozen=True)
class Window:
    """One measured window of a consumer: its length, the tasks done in it and the worker tree's CPU over it."""

    seconds: float
    tasks: int
    start: CpuSample
    end: CpuSample

    @property
    def tps(self) -> float:
        return self.tasks / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_task(self) -> float:
        return (self.end.tree_s - self.start.tree_s) / self.tasks * 1e6 if self.tasks else 0.0

    @property
    def parent_cpu_us_per_task(self) -> float:
        return (self.end.root_s - self.start.root_s) / self.tasks * 1e6 if self.tasks else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "tps": round(self.tps, 1),
            "seconds": round(self.seconds, 2),
            "tasks_in_window": self.tasks,
            "cpu_s": round(self.end.tree_s - self.start.tree_s, 3),
            "cpu_us_per_task": round(self.cpu_us_per_task, 1),
            "parent_cpu_us_per_task": round(self.parent_cpu_us_per_task, 1),
            "processes": self.end.processes,
        }


def _drain_window(broker: Broker, queue: str, total: int, timeout: float, cpu: TreeCpu) -> Window:
    """From the first consumed message until the queue is empty, with the worker tree's CPU over that span."""
    poll(lambda: broker.ready_and_consumers(queue)[1] > 0, timeout=120, interval=0.05, what=f"a consumer on {queue}")
    poll(lambda: broker.ready_and_consumers(queue)[0] < total, timeout=60, interval=0.005, what="the first delivery")
    start = cpu.sample()
    ready_at_start = broker.ready_and_consumers(queue)[0]
    started = time.perf_counter()
    poll(lambda: broker.ready_and_consumers(queue)[0] == 0, timeout=timeout, interval=0.01, what=f"{queue} to drain")
    drained = time.perf_counter()
    end = cpu.sample()
    # Prefetched messages still run after `ready` hits 0; the management API lags, so wait for
    # it to show zero unacked and do not count that wait: the stragglers are at most one prefetch.
    poll(lambda: broker.unacked(queue) == 0, timeout=60, interval=0.5, what=f"{queue} acks")
    return Window(seconds=drained - started, tasks=ready_at_start, start=start, end=end)


def _publish_celery(broker: Broker, queue: str, n: int) -> None:
    """`n` no-op Celery tasks on `queue`, sent with Celery's own client (kombu), as its users publish."""
    from kombu import Connection, Exchange, Producer, Queue

    with Connection(broker.amqp_url) as connection:
        bound = Queue(queue, Exchange(queue, type="direct"), routing_key=queue)(connection)
        bound.declare()
        producer = Producer(connection, serializer="json")
        from bench.peers.celery_app import app

        app.conf.broker_url = broker.amqp_url
        for index in range(n):
            app.send_task("noop", args=[index], queue=queue, producer=producer)


def _celery_argv(queue: str) -> list[str]:
    """The Celery worker: prefork, one process per core, on `queue`, without gossip, mingle and heartbeats."""
    cores = os.cpu_count() or 2
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench.peers.celery_app",
        "worker",
        "--pool=prefork",
        f"--concurrency={cores}",
        "--loglevel=WARNING",
        "-Q",
        queue,
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


def bench_celery(broker: Broker, env: dict[str, str], n: int, multiplier: int) -> Window:
    queue = f"celery-bench-{uuid.uuid4().hex[:6]}"
    peer_env = {**env, "BENCH_QUEUE": queue, "BENCH_CELERY_PREFETCH": str(multiplier), "PYTHONPATH": str(REPO)}
    _publish_celery(broker, queue, n)
    worker = _start(_celery_argv(queue), peer_env, f"celery-m{multiplier}.log")
    try:
        return _drain_window(broker, queue, n, 600, TreeCpu(worker.pid))
    finally:
        _stop(worker)


def _budget_window(broker: Broker, queue: str, total: int, budget_s: float, cpu: TreeCpu) -> tuple[Window, bool]:
    """`_drain_window` with a time budget: the window ends when the queue is empty or after `budget_s`.

    Tasks done in the window: messages taken from the queue minus those still unacknowledged at its
    end (the management API's count). Returns the window and whether the budget cut it short.
    """
    poll(lambda: broker.ready_and_consumers(queue)[1] > 0, timeout=120, interval=0.05, what=f"a consumer on {queue}")
    poll(lambda: broker.ready_and_consumers(queue)[0] < total, timeout=60, interval=0.005, what="the first delivery")
    start = cpu.sample()
    ready_at_start = broker.ready_and_consumers(queue)[0]
    started = time.perf_counter()
    deadline = started + budget_s
    ready = ready_at_start
    while ready > 0 and time.perf_counter() < deadline:
        time.sleep(0.05)
        ready = broker.ready_and_consumers(queue)[0]
    ended = time.perf_counter()
    end = cpu.sample()
    if ready == 0:
        poll(lambda: broker.unacked(queue) == 0, timeout=60, interval=0.5, what=f"{queue} acks")
        return Window(seconds=ended - started, tasks=ready_at_start, start=start, end=end), False
    time.sleep(5.5)  # the management API's counts are 5 s samples
    unacked = broker.unacked(queue)
    return Window(seconds=ended - started, tasks=max(0, ready_at_start - ready - unacked), start=start, end=end), True


def bench_celery_mongo(
    broker: Broker,
    env: dict[str, str],
    mongodb_uri: str,
    index_writes: Callable[[str], object],
    n: int,
    multiplier: int,
    track_started: bool,
    budget_s: float,
    by_id: bool = False,
) -> dict[str, Any]:
    """Celery prefork acks_late with its MongoDB result backend on taskq's store: tasks/s and CPU per task.

    The `celery_taskmeta` collection is created before the worker starts and gets the same write
    index as taskq's collections (`index_writes`). The run stops after `budget_s` like taskq's.
    `by_id`: the backend writes by `_id` alone (`bench.peers.celery_app.ByIdMongoBackend`).
    """
    database = f"bench_celery_{uuid.uuid4().hex[:6]}"
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, serverSelectionTimeoutMS=5000)
    client[database].create_collection("celery_taskmeta")
    indexed = index_writes(database)
    results_uri = mongodb_uri.rstrip("/") + f"/{database}"
    queue = f"celery-mongo-bench-{uuid.uuid4().hex[:6]}"
    peer_env = {
        **env,
        "BENCH_QUEUE": queue,
        "BENCH_CELERY_PREFETCH": str(multiplier),
        "BENCH_CELERY_RESULTS": results_uri,
        "BENCH_CELERY_DATABASE": database,
        "BENCH_CELERY_TRACK_STARTED": "1" if track_started else "0",
        "BENCH_CELERY_BY_ID": "1" if by_id else "0",
        "PYTHONPATH": str(REPO),
    }
    _publish_celery(broker, queue, n)
    worker = _start(_celery_argv(queue), peer_env, f"celery-mongo-m{multiplier}-started{int(track_started)}-byid{int(by_id)}.log")
    try:
        window, cut = _budget_window(broker, queue, n, budget_s, TreeCpu(worker.pid))
    finally:
        _stop(worker)
    try:
        stored = client[database]["celery_taskmeta"].estimated_document_count()
    finally:
        client.drop_database(database)
        client.close()
    broker.delete(queue)
    return {
        **window.summary(),
        "track_started": track_started,
        "writes": "replace_one by _id" if by_id else "replace_one by _id and status $ne SUCCESS (as shipped)",
        "prefetch_multiplier": multiplier,
        "partial": cut,
        "results_stored": stored,
        "write_index_tables": indexed,
    }


def bench_dramatiq(broker: Broker, env: dict[str, str], n: int) -> Window:
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
        return _drain_window(broker, queue, n, 600, TreeCpu(worker.pid))
    finally:
        _stop(worker)


def _worker_env(
    amqp_url: str, mongodb_uri: str, database: str, queue: str, pool: str = "process", prefetch: int | None = None
) -> dict[str, str]:
    """A taskq-worker's environment: the given pool with one slot per core, default prefetch unless given."""
    env = {
        **os.environ,
        "TASKQ_AMQP_URL": amqp_url,
        "TASKQ_MONGODB_URI": mongodb_uri,
        "TASKQ_DATABASE": database,
        "TASKQ_QUEUE": queue,
        "TASKQ_TASK_MODULES": "taskq.examples",
        "TASKQ_HEALTH_PORT": "0",
        "TASKQ_POOL": pool,
        "TASKQ_CONCURRENCY": str(os.cpu_count() or 2),
    }
    env.pop("TASKQ_PREFETCH", None)
    if prefetch is not None:
        env["TASKQ_PREFETCH"] = str(prefetch)
    return env


def _health_port(log_path: Path, timeout: float = 120) -> int:
    def find() -> int | None:
        for line in log_path.read_text(errors="replace").splitlines():
            if '"worker.started"' in line:
                return int(json.loads(line)["health_port"])
        return None

    return int(poll(find, timeout=timeout, interval=0.1, what="taskq-worker to start"))


def _started_fields(log_path: Path) -> dict[str, Any]:
    """The settings the worker reported at start (pool, concurrency, prefetch, consumer timeout)."""
    for line in log_path.read_text(errors="replace").splitlines():
        if '"worker.started"' in line:
            event = json.loads(line)
            return {key: event.get(key) for key in ("pool", "concurrency", "prefetch", "consumer_timeout_ms", "task_timeout_s")}
    return {}


def _recorded(port: int) -> int:
    """Outcomes the worker has recorded in the store so far (its Prometheus counter)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("taskq_tasks_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def _traced(path: Path) -> list[dict[str, Any]]:
    """The command counts the worker's processes wrote last (`bench/storetrace`: `<path>.<pid>` each), summed."""
    summed: dict[tuple[str, ...], dict[str, Any]] = {}
    for part in path.parent.glob(f"{path.name}.*"):
        if part.suffix == ".tmp":
            continue
        try:
            rows = json.loads(part.read_text())
        except (OSError, ValueError):
            continue
        for row in rows:
            key = (row["command"], row["collection"], row["shape"], row["thread"])
            entry = summed.setdefault(key, {**row, "commands": 0, "statements": 0})
            entry["commands"] += row["commands"]
            entry["statements"] += row["statements"]
    return list(summed.values())


def _trace_difference(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The commands counted between two listener snapshots."""

    def key(row: dict[str, Any]) -> tuple[str, ...]:
        return (row["command"], row["collection"], row["shape"], row["thread"])

    earlier = {key(row): row for row in before}
    rows = []
    for row in after:
        old = earlier.get(key(row), {"commands": 0, "statements": 0})
        commands, statements = row["commands"] - old["commands"], row["statements"] - old["statements"]
        if commands:
            rows.append({**row, "commands": commands, "statements": statements})
    return rows


def _outcomes(port: int) -> dict[str, float]:
    """The worker's recorded outcomes by label (a run of no-op tasks should show only `succeeded`)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        line.split(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("taskq_tasks_total{")
    }


def bench_taskq_worker(
    amqp_url: str,
    mongodb_uri: str,
    n: int,
    budget_s: float,
    index_writes: Callable[[str], object],
    pool: str = "process",
    prefetch: int | None = None,
    profile_s: int = 0,
    first_wait_s: float = 180.0,
    trace_commands: bool = False,
) -> dict[str, Any]:
    """Tasks/s and CPU per task of one taskq-worker on `n` pre-submitted no-op tasks, outcomes recorded in the store.

    Progress is read from the worker's own `/metrics` (outcomes recorded), not from the store, so
    the measurement adds no load to the store; it is read twice a second, so the worker's health
    server costs it ~nothing. With `profile_s`, py-spy samples the worker process for that long
    instead of the budget, and the collapsed stacks are summarized (the figures of such a run are
    not the benchmark's, py-spy shares the two cores). With `trace_commands`, a pymongo command
    listener in the worker (`bench/storetrace`) counts its store commands, and `commands` holds
    those sent in the measured window (the listener costs CPU: such a run's figures are not the
    benchmark's either).
    """
    database = f"bench_{uuid.uuid4().hex[:6]}"
    queue = f"taskq-bench-{uuid.uuid4().hex[:6]}"
    settings = Settings(amqp_url=amqp_url, mongodb_uri=mongodb_uri, database=database, queue=queue)
    with Client(settings) as client:
        client.submit_many({"name": "noop", "args": [i]} for i in range(n))
    index_writes(database)  # FerretDB's writes by _id scan the collection without it (taskq_dev.mongo)
    suffix = f"{'-profile' if profile_s else ''}{'-trace' if trace_commands else ''}"
    label = f"{pool}-{n}{f'-prefetch{prefetch}' if prefetch else ''}{suffix}"
    log_path = LOGS / f"taskq-worker-{label}.log"
    log_path.unlink(missing_ok=True)
    env = _worker_env(amqp_url, mongodb_uri, database, queue, pool, prefetch)
    trace_path = LOGS / "store-commands.log"  # *.log: not committed
    if trace_commands:
        for old in LOGS.glob(f"{trace_path.name}*"):
            old.unlink(missing_ok=True)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "bench" / "storetrace"), env.get("PYTHONPATH")]))
        env["TASKQ_BENCH_COMMAND_LOG"] = str(trace_path)
    worker = _start(["taskq-worker", "--log-level", "info"], env, log_path.name)
    result: dict[str, Any] = {"pool": pool, "of": n, "queue": queue}
    try:
        port = _health_port(log_path)
        result["settings"] = _started_fields(log_path)
        cpu = TreeCpu(worker.pid)
        try:
            first = poll(lambda: _recorded(port), timeout=first_wait_s, interval=0.01, what="the first taskq completion")
        except WaitTimeout:
            return {
                **result,
                "tps": 0.0,
                "completed": 0,
                "partial": True,
                "seconds": first_wait_s,
                "note": f"no outcome recorded within {first_wait_s:.0f} s (the store's first group commit did not finish)",
            }
        start = cpu.sample()
        started = time.perf_counter()
        traced_before = _traced(trace_path) if trace_commands else []
        if profile_s:
            profile_path = LOGS / "worker-profile.collapsed.txt"
            threads_before = thread_cpu(worker.pid)
            ran = profile_parent(worker.pid, profile_s, profile_path)
            done = _recorded(port)
            threads_after = thread_cpu(worker.pid)
            names = thread_names(worker.pid)
        else:
            deadline = started + budget_s
            done = first
            while time.perf_counter() < deadline and done < n:
                time.sleep(0.5)
                done = _recorded(port)
        end = cpu.sample()
        seconds = time.perf_counter() - started
        if trace_commands:
            time.sleep(0.6)  # the listener rewrites its file every 0.5 s
            result["commands"] = _trace_difference(traced_before, _traced(trace_path))
            result["traced_tasks"] = _recorded(port) - first
        result["outcomes"] = _outcomes(port)
    finally:
        _stop(worker, timeout=60)
        drop_database_quietly(mongodb_uri, database)
    window = Window(seconds=seconds, tasks=done - first, start=start, end=end)
    result.update({**window.summary(), "completed": done, "partial": done < n, "tps": window.tps})
    if profile_s:
        if ran is None or ran.returncode != 0 or not profile_path.exists():
            result["profile"] = {
                "error": "py-spy failed" if ran is not None else "py-spy not installed",
                "stderr": (ran.stderr.decode(errors="replace")[-500:] if ran else ""),
            }
        else:
            result["profile"] = summarize_collapsed(profile_path)
            tasks = max(1, done - first)
            by_thread = cpu_by_thread_name(threads_before, threads_after, names)
            result["profile"]["parent_cpu_us_per_task_by_thread"] = {
                name: {"user": round(user * 1e6 / tasks, 1), "system": round(system * 1e6 / tasks, 1)}
                for name, (user, system) in by_thread.items()
            }
            if profile_path.stat().st_size > PROFILE_MAX_BYTES:
                profile_path.unlink()
            else:
                result["profile"]["file"] = str(profile_path.relative_to(REPO))
    return result


def bench_store_ceiling(
    mongodb_uri: str, index_writes: Callable[[str], object], mix: dict[str, Any], documents: int, seconds: float
) -> dict[str, Any]:
    """`store_ceiling_tps`: the best rate of a bare pymongo loop applying a no-op task's writes (`bench/ceiling.py`).

    Tried with the worker's own batching and with bigger batches and bulks, all with the worker's
    number of concurrent writers (the figure); then, for the record, with 2 and 4 writers.
    """
    writers = int(mix.get("writers", 1))
    runs = [
        measure_ceiling(
            mongodb_uri, index_writes, mix, documents=documents, batch=batch, ops_per_bulk=bulk, writers=writers, seconds=seconds
        )
        for batch, bulk in ceiling_configurations(mix, FERRETDB_OPS_PER_BULK)
    ]
    best = max(runs, key=lambda run: run.tps)
    more = [
        measure_ceiling(
            mongodb_uri,
            index_writes,
            mix,
            documents=documents,
            batch=best.batch,
            ops_per_bulk=min(best.ops_per_bulk, 99 // n),
            writers=n,
            seconds=seconds,
        )
        for n in (2, 4)
        if n != writers
    ]
    return {
        "store_ceiling_tps": round(best.tps, 1),
        "best": best.summary(),
        "at_worker_batching": runs[0].summary(),
        "runs": [run.summary() for run in runs],
        "more_writers": [run.summary() for run in more],
        "commands_per_task": mix,
    }


def drop_database_quietly(mongodb_uri: str, database: str) -> None:
    try:
        from pymongo import MongoClient

        MongoClient(mongodb_uri, serverSelectionTimeoutMS=5000).drop_database(database)
    except Exception:  # noqa: BLE001 - clean-up of a benchmark database is best effort
        pass


class _CommandClock(CommandListener):
    """A pymongo command listener timing this process's store commands while `active` (for the latency breakdown)."""

    def __init__(self) -> None:
        self.active = False
        self.events: list[tuple[str, str, float, float]] = []  # (command, collection, started at, seconds)
        self._started: dict[int, tuple[str, str, float]] = {}

    def started(self, event: Any) -> None:
        if self.active:
            name = event.command_name
            collection = event.command.get(name)
            self._started[event.request_id] = (name, collection if isinstance(collection, str) else "", time.time())

    def succeeded(self, event: Any) -> None:
        begun = self._started.pop(event.request_id, None)
        if begun is not None:
            self.events.append((begun[0], begun[1], begun[2], event.duration_micros / 1e6))

    def failed(self, event: Any) -> None:
        self._started.pop(event.request_id, None)


def _stamp(document: dict[str, Any], name: str) -> float | None:
    value = (document.get("timestamps") or {}).get(name)
    return value.timestamp() if isinstance(value, datetime) else None


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values) * 1000, 2) if values else None


def bench_latency(
    amqp_url: str, mongodb_uri: str, samples: int, index_writes: Callable[[str], object] | None = None
) -> dict[str, Any]:
    """Idle end-to-end latency: submit one task and time until its outcome is in the store; sequentially.

    Each sample: an observer thread polls the task's state from just before the submit call, so the
    figure is submit -> outcome recorded, whether or not the submit call (which waits for the broker's
    confirm and then deletes the outbox entry) has returned by then. `after_submit_returns` keeps the
    earlier figure: the submit call, then one read. Also what each sample is made of
    (`breakdown_median_ms`, medians in ms from the submit call's start): the
    submit call's own store commands (outbox insert, task insert, outbox delete after the confirm;
    timed by a pymongo listener in this process), when the call returned, when the worker's pool
    child began the task (`timestamps.running`, stamped by the child), when the committer's flush
    began (`timestamps.succeeded`, its `utcnow()`), and when the poll saw it. The store keeps
    milliseconds, so the worker's stamps are +-1 ms.
    """
    from pymongo import monitoring

    database = f"bench_{uuid.uuid4().hex[:6]}"
    queue = f"taskq-lat-{uuid.uuid4().hex[:6]}"
    settings = Settings(amqp_url=amqp_url, mongodb_uri=mongodb_uri, database=database, queue=queue)
    clock = _CommandClock()
    monitoring.register(clock)  # before the clients below exist; idle unless `active`
    store = TaskStore(mongodb_uri, database)
    observer = TaskStore(mongodb_uri, database)
    latencies: list[float] = []
    sequential: list[float] = []
    parts: dict[str, list[float]] = {}

    def part(name: str, value: float | None) -> None:
        if value is not None:
            parts.setdefault(name, []).append(value)

    with Client(settings) as client:
        client.submit("noop")  # declares the queue; the worker then finds it
        if index_writes is not None:
            index_writes(database)
        worker = _start(
            ["taskq-worker", "--log-level", "warning"],
            _worker_env(amqp_url, mongodb_uri, database, queue),
            "taskq-worker-latency.log",
        )
        try:
            poll(lambda: store.counts_by_state(queue)["succeeded"] == 1, timeout=120, interval=0.05, what="the worker to start")
            for index in range(samples):
                clock.events.clear()
                task_id = new_task_id()
                seen_at: list[float] = []
                ready = threading.Event()

                def observe(task_id: str = task_id, seen_at: list[float] = seen_at, ready: threading.Event = ready) -> None:
                    # From the submit call's start: the task's outcome is visible in the store (claim or document).
                    ready.set()
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline:
                        if observer.states_of([task_id]).get(task_id) is TaskState.SUCCEEDED:
                            seen_at.append(time.perf_counter())
                            return
                        time.sleep(0.0005)

                watcher = threading.Thread(target=observe, name="bench-latency-observer")
                watcher.start()
                ready.wait(5)
                clock.active = True
                wall = time.time()
                started = time.perf_counter()
                client.submit("noop", args=[index], task_id=task_id)
                returned = time.perf_counter() - started
                watcher.join(35)
                clock.active = False
                if not seen_at:
                    raise WaitTimeout(f"task {task_id} did not succeed within 30 s")
                seen = seen_at[0] - started
                # The figure before this breakdown: poll the store only once the submit call has returned.
                after = time.perf_counter()
                store.states_of([task_id])
                sequential.append((returned + time.perf_counter() - after) * 1000)
                latencies.append(seen * 1000)
                document = store.get(task_id) or {}
                for name, collection, at, took in clock.events:
                    if (name, collection) in (("insert", "outbox"), ("insert", "tasks"), ("delete", "outbox")):
                        part(f"{name} {collection} ends", at + took - wall)
                        part(f"{name} {collection} takes", took)
                part("submit returns", returned)
                running, done = _stamp(document, "running"), _stamp(document, "succeeded")
                part("worker child starts the task (timestamps.running)", None if running is None else running - wall)
                part("committer flush begins (timestamps.succeeded)", None if done is None else done - wall)
                part("observer sees succeeded", seen)
                if running is not None and done is not None:
                    part("child start -> flush begins", done - running)
                if done is not None:
                    part("flush begins -> observer sees it", seen - (done - wall))
        finally:
            _stop(worker, timeout=60)
    store.close()
    observer.close()
    drop_database_quietly(mongodb_uri, database)
    ordered = sorted(latencies)
    return {
        "p50": round(statistics.median(ordered), 2),
        "p99": _p99(ordered),
        "samples": len(ordered),
        "method": (
            "submit start -> the outcome visible in the store, seen by an observer thread polling the task's state "
            "(its own store client, 0.5 ms between reads) from before the submit call"
        ),
        "after_submit_returns": {
            "p50": round(statistics.median(sequential), 2),
            "p99": _p99(sorted(sequential)),
            "method": "the earlier method: the submit call, then one read of the state once it has returned",
        },
        "breakdown_median_ms": {name: _median(values) for name, values in parts.items()},
    }


def _p99(ordered: list[float]) -> float:
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2)


STATIC_NOTES = [
    "Store: on FerretDB the committer checks each task's state with one find_one by _id (an $in filter would scan the "
    "collection) and then writes the batch in bulks of 4 (taskq.store.mongo), so a task costs about 1.25 store round "
    "trips however large the group commit; FerretDB's own cost per write (~388 updates/s from one bare pymongo thread "
    "in bulks of 4, measured on this machine) is the ceiling the worker's rate sits under. The store's CPU is not in any "
    "worker's figure.",
    "pika: the committer hands each batch's acks to the connection thread with add_callback_threadsafe, and every "
    "process_data_events(time_limit=...) slice adds a timer; pika keeps up to 1,024 cancelled timers in its heap "
    "before compacting it, so "
    "_Timer.call_later's heappush (Python-level comparisons) shows up among the connection thread's samples.",
    "Pipe I/O and pickling (slot threads in the parent, the loop in each child) are a small part: one request and one "
    "report per task over a multiprocessing pipe.",
    "The peers record nothing: Celery and Dramatiq run without a result store, so their CPU per task has no store "
    "client in it, while taskq's committer thread (pymongo) is the largest part of taskq's.",
]


def _notes(process: dict[str, Any], wide: dict[str, Any] | None, profile: dict[str, Any], cpu: dict[str, float]) -> list[str]:
    """What the run shows, in words: where the worker process's CPU goes per task, and the notes that hold for any run."""
    notes: list[str] = []
    tree, parent = process.get("cpu_us_per_task", 0.0), process.get("parent_cpu_us_per_task", 0.0)
    notes.append(
        f"Process pool: {tree:.0f} us of CPU per task for the whole worker, of which {parent:.0f} us in the worker process "
        f"(the parent) and {tree - parent:.0f} us in the forkserver and the pool's children "
        f"(thread pool: {cpu['taskq_thread']:.0f} us)."
    )
    found = profile.get("profile") if isinstance(profile.get("profile"), dict) else None
    if found and found.get("parent_cpu_us_per_task_by_thread"):
        threads = found["parent_cpu_us_per_task_by_thread"]
        parts = [
            f"{name} {v['user'] + v['system']:.0f} us (sys {v['system']:.0f})"
            for name, v in threads.items()
            if v["user"] + v["system"] >= 1
        ]
        notes.append(
            f"Parent CPU per task by thread (py-spy run, {profile.get('parent_cpu_us_per_task', 0):.0f} us/task with the sampler "
            f"running): {', '.join(parts)}. MainThread is the connection stage (pika: deliveries, intake validation, acks); "
            "taskq-committer is the group commit (pymongo, outcome decisions, logging the outcome); taskq-pool-slot-N are the "
            "threads that talk to the children over pipes."
        )
    if found and found.get("share_by_category"):
        shares = ", ".join(f"{name} {share:.0%}" for name, share in list(found["share_by_category"].items())[:8])
        notes.append(f"Parent samples holding the GIL (Python-level CPU), by what the leaf-most frame is: {shares}.")
    if wide is not None:
        notes.append(
            f"With prefetch {wide.get('settings', {}).get('prefetch')} (bigger group commits, fewer acks and wake-ups): "
            f"{wide.get('tps', 0):.0f} tasks/s and {wide.get('cpu_us_per_task', 0):.0f} us/task "
            f"against {process.get('tps', 0):.0f} and {tree:.0f} at the default prefetch."
        )
    return notes + STATIC_NOTES


TARGETS: dict[str, tuple[str, float]] = {
    "worker_vs_store_ceiling": ("at_least", 0.8),
    "worker_vs_celery_mongo": ("at_least", 2.0),
    "latency_p50_ms": ("at_most", 15.0),
    "submit_vs_raw": ("at_least", 0.8),
    "worker_vs_celery": ("at_least", 1.5),
    "worker_vs_dramatiq": ("at_least", 1.0),
    "cpu_taskq_process_vs_celery": ("at_most", 0.67),
    "cpu_taskq_thread_vs_celery": ("at_most", 0.67),
    "cpu_taskq_process_vs_dramatiq": ("at_most", 1.0),
    "cpu_taskq_thread_vs_dramatiq": ("at_most", 1.0),
}


def _with_targets(values: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    """Each ratio with its target (`at_least` or `at_most`) and whether it is met; ratios without a target as they are."""
    block: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        if name in TARGETS:
            sense, target = TARGETS[name]
            met = None if value is None else (value >= target if sense == "at_least" else value <= target)
            block[name] = {"value": value, sense: target, "met": met}
        else:
            block[name] = {"value": value}
    return block


def _new_notes(
    ceiling: dict[str, Any], celery_mongo: dict[str, dict[str, Any]], store_submit: dict[str, Any], latency: dict[str, Any]
) -> list[str]:
    """The store ceiling, Celery on the store, the submit path's store writes and the idle latency, in words."""
    mix = ceiling["commands_per_task"]
    listed = "; ".join(
        f"{key}: {entry['commands_per_task']} commands/task, {entry['statements_per_task']} statements/task, "
        f"{entry['statements_per_command']} per command"
        for key, entry in mix["per_task"].items()
        if (entry["commands_per_task"] or 0) >= 0.005
    )
    best = ceiling["best"]
    more_writers = ", ".join(f"{run['writers']}: {run['tps']}/s" for run in ceiling["more_writers"])
    notes = [
        f"Store commands of a no-op task (traced in a separate run by a pymongo listener in the worker, bench/storetrace): "
        f"{listed}; {mix['round_trips_per_task']} store round trips per task; writers: {', '.join(mix['writer_threads'])}. "
        "Starts are lazy (written only for a task still running 5 ms after it began), so a no-op task costs its outcome "
        "claim insert and its document upsert by _id; a start, when written, adds a fence read by _id, an update and a "
        "claim read by _id.",
        f"store_ceiling_tps {ceiling['store_ceiling_tps']}: a bare pymongo loop applying those writes with {best['writers']} "
        f"writer(s), {best['batch']} tasks per claim insert and {best['ops_per_bulk']} updates per command (the best of "
        f"{len(ceiling['runs'])} batchings; at the worker's own batching "
        f"{ceiling['at_worker_batching']['batch']} per insert: {ceiling['at_worker_batching']['tps']}/s); with more "
        f"writers: {more_writers}.",
    ]
    rates = ", ".join(f"{key} {run['tps']}/s" for key, run in celery_mongo.items())
    notes.append(
        f"Celery with its MongoDB result backend on the same FerretDB (celery_taskmeta with taskq's write index): {rates}. "
        "As shipped, Celery 5.7 writes each state with replace_one({_id, status: {$ne: SUCCESS}}), which FerretDB 1.x runs "
        "as a scan of the collection; by_id is the same backend writing by _id alone (bench/peers/celery_app.py). "
        "celery_mongo_tps is the faster of the two with task_track_started on."
    )
    seconds = store_submit["seconds"]
    notes.append(
        f"Submit: the store's writes of submit_many alone (a bare pymongo loop, no broker) reach {store_submit['tps']} tasks/s "
        f"(of its time: outbox insert {seconds['insert outbox']} s, task insert {seconds['insert tasks']} s, outbox delete "
        f"{seconds['delete outbox $in']} s for {store_submit['tasks']} tasks), so submit_many is bounded by the store's three "
        "writes per task (outbox entry, queued document, outbox delete after the confirm), not by publishing."
    )
    parts = latency.get("breakdown_median_ms", {})
    notes.append(
        "Idle latency, medians from the submit call's start (ms): "
        + ", ".join(f"{name} {value}" for name, value in parts.items())
        + f"; a bare publish+confirm on an idle queue without consumers: {latency.get('raw_publish_confirm_ms')}."
    )
    return notes


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000, help="no-op tasks per consumer run (default 20000)")
    parser.add_argument("--submit-tasks", type=int, default=10_000, help="tasks per submit-rate run")
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--small-tasks", type=int, default=1000, help="tasks of the extra taskq run on a small collection")
    parser.add_argument("--worker-budget", type=float, default=60.0, help="seconds a taskq worker run may take at most")
    parser.add_argument(
        "--profile-seconds", type=int, default=20, help="py-spy sample of the process pool's worker process (0: skip)"
    )
    parser.add_argument(
        "--wide-prefetch", type=int, default=64, help="prefetch of an extra process-pool run, bigger group commits (0: skip)"
    )
    parser.add_argument("--ceiling-seconds", type=float, default=15.0, help="seconds of each store-ceiling configuration")
    parser.add_argument("--celery-mongo-budget", type=float, default=60.0, help="seconds a Celery+MongoDB run may take at most")
    parser.add_argument(
        "--celery-mongo-tasks", type=int, default=8000, help="tasks per Celery+MongoDB run (more than its budget does)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file (default bench/results/worker.json)")
    args = parser.parse_args()
    LOGS.mkdir(parents=True, exist_ok=True)
    load_at_start = os.getloadavg()
    services: ServiceSet = session_services()
    try:
        rabbitmq = services.ensure_rabbitmq()
        mongo = services.ensure_mongo()
        env = {**os.environ, "BENCH_AMQP_URL": rabbitmq.amqp_url}
        results: dict[str, Any] = {}
        taskq_runs: dict[str, dict[str, Any]] = {}
        for pool in ("process", "thread"):
            print(f"taskq worker, {pool} pool, {args.tasks} tasks ...", flush=True)
            run = bench_taskq_worker(rabbitmq.amqp_url, mongo.uri, args.tasks, args.worker_budget, mongo.index_writes, pool=pool)
            delete_queues(rabbitmq, run.pop("queue"))
            print(f"  {run}", flush=True)
            taskq_runs[pool] = run
        wide: dict[str, Any] | None = None
        if args.wide_prefetch:
            # The default prefetch (2 per slot) bounds a group commit to that many outcomes; a wider
            # prefetch shows how much of the rate is the store's per-write cost.
            print(f"taskq worker, process pool, prefetch {args.wide_prefetch}, {args.tasks} tasks ...", flush=True)
            wide = bench_taskq_worker(
                rabbitmq.amqp_url, mongo.uri, args.tasks, args.worker_budget, mongo.index_writes, prefetch=args.wide_prefetch
            )
            delete_queues(rabbitmq, wide.pop("queue"))
            print(f"  {wide}", flush=True)
        # The store's cost per write grows with its collection on FerretDB; the same run on a
        # small collection shows what the worker does when the store is less of a limit.
        print(f"taskq worker, process pool, {args.small_tasks} tasks ...", flush=True)
        worker_small = bench_taskq_worker(rabbitmq.amqp_url, mongo.uri, args.small_tasks, args.worker_budget, mongo.index_writes)
        delete_queues(rabbitmq, worker_small.pop("queue"))
        print(f"  {worker_small}", flush=True)
        print(f"taskq worker, process pool, store commands traced, {args.tasks} tasks ...", flush=True)
        traced = bench_taskq_worker(
            rabbitmq.amqp_url, mongo.uri, args.tasks, min(20.0, args.worker_budget), mongo.index_writes, trace_commands=True
        )
        delete_queues(rabbitmq, traced.pop("queue"))
        mix = commands_per_task(traced.get("commands", []), int(traced.get("traced_tasks", 0)))
        print(f"  {json.dumps(mix)}", flush=True)
        ceiling = bench_store_ceiling(mongo.uri, mongo.index_writes, mix, args.tasks, args.ceiling_seconds)
        print(f"  store ceiling: {ceiling['store_ceiling_tps']} ({ceiling['best']})", flush=True)
        profile: dict[str, Any] = {"skipped": "py-spy not installed" if py_spy() is None else "--profile-seconds 0"}
        if args.profile_seconds and py_spy() is not None:
            print(f"taskq worker, process pool, py-spy on the worker process for {args.profile_seconds} s ...", flush=True)
            profiled = bench_taskq_worker(
                rabbitmq.amqp_url, mongo.uri, args.tasks, args.worker_budget, mongo.index_writes, profile_s=args.profile_seconds
            )
            delete_queues(rabbitmq, profiled.pop("queue"))
            profile = {
                key: profiled.get(key)
                for key in ("profile", "tps", "tasks_in_window", "seconds", "cpu_us_per_task", "parent_cpu_us_per_task")
            }
            print(f"  {profile}", flush=True)
        broker = Broker(rabbitmq.amqp_url, rabbitmq.management_base, rabbitmq.management_auth, rabbitmq.vhost)
        celery: dict[str, Window] = {}
        for multiplier in (1, 4):
            print(f"celery prefork, prefetch multiplier {multiplier} ...", flush=True)
            celery[f"multiplier_{multiplier}"] = bench_celery(broker, env, args.tasks, multiplier)
            print(f"  {celery[f'multiplier_{multiplier}'].summary()}", flush=True)
        best_multiplier = int(max(celery, key=lambda key: celery[key].tps).split("_")[1])
        celery_mongo: dict[str, dict[str, Any]] = {}
        for by_id in (False, True):
            for track_started in (True, False):
                key = f"{'by_id' if by_id else 'as_shipped'}_track_started_{'on' if track_started else 'off'}"
                print(f"celery prefork + MongoDB results, {key}, multiplier {best_multiplier} ...", flush=True)
                celery_mongo[key] = bench_celery_mongo(
                    broker,
                    env,
                    mongo.uri,
                    mongo.index_writes,
                    args.celery_mongo_tasks,
                    best_multiplier,
                    track_started,
                    args.celery_mongo_budget,
                    by_id,
                )
                print(f"  {celery_mongo[key]}", flush=True)
        print("dramatiq ...", flush=True)
        dramatiq = bench_dramatiq(broker, env, args.tasks)
        print(f"  {dramatiq.summary()}", flush=True)
        submit_queue = f"taskq-submit-{uuid.uuid4().hex[:6]}"
        submit_db = f"bench_{uuid.uuid4().hex[:6]}"
        print("submit_many vs raw pika ...", flush=True)
        submit_tps = measure_submit_many(
            rabbitmq.amqp_url, mongo.uri, submit_db, submit_queue, args.submit_tasks, mongo.index_writes
        )
        raw_tps = measure_raw_pika(rabbitmq.amqp_url, submit_queue + "-raw", args.submit_tasks)
        store_submit = measure_store_submit(mongo.uri, args.submit_tasks, mongo.index_writes)
        drop_database_quietly(mongo.uri, submit_db)
        print(f"  {submit_tps:.0f} vs {raw_tps:.0f}; the store's writes alone {store_submit}", flush=True)
        print("idle latency ...", flush=True)
        latency = bench_latency(rabbitmq.amqp_url, mongo.uri, args.latency_samples, mongo.index_writes)
        latency["raw_publish_confirm_ms"] = measure_raw_confirm_ms(rabbitmq.amqp_url, submit_queue + "-confirm")
        print(f"  {latency}", flush=True)
        broker.close()
        # Celery with results on the store, recording starts as taskq does: the faster of its two write filters.
        started_on = {key: run for key, run in celery_mongo.items() if run["track_started"]}
        celery_mongo_key = max(started_on, key=lambda key: started_on[key]["tps"])
        celery_mongo_tps = started_on[celery_mongo_key]["tps"]
        best_key = max(celery, key=lambda key: celery[key].tps)
        best_celery = celery[best_key]
        process, thread = taskq_runs["process"], taskq_runs["thread"]
        cpu = {
            "taskq_thread": thread.get("cpu_us_per_task", 0.0),
            "taskq_process": process.get("cpu_us_per_task", 0.0),
            "celery": round(best_celery.cpu_us_per_task, 1),
            "dramatiq": round(dramatiq.cpu_us_per_task, 1),
        }
        results = {
            "worker_tps": round(process["tps"], 1),
            "taskq_process_tps": round(process["tps"], 1),
            "taskq_thread_tps": round(thread["tps"], 1),
            "cpu_us_per_task": cpu,
            "worker_run": {**process, "tps": round(process["tps"], 1)},
            "taskq_thread_run": {**thread, "tps": round(thread["tps"], 1)},
            "taskq_process_wide_prefetch_run": None if wide is None else {**wide, "tps": round(wide["tps"], 1)},
            "worker_small_collection_run": {**worker_small, "tps": round(worker_small["tps"], 1)},
            "profile": profile,
            "store_ceiling_tps": ceiling["store_ceiling_tps"],
            "store_ceiling": ceiling,
            "store_commands_traced_run": {key: traced.get(key) for key in ("tps", "seconds", "traced_tasks", "settings")},
            "celery_mongo_tps": celery_mongo_tps,
            "celery_mongo": {
                "figure": celery_mongo_key,
                "tps_by_setting": {key: run["tps"] for key, run in celery_mongo.items()},
                "runs": celery_mongo,
            },
            "celery_tps": round(best_celery.tps, 1),
            "celery_best": best_key,
            "celery_by_prefetch_multiplier": {key: round(window.tps, 1) for key, window in celery.items()},
            "celery_runs": {key: window.summary() for key, window in celery.items()},
            "dramatiq_tps": round(dramatiq.tps, 1),
            "dramatiq_run": dramatiq.summary(),
            "submit_tps": round(submit_tps, 1),
            "raw_submit_tps": round(raw_tps, 1),
            "latency_ms": latency,
            "ratios": _with_targets(
                {
                    "worker_vs_store_ceiling": _ratio(process["tps"], ceiling["store_ceiling_tps"]),
                    "worker_vs_celery_mongo": _ratio(process["tps"], celery_mongo_tps),
                    "latency_p50_ms": latency["p50"],
                    "worker_vs_celery": _ratio(process["tps"], best_celery.tps),
                    "worker_vs_dramatiq": _ratio(process["tps"], dramatiq.tps),
                    "taskq_thread_vs_celery": _ratio(thread["tps"], best_celery.tps),
                    "cpu_taskq_process_vs_celery": _ratio(cpu["taskq_process"], cpu["celery"]),
                    "cpu_taskq_thread_vs_celery": _ratio(cpu["taskq_thread"], cpu["celery"]),
                    "cpu_taskq_process_vs_dramatiq": _ratio(cpu["taskq_process"], cpu["dramatiq"]),
                    "cpu_taskq_thread_vs_dramatiq": _ratio(cpu["taskq_thread"], cpu["dramatiq"]),
                    "submit_vs_raw": _ratio(submit_tps, raw_tps),
                    "submit_vs_store_submit_ceiling": _ratio(submit_tps, store_submit["tps"]),
                }
            ),
            "store_submit_ceiling": store_submit,
            "notes": _notes(process, wide, profile, cpu) + _new_notes(ceiling, celery_mongo, store_submit, latency),
            "cpu_method": (
                "psutil over the worker's process tree (the process and children(recursive=True)): user+system plus "
                "children_user+children_system (descendants that exited and were reaped) summed at the start and at the end "
                "of the measured window; the difference divided by the tasks done in the window (taskq: outcomes recorded, "
                "from /metrics; Celery/Dramatiq: messages taken from the queue). Start-up is outside the window; the broker's "
                "and the store's CPU are not included."
            ),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "store": getattr(mongo, "kind", "external"),
                "broker": "external" if rabbitmq.external else "private rabbitmq-server",
                "broker_version": rabbitmq.version,
                "load_average_at_start": load_at_start,
                "load_average_at_end": os.getloadavg(),
            },
            "tasks_per_run": args.tasks,
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results, indent=2))
    finally:
        services.close()


if __name__ == "__main__":
    main()
