"""`taskq-worker`: the command that runs a worker process (console script in pyproject).

Wires the parts together: settings from `TASKQ_*` (command-line flags override them), task modules
imported into the registry, the executor, the committer, the consumer on the main thread, the
heartbeat and the health server; SIGTERM/SIGINT start the graceful drain. Exit status: 0 after a
clean drain, 1 when outcomes could not be flushed to the store, 2 for a configuration error.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from types import FrameType

from taskq.core.message import utcnow
from taskq.errors import TaskqError, redact_url
from taskq.registry import import_task_modules, registered_names
from taskq.settings import Settings
from taskq.store.mongo import TaskStore
from taskq.worker.committer import Committer, Finished
from taskq.worker.consumer import Consumer
from taskq.worker.decisions import Decision, outcome_decision
from taskq.worker.executor import Executor, Job, Outcome
from taskq.worker.health import HealthServer, WorkerMetrics
from taskq.worker.heartbeat import Heartbeat
from taskq.worker.logs import JsonLog

LIVENESS_STALL_S = 30.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="taskq-worker",
        description="Consume a taskq queue and run registered tasks. Settings come from TASKQ_* variables; flags override them.",
    )
    parser.add_argument("modules", nargs="*", help="task modules to import (added to TASKQ_TASK_MODULES)")
    parser.add_argument("--queue", help="queue to consume (TASKQ_QUEUE)")
    parser.add_argument("--concurrency", type=int, help="task threads (TASKQ_CONCURRENCY)")
    parser.add_argument("--prefetch", type=int, help="unacked messages held at once (TASKQ_PREFETCH)")
    parser.add_argument("--health-port", type=int, help="port of /livez, /readyz, /metrics; 0 = any free port (TASKQ_HEALTH_PORT)")
    parser.add_argument("--grace-seconds", type=float, help="SIGTERM drain budget (TASKQ_GRACE_SECONDS)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="lowest level logged (default info)")
    return parser.parse_args(argv)


def load_settings(args: argparse.Namespace) -> Settings:
    overrides = {
        key: value
        for key, value in {
            "queue": args.queue,
            "concurrency": args.concurrency,
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
    try:
        import_task_modules([*args.modules, *settings.task_module_list()])
    except TaskqError as exc:
        log.event("worker.config_error", "error", error=str(exc))
        return 2
    if not registered_names():
        log.event("worker.config_error", "error", error="no tasks registered: name task modules on the command line or in TASKQ_TASK_MODULES")
        return 2
    return run(settings, log)


def run(settings: Settings, log: JsonLog) -> int:
    """Run the worker until SIGTERM/SIGINT; return the exit status."""
    store = TaskStore(settings.mongodb_uri, settings.database)
    try:
        store.ensure_indexes()
    except TaskqError as exc:
        log.event("store.unavailable", "warning", error=str(exc), during="startup")
    policy = settings.retry_policy()
    worker_id = settings.worker_id
    committer: Committer

    def decide(item: Finished, start_recorded: bool) -> Decision:
        return outcome_decision(
            item.message,
            error=item.error,
            value=item.value,
            duration_s=item.duration_s,
            worker_id=worker_id,
            policy=policy,
            now=utcnow(),
            started_at=item.started_at,
            start_recorded=start_recorded,
            unit_random=random.random(),
        )

    def on_start(job: Job) -> None:
        committer.started(job.token, job.message, utcnow())

    def on_outcome(outcome: Outcome) -> None:
        started_at = utcnow() - timedelta(seconds=outcome.duration_s)
        job = outcome.job
        committer.finished(Finished(job.token, job.message, outcome.value, outcome.error, outcome.duration_s, started_at))

    executor = Executor(settings.concurrency, on_start=on_start, on_outcome=on_outcome)
    consumer = Consumer(settings, executor, lambda: committer, log)
    metrics = WorkerMetrics(lambda: consumer.inflight)

    def recorded(decision: Decision) -> None:
        metrics.recorded(decision)
        level = "info" if decision.event == "task.succeeded" else "warning"
        log.event(decision.event, level, **decision.fields)

    committer = Committer(
        store,
        worker_id,
        decide=decide,
        on_done=consumer.complete,
        on_admit=consumer.admit,
        is_busy=executor.busy,
        log=log,
        on_recorded=recorded,
    )
    heartbeat = Heartbeat(store, worker_id, settings.queue, inflight=lambda: consumer.inflight, processed=lambda: consumer.acked, log=log)
    health = HealthServer(
        settings.health_port,
        alive=lambda: time.monotonic() - consumer.loop_at < LIVENESS_STALL_S,
        ready=lambda: consumer.connected and committer.healthy and not consumer.draining,
        metrics=metrics,
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        log.event("worker.signal", signal=signal.Signals(signum).name)
        consumer.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    executor.start()
    committer.start_thread()
    heartbeat.start()
    health.start()
    log.event(
        "worker.started",
        queue=settings.queue,
        broker=redact_url(settings.amqp_url),
        store=redact_url(settings.mongodb_uri),
        concurrency=settings.concurrency,
        prefetch=settings.prefetch,
        health_port=health.port,
        tasks=registered_names(),
    )
    consumer.run()
    executor.stop()
    heartbeat.stop()
    health.stop()
    store.close()
    status = 1 if committer.failed_final_flush else 0
    log.event("worker.stopped", exit_status=status, acked=consumer.acked, running_abandoned=executor.running_count())
    return status


if __name__ == "__main__":
    sys.exit(main())
