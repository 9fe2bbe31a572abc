"""Celery no-op app for the worker benchmark (`bench/worker.py` starts `celery -A bench.peers.celery_app worker`).

Configured as the issue asks: RabbitMQ broker, no result backend, `task_acks_late=True`, prefetch
multiplier from `BENCH_CELERY_PREFETCH` (1 or 4), queue from `BENCH_QUEUE`. The pool and its size
come from the command line (prefork, one process per core).
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery("taskq_bench", broker=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"))
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=int(os.environ.get("BENCH_CELERY_PREFETCH", "4")),
    task_ignore_result=True,
    result_backend=None,
    task_default_queue=os.environ.get("BENCH_QUEUE", "celery-bench"),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
    task_send_sent_event=False,
)


@app.task(name="noop")
def noop(index: int = 0) -> None:
    """Do nothing."""
    return None
