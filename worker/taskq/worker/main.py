"""`taskq-worker`: the command that runs a worker process (console script in pyproject).

Wires the stages together: settings from `TASKQ_*` (command-line flags override them), task modules
imported into the registry, the pool (`taskq.worker.pools`), the committer, the connection stage
(`Consumer`) on the main thread, the heartbeat and the health server, all under one `Supervisor`;
SIGTERM/SIGINT start the graceful drain. Exit status: 0 after a clean drain, 1 when outcomes could
not be flushed to the store, 2 for a configuration error, 3 when a stage failed (see
`taskq.worker.supervisor`).
"""

from __future__ import annotations

import argparse
import queue
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import cast

from taskq.core.outcomes import Decision
from taskq.errors import InvalidStoreURI, TaskqError, redact_url
from taskq.registry import import_task_modules, lookup, registered_names
from taskq.settings import Settings
from taskq.store.mongo import TaskStore
from taskq.worker.committer import Committer, InboxItem
from taskq.worker.consumer import Consumer
from taskq.worker.health import HealthServer, WorkerMetrics
from taskq.worker.heartbeat import Heartbeat
from taskq.worker.logs import JsonLog
from taskq.worker.pools import PoolEvent, make_pool
from taskq.worker.supervisor import Supervisor

LIVENESS_STALL_S = 30.0
FATAL_DRAIN_S = 2.0
EXIT_STAGE_FAILED = 3


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="taskq-worker",
        description="Consume a taskq queue and run registered tasks. Settings come from TASKQ_* variables; flags override them.",
    )
    parser.add_argument("modules", nargs="*", help="task modules to import (added to TASKQ_TASK_MODULES)")
    parser.add_argument("--queue", help="queue to consume (TASKQ_QUEUE)")
    parser.add_argument("--concurrency", type=int, help="attempts run at once: pool size (TASKQ_CONCURRENCY)")
    parser.add_argument("--pool", choices=["process", "thread", "asyncio"], help="where tasks run (TASKQ_POOL, default process)")
    parser.add_argument("--prefetch", type=int, help="unacked messages held at once (TASKQ_PREFETCH)")
    parser.add_argument(
        "--health-port", type=int, help="port of /livez, /readyz, /metrics; 0 = any free port (TASKQ_HEALTH_PORT)"
    )
    parser.add_argument("--grace-seconds", type=float, help="SIGTERM drain budget (TASKQ_GRACE_SECONDS)")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="lowest level logged (default info)"
    )
    return parser.parse_args(argv)


def load_settings(args: argparse.Namespace) -> Settings:
    overrides = {
        key: value
        for key, value in {
            "queue": args.queue,
            "concurrency": args.concurrency,
            "pool": args.pool,
            "prefetch": args.prefetch,
            "health_port": args.health_port,
            "grace_seconds": args.grace_seconds,
        }.items()
        if value is not None
    }
    return Settings(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings(args)
    except ValueError as exc:
        print(f"taskq-worker: invalid settings: {exc}", file=sys.stderr)
        return 2
    log = JsonLog(worker=settings.worker_id, level=args.log_level)
    modules = list(dict.fromkeys([*args.modules, *settings.task_module_list()]))
    settings = settings.model_copy(update={"task_modules": ",".join(modules)})  # the pool's children import them too
    try:
        import_task_modules(modules)
    except TaskqError as exc:
        log.event("worker.config_error", "error", error=str(exc))
        return 2
    if not registered_names():
        log.event(
            "worker.config_error",
            "error",
            error="no tasks registered: name task modules on the command line or in TASKQ_TASK_MODULES",
        )
        return 2
    return run(settings, log)


def run(settings: Settings, log: JsonLog) -> int:
    """Run the worker until SIGTERM/SIGINT or a stage failure; return the exit status."""
    warn_capped_tasks(settings, log)
    supervisor = Supervisor(log)
    try:
        store = TaskStore(settings.mongodb_uri, settings.database)
    except InvalidStoreURI as exc:
        log.event("worker.config_error", "error", error=str(exc))
        return 2
    try:
        store.ensure_indexes()
    except TaskqError as exc:
        log.event("store.unavailable", "warning", error=str(exc), during="startup")
    # The pool starts first: the process pool's children start before any other thread exists.
    # One inbox for the committer: the pool's events and the connection stage's items (a pool only puts
    # its own event types, hence the narrower view it is given).
    inbox: queue.Queue[InboxItem] = queue.Queue()
    pool = make_pool(
        settings.pool,
        size=settings.concurrency,
        events=cast("queue.Queue[PoolEvent]", inbox),
        task_modules=settings.task_module_list(),
        max_tasks_per_child=settings.max_tasks_per_child,
        max_memory_per_child_mb=settings.max_memory_per_child_mb,
    )
    pool.start()
    consumer = Consumer(settings, pool, supervisor, log, recent_cancels=lambda since: store.recent_cancels(settings.queue, since))
    metrics = WorkerMetrics(lambda: consumer.inflight)

    def recorded(decision: Decision) -> None:
        metrics.recorded(decision)
        level = "info" if decision.event in ("task.succeeded", "task.redelivered_final") else "warning"
        log.event(decision.event, level, **decision.fields)

    committer = Committer(
        store,
        settings.worker_id,
        policy=settings.retry_policy(),
        max_deliveries=settings.max_deliveries,
        sink=consumer,
        log=log,
        on_recorded=recorded,
        inbox=inbox,
        queued=pool.queued,
    )
    metrics.count_group_commits(lambda: committer.flushes)
    consumer.attach(committer)
    heartbeat = Heartbeat(
        store,
        settings.worker_id,
        settings.queue,
        inflight=lambda: consumer.inflight,
        processed=lambda: consumer.acked,
        log=log,
        pool=settings.pool,
    )
    health = HealthServer(
        settings.health_port,
        alive=lambda: not supervisor.failed and time.monotonic() - consumer.loop_at < LIVENESS_STALL_S,
        ready=lambda: consumer.connected and committer.healthy and not consumer.draining and not supervisor.failed,
        metrics=metrics,
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        log.event("worker.signal", signal=signal.Signals(signum).name)
        consumer.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    supervisor.start("committer", committer.run)
    supervisor.start("heartbeat", heartbeat.run)
    supervisor.start("health", health.serve)
    log.event(
        "worker.started",
        queue=settings.queue,
        broker=redact_url(settings.amqp_url),
        store=redact_url(settings.mongodb_uri),
        pool=settings.pool,
        concurrency=settings.concurrency,
        prefetch=consumer.prefetch,
        consumer_timeout_ms=consumer.consumer_timeout_ms,
        task_timeout_s=settings.task_timeout,
        max_retries=settings.max_retries,
        max_deliveries=settings.max_deliveries,
        queue_type=settings.queue_type,
        health_port=health.port,
        tasks=registered_names(),
    )
    consumer.run()
    if supervisor.failed:
        log.event("worker.fatal", "error", stage=supervisor.failed_stage, error=supervisor.failure)
        pool.stop(FATAL_DRAIN_S)
        heartbeat.stop()
        health.stop()
        store.close()
        return EXIT_STAGE_FAILED
    pool.stop(max(1.0, settings.grace_seconds / 10))
    heartbeat.stop()
    heartbeat.remove()
    health.stop()
    store.close()
    status = 0 if committer.unflushed == 0 else 1
    log.event("worker.stopped", exit_status=status, acked=consumer.acked)
    return status


def warn_capped_tasks(settings: Settings, log: JsonLog) -> None:
    """Log each registered task whose decorator asks for more than this worker's limits allow."""
    for name in registered_names():
        spec = lookup(name)
        if spec.timeout is not None and spec.timeout > settings.task_timeout:
            log.event(
                "task.limit_capped", "warning", name=name, setting="timeout", asked=spec.timeout, used=settings.task_timeout
            )
        if spec.max_retries is not None and spec.max_retries > settings.max_retries:
            log.event(
                "task.limit_capped",
                "warning",
                name=name,
                setting="max_retries",
                asked=spec.max_retries,
                used=settings.max_retries,
            )


if __name__ == "__main__":
    sys.exit(main())
