"""Store reads for the operator, batched per store: worker heartbeats (in-flight work) and task counts.

One `StoreObserver` per (MongoDB URI, database) serves every TaskQueue using it, with one query per
tick for all their queues. Wraps the runtime's `taskq.store.TaskStore`, whose errors are already
`taskq.errors.StoreUnavailable` without credentials. Blocking; the scaler calls it in worker threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from taskq.store.mongo import TaskStore

HEARTBEAT_FRESH_S = 8.0


@dataclass(frozen=True)
class WorkerLoad:
    """Fresh heartbeats of one queue's workers: in-flight tasks per worker id (= pod name)."""

    inflight_by_worker: dict[str, int] = field(default_factory=dict)
    beats_by_worker: dict[str, tuple[float, int]] = field(default_factory=dict)
    """(heartbeat time in epoch seconds, tasks acked since start) per worker: `core.rates`' service rate."""

    @property
    def inflight(self) -> int:
        return sum(self.inflight_by_worker.values())


class StoreObserver:
    """Batched reads of heartbeats and task counts for the queues of one store."""

    def __init__(self, uri: str, database: str, *, timeout_ms: int = 3000) -> None:
        self._store = TaskStore(uri, database, timeout_ms=timeout_ms)

    def worker_loads(self, queues: Sequence[str], now: datetime | None = None) -> dict[str, WorkerLoad]:
        """In-flight counts from heartbeats fresher than `HEARTBEAT_FRESH_S`, for every queue asked."""
        moment = now or datetime.now(UTC)
        loads: dict[str, dict[str, int]] = {queue: {} for queue in queues}
        beats: dict[str, dict[str, tuple[float, int]]] = {queue: {} for queue in queues}
        for doc in self._store.live_workers(list(queues), moment - timedelta(seconds=HEARTBEAT_FRESH_S)):
            queue = doc.get("queue")
            if queue in loads:
                loads[queue][str(doc["_id"])] = int(doc.get("inflight") or 0)
                at = doc.get("heartbeat_at")
                if isinstance(at, datetime):
                    stamp = (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
                    beats[queue][str(doc["_id"])] = (stamp, int(doc.get("processed") or 0))
        return {queue: WorkerLoad(by_worker, beats[queue]) for queue, by_worker in loads.items()}

    def task_counts(self, queues: Sequence[str]) -> dict[str, dict[str, int]]:
        """Tasks by state for every queue asked, from one aggregation."""
        counts: dict[str, dict[str, int]] = self._store.counts_by_queue_and_state(list(queues))
        return counts

    def close(self) -> None:
        self._store.close()
