"""Celery no-op app for the worker benchmark (`bench/worker.py` starts `celery -A bench.peers.celery_app worker`).

Configured as the issue asks: RabbitMQ broker, `task_acks_late=True`, prefetch multiplier from
`BENCH_CELERY_PREFETCH` (1 or 4), queue from `BENCH_QUEUE`. No result backend, unless
`BENCH_CELERY_RESULTS` names a MongoDB URI: then Celery's MongoDB result backend records every
result there (database `BENCH_CELERY_DATABASE`, collection `celery_taskmeta`), and
`BENCH_CELERY_TRACK_STARTED=1` makes it record each start too (`task_track_started`), as taskq
records a start. The pool and its size come from the command line (prefork, one process per core).

Celery 5.7's MongoDB backend writes each state with `replace_one({_id, status: {$ne: SUCCESS}}, ...)`
(it keeps the first SUCCESS); FerretDB 1.x runs any filter other than `{_id: ...}` as a scan of the
collection. `BENCH_CELERY_BY_ID=1` swaps in `ByIdMongoBackend`, the same backend writing with
`replace_one({_id}, ...)` as Celery did before that guard, so the benchmark can show Celery at its
best on this store as well as as shipped.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.backends.mongodb import MongoBackend


class ByIdMongoBackend(MongoBackend):  # type: ignore[misc]  # celery has no type hints
    """Celery's MongoDB result backend with its writes filtered by `_id` alone (no first-SUCCESS guard)."""

    def _store_result(
        self, task_id: str, result: Any, state: str, traceback: Any = None, request: Any = None, **kwargs: Any
    ) -> Any:
        meta = self._get_result_meta(
            result=self.encode(result), state=state, traceback=traceback, request=request, format_date=False
        )
        meta["_id"] = task_id
        self.collection.replace_one({"_id": task_id}, meta, upsert=True)
        return result


RESULTS = os.environ.get("BENCH_CELERY_RESULTS") or None
if RESULTS and os.environ.get("BENCH_CELERY_BY_ID") == "1":
    RESULTS = f"{__name__}:ByIdMongoBackend+{RESULTS}"

app = Celery("taskq_bench", broker=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"))
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=int(os.environ.get("BENCH_CELERY_PREFETCH", "4")),
    task_ignore_result=RESULTS is None,
    result_backend=RESULTS,
    mongodb_backend_settings={
        "database": os.environ.get("BENCH_CELERY_DATABASE", "celery_bench"),
        "taskmeta_collection": "celery_taskmeta",
    },
    task_track_started=os.environ.get("BENCH_CELERY_TRACK_STARTED") == "1",
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
