"""`make demo-local`: taskq end to end on this machine, without Kubernetes.

Brings up the detached services (`taskq-dev services`: RabbitMQ and the store, or the servers named
by `AMQP_URL` / `MONGODB_URI`), starts 3 `taskq-worker` processes on the example tasks, submits
2000 tasks with a progress bar, shows live counts by state until every task is final, prints a
summary of states and throughput, stops the workers and leaves the services running.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from taskq.client import Client
from taskq.core.message import utcnow
from taskq.core.states import FINAL_STATES, TaskState
from taskq.errors import QueueNotFound, StoreUnavailable, TaskqError
from taskq.settings import Settings
from taskq_dev import paths
from taskq_dev.processes import stop_processes
from taskq_dev.services import cli_services

QUEUE = "demo"
DATABASE = "taskq_demo"
WORKERS = 3
TASKS = 2000
SETTLE_TIMEOUT_S = 600.0
STORE_POLL_S = 3.0
STOP_TIMEOUT_S = 40.0
console = Console()


@dataclass
class WorkerProcess:
    """One `taskq-worker` subprocess of the demo and where its JSON log goes."""

    process: subprocess.Popen[bytes]
    log_path: Path


def demo_tasks(count: int, seed: int = 7) -> Iterator[dict[str, Any]]:
    """A mix of the example tasks: mostly quick ones, some sleeping or CPU-bound, a few that fail."""
    rng = random.Random(seed)
    for i in range(count):
        roll = rng.random()
        if roll < 0.55:
            yield {"name": "echo", "args": [i], "kwargs": {"demo": True}}
        elif roll < 0.80:
            yield {"name": "sleep", "kwargs": {"seconds": round(rng.uniform(0.005, 0.05), 3)}}
        elif roll < 0.97:
            yield {"name": "cpu", "kwargs": {"n": rng.randint(5_000, 50_000)}, "priority": rng.randint(0, 9)}
        else:
            yield {"name": "fail", "kwargs": {"message": f"demo failure {i}"}, "max_retries": 1}


def start_workers(settings: Settings, count: int, log_dir: Path) -> list[WorkerProcess]:
    env = {
        **os.environ,
        "TASKQ_AMQP_URL": settings.amqp_url,
        "TASKQ_MONGODB_URI": settings.mongodb_uri,
        "TASKQ_DATABASE": settings.database,
        "TASKQ_QUEUE": settings.queue,
        "TASKQ_TASK_MODULES": "taskq.examples",
        "TASKQ_HEALTH_PORT": "0",
        "TASKQ_RETRY_INITIAL": "0.2",
        "TASKQ_RETRY_MAX": "1",
        "TASKQ_GRACE_SECONDS": "20",
    }
    workers = []
    for n in range(1, count + 1):
        log_path = log_dir / f"worker-{n}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                ["taskq-worker"], env={**env, "TASKQ_WORKER_ID": f"demo-worker-{n}"}, stdout=log, stderr=subprocess.STDOUT
            )
        workers.append(WorkerProcess(process, log_path))
    return workers


def stop_workers(workers: list[WorkerProcess]) -> list[int | None]:
    """SIGTERM every worker, wait for the drain (bounded), SIGKILL what is left; exit codes."""
    return stop_processes([worker.process for worker in workers], STOP_TIMEOUT_S)


@dataclass
class LiveFigures:
    """What the live view shows: cheap broker and heartbeat figures every tick, store counts now and then."""

    ready: int = 0
    inflight: int = 0
    processed: int = 0
    counts: dict[str, int] | None = None


def live_table(figures: LiveFigures, elapsed: float, total: int) -> Table:
    table = Table(title=f"queue {QUEUE!r}: {elapsed:5.1f} s")
    for column in ("ready", "in flight", "processed"):
        table.add_column(column, justify="right")
    counts = figures.counts or {}
    for state in TaskState:
        table.add_column(state.value, justify="right")
    table.add_row(
        str(figures.ready), str(figures.inflight), str(figures.processed), *(str(counts.get(s.value, 0)) for s in TaskState)
    )
    final = sum(counts.get(state.value, 0) for state in FINAL_STATES)
    table.caption = (
        f"{final}/{total} final. ready: broker; in flight, processed: worker heartbeats; "
        f"states: the store, every {STORE_POLL_S:.0f} s"
    )
    return table


def wait_until_final(client: Client, total: int, workers: list[WorkerProcess]) -> tuple[dict[str, int], float]:
    """Live figures until every task is final (or the timeout, or all workers died).

    Counting states is an aggregation over every task document, which a FerretDB store pays for
    dearly, so it runs every few seconds; the ready count (a passive declare) and the workers'
    heartbeats (in flight, processed) are cheap and refresh each tick.
    """
    started = time.monotonic()
    figures = LiveFigures()
    next_count = started
    with Live(live_table(figures, 0.0, total), console=console, refresh_per_second=4) as live:
        while time.monotonic() - started < SETTLE_TIMEOUT_S:
            try:
                figures.ready = client.queue_depth(QUEUE)
                beats = client.store.live_workers([QUEUE], since=utcnow() - timedelta(seconds=10))
                figures.inflight = sum(int(b.get("inflight", 0)) for b in beats)
                figures.processed = sum(int(b.get("processed", 0)) for b in beats)
                if time.monotonic() >= next_count:
                    figures.counts = client.store.counts_by_state(QUEUE)
                    next_count = time.monotonic() + STORE_POLL_S
            except StoreUnavailable:  # a slow store: keep the last figures, ask again next tick
                pass
            live.update(live_table(figures, time.monotonic() - started, total))
            if figures.counts and sum(figures.counts[s.value] for s in FINAL_STATES) >= total:
                break
            if all(w.process.poll() is not None for w in workers):
                console.print("[red]every worker exited; see the worker logs[/red]")
                break
            time.sleep(0.5)
    return figures.counts or {}, time.monotonic() - started


def processing_rate(client: Client) -> float:
    """Finished tasks per second between the first start and the last finish recorded in the store."""
    docs = client.store.tasks.find({"queue": QUEUE}, {"timestamps": 1})
    starts, ends = [], []
    for doc in docs:
        stamps = doc.get("timestamps") or {}
        if stamps.get("running"):
            starts.append(stamps["running"])
        finished = [stamps[s.value] for s in FINAL_STATES if stamps.get(s.value)]
        if finished:
            ends.append(max(finished))
    if not starts or not ends:
        return 0.0
    span = (max(ends) - min(starts)).total_seconds()
    return len(ends) / span if span > 0 else 0.0


def run(tasks: int, workers_count: int) -> int:
    console.rule("taskq local demo")
    services = cli_services()
    with console.status("starting RabbitMQ and the store (first run builds/installs what is missing)"):
        rabbitmq = services.ensure_rabbitmq()
        mongo = services.ensure_mongo()
        services.save()
    settings = Settings(amqp_url=rabbitmq.amqp_url, mongodb_uri=mongo.uri, database=DATABASE, queue=QUEUE)
    log_dir = paths.state_dir("demo")
    with Client(settings) as client:
        client.store.ensure_indexes()
        try:
            client.purge(QUEUE)  # a clean slate: counts below are this run's
        except QueueNotFound:
            pass
        workers = start_workers(settings, workers_count, log_dir)
        console.print(f"started {workers_count} workers (logs in {log_dir})")
        try:
            columns = (TextColumn("submitting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            submit_started = time.perf_counter()
            with Progress(*columns, console=console) as bar:
                job = bar.add_task("submit", total=tasks)
                receipt = client.submit_many(demo_tasks(tasks), progress=lambda n: bar.advance(job, n))
            submit_seconds = time.perf_counter() - submit_started
            counts, settle_seconds = wait_until_final(client, tasks, workers)
            rate = processing_rate(client)
        finally:
            codes = stop_workers(workers)
    summary = Table(title="summary", show_header=False)
    summary.add_row("tasks submitted", f"{len(receipt.ids)} in {submit_seconds:.2f} s ({len(receipt.ids) / submit_seconds:,.0f} tasks/s)")
    for state in TaskState:
        summary.add_row(f"  {state.value}", str(counts.get(state.value, 0)))
    summary.add_row("processing", f"{rate:,.0f} tasks/s with {workers_count} workers")
    summary.add_row("all final after", f"{settle_seconds:.1f} s")
    summary.add_row("worker exit codes", ", ".join(str(c) for c in codes))
    console.print(summary)
    console.print(
        "services are still running: `eval \"$(taskq-dev services env)\"` then `taskq queue demo`, "
        "`taskq list --queue demo --state dead`; stop them with `taskq-dev services down`."
    )
    final = sum(counts.get(s.value, 0) for s in FINAL_STATES)
    return 0 if final == tasks and all(c == 0 for c in codes) else 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="demo-local", description=__doc__)
    parser.add_argument("--tasks", type=int, default=TASKS)
    parser.add_argument("--workers", type=int, default=WORKERS)
    options = parser.parse_args(argv)
    try:
        code = run(options.tasks, options.workers)
    except TaskqError as exc:  # services or the store went away: one line, not a traceback
        console.print(f"[red]demo failed:[/red] {exc}", highlight=False)
        code = 3
    sys.exit(code)


if __name__ == "__main__":
    main()
