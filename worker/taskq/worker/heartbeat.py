"""Worker heartbeats: every few seconds, write this worker's in-flight count (and pool kind) to the `workers` collection.

The operator reads `inflight` for fresh unacked counts. Runs in a supervised thread started by
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
        pool: str | None = None,
    ) -> None:
        self._store = store
        self._worker_id = worker_id
        self._queue = queue
        self._inflight = inflight
        self._processed = processed
        self._log = log
        self._interval_s = interval_s
        self._pool = pool
        self._started_at: datetime = utcnow()
        self._stop = threading.Event()
        self._failing = False

    def beat(self) -> None:
        """Write one heartbeat now (raises `TaskqError` when the store is down)."""
        self._store.heartbeat(
            self._worker_id,
            self._queue,
            inflight=self._inflight(),
            processed=self._processed(),
            started_at=self._started_at,
            now=utcnow(),
            pool=self._pool,
        )

    def run(self) -> None:
        """Beat until `stop` (run by the supervisor in its own thread; store errors are retried)."""
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
        """Stop beating (the loop ends within one interval)."""
        self._stop.set()

    def remove(self) -> None:
        """Remove this worker's document after a clean stop (best effort)."""
        try:
            self._store.remove_worker(self._worker_id)
        except TaskqError as exc:
            self._log.event("heartbeat.remove_failed", "warning", error=str(exc))
