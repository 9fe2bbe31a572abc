"""Observe many TaskQueues at once: one batch of reads per broker and per store, shared by all.

Per broker: passive declares for every due queue, pipelined (exact ready counts and consumers),
plus one management-API request per vhost (cached for the statistics interval). Per store: one
heartbeat query (fresh in-flight counts) and, less often, one task-count aggregation. Which unacked
figure to trust, and whether a reading is actionable, is the pure rule `taskq_operator.core.measure`
(heartbeats, else the management API served from a cache refreshed in the background so a slow
management API never delays a tick, else nothing when no consumer could hold work).

Called by `taskq_operator.scaler` once per tick, in a worker thread (everything here blocks), and by
`taskq_operator.reconcile` (declares, also in a worker thread): the observer maps are guarded by a lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from taskq.errors import TaskqError
from taskq_operator.adapters.broker import BrokerObserver
from taskq_operator.adapters.store import StoreObserver, WorkerLoad
from taskq_operator.core.measure import SOURCE_NONE, Sources, measure
from taskq_operator.core.policy import Observation

TASK_COUNTS_EVERY_S = 10.0


@dataclass(frozen=True)
class Target:
    """One TaskQueue to observe: its queue and which broker and store it uses (credentials inside)."""

    queue: str
    amqp_url: str
    management_url: str | None
    mongodb_uri: str
    database: str

    @property
    def broker_key(self) -> tuple[str, str | None]:
        return self.amqp_url, self.management_url

    @property
    def store_key(self) -> tuple[str, str]:
        return self.mongodb_uri, self.database


@dataclass(frozen=True)
class Reading:
    """The observation of one queue (None when its broker could not be read) and where it came from."""

    observation: Observation | None
    source: str
    error: str | None = None
    loads: WorkerLoad = field(default_factory=WorkerLoad)
    task_counts: dict[str, int] | None = None


class MissingSecretKey(TaskqError):
    """A Secret a TaskQueue refers to lacks a key the operator needs (the message names Secret and key)."""


def target_for(
    queue: str,
    namespace: str,
    broker_secret: str,
    broker_data: dict[str, str],
    store_secret: str,
    store_data: dict[str, str],
    database: str,
) -> Target:
    """The `Target` of one TaskQueue from its Secrets' data (keys from docs/architecture.md)."""
    if not broker_data.get("amqp-url"):
        raise MissingSecretKey(f"Secret {namespace}/{broker_secret} has no key amqp-url")
    if not store_data.get("mongodb-uri"):
        raise MissingSecretKey(f"Secret {namespace}/{store_secret} has no key mongodb-uri")
    return Target(
        queue=queue,
        amqp_url=broker_data["amqp-url"],
        management_url=broker_data.get("management-url") or None,
        mongodb_uri=store_data["mongodb-uri"],
        database=database,
    )


class Observers:
    """Long-lived observers, one per broker and per store, reused across ticks."""

    def __init__(self) -> None:
        self.brokers: dict[tuple[str, str | None], BrokerObserver] = {}
        self.stores: dict[tuple[str, str], StoreObserver] = {}
        self._counts_at: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()  # the tick thread and reconcile threads both look observers up

    def broker(self, target: Target) -> BrokerObserver:
        with self._lock:
            observer = self.brokers.get(target.broker_key)
            if observer is None:
                observer = self.brokers[target.broker_key] = BrokerObserver(target.amqp_url, target.management_url)
            return observer

    def store(self, target: Target) -> StoreObserver:
        with self._lock:
            observer = self.stores.get(target.store_key)
            if observer is None:
                observer = self.stores[target.store_key] = StoreObserver(target.mongodb_uri, target.database)
            return observer

    def close(self) -> None:
        with self._lock:
            brokers, stores = list(self.brokers.values()), list(self.stores.values())
            self.brokers.clear()
            self.stores.clear()
        for broker in brokers:
            broker.close()
        for store in stores:
            store.close()

    def _store_batch(self, targets: Sequence[Target]) -> tuple[dict[str, WorkerLoad], dict[str, dict[str, int]] | None]:
        store = self.store(targets[0])
        queues = sorted({t.queue for t in targets})
        try:
            loads = store.worker_loads(queues)
        except TaskqError:
            loads = {}
        counts = None
        key = targets[0].store_key
        if time.monotonic() - self._counts_at.get(key, 0.0) >= TASK_COUNTS_EVERY_S:
            try:
                counts = store.task_counts(queues)
                self._counts_at[key] = time.monotonic()
            except TaskqError:
                counts = None
        return loads, counts

    def _broker_batch(
        self, targets: Sequence[Target], loads: dict[str, WorkerLoad], counts: dict[str, dict[str, int]] | None
    ) -> dict[str, Reading]:
        broker = self.broker(targets[0])
        queues = sorted({t.queue for t in targets})
        try:
            ready = broker.ready_counts(queues)
        except TaskqError as exc:
            return {
                q: Reading(None, SOURCE_NONE, str(exc), loads.get(q, WorkerLoad()), counts.get(q) if counts else None)
                for q in queues
            }
        management, management_age_s, management_error = broker.management_cached(broker.vhost)
        readings: dict[str, Reading] = {}
        for queue in queues:
            count = ready.get(queue)
            load = loads.get(queue, WorkerLoad())
            figures = management.get(queue)
            measured = measure(
                Sources(
                    ready=count.ready if count else None,
                    consumers=count.consumers if count else 0,
                    heartbeat_inflight=load.inflight if load.inflight_by_worker else None,
                    management_unacked=figures.unacked if figures else None,
                    management_age_s=management_age_s,
                    management_configured=broker.has_management,
                    management_error=management_error,
                    publish_rate=figures.publish_rate if figures else None,
                    deliver_rate=figures.deliver_rate if figures else None,
                )
            )
            task_counts = counts.get(queue) if counts else None
            readings[queue] = Reading(measured.observation, measured.source, measured.error, load, task_counts)
        return readings

    def read(self, targets: Sequence[Target]) -> dict[tuple[tuple[str, str | None], str], Reading]:
        """Readings keyed by (broker key, queue), with one batch per store and per broker."""
        by_store: dict[tuple[str, str], list[Target]] = {}
        for target in targets:
            by_store.setdefault(target.store_key, []).append(target)
        loads: dict[tuple[tuple[str, str], str], WorkerLoad] = {}
        counts: dict[tuple[tuple[str, str], str], dict[str, int]] = {}
        for store_key, group in by_store.items():
            group_loads, group_counts = self._store_batch(group)
            for queue, load in group_loads.items():
                loads[(store_key, queue)] = load
            for queue, count in (group_counts or {}).items():
                counts[(store_key, queue)] = count
        by_broker: dict[tuple[str, str | None], list[Target]] = {}
        for target in targets:
            by_broker.setdefault(target.broker_key, []).append(target)
        readings: dict[tuple[tuple[str, str | None], str], Reading] = {}
        for broker_key, group in by_broker.items():
            group_loads = {t.queue: loads.get((t.store_key, t.queue), WorkerLoad()) for t in group}
            group_counts = {t.queue: counts[(t.store_key, t.queue)] for t in group if (t.store_key, t.queue) in counts}
            for queue, reading in self._broker_batch(group, group_loads, group_counts or None).items():
                readings[(broker_key, queue)] = reading
        return readings
