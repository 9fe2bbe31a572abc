"""Worker heartbeats: every few seconds, write this worker's in-flight count to the `workers` collection.

The operator reads `inflight` for fresh unacked counts. Runs in a daemon thread started by
`taskq.worker.main`; a store outage is logged once and retried on the next beat.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

from taskq.core.message import utcnow
from taskq.errors import TaskqError
from taskq.store.mongo import TaskStore
from taskq.worker.logs import JsonLog

HEARTBEAT_INTERVAL_S = 2.0


class Heartbeat:
    """Periodic `TaskStore.heartbeat` for one worker, and `remove_worker` when it stops."""

    def __init__(
        self,
        store: TaskStore,
        worker_id: str,
        queue: str,
        *,
        inflight: Callable[[], int],
        processed: Callable[[], int],
        log: JsonLog,
        interval_s: float = HEARTBEAT_INTERVAL_S,
    ) -> None:
        self._store = store
        self._worker_id = worker_id
        self._queue = queue
        self._inflight = inflight
        self._processed = processed
        self._log = log
        self._interval_s = interval_s
        self._started_at: datetime = utcnow()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="taskq-heartbeat", daemon=True)
        self._failing = False

    def start(self) -> None:
        self._thread.start()

    def beat(self) -> None:
        """Write one heartbeat now (raises `TaskqError` when the store is down)."""
        self._store.heartbeat(
            self._worker_id, self._queue, inflight=self._inflight(), processed=self._processed(), started_at=self._started_at, now=utcnow()
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
                self._failing = False
            except TaskqError as exc:
                if not self._failing:
                    self._log.event("heartbeat.failed", "warning", error=str(exc))
                self._failing = True
            self._stop.wait(self._interval_s)

    def stop(self) -> None:
        """Stop beating and remove this worker's document (best effort)."""
        self._stop.set()
        self._thread.join(self._interval_s + 6.0)
        try:
            self._store.remove_worker(self._worker_id)
        except TaskqError as exc:
            self._log.event("heartbeat.remove_failed", "warning", error=str(exc))
