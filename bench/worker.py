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
import json
import os
import platform
import statistics
import subprocess
import sys
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

from cpu import CpuSample, TreeCpu, cpu_by_thread_name, profile_parent, py_spy, summarize_collapsed, thread_cpu, thread_names  # noqa: E402  (bench/ is not a package)
from submit import measure_raw_pika, measure_submit_many  # noqa: E402

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


def bench_celery(broker: Broker, env: dict[str, str], n: int, multiplier: int) -> Window:
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
        [
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
        ],
        peer_env,
        f"celery-m{multiplier}.log",
    )
    try:
        return _drain_window(broker, queue, n, 600, TreeCpu(worker.pid))
    finally:
        _stop(worker)


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
) -> dict[str, Any]:
    """Tasks/s and CPU per task of one taskq-worker on `n` pre-submitted no-op tasks, outcomes recorded in the store.

    Progress is read from the worker's own `/metrics` (outcomes recorded), not from the store, so
    the measurement adds no load to the store; it is read twice a second, so the worker's health
    server costs it ~nothing. With `profile_s`, py-spy samples the worker process for that long
    instead of the budget, and the collapsed stacks are summarized (the figures of such a run are
    not the benchmark's, py-spy shares the two cores).
    """
    database = f"bench_{uuid.uuid4().hex[:6]}"
    queue = f"taskq-bench-{uuid.uuid4().hex[:6]}"
    settings = Settings(amqp_url=amqp_url, mongodb_uri=mongodb_uri, database=database, queue=queue)
    with Client(settings) as client:
        client.submit_many({"name": "noop", "args": [i]} for i in range(n))
    index_writes(database)  # FerretDB's writes by _id scan the collection without it (taskq_dev.mongo)
    label = f"{pool}-{n}{f'-prefetch{prefetch}' if prefetch else ''}{'-profile' if profile_s else ''}"
    log_path = LOGS / f"taskq-worker-{label}.log"
    log_path.unlink(missing_ok=True)
    worker = _start(
        ["taskq-worker", "--log-level", "info"],
        _worker_env(amqp_url, mongodb_uri, database, queue, pool, prefetch),
        log_path.name,
    )
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
        worker = _start(
            ["taskq-worker", "--log-level", "warning"],
            _worker_env(amqp_url, mongodb_uri, database, queue),
            "taskq-worker-latency.log",
        )
        try:
            poll(lambda: store.counts_by_state(queue)["succeeded"] == 1, timeout=120, interval=0.05, what="the worker to start")
            for index in range(samples):
                started = time.perf_counter()
                task_id = client.submit("noop", args=[index])
                poll(
                    lambda task_id=task_id: store.states_of([task_id]).get(task_id) is TaskState.SUCCEEDED,
                    timeout=30,
                    interval=0.001,
                    what="a task to succeed",
                )
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
        print("dramatiq ...", flush=True)
        dramatiq = bench_dramatiq(broker, env, args.tasks)
        print(f"  {dramatiq.summary()}", flush=True)
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
            "celery_tps": round(best_celery.tps, 1),
            "celery_best": best_key,
            "celery_by_prefetch_multiplier": {key: round(window.tps, 1) for key, window in celery.items()},
            "celery_runs": {key: window.summary() for key, window in celery.items()},
            "dramatiq_tps": round(dramatiq.tps, 1),
            "dramatiq_run": dramatiq.summary(),
            "submit_tps": round(submit_tps, 1),
            "raw_submit_tps": round(raw_tps, 1),
            "latency_ms": latency,
            "ratios": {
                "worker_vs_celery": _ratio(process["tps"], best_celery.tps),
                "worker_vs_dramatiq": _ratio(process["tps"], dramatiq.tps),
                "taskq_thread_vs_celery": _ratio(thread["tps"], best_celery.tps),
                "cpu_taskq_process_vs_celery": _ratio(cpu["taskq_process"], cpu["celery"]),
                "cpu_taskq_thread_vs_celery": _ratio(cpu["taskq_thread"], cpu["celery"]),
                "cpu_taskq_process_vs_dramatiq": _ratio(cpu["taskq_process"], cpu["dramatiq"]),
                "cpu_taskq_thread_vs_dramatiq": _ratio(cpu["taskq_thread"], cpu["dramatiq"]),
                "submit_vs_raw": _ratio(submit_tps, raw_tps),
            },
            "targets": {
                "worker_vs_celery": 1.5,
                "worker_vs_dramatiq": 1.0,
                "cpu_vs_celery_at_most": 0.67,
                "cpu_vs_dramatiq_at_most": 1.0,
                "submit_vs_raw": 0.8,
                "latency_p50_ms": 15,
            },
            "notes": _notes(process, wide, profile, cpu),
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
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results, indent=2))
    finally:
        services.close()


if __name__ == "__main__":
    main()
